//! `subscriber-lambda` — the subscriber as an AWS Lambda function behind an SQS
//! event-source mapping. Wiring only: the handler is [`subscriber::lambda`].

#![recursion_limit = "256"]

use std::time::Duration;

use subscriber::config::LambdaConfig;
use subscriber::lambda::{SqsEvent, SubscriberLambda};
use subscriber::source::{DeadLetterQueue, MAX_MESSAGE_BYTES};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = LambdaConfig::parse_or_exit();
    subscriber::telemetry::init(config.log_format);
    config.topic.install();
    let connect = match config.database.database_url.consumer_connect_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: invalid value for --database-url (env DATABASE_URL): {e}");
            std::process::exit(2);
        }
    };
    let aws = ops::aws::sdk_config(&config.aws).await;
    let dlq = DeadLetterQueue::new(
        aws_sdk_sqs::Client::new(&aws),
        config.dlq_url.to_string(),
        MAX_MESSAGE_BYTES,
    );
    let handler = SubscriberLambda::new(
        connect,
        config.db_max_connections.get(),
        dlq,
        Duration::from_millis(config.deadline_margin_ms),
    );
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| async move {
            let deadline =
                ops::invocation_deadline(event.context.deadline, std::time::SystemTime::now());
            handler
                .handle(event.payload, Some(deadline))
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
