//! `publisher-lambda` — the publisher as an AWS Lambda function behind a DynamoDB-stream
//! event-source mapping. Wiring only: the handler is [`publisher::lambda`].

use clap::Parser;
use publisher::config::PublisherLambdaConfig;
use publisher::lambda::{PublisherLambda, StreamEvent};
use publisher::park::FailureQueue;
use publisher::sink::SnsSink;
use runtime::shutdown::ShutdownNotes;

/// Publishes each record of a DynamoDB-stream batch as a versioned change event to SNS
/// and answers with a partial batch response naming the first unfinished record.
/// Records that can never be published are parked (keys, position and reason) in the
/// failure queue. SIGTERM answers the invocation in flight, then exits 0; a second
/// SIGTERM or Ctrl-C exits at once with 130.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: PublisherLambdaConfig,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let config = runtime::cli::parse_or_exit::<Cli>().config;
    runtime::telemetry::init(config.log);
    let shutdown = runtime::shutdown::install(ShutdownNotes {
        draining: "Shutdown requested, answering the invocation in flight.",
        forced: "Second shutdown signal, exiting now; Lambda retries the unanswered batch.",
    });
    let aws = runtime::aws::sdk_config(&config.aws).await;
    let handler = PublisherLambda {
        sink: SnsSink::new(aws_sdk_sns::Client::new(&aws), config.topic_arn),
        failures: FailureQueue::new(
            aws_sdk_sqs::Client::new(&aws),
            Some(config.failure_queue_url.to_string()),
        ),
        emit: config.emit.schema_version.into(),
        table: config.table,
        deadline_margin: config.deadline_margin,
    };
    runtime::lambda::serve(
        |event: StreamEvent, deadline| handler.handle(event, Some(deadline)),
        shutdown,
    )
    .await
}
