//! `demo-writer` — realistic profile traffic for the demo and for load.

use std::process::ExitCode;

use clap::Parser;
use runtime::shutdown::ShutdownNotes;
use stack::demo::{ProfileWriter, Traffic, TrafficPlan};

/// Writes profile traffic to the table as the User Profile service would: sign-ups,
/// edits (optimistic concurrency on `version`), deletions and re-creations of deleted
/// profiles (new `created_at`, version restarting at 1). SIGTERM or Ctrl-C stops after
/// the write in flight; a second one exits at once with 130.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Profile table to write to.
    #[arg(long, env = "PUBLISHER_TABLE", default_value = "profiles")]
    table: String,
    /// Mutations to perform.
    #[arg(long, env = "DEMO_COUNT", default_value = "500")]
    count: u64,
    /// Mutations per second (0 = as fast as the table takes them).
    #[arg(long, env = "DEMO_RATE", default_value = "50")]
    rate: u32,
    /// Distinct profiles to create before mostly editing.
    #[arg(long, env = "DEMO_KEYS", default_value = "100")]
    keys: usize,
    /// Key prefix (`<prefix>-000001`, …). Default: `user-` and a random run id, so runs
    /// against the same table never collide.
    #[arg(long, env = "DEMO_PREFIX")]
    prefix: Option<String>,
    /// Seconds to wait for the table to exist and be active before writing (under
    /// docker-compose the writer may start before `bootstrap` has created it).
    #[arg(long, env = "DEMO_TABLE_WAIT_SECS", default_value = "120")]
    table_wait_secs: u64,
    #[command(flatten)]
    log: runtime::telemetry::LogArgs,
    #[command(flatten)]
    aws: runtime::aws::AwsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(cli.log);
    let shutdown = runtime::shutdown::install(ShutdownNotes {
        draining: "Shutdown requested, stopping after the write in flight.",
        forced: "Second shutdown signal, exiting now.",
    });
    let client = aws_sdk_dynamodb::Client::new(&runtime::aws::sdk_config(&cli.aws).await);
    let writer = ProfileWriter::new(client, cli.table.clone());
    if let Err(e) = writer
        .wait_for_table(
            std::time::Duration::from_secs(cli.table_wait_secs),
            &shutdown,
        )
        .await
    {
        tracing::error!(error = %e, "Demo writer failed.");
        return ExitCode::FAILURE;
    }
    let mut rng = rand::rng();
    let prefix = cli.prefix.clone().unwrap_or_else(|| {
        use rand::Rng;
        let run: String = (0..4)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        format!("user-{run}")
    });
    let mut traffic = Traffic::new(&prefix);
    let plan = TrafficPlan::new(cli.keys, cli.count).rate(cli.rate);
    let result = traffic.run(&writer, &mut rng, &plan, &shutdown).await;
    let s = &traffic.stats;
    tracing::info!(%prefix, creates = s.creates, updates = s.updates, deletes = s.deletes, recreates = s.recreates, live = traffic.live.len(), "Demo traffic written.");
    // One machine-readable summary line on stdout, for scripts/demo.sh.
    println!(
        "prefix={prefix} total={} creates={} updates={} deletes={} recreates={} live={} deleted={}",
        s.total(),
        s.creates,
        s.updates,
        s.deletes,
        s.recreates,
        traffic.live.len(),
        traffic.deleted.len()
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Demo writer failed.");
            ExitCode::FAILURE
        }
    }
}
