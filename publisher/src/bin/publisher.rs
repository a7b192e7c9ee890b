//! `publisher` — reads a DynamoDB table's stream and publishes each change to SNS.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use publisher::config::PublisherConfig;
use publisher::pipeline::{Health, Pipeline, PipelineError};
use runtime::aws::Clients;
use runtime::shutdown::ShutdownNotes;

/// Publishes every change of a DynamoDB table (from its NEW_AND_OLD_IMAGES stream) as
/// a versioned change event to an SNS topic, at least once, checkpointing per shard.
/// One publisher holds a stream at a time (a lease in the checkpoint table); start a
/// second for fail-over. SIGTERM finishes the batch in flight, checkpoints, exits 0; a
/// second SIGTERM or Ctrl-C exits at once with 130.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: PublisherConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(cli.config.log);
    let shutdown = runtime::shutdown::install(ShutdownNotes {
        draining: "Shutdown requested, finishing in-flight work.",
        forced: "Second shutdown signal, exiting now; what was in flight is read again on restart.",
    });
    let clients = Clients::new(&runtime::aws::sdk_config(&cli.config.aws).await);
    let pipeline = match Pipeline::build(&cli.config, &clients, &shutdown).await {
        Ok(p) => Arc::new(p),
        Err(PipelineError::Interrupted) => {
            tracing::info!("Stopped before starting.");
            return ExitCode::SUCCESS;
        }
        Err(e) if e.is_bad_setting() => {
            tracing::error!(error = %e, "Cannot start.");
            return ExitCode::from(runtime::cli::BAD_SETTING);
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = cli.config.ops.metrics_addr {
        let endpoints = operator_endpoints(&clients, &cli.config, &pipeline.health);
        if let Err(e) = runtime::server::serve(addr, endpoints, shutdown.clone()).await {
            tracing::error!(%addr, error = %e, "Cannot serve TRIBUTARY_METRICS_ADDR.");
            return ExitCode::from(runtime::cli::BAD_SETTING);
        }
    }
    tracing::info!(table = %cli.config.table, topic_arn = %cli.config.topic_arn, stream_arn = %pipeline.origin.stream_arn, schema_version = %pipeline.emit, "Publisher starting.");
    match pipeline.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Publisher failed.");
            ExitCode::FAILURE
        }
    }
}

/// `/readyz` answers 200 only when the checkpoint table (DynamoDB) and the topic (SNS)
/// answer, the table's stream is enabled and no shard is paused.
fn operator_endpoints(
    clients: &Clients,
    config: &PublisherConfig,
    health: &Arc<Health>,
) -> runtime::server::Endpoints {
    let health = Arc::clone(health);
    let dynamodb = clients.dynamodb.clone();
    let sns = clients.sns.clone();
    let table = config.checkpoint_table.clone();
    let topic_arn = config.topic_arn.clone();
    runtime::server::Endpoints {
        registry: Arc::clone(&publisher::metrics::metrics().registry),
        checks: vec![
            runtime::server::Check::new("pipeline", move || {
                let problems = health.problems();
                Box::pin(async move {
                    if problems.is_empty() {
                        Ok(())
                    } else {
                        Err(problems.join("; "))
                    }
                })
            }),
            runtime::server::Check::new("checkpoint_table", move || {
                let dynamodb = dynamodb.clone();
                let table = table.clone();
                Box::pin(async move {
                    dynamodb
                        .describe_table()
                        .table_name(table)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| runtime::report::describe_sdk_error(&e))
                })
            }),
            runtime::server::Check::new("topic", move || {
                let sns = sns.clone();
                let topic_arn = topic_arn.clone();
                Box::pin(async move {
                    sns.get_topic_attributes()
                        .topic_arn(topic_arn)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| runtime::report::describe_sdk_error(&e))
                })
            }),
        ],
    }
}
