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
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    names: Names,
    #[command(flatten)]
    log: runtime::telemetry::LogArgs,
    #[command(flatten)]
    aws: runtime::aws::AwsArgs,
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
    let created = tokio::select! {
        created = bootstrap(&clients, &cli.names) => created,
        () = shutdown.cancelled() => {
            eprintln!("error: interrupted; bootstrap is idempotent, run it again to finish");
            return ExitCode::from(130);
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
