//! `tributary-bench` — the benchmarks behind BENCHMARKS.md. Not tests: they measure,
//! print tables, and fail only when a contender breaks an invariant.
//!
//! # Layout
//! - [`workload`] — the apply workload (creates, updates, deletes, duplicates,
//!   reordering) and the final state it must leave.
//! - [`apply_bench`] — apply rate: PostgreSQL's own ceiling, a one-transaction-per-event
//!   peer and tributary's apply path, same events, one run.
//! - [`pipeline`] — the real binaries on the emulators at fixed write rates: AWS
//!   requests per event, end-to-end latency, CPU and memory, beside the emulator's raw
//!   figures.
//! - [`proxy`] — the counting proxy the pipeline bench puts in front of each emulator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply_bench;
mod pipeline;
mod proxy;
mod workload;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Admin URL of the PostgreSQL server; each run creates and drops its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Apply rate against PostgreSQL's own ceiling and a one-transaction-per-event peer.
    Apply {
        #[arg(long, default_value = "100000")]
        events: usize,
        #[arg(long, default_value = "20000")]
        keys: usize,
        /// Events the peer applies (a prefix of the workload).
        #[arg(long, default_value = "10000")]
        peer_events: usize,
        /// Concurrent workers (the subscriber's default).
        #[arg(long, default_value = "4")]
        workers: usize,
        /// Events per transaction of the container worker under backlog: the
        /// subscriber's default `--batch-max-messages`.
        #[arg(long, default_value_t = 100)]
        container_batch: usize,
        /// Events per Lambda invocation: the BatchSize of the SQS event source mapping
        /// in deploy/template.yaml.
        #[arg(long, default_value = "100")]
        lambda_batch: usize,
        /// Rows per statement of the ceiling.
        #[arg(long, default_value = "10000")]
        ceiling_rows: usize,
    },
    /// The real binaries on the emulators at fixed write rates.
    Pipeline {
        /// Write rates, per second.
        #[arg(long, value_delimiter = ',', default_value = "50,200")]
        rates: Vec<u32>,
        /// Measured seconds per rate.
        #[arg(long, default_value = "30")]
        seconds: u64,
        /// Seconds of writing before the window opens.
        #[arg(long, default_value = "5")]
        warmup_secs: u64,
        #[arg(long, default_value = "500")]
        keys: usize,
        /// Directory of the `publisher` and `subscriber` binaries (default: this
        /// binary's own, so a release bench runs release binaries).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value = "1000")]
        raw_messages: usize,
    },
}

/// A random lowercase id for scratch names.
pub(crate) fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(runtime::telemetry::LogArgs::default());
    // Nothing a benchmark does needs finishing: on the first signal it stops at once
    // (its scratch database is dropped on the next run, its child processes with it);
    // a second signal exits 130 as in every binary.
    let shutdown = runtime::shutdown::install(runtime::shutdown::ShutdownNotes {
        draining: "Benchmark interrupted; stopping.",
        forced: "Second signal, exiting now.",
    });
    let work = async {
        match cli.command {
            Bench::Apply {
                events,
                keys,
                peer_events,
                workers,
                container_batch,
                lambda_batch,
                ceiling_rows,
            } => {
                apply_bench::run(&apply_bench::ApplyArgs {
                    admin_url: cli.database_url,
                    events,
                    keys,
                    peer_events,
                    workers,
                    container_batch,
                    lambda_batch,
                    ceiling_rows,
                })
                .await
            }
            Bench::Pipeline {
                rates,
                seconds,
                warmup_secs,
                keys,
                bin_dir,
                raw_messages,
            } => {
                let bin_dir = bin_dir.unwrap_or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|p| p.parent().map(PathBuf::from))
                        .unwrap_or_else(|| PathBuf::from("target/release"))
                });
                pipeline::run(&pipeline::PipelineArgs {
                    admin_url: cli.database_url,
                    rates,
                    seconds,
                    warmup_secs,
                    keys,
                    bin_dir,
                    raw_messages,
                })
                .await
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = shutdown.cancelled() => {
            eprintln!("error: interrupted");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
