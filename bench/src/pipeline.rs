//! The whole pipeline on the emulators at a fixed write rate: the real `publisher` and
//! `subscriber` binaries, each talking to the emulators through a counting proxy.
//!
//! Per rate it reports AWS requests per replicated event (by process and operation),
//! end-to-end latency (the service's write → the row committed in PostgreSQL), CPU per
//! event of each process from its own rusage (`/proc/<pid>/stat`), and the subscriber's
//! RSS; and, from the same run, the emulator's own raw SQS figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use rand::SeedableRng;
use runtime::aws::Clients;
use stack::bootstrap::{Names, bootstrap};
use stack::demo::{ProfileWriter, Traffic};
use time::OffsetDateTime;
use tokio::process::Command;

use crate::apply_bench::ScratchDb;
use crate::proxy::Proxy;

/// Settings of a pipeline run.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Write rates, per second.
    #[arg(long, value_delimiter = ',', default_value = "50,200")]
    pub rates: Vec<u32>,
    /// Length of the measured window at each rate, in seconds.
    #[arg(long, default_value = "30")]
    pub seconds: u64,
    /// Seconds of writing before the window opens (start-up, first polls, connection
    /// set-up).
    #[arg(long, default_value = "5")]
    pub warmup_secs: u64,
    /// Distinct profiles the writer creates before mostly editing.
    #[arg(long, default_value = "500")]
    pub keys: usize,
    /// Directory of the `publisher` and `subscriber` binaries (default: this binary's
    /// own, so a release bench runs release binaries).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Messages the raw SQS drain measures.
    #[arg(long, default_value = "1000")]
    pub raw_messages: usize,
}

impl PipelineArgs {
    /// Where the `publisher` and `subscriber` binaries are.
    fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("target/release"))
        })
    }
}

/// Runs every rate and prints the tables.
pub async fn run(admin_url: &str, args: &PipelineArgs) -> Result<()> {
    for var in [
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
        "AWS_ENDPOINT_URL_SNS",
        "AWS_ENDPOINT_URL_SQS",
    ] {
        ensure!(
            std::env::var_os(var).is_some(),
            "{var} is not set: start the emulators (scripts/env-up.sh) and source their env"
        );
    }
    let config = runtime::aws::default_sdk_config().await;
    let clients = Clients::new(&config);

    let mut results = Vec::new();
    for &rate in &args.rates {
        let raw = raw_sqs(&clients.sqs, rate, args.raw_messages).await?;
        let ours = one_rate(admin_url, args, &clients, rate).await?;
        results.push((rate, raw, ours));
    }
    print_tables(&results);
    Ok(())
}

/// The emulator's own SQS figures, measured with the plain SDK on a fresh queue.
#[derive(Debug, Clone)]
struct Raw {
    /// Send → receive latency of single messages sent at the bench's rate.
    latency_ms: Percentiles,
    /// Receive + delete-batch round trips per second while draining a backlog of
    /// `drained` messages with 4 workers, and the messages per second that gives.
    round_trips_per_s: f64,
    messages_per_s: f64,
    drained: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    n: usize,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: v[v.len() - 1],
        n: v.len(),
    }
}

async fn raw_sqs(sqs: &aws_sdk_sqs::Client, rate: u32, drain: usize) -> Result<Raw> {
    let name = format!("bench-raw-{}", crate::random_id());
    let queue = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await?
        .queue_url
        .context("queue url")?;

    // Latency: one message every 1/rate s for 5 s, one long-polling receiver.
    let count = (rate as usize) * 5;
    let start = Instant::now();
    let receiver = {
        let sqs = sqs.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let deadline = Instant::now() + Duration::from_secs(60);
            while latencies.len() < count && Instant::now() < deadline {
                let out = sqs
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await?;
                let now = start.elapsed().as_secs_f64();
                let messages = out.messages.unwrap_or_default();
                let mut entries = Vec::new();
                for (i, m) in messages.iter().enumerate() {
                    let sent: f64 = m.body().unwrap_or("0").parse().unwrap_or(0.0);
                    latencies.push((now - sent) * 1000.0);
                    entries.push(
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_receipt_handle(m.receipt_handle.clone())
                            .build()?,
                    );
                }
                if !entries.is_empty() {
                    sqs.delete_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(entries))
                        .send()
                        .await?;
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    for _ in 0..count {
        tick.tick().await;
        sqs.send_message()
            .queue_url(&queue)
            .message_body(start.elapsed().as_secs_f64().to_string())
            .send()
            .await?;
    }
    let latency_ms = percentiles(receiver.await??);

    // Drain rate: a backlog, then 4 workers receiving and batch-deleting.
    for chunk in 0..drain.div_ceil(10) {
        let entries = (0..10)
            .map(|i| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(format!("{chunk}-{i}"))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.send_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries))
            .send()
            .await?;
    }
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let sqs = sqs.clone();
        let queue = queue.clone();
        workers.spawn(async move {
            let (mut trips, mut got) = (0usize, 0usize);
            loop {
                let out = sqs
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(10)
                    .wait_time_seconds(0)
                    .send()
                    .await?;
                let messages = out.messages.unwrap_or_default();
                trips += 1;
                if messages.is_empty() {
                    return Ok::<_, anyhow::Error>((trips, got));
                }
                got += messages.len();
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_receipt_handle(m.receipt_handle.clone())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                sqs.delete_message_batch()
                    .queue_url(&queue)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
            }
        });
    }
    let (mut trips, mut drained) = (0, 0);
    while let Some(joined) = workers.join_next().await {
        let (t, g) = joined??;
        trips += t;
        drained += g;
    }
    let elapsed = start.elapsed().as_secs_f64();
    sqs.delete_queue().queue_url(&queue).send().await.ok();
    Ok(Raw {
        latency_ms,
        round_trips_per_s: trips as f64 / elapsed,
        messages_per_s: drained as f64 / elapsed,
        drained,
    })
}

/// What one rate produced.
#[derive(Debug, Clone)]
struct Ours {
    target_rate: u32,
    achieved_rate: f64,
    events_in_window: u64,
    /// Requests in the window, by "process Operation".
    requests: BTreeMap<String, u64>,
    latency_ms: Percentiles,
    publisher_cpu_us_per_event: f64,
    subscriber_cpu_us_per_event: f64,
    publisher_rss_mb: f64,
    subscriber_rss_mb: f64,
    subscriber_hwm_mb: f64,
}

async fn one_rate(
    admin_url: &str,
    args: &PipelineArgs,
    clients: &Clients,
    rate: u32,
) -> Result<Ours> {
    let id = crate::random_id();
    let names = Names::scratch("bench-", &id);
    let r = bootstrap(clients, &names).await.context("bootstrap")?;
    let db = ScratchDb::create(admin_url).await?;
    let result = measure(args, clients, rate, &r, &db).await;
    db.drop_it().await?;
    result
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

async fn measure(
    args: &PipelineArgs,
    clients: &Clients,
    rate: u32,
    r: &stack::bootstrap::Resources,
    db: &ScratchDb,
) -> Result<Ours> {
    let pub_ddb = Proxy::start(&env("AWS_ENDPOINT_URL_DYNAMODB")?).await?;
    let pub_streams = Proxy::start(&env("AWS_ENDPOINT_URL_DYNAMODB_STREAMS")?).await?;
    let pub_sns = Proxy::start(&env("AWS_ENDPOINT_URL_SNS")?).await?;
    let pub_sqs = Proxy::start(&env("AWS_ENDPOINT_URL_SQS")?).await?;
    let sub_sqs = Proxy::start(&env("AWS_ENDPOINT_URL_SQS")?).await?;
    let counted = [
        ("publisher", &pub_ddb),
        ("publisher", &pub_streams),
        ("publisher", &pub_sns),
        ("publisher", &pub_sqs),
        ("subscriber", &sub_sqs),
    ];
    let snapshot = || {
        let mut all = BTreeMap::new();
        for (process, proxy) in counted {
            for (op, n) in proxy.counts.snapshot() {
                *all.entry(format!("{process} {op}")).or_insert(0) += n;
            }
        }
        all
    };

    let mut publisher = Command::new(args.bin_dir().join("publisher"));
    publisher
        .args(["--table", &r.table, "--topic-arn", &r.topic_arn])
        .args(["--checkpoint-table", &r.checkpoint_table])
        .args(["--failure-queue-url", &r.failure_queue_url])
        .env("AWS_ENDPOINT_URL_DYNAMODB", &pub_ddb.url)
        .env("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", &pub_streams.url)
        .env("AWS_ENDPOINT_URL_SNS", &pub_sns.url)
        .env("AWS_ENDPOINT_URL_SQS", &pub_sqs.url);
    let mut subscriber = Command::new(args.bin_dir().join("subscriber"));
    subscriber
        .arg("run")
        .env("SUBSCRIBER_QUEUE_URL", &r.queue_url)
        .env("SUBSCRIBER_DLQ_URL", &r.dlq_url)
        .env("DATABASE_URL", db.url())
        .env("AWS_ENDPOINT_URL_SQS", &sub_sqs.url);
    let mut children = Vec::new();
    for cmd in [&mut publisher, &mut subscriber] {
        cmd.env("TRIBUTARY_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("spawning a binary")?);
    }
    let [pub_child, sub_child] = &mut children[..] else {
        bail!("two children");
    };
    let pub_pid = pub_child.id().context("publisher pid")?;
    let sub_pid = sub_child.id().context("subscriber pid")?;

    // The writer: WRITERS concurrent tasks, each its own keys at rate / WRITERS, so one
    // slow write does not hold the rate down.
    let mut writers: Vec<(ProfileWriter, Traffic)> = (0..WRITERS)
        .map(|_| {
            (
                ProfileWriter::new(clients.dynamodb.clone(), r.table.clone()),
                Traffic::new(&format!("user-{}", crate::random_id())),
            )
        })
        .collect();
    let per_writer = f64::from(rate) / WRITERS as f64;
    let keys = args.keys.div_ceil(WRITERS);
    let written =
        |w: &[(ProfileWriter, Traffic)]| -> u64 { w.iter().map(|(_, t)| t.stats.total()).sum() };

    let warmup_end = Instant::now() + Duration::from_secs(args.warmup_secs);
    write_until(&mut writers, per_writer, keys, warmup_end).await?;
    let (t0, wall0, req0) = (Instant::now(), OffsetDateTime::now_utc(), snapshot());
    let (pcpu0, scpu0) = (cpu_secs(pub_pid)?, cpu_secs(sub_pid)?);
    let written0 = written(&writers);
    let window_end = t0 + Duration::from_secs(args.seconds);
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < window_end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(mb) = rss_mb(sub_pid, "VmRSS") {
                samples.push(mb);
            }
        }
        samples
    });
    write_until(&mut writers, per_writer, keys, window_end).await?;
    let rss_samples = sampler.await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let wall1 = OffsetDateTime::now_utc();
    let total = written(&writers);
    let written = total - written0;

    // Until what was written in the window is applied: the requests and CPU it took.
    let total = i64::try_from(total)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.profile_changes")
            .fetch_one(db.pool_ref())
            .await?;
        if applied >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {applied} of {total} changes applied after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req1 = snapshot();
    let (pcpu1, scpu1) = (cpu_secs(pub_pid)?, cpu_secs(sub_pid)?);
    let publisher_rss_mb = rss_mb(pub_pid, "VmRSS")?;
    let subscriber_rss_mb = rss_samples.iter().copied().fold(0.0, f64::max);
    let subscriber_hwm_mb = rss_mb(sub_pid, "VmHWM")?;
    for child in &mut children {
        child.kill().await.ok();
    }

    // Invariants: one history row per change written, live rows and tombstones as the
    // writer left them.
    let (live, tombstones): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted)
         FROM analytics.user_profiles",
    )
    .fetch_one(db.pool_ref())
    .await?;
    let source_live: usize = writers.iter().map(|(_, t)| t.live.len()).sum();
    let source_deleted: usize = writers.iter().map(|(_, t)| t.deleted.len()).sum();
    ensure!(
        live as usize == source_live && tombstones as usize == source_deleted,
        "store has {live} live and {tombstones} deleted, the source {source_live} and {source_deleted}"
    );

    // Latency of the window's upserts: the service's `updated_at` (occurred_at) → the
    // apply's transaction time (applied_at). Deletes are left out: their occurred_at is
    // the stream's approximate creation time, which DynamoDB Local rounds to the minute.
    let latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM applied_at - occurred_at) * 1000)::float8
         FROM analytics.profile_changes
         WHERE event_type = 'profile.upserted' AND occurred_at >= $1 AND occurred_at < $2",
    )
    .bind(wall0)
    .bind(wall1)
    .fetch_all(db.pool_ref())
    .await?;

    let requests: BTreeMap<String, u64> = req1
        .iter()
        .map(|(op, n)| (op.clone(), n - req0.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let per_event = |cpu: f64| cpu * 1e6 / written as f64;
    Ok(Ours {
        target_rate: rate,
        achieved_rate: written as f64 / elapsed,
        events_in_window: written,
        requests,
        latency_ms: percentiles(latencies),
        publisher_cpu_us_per_event: per_event(pcpu1 - pcpu0),
        subscriber_cpu_us_per_event: per_event(scpu1 - scpu0),
        publisher_rss_mb,
        subscriber_rss_mb,
        subscriber_hwm_mb,
    })
}

/// Concurrent writer tasks of the pipeline bench.
const WRITERS: usize = 4;

/// Runs every writer at `rate` per second until `until`.
async fn write_until(
    writers: &mut [(ProfileWriter, Traffic)],
    rate: f64,
    keys: usize,
    until: Instant,
) -> Result<()> {
    let tasks = writers.iter_mut().map(|(writer, traffic)| async move {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < until {
            tick.tick().await;
            traffic.step(writer, &mut rng, keys, true).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    for result in futures::future::join_all(tasks).await {
        result?;
    }
    Ok(())
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; count from after its ')'.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let ticks = clock_ticks();
    Ok((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `/proc/<pid>/status` memory line (`VmRSS`, `VmHWM`), in MB.
fn rss_mb(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    let kb: f64 = line.split_whitespace().nth(1).context("a value")?.parse()?;
    Ok(kb / 1024.0)
}

fn print_tables(results: &[(u32, Raw, Ours)]) {
    println!(
        "## End-to-end latency (service write → row committed), real binaries on the emulators"
    );
    println!();
    println!(
        "| writes/s (target → achieved) | events | p50 ms | p95 ms | p99 ms | max ms | emulator raw SQS send→receive p50 / p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (rate, raw, ours) in results {
        let l = ours.latency_ms;
        println!(
            "| {rate} → {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} (n={}) |",
            ours.achieved_rate,
            l.n,
            l.p50,
            l.p95,
            l.p99,
            l.max,
            raw.latency_ms.p50,
            raw.latency_ms.p99,
            raw.latency_ms.n
        );
    }
    println!();
    println!("## AWS requests per replicated event (counted at the wire, SDK retries included)");
    println!();
    let ops: std::collections::BTreeSet<&String> = results
        .iter()
        .flat_map(|(_, _, o)| o.requests.keys())
        .collect();
    print!("| process operation |");
    for (rate, _, _) in results {
        print!(" {rate}/s: requests | per event |");
    }
    println!();
    print!("|---|");
    for _ in results {
        print!("---:|---:|");
    }
    println!();
    for op in &ops {
        print!("| {op} |");
        for (_, _, o) in results {
            let n = o.requests.get(*op).copied().unwrap_or(0);
            print!(" {n} | {:.3} |", n as f64 / o.events_in_window as f64);
        }
        println!();
    }
    print!("| **total** |");
    for (_, _, o) in results {
        let n: u64 = o.requests.values().sum();
        print!(" {n} | **{:.3}** |", n as f64 / o.events_in_window as f64);
    }
    println!();
    println!();
    println!("## CPU and memory (from each process's own /proc rusage, over the window)");
    println!();
    println!(
        "| writes/s | publisher µs/event | subscriber µs/event | together µs/event | publisher RSS MB | subscriber RSS MB (max sampled) | subscriber peak RSS MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (rate, _, o) in results {
        println!(
            "| {rate} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            o.publisher_cpu_us_per_event,
            o.subscriber_cpu_us_per_event,
            o.publisher_cpu_us_per_event + o.subscriber_cpu_us_per_event,
            o.publisher_rss_mb,
            o.subscriber_rss_mb,
            o.subscriber_hwm_mb
        );
    }
    println!();
    println!("## The emulator's own SQS rate (same run, plain SDK, fresh queue)");
    println!();
    println!("| before rate | backlog drained | receive+delete round trips/s | messages/s |");
    println!("|---|---:|---:|---:|");
    for (rate, raw, o) in results {
        println!(
            "| {rate}/s (target {}) | {} | {:.0} | {:.0} |",
            o.target_rate, raw.drained, raw.round_trips_per_s, raw.messages_per_s
        );
    }
}
