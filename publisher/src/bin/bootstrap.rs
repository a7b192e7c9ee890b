//! `bootstrap` — creates the pipeline's AWS resources, idempotently.

use std::process::ExitCode;

use clap::Parser;
use publisher::bootstrap::{Names, bootstrap};
use publisher::pipeline::Clients;

/// Creates (or finds) the profile table with its stream, the checkpoint table, the SNS
/// topic, the subscriber queue with its DLQ and redrive policy, a queue policy that
/// admits only the topic, the raw-delivery subscription and the publisher's failure
/// queue. Prints the resulting settings as `export NAME=value` lines for a shell.
/// Endpoints and credentials come from the standard AWS environment variables.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    names: Names,
    #[command(flatten)]
    aws: ops::aws::AwsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = publisher::config::parse_or_exit();
    let clients = Clients::new(&ops::aws::sdk_config(&cli.aws).await);
    match bootstrap(&clients, &cli.names).await {
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
