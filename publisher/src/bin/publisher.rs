//! `publisher` — reads a DynamoDB table's stream and publishes each change to SNS.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use publisher::config::PublisherConfig;
use publisher::pipeline::{Clients, Pipeline};
use publisher::telemetry;

/// Publishes every change of a DynamoDB table (from its NEW_AND_OLD_IMAGES stream) as
/// a versioned change event to an SNS topic, at least once, checkpointing per shard.
/// One publisher holds a stream at a time (a lease in the checkpoint table); start a
/// second for fail-over. SIGTERM finishes the batch in flight, checkpoints, exits 0.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: PublisherConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = publisher::config::parse_or_exit();
    telemetry::init(cli.config.log_format);
    let shutdown = telemetry::shutdown_on_signals();
    let clients = Clients::new(&publisher::aws_config().await);
    let pipeline = match Pipeline::build(&cli.config, &clients).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            return ExitCode::from(2);
        }
    };
    tracing::info!(table = %cli.config.table, topic_arn = %cli.config.topic_arn, stream_arn = %pipeline.origin.stream_arn, schema_version = %pipeline.emit, "Publisher starting.");
    match pipeline.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Publisher failed.");
            ExitCode::FAILURE
        }
    }
}
