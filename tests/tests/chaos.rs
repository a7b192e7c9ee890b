//! The chaos run: real traffic through the real binaries while the parts are broken on
//! purpose, then a checker that compares every key of the source with the store.
//!
//! A writer drives N mutations over K keys (creates, updates, deletes, re-creates)
//! into a DynamoDB Local table; the real `publisher` and `subscriber` (several workers)
//! run as processes. Meanwhile the subscriber is `kill -9`ed and restarted, so is the
//! publisher, a fraction of the published messages is sent to the queue again at once
//! (duplicates) and some old ones again late (reordering), and the PostgreSQL server —
//! a private cluster of this test, never the machine's shared one — crashes and comes
//! back mid-run, the publisher is paused (SIGSTOP) past its lease while a successor
//! takes over, then woken, and SNS and SQS become unreachable to the binaries for 5 s (a proxy
//! in front of the emulator cuts every connection). Throughout, a second, old publisher (schema v1, its own checkpoints)
//! publishes every change again as v1, as during a rolling deploy, so each change
//! reaches the store under both versions in no fixed order; and the queue's visibility
//! timeout is short (`TRIBUTARY_CHAOS_VISIBILITY_SECS`, 6), so a batch slowed by the
//! faults outlives it and its messages are handed to another worker mid-apply. When the
//! writer is done and the pipeline has drained, the checker
//! reads the whole DynamoDB stream (the source of truth for "what changed") and prints
//! `drift`, `lost`, `history duplicates`, `parked` with reasons, and every fault
//! injected; the test fails unless drift, loss, duplicates and parked are all 0 (the
//! traffic holds no poison: anything parked is a healthy message lost to the DLQ).
//!
//! Scale from the environment (defaults are CI's small run, about 2 minutes):
//! `TRIBUTARY_CHAOS_MUTATIONS` (400), `TRIBUTARY_CHAOS_KEYS` (40), `TRIBUTARY_CHAOS_RATE`
//! (mutations/s, 20), `TRIBUTARY_CHAOS_WORKERS` (4), `TRIBUTARY_CHAOS_SUBSCRIBER_KILLS`
//! (10), `TRIBUTARY_CHAOS_PUBLISHER_KILLS` (3), `TRIBUTARY_CHAOS_DUPLICATE_PERCENT` (10),
//! `TRIBUTARY_CHAOS_LATE_PERCENT` (5), `TRIBUTARY_CHAOS_VISIBILITY_SECS` (6),
//! `TRIBUTARY_CHAOS_SEED` (random, printed).
//! `scripts/chaos.sh` runs it at a chosen scale.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::outage::CutProxy;
use e2e::{PrivatePostgres, Stack, signal, stops_cleanly, terminate};
use publisher::record::{Origin, to_event};
use publisher::stream::{StartAt, StreamReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use stack::demo::{Traffic, TrafficPlan};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
struct Scale {
    mutations: u64,
    keys: usize,
    rate: u32,
    workers: usize,
    subscriber_kills: u32,
    publisher_kills: u32,
    duplicate_percent: u32,
    late_percent: u32,
    visibility_secs: u32,
    seed: u64,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

impl Scale {
    fn from_env() -> Scale {
        Scale {
            mutations: env("TRIBUTARY_CHAOS_MUTATIONS", 400),
            keys: env("TRIBUTARY_CHAOS_KEYS", 40),
            rate: env("TRIBUTARY_CHAOS_RATE", 20),
            workers: env("TRIBUTARY_CHAOS_WORKERS", 4),
            subscriber_kills: env("TRIBUTARY_CHAOS_SUBSCRIBER_KILLS", 10),
            publisher_kills: env("TRIBUTARY_CHAOS_PUBLISHER_KILLS", 3),
            duplicate_percent: env("TRIBUTARY_CHAOS_DUPLICATE_PERCENT", 10),
            late_percent: env("TRIBUTARY_CHAOS_LATE_PERCENT", 5),
            visibility_secs: env("TRIBUTARY_CHAOS_VISIBILITY_SECS", 6),
            seed: env("TRIBUTARY_CHAOS_SEED", rand::rng().random()),
        }
    }

    /// How long the writer takes, about.
    fn write_duration(&self) -> Duration {
        Duration::from_secs_f64(self.mutations as f64 / f64::from(self.rate.max(1)))
    }
}

/// What was done to the parts.
#[derive(Debug, Default)]
struct Faults {
    subscriber_kills: u32,
    publisher_kills: u32,
    postgres_restarts: u32,
    sns_sqs_outages: u32,
    publisher_pauses: u32,
    duplicates_sent: usize,
    late_sent: usize,
}

/// Copies of every published message (the stack's tap queue), with a fraction sent to
/// the subscriber's queue again at once.
#[derive(Debug, Default)]
struct Tap {
    bodies: Vec<String>,
    duplicates_sent: usize,
}

/// Reads the tap queue until `stop`, keeping every body and re-sending
/// `duplicate_percent` of them at once.
async fn run_tap(
    stack: Arc<Stack>,
    tap: Arc<Mutex<Tap>>,
    duplicate_percent: u32,
    seed: u64,
    stop: CancellationToken,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.is_cancelled() {
        let msgs = stack.receive(&stack.tap_queue_url).await?;
        if msgs.is_empty() {
            continue;
        }
        stack.delete_batch(&stack.tap_queue_url, &msgs).await?;
        let bodies: Vec<String> = msgs.into_iter().filter_map(|m| m.body).collect();
        let dups: Vec<String> = bodies
            .iter()
            .filter(|_| rng.random_range(0..100) < duplicate_percent)
            .cloned()
            .collect();
        stack.send_bodies(&dups).await?;
        let mut tap = tap.lock().unwrap();
        tap.duplicates_sent += dups.len();
        tap.bodies.extend(bodies);
    }
    Ok(())
}

/// Distinct events seen published as schema v1 and as v2.
fn published_per_version(tap: &Tap) -> (usize, usize) {
    let mut seen: [HashSet<String>; 2] = Default::default();
    for body in &tap.bodies {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        let id = v["event_id"].as_str().unwrap_or_default().to_owned();
        match v["schema_version"].as_u64() {
            Some(1) => seen[0].insert(id),
            Some(2) => seen[1].insert(id),
            _ => false,
        };
    }
    (seen[0].len(), seen[1].len())
}

/// `count` moments spread over `span`, each jittered within its slot, sorted.
fn moments(rng: &mut StdRng, count: u32, span: Duration) -> Vec<Duration> {
    (0..count)
        .map(|i| {
            let slot = span.as_secs_f64() / f64::from(count.max(1));
            Duration::from_secs_f64(slot * (f64::from(i) + rng.random_range(0.2..0.8)))
        })
        .collect()
}

async fn kill9(child: &mut Child) -> Result<()> {
    child.start_kill()?; // SIGKILL
    child.wait().await?;
    Ok(())
}

/// One source change: `(key, generation, version, deleted)`.
type Change = (String, i64, i64, bool);

/// Every change the stream holds that the publisher turns into an event: the source
/// of truth for what the history must contain, exactly once each.
async fn stream_changes(stack: &Stack) -> Result<(usize, HashSet<Change>)> {
    let reader = StreamReader::new(
        stack.clients.streams.clone(),
        stack.resources.stream_arn.clone(),
    );
    let origin = Origin {
        table: stack.resources.table.clone(),
        stream_arn: stack.resources.stream_arn.clone(),
    };
    let (_, shards) = reader.describe().await?;
    let mut records = 0;
    let mut changes = HashSet::new();
    for shard in shards {
        let mut it = Some(
            reader
                .iterator(&shard.shard_id, &StartAt::TrimHorizon)
                .await?,
        );
        while let Some(i) = it.take() {
            let batch = reader.get_records(&i).await?;
            if batch.records.is_empty() {
                break;
            }
            for record in &batch.records {
                records += 1;
                let event = to_event(record, &origin, time::OffsetDateTime::now_utc())
                    .map_err(|e| anyhow::anyhow!("the writer wrote a bad item: {e}"))?;
                if let Some(e) = event {
                    let deleted = e.change.profile().is_none();
                    changes.insert((e.key, e.position.generation, e.position.version, deleted));
                }
            }
            it = batch.next_iterator;
        }
    }
    Ok((records, changes))
}

async fn history(stack: &Stack) -> Result<HashMap<Change, i64>> {
    let rows = sqlx::query(
        "SELECT key, generation, version, deleted, count(*) AS n
         FROM analytics.profile_changes GROUP BY 1, 2, 3, 4",
    )
    .fetch_all(&stack.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (
                    r.try_get("key")?,
                    r.try_get("generation")?,
                    r.try_get("version")?,
                    r.try_get("deleted")?,
                ),
                r.try_get("n")?,
            ))
        })
        .collect()
}

/// Messages parked in a queue, by `tributary-reason`.
async fn parked(stack: &Stack, url: &str) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for m in stack
        .drain(url, Duration::from_secs(2), Duration::from_secs(120))
        .await?
    {
        let reason = e2e::message_attr_opt(&m, "tributary-reason")
            .unwrap_or_else(|| "none (redriven by maxReceiveCount)".into());
        *out.entry(reason).or_default() += 1;
    }
    Ok(out)
}

#[tokio::test]
async fn chaos_run_loses_nothing_and_applies_nothing_twice() -> Result<()> {
    let scale = Scale::from_env();
    eprintln!("chaos: {scale:?}");
    let started = Instant::now();
    let pg = PrivatePostgres::start().context("starting a private PostgreSQL cluster")?;
    let mut stack = Stack::on_server(pg.admin_url()).await?;
    // The binaries reach SNS and SQS through a proxy the run cuts for a while.
    let sns_sqs = CutProxy::start(&std::env::var("AWS_ENDPOINT_URL_SQS")?).await?;
    stack.sns_sqs_via = Some(sns_sqs.url.clone());
    let stack = Arc::new(stack);
    stack
        .clients
        .sqs
        .set_queue_attributes()
        .queue_url(&stack.resources.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            scale.visibility_secs.to_string(),
        )
        .send()
        .await
        .context("shortening the queue's visibility timeout")?;
    let workers = scale.workers.to_string();
    let sub_args = ["--workers", workers.as_str()];
    let mut subscriber = stack.spawn_subscriber(&sub_args)?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let v1_checkpoints = stack.create_checkpoint_table("v1").await?;
    let mut old_publisher =
        stack.spawn_publisher_on(&v1_checkpoints, &["--schema-version", "1"])?;

    let tap = Arc::new(Mutex::new(Tap::default()));
    let stop_tap = CancellationToken::new();
    let tap_task = tokio::spawn(run_tap(
        stack.clone(),
        tap.clone(),
        scale.duplicate_percent,
        scale.seed ^ 1,
        stop_tap.clone(),
    ));

    let writer_stack = stack.clone();
    let writer = tokio::spawn(async move {
        let mut traffic = Traffic::new("chaos");
        let mut rng = StdRng::seed_from_u64(scale.seed);
        let plan = TrafficPlan::new(scale.keys, scale.mutations).rate(scale.rate);
        traffic
            .run(
                &writer_stack.writer(),
                &mut rng,
                &plan,
                &CancellationToken::new(),
            )
            .await
            .map(|()| traffic)
    });

    // The fault schedule, spread over the writer's run.
    let mut rng = StdRng::seed_from_u64(scale.seed ^ 2);
    let span = scale.write_duration();
    let mut sub_kills = moments(&mut rng, scale.subscriber_kills, span);
    let mut pub_kills = moments(&mut rng, scale.publisher_kills, span);
    let mut pg_crash = Some(span / 2);
    let mut sns_sqs_outage = Some(span / 4);
    let mut publisher_pause = Some(span * 3 / 5);
    // A publisher paused past its lease, whose successor took over: woken, it must
    // neither move a checkpoint back nor lose a record.
    let mut zombie: Option<Child> = None;
    let mut late_rounds = vec![span / 2, span * 3 / 4];
    let mut faults = Faults::default();
    let t0 = Instant::now();
    loop {
        let now = t0.elapsed();
        if sub_kills.first().is_some_and(|t| *t <= now) {
            sub_kills.remove(0);
            kill9(&mut subscriber).await?;
            faults.subscriber_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
            subscriber = stack.spawn_subscriber(&sub_args)?;
        }
        if pub_kills.first().is_some_and(|t| *t <= now) {
            pub_kills.remove(0);
            kill9(&mut publisher).await?;
            faults.publisher_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
            publisher = stack.spawn_publisher(&[])?;
        }
        if pg_crash.is_some_and(|t| t <= now) {
            pg_crash = None;
            pg.crash()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            pg.restart()?;
            faults.postgres_restarts += 1;
        }
        if sns_sqs_outage.is_some_and(|t| t <= now) {
            sns_sqs_outage = None;
            // SNS and SQS unreachable for the binaries while the writer goes on.
            sns_sqs.cut();
            tokio::time::sleep(Duration::from_secs(5)).await;
            sns_sqs.restore();
            faults.sns_sqs_outages += 1;
        }
        if publisher_pause.is_some_and(|t| t <= now) {
            publisher_pause = None;
            signal(&publisher, "STOP")?;
            // The stack's publishers hold 3 s leases.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let successor = stack.spawn_publisher(&[])?;
            zombie = Some(std::mem::replace(&mut publisher, successor));
            tokio::time::sleep(Duration::from_secs(3)).await;
            signal(zombie.as_ref().expect("just set"), "CONT")?;
            faults.publisher_pauses += 1;
        }
        if late_rounds.first().is_some_and(|t| *t <= now) {
            late_rounds.remove(0);
            // Old messages arriving late: from the first half of what was published
            // so far, long after newer changes of the same keys were applied.
            let late: Vec<String> = {
                let tap = tap.lock().unwrap();
                let old = &tap.bodies[..tap.bodies.len() / 2];
                old.iter()
                    .filter(|_| rng.random_range(0..100) < scale.late_percent.max(1))
                    .cloned()
                    .collect()
            };
            stack.send_bodies(&late).await?;
            faults.late_sent += late.len();
        }
        let faults_left = !sub_kills.is_empty()
            || !pub_kills.is_empty()
            || pg_crash.is_some()
            || sns_sqs_outage.is_some()
            || publisher_pause.is_some();
        if writer.is_finished() && !faults_left && late_rounds.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let traffic = writer.await??;
    let writing = t0.elapsed();

    // Drain: until the store matches the source and every stream change has its
    // history row, or the bound passes (then the checker reports what is missing).
    let (records, changes) = stream_changes(&stack).await?;
    let bound = Duration::from_secs(180) + span;
    let drained = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let hist = history(&stack).await?;
        let depth = stack.queue_depth(&stack.resources.queue_url).await?;
        let (as_v1, as_v2) = published_per_version(&tap.lock().unwrap());
        if depth == 0
            && as_v1 >= records
            && as_v2 >= records
            && changes.iter().all(|c| hist.contains_key(c))
            && stack.drift().await?.is_empty()
        {
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            let published = tap.lock().unwrap().bodies.len();
            eprintln!(
                "chaos: draining {:.0?}: queue depth {depth}, history {} of {} changes, tapped {published} (v1 {as_v1}, v2 {as_v2})",
                drained.elapsed(),
                hist.len(),
                changes.len()
            );
        }
        if drained.elapsed() > bound {
            eprintln!("chaos: not drained after {bound:?}; checking anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_time = drained.elapsed();
    stop_tap.cancel();
    tap_task.await??;

    // The checker.
    let drift = stack.drift().await?;
    let hist = history(&stack).await?;
    let lost: Vec<&Change> = changes.iter().filter(|c| !hist.contains_key(*c)).collect();
    let duplicates: i64 = hist.values().map(|n| n - 1).sum();
    let unexplained: Vec<&Change> = hist.keys().filter(|c| !changes.contains(*c)).collect();
    let dlq = parked(&stack, &stack.resources.dlq_url).await?;
    let failures = parked(&stack, &stack.resources.failure_queue_url).await?;
    let (published, duplicates_sent, (as_v1, as_v2)) = {
        let tap = tap.lock().unwrap();
        (
            tap.bodies.len(),
            tap.duplicates_sent,
            published_per_version(&tap),
        )
    };
    faults.duplicates_sent = duplicates_sent;
    let stats = &traffic.stats;
    let report = [
        format!(
            "mutations {} over {} keys (creates {}, updates {}, deletes {}, re-creates {}) in {:.0?}, seed {}",
            stats.total(),
            scale.keys,
            stats.creates,
            stats.updates,
            stats.deletes,
            stats.recreates,
            writing,
            scale.seed
        ),
        format!(
            "faults: subscriber kill -9 {}, publisher kill -9 {}, postgres crash+restart {}, SNS/SQS outage (5 s) {}, publisher paused past its lease and taken over {}, duplicates re-sent {}, late old messages re-sent {}",
            faults.subscriber_kills,
            faults.publisher_kills,
            faults.postgres_restarts,
            faults.sns_sqs_outages,
            faults.publisher_pauses,
            faults.duplicates_sent,
            faults.late_sent
        ),
        format!(
            "stream records {records}, changes {}, published {published} (distinct events as v1 {as_v1}, as v2 {as_v2}; re-publishes {}), drained in {drain_time:.0?}, total {:.0?}",
            changes.len(),
            published.saturating_sub(2 * changes.len()),
            started.elapsed()
        ),
        format!("drift {}", drift.len()),
        format!("lost {}", lost.len()),
        format!("history duplicates {duplicates}"),
        format!("history rows with no source change {}", unexplained.len()),
        format!(
            "parked {} (subscriber DLQ {dlq:?}; publisher failure queue {failures:?})",
            dlq.values().sum::<usize>() + failures.values().sum::<usize>()
        ),
    ];
    for line in &report {
        eprintln!("chaos: {line}");
    }
    for d in drift.iter().take(5) {
        eprintln!("chaos: drift: {d}");
    }
    for l in lost.iter().take(5) {
        eprintln!("chaos: lost: {l:?}");
    }

    // Every planned fault really happened (a chaos run without chaos proves nothing).
    assert_eq!(faults.subscriber_kills, scale.subscriber_kills);
    assert_eq!(faults.publisher_kills, scale.publisher_kills);
    assert_eq!(faults.postgres_restarts, 1);
    assert_eq!(faults.sns_sqs_outages, 1);
    assert_eq!(faults.publisher_pauses, 1);
    assert_eq!(records as u64, stats.total(), "stream records vs mutations");
    assert!(
        as_v1 >= records && as_v2 >= records,
        "every change published under both versions: v1 {as_v1}, v2 {as_v2} of {records}"
    );
    let poorer: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics.profile_changes WHERE schema_version <> 2",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert!(
        drift.is_empty()
            && lost.is_empty()
            && duplicates == 0
            && unexplained.is_empty()
            && dlq.is_empty()
            && failures.is_empty()
            && poorer == 0,
        "chaos run failed ({poorer} history rows kept a v1 copy):\n{}",
        report.join("\n")
    );

    // The woken zombie stops on its own once it finds its lease lost (or on SIGTERM);
    // either way it must not hang.
    if let Some(mut zombie) = zombie {
        terminate(&mut zombie, Duration::from_secs(30)).await?;
    }
    // All three still stop cleanly after all that.
    stops_cleanly(&mut publisher, Duration::from_secs(30)).await?;
    stops_cleanly(&mut old_publisher, Duration::from_secs(30)).await?;
    stops_cleanly(&mut subscriber, Duration::from_secs(30)).await?;
    let stack = Arc::into_inner(stack).context("stack still shared")?;
    stack.teardown().await?;
    drop(pg);
    Ok(())
}
