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
    Apply(apply_bench::ApplyArgs),
    /// The real binaries on the emulators at fixed write rates.
    Pipeline(pipeline::PipelineArgs),
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
            Bench::Apply(args) => apply_bench::run(&cli.database_url, &args).await,
            Bench::Pipeline(args) => pipeline::run(&cli.database_url, &args).await,
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
