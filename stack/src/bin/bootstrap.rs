//! `bootstrap` — creates the pipeline's AWS resources, idempotently.

use std::process::ExitCode;

use clap::Parser;
use runtime::aws::Clients;
use stack::bootstrap::{Names, bootstrap};

/// Creates (or finds) the profile table with its stream, the checkpoint table, the SNS
/// topic, the subscriber queue with its DLQ and redrive policy, a queue policy that
/// admits only the topic, the raw-delivery subscription and the publisher's failure
/// queue. Prints the resulting settings as `export NAME=value` lines for a shell.
/// Endpoints and credentials come from the standard AWS environment variables.
/// SIGTERM or Ctrl-C stops at once with 130 (every step is idempotent: run it again).
/// While an endpoint cannot be reached (a service still starting), it tries again for
/// up to --wait-secs.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    names: Names,
    #[command(flatten)]
    log: runtime::telemetry::LogArgs,
    #[command(flatten)]
    aws: runtime::aws::AwsArgs,
    /// How long to keep trying while an AWS endpoint cannot be reached at all (a
    /// refused or timed-out connection: LocalStack, say, a moment after its health
    /// check first passes). Every step is idempotent, so the whole bootstrap is run
    /// again, with back-off. An error the service answers with fails at once.
    /// Default: 60.
    #[arg(
        long,
        env = "BOOTSTRAP_WAIT_SECS",
        value_name = "SECS",
        default_value_t = 60
    )]
    wait_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(cli.log);
    // Every step is idempotent, so nothing in flight needs finishing: the first signal
    // stops at once with 130, and running bootstrap again picks up where it stopped.
    let shutdown = runtime::shutdown::install(runtime::shutdown::ShutdownNotes {
        draining: "Bootstrap interrupted; run it again to finish (it is idempotent).",
        forced: "Second signal, exiting now.",
    });
    let clients = Clients::new(&runtime::aws::sdk_config(&cli.aws).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(cli.wait_secs);
    let backoff = runtime::backoff::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(8),
    );
    let mut attempt = 0;
    let created = loop {
        let created = tokio::select! {
            created = bootstrap(&clients, &cli.names) => created,
            () = shutdown.cancelled() => {
                eprintln!("error: interrupted; bootstrap is idempotent, run it again to finish");
                return ExitCode::from(130);
            }
        };
        match created {
            Err(e) if e.is_unreachable() && std::time::Instant::now() < deadline => {
                attempt += 1;
                let delay = backoff.delay_random(attempt);
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "An endpoint cannot be reached yet; trying again.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => {
                        eprintln!("error: interrupted; bootstrap is idempotent, run it again to finish");
                        return ExitCode::from(130);
                    }
                }
            }
            other => break other,
        }
    };
    match created {
        Ok(resources) => {
            print!("{}", resources.to_env());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
