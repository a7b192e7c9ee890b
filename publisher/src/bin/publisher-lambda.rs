//! `publisher-lambda` — the publisher as an AWS Lambda function behind a DynamoDB-stream
//! event-source mapping. Wiring only: the handler is [`publisher::lambda`].

use clap::Parser;
use publisher::config::PublisherLambdaConfig;
use publisher::lambda::{PublisherLambda, StreamEvent};
use publisher::park::FailureQueue;
use publisher::sink::SnsSink;
use publisher::telemetry;

/// Publishes each record of a DynamoDB-stream batch as a versioned change event to SNS
/// and answers with a partial batch response naming the first unfinished record.
/// Records that can never be published are parked (keys, position, reason) in the
/// failure queue.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: PublisherLambdaConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = Cli::parse().config;
    telemetry::init(config.log_format);
    let aws = ops::aws::sdk_config(&config.aws).await;
    let handler = PublisherLambda {
        sink: SnsSink::new(aws_sdk_sns::Client::new(&aws), config.topic_arn),
        failures: FailureQueue::new(
            aws_sdk_sqs::Client::new(&aws),
            Some(config.failure_queue_url),
        ),
        emit: config.schema_version.into(),
        table: config.table,
        deadline_margin: config.deadline_margin,
    };
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<StreamEvent>| async move {
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
