//! `replay`: the replication's status, snapshot backfill, DLQ redrive, republish,
//! verify and repair. See `replay --help`.

use std::process::ExitCode;
use std::time::Duration;

use contracts::SchemaVersion;
use replay::cli::{Cli, Command, DlqArgs, RepublishArgs, SnapshotArgs, StatusArgs, VerifyArgs};
use replay::{dlq, republish, snapshot, verify};
use runtime::aws::Clients;
use runtime::shutdown::ShutdownNotes;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

/// A setting that is wrong (a table or queue that does not exist, an unusable state
/// file): reported like a bad flag, with status 2.
const BAD_SETTING: u8 = runtime::cli::BAD_SETTING;
const FAILED: u8 = 1;
/// Exit status of a command stopped by a signal (128 + SIGINT), whether it drained (the
/// first signal) or not (the second).
const INTERRUPTED: u8 = 130;
const _: () = assert!(INTERRUPTED as i32 == runtime::shutdown::FORCED_EXIT_STATUS);

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(cli.log);
    // The first signal: a snapshot finishes its pages in flight and saves its state, a
    // redrive stops after its batch in flight and releases what it holds, and the
    // command exits 130. A second signal exits 130 at once (the state file then holds
    // the last page saved; what was in flight is sent again on resume).
    let shutdown = runtime::shutdown::install(ShutdownNotes {
        draining: "Stopping after the work in flight; a second signal exits at once.",
        forced: "Second signal, exiting now; the work in flight is redone by the next run.",
    });
    let aws = runtime::aws::sdk_config(&cli.aws).await;
    let clients = Clients::new(&aws);
    let code = match cli.command {
        Command::Status(args) => run_status(&clients, args, cli.json).await,
        Command::Snapshot(args) => run_snapshot(&clients, args, cli.json, &shutdown).await,
        Command::Dlq(args) => run_dlq(&clients, args, cli.json, &shutdown).await,
        Command::Verify(args) => run_verify(&clients, args, cli.json, &shutdown).await,
        Command::Republish(args) => run_republish(&aws, &clients, args, cli.json, &shutdown).await,
    };
    ExitCode::from(code)
}

fn schema(n: u8) -> SchemaVersion {
    SchemaVersion::from_number(u64::from(n)).unwrap_or(contracts::CURRENT_SCHEMA_VERSION)
}

fn print_json<T: Serialize>(report: &T) {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("error: cannot write the report as JSON: {e}"),
    }
}

/// A pool on the analytics store with the subscriber's session settings, or the exit
/// status after the one line that says why: [`BAD_SETTING`] for a refused setting,
/// `unreachable` when the store does not answer.
async fn connect_store(
    database: &replay::cli::DatabaseArgs,
    connections: u32,
    unreachable: u8,
) -> Result<sqlx::PgPool, u8> {
    let url = &database.database_url;
    let options = database.check_tls().and_then(|_| {
        url.consumer_connect_options()
            .map_err(|e| format!("error: invalid value for --database-url (env DATABASE_URL): {e}"))
    });
    let options = options.map_err(|line| {
        eprintln!("{line}");
        BAD_SETTING
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await;
    pool.map_err(|e| {
        eprintln!(
            "error: cannot connect to the analytics store {}: {e}",
            url.redacted()
        );
        unreachable
    })
}

/// `replay status`: exit 0 once shown, in sync or not (scripts read `in_sync`); 1 when
/// SQS or PostgreSQL cannot be read.
async fn run_status(clients: &Clients, args: StatusArgs, json: bool) -> u8 {
    let pool = match connect_store(&args.database, 1, FAILED).await {
        Ok(pool) => pool,
        Err(code) => return code,
    };
    let options = args.options();
    let gathered = tokio::time::timeout(
        subscriber::status::STATUS_TIMEOUT,
        subscriber::status::gather(&options, clients.sqs.clone(), &pool),
    )
    .await;
    let status = match gathered {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            eprintln!("error: {}", runtime::report::error_chain(&e));
            return FAILED;
        }
        Err(_) => {
            eprintln!(
                "error: status took longer than {} s",
                subscriber::status::STATUS_TIMEOUT.as_secs()
            );
            return FAILED;
        }
    };
    if json {
        // Pretty, as `subscriber status --json` printed it: one object, read whole.
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot write the status as JSON: {e}");
                return FAILED;
            }
        }
    } else {
        print!("{}", subscriber::status::render(&status));
    }
    0
}

async fn run_snapshot(
    clients: &Clients,
    args: SnapshotArgs,
    json: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> u8 {
    let options = snapshot::Options {
        table: args.table,
        target: args.to,
        segments: args.segments,
        rate: args.rate.map(|r| r.get()),
        page_size: args.page_size.map(|p| p.get()),
        state_file: args.state_file,
        dry_run: args.dry_run,
        schema_version: schema(args.schema_version),
        progress_every: Duration::from_secs(args.progress_secs),
    };
    let report = match snapshot::run(clients, &options, shutdown).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                snapshot::SnapshotError::Scan { .. } => FAILED,
                _ => BAD_SETTING,
            };
        }
    };
    if json {
        print_json(&report);
    } else {
        let verb = if report.dry_run { "would send" } else { "sent" };
        println!("snapshot of {} → {}", report.table, report.target);
        println!(
            "  items read {}, events {verb} {}, failed {} in {:.1} s ({:.0} items/s){}",
            report.items_read,
            report.events_sent,
            report.failed,
            report.elapsed_secs,
            report.items_per_sec,
            if report.dry_run { " [dry run]" } else { "" }
        );
        if report.resumed {
            println!(
                "  over all runs of the state file: items read {}, events sent {}, failed {}",
                report.total_items_read, report.total_events_sent, report.total_failed
            );
        }
        for (key, why) in &report.failures {
            println!("  failed: {key}: {why}");
        }
        if report.interrupted {
            println!("  interrupted: run the same command again to resume");
        } else if report.complete {
            println!("  complete");
        }
    }
    if report.interrupted || !report.complete {
        INTERRUPTED
    } else if report.failed > 0 {
        FAILED
    } else {
        0
    }
}

async fn run_dlq(
    clients: &Clients,
    args: DlqArgs,
    json: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> u8 {
    let options = dlq::Options {
        dlq_url: args.dlq_url,
        queue_url: args.queue_url,
        reasons: args.reasons,
        dry_run: args.dry_run,
        rate: args.rate.map(|r| r.get()),
        max: args.max.map(|m| m.get() as u64),
        method: args.method,
        hold: Duration::from_secs(60),
        in_flight_wait: Duration::from_secs(args.in_flight_wait_secs),
    };
    let print = |s: &dlq::Seen| {
        if !json {
            println!(
                "{:<10} {}  reason={}  key={}  event_type={}",
                s.outcome,
                s.message_id,
                s.reason,
                s.key.as_deref().unwrap_or("?"),
                s.event_type.as_deref().unwrap_or("?")
            );
        }
    };
    let report = match dlq::run(&clients.sqs, &options, shutdown, print).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                dlq::DlqError::Queue { .. } => BAD_SETTING,
                dlq::DlqError::Sqs { .. } => FAILED,
            };
        }
    };
    if json {
        print_json(&report);
    } else {
        let verb = if report.dry_run {
            "would move"
        } else {
            "moved"
        };
        println!(
            "dlq redrive ({}): examined {}, {verb} {}, kept {}, failed {}",
            report.method, report.examined, report.moved, report.kept, report.failed
        );
        for (reason, n) in &report.by_reason {
            println!("  {verb} {n} parked for {reason}");
        }
        if report.remaining > 0 {
            println!(
                "  remaining: about {} messages were in flight elsewhere and not examined; run again",
                report.remaining
            );
        }
    }
    if shutdown.is_cancelled() {
        INTERRUPTED
    } else if report.failed > 0 || report.remaining > 0 {
        FAILED
    } else {
        0
    }
}

async fn run_verify(
    clients: &Clients,
    args: VerifyArgs,
    json: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> u8 {
    let pool = match connect_store(&args.database, 2, BAD_SETTING).await {
        Ok(pool) => pool,
        Err(code) => return code,
    };
    let options = verify::Options {
        table: args.table,
        settle: Duration::from_secs(args.settle_secs),
        sample: args.sample,
        max_held: args.max_held.get(),
        page_size: args.page_size.map(|p| p.get()),
        repair_queue: args.repair,
        repair_timeout: Duration::from_secs(args.repair_timeout_secs),
        schema_version: schema(args.schema_version),
        progress_every: Duration::from_secs(args.progress_secs),
    };
    let report = match verify::run(clients, &pool, &options, shutdown).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                verify::VerifyError::Table { .. } => BAD_SETTING,
                verify::VerifyError::Interrupted => INTERRUPTED,
                _ => FAILED,
            };
        }
    };
    if json {
        print_json(&report);
    } else {
        print_verify(&report);
    }
    let left = match &report.repair {
        Some(r) => r.remaining.values().sum::<u64>() + report.not_held,
        None => report.drifted(),
    };
    if left == 0 { 0 } else { FAILED }
}

fn print_verify(report: &verify::Report) {
    let status = if report.drifted() == 0 {
        "in sync"
    } else {
        "DRIFT"
    };
    println!(
        "verify {}: {status}; source items {}, live analytics rows {}",
        report.table, report.source_items, report.store_live_rows
    );
    for (kind, n) in &report.drift {
        println!("  {kind:<20} {n}");
    }
    if report.settled_in_flight > 0 {
        println!(
            "  ({} keys differed during the check and were in sync at the re-check)",
            report.settled_in_flight
        );
    }
    if report.not_held > 0 {
        println!(
            "  ({} drifted keys beyond --max-held were counted, not re-checked or repaired)",
            report.not_held
        );
    }
    for d in &report.sample {
        println!("  {}", describe(d));
    }
    if let Some(r) = &report.repair {
        let left: u64 = r.remaining.values().sum();
        println!(
            "repair: {} events sent; after {:.1} s {}",
            r.events_sent,
            r.waited_secs,
            if left == 0 {
                "in sync".to_owned()
            } else {
                format!("{left} keys still drifted")
            }
        );
        for (kind, n) in &r.remaining {
            println!("  {kind:<20} {n}");
        }
        for d in &r.remaining_sample {
            println!("  {}", describe(d));
        }
    }
}

fn describe(d: &replay::drift::Drift) -> String {
    let source = d
        .source
        .map(|p| format!("{}/{}", p.generation, p.version))
        .unwrap_or_else(|| "-".into());
    let stored = d
        .stored
        .map(|s| {
            format!(
                "{}/{}{}",
                s.position.generation,
                s.position.version,
                if s.deleted { " (tombstone)" } else { "" }
            )
        })
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "{:<20} {}  source {source}  analytics {stored}",
        d.kind.as_str(),
        d.key
    );
    if let Some(detail) = &d.detail {
        line.push_str(&format!("  ({detail})"));
    }
    line
}

async fn run_republish(
    aws: &aws_config::SdkConfig,
    clients: &Clients,
    args: RepublishArgs,
    json: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> u8 {
    let options = republish::Options {
        table: args.table,
        target: args.to,
        failure_queue_url: args.failure_queue_url,
        invocation_records: args.invocation_records,
        bucket: args.bucket.map(|b| (b, args.prefix)),
        dry_run: args.dry_run,
        schema_version: schema(args.schema_version),
        hold: Duration::from_secs(args.hold_secs),
    };
    let print = |s: &republish::Seen| {
        if !json {
            println!(
                "{:<16} {}  key={}{}",
                s.outcome,
                s.source,
                s.key.as_deref().unwrap_or("?"),
                s.why
                    .as_deref()
                    .map(|w| format!("  ({w})"))
                    .unwrap_or_default()
            );
        }
    };
    let s3 = options.bucket.as_ref().map(|_| {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(aws)
                .force_path_style(args.s3_path_style)
                .build(),
        )
    });
    let report = match republish::run(clients, s3.as_ref(), &options, shutdown, print).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return BAD_SETTING;
        }
    };
    if json {
        print_json(&report);
    } else {
        println!(
            "republish: examined {}, {} {}, superseded {}, kept {}",
            report.examined,
            if report.dry_run {
                "would republish"
            } else {
                "republished"
            },
            report.republished,
            report.superseded,
            report.kept
        );
    }
    if shutdown.is_cancelled() {
        INTERRUPTED
    } else if report.kept > 0 {
        FAILED
    } else {
        0
    }
}
