//! `subscriber-lambda` — the subscriber as an AWS Lambda function behind an SQS
//! event-source mapping. Wiring only: the handler is [`subscriber::lambda`].

use std::time::Duration;

use runtime::shutdown::ShutdownNotes;
use subscriber::config::{LambdaConfig, check_database_tls};
use subscriber::lambda::{SqsEvent, SubscriberLambda};
use subscriber::queue::{DeadLetterQueue, MAX_MESSAGE_BYTES};
use subscriber::secret::DatabaseSecret;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config: LambdaConfig = runtime::cli::parse_or_exit();
    runtime::telemetry::init(config.log);
    let shutdown = runtime::shutdown::install(ShutdownNotes {
        draining: "Shutdown requested, answering the invocation in flight.",
        forced: "Second shutdown signal, exiting now; the unanswered batch comes back after its visibility timeout.",
    });
    let aws = runtime::aws::sdk_config(&config.aws).await;
    let db = &config.database;
    if let Err(line) = db.validate() {
        runtime::cli::exit_bad_setting(&line);
    }
    let secret = db
        .database_secret_arn
        .as_ref()
        .map(|arn| DatabaseSecret::new(aws_sdk_secretsmanager::Client::new(&aws), arn.clone()));
    let url = match (&db.database_url, &secret) {
        (Some(url), _) => url.clone(),
        (None, Some(secret)) => match secret.read().await {
            Ok(url) => url,
            Err(e) => {
                // A cold start that cannot read the secret fails; Lambda retries it.
                eprintln!("error: SUBSCRIBER_DATABASE_SECRET_ARN: {e}");
                std::process::exit(if e.is_retryable() { 1 } else { 2 });
            }
        },
        (None, None) => unreachable!("clap requires one of the two"),
    };
    if let Err(line) = check_database_tls(&url, db.allow_insecure_database_tls) {
        runtime::cli::exit_bad_setting(&line);
    }
    let connect = url.consumer_connect_options().unwrap_or_else(|e| {
        runtime::cli::exit_bad_setting(&format!(
            "error: invalid value for --database-url (env DATABASE_URL): {e}"
        ))
    });
    // After every check that can refuse the settings: it may warn, and a refusal must
    // stay the one line on stderr.
    config.topic.install();
    config.entity.install();
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
    )
    .with_queue_url(config.queue_url.as_ref().map(ToString::to_string));
    let handler = match secret {
        Some(secret) => handler.with_secret(secret, db.allow_insecure_database_tls),
        None => handler,
    };
    runtime::lambda::serve(
        |event: SqsEvent, deadline| handler.handle(event, Some(deadline)),
        shutdown,
    )
    .await
}
