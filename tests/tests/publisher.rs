//! End-to-end: the container publisher's lease, checkpoints, stream changes, stuck
//! shards and signals, against DynamoDB Local and moto with the real binary.
//!
//! DynamoDB Local gives a stream one shard and never splits it, so what needs several
//! shards (the other shards going on while one is paused, more shards ready than
//! `--max-shards`) is tested as a unit in `publisher::pipeline`.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{AttributeValue, StreamSpecification, StreamViewType};
use e2e::free_port;
use e2e::operator::{http_get, sample};
use e2e::outage::FreezeProxy;
use e2e::{Stack, eventually, signal, stops_cleanly, terminate};
use publisher::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use publisher::stream::{StartAt, StreamReader};
use rand::SeedableRng;
use rand::rngs::StdRng;
use stack::demo::{Traffic, TrafficPlan};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(90);

fn event_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("published bodies are JSON");
    v["event_id"].as_str().expect("events have ids").to_owned()
}

/// Every message published so far, waiting until the tap holds at least `count`
/// distinct events, then until it stays quiet for 2 s (to see duplicates too).
async fn tap(stack: &Stack, count: usize) -> Result<Vec<String>> {
    let deadline = Instant::now() + CONVERGE;
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    loop {
        let taken: Vec<String> = stack
            .drain(&stack.tap_queue_url, Duration::from_secs(2), CONVERGE)
            .await?
            .into_iter()
            .filter_map(|m| m.body)
            .collect();
        distinct.extend(taken.iter().map(|b| event_id(b)));
        got.extend(taken);
        if distinct.len() >= count {
            return Ok(got);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} events published after {CONVERGE:?}",
            distinct.len()
        );
    }
}

async fn write(stack: &Stack, traffic: &mut Traffic, seed: u64, plan: TrafficPlan) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    traffic
        .run(&stack.writer(), &mut rng, &plan, &CancellationToken::new())
        .await?;
    Ok(())
}

fn store(stack: &Stack, owner: &str) -> CheckpointStore {
    CheckpointStore::new(
        stack.clients.dynamodb.clone(),
        stack.resources.checkpoint_table.clone(),
        stack.resources.stream_arn.clone(),
        owner.into(),
    )
}

/// The single shard of the stack's (first) stream.
async fn only_shard(stack: &Stack) -> Result<String> {
    let reader = StreamReader::new(
        stack.clients.streams.clone(),
        stack.resources.stream_arn.clone(),
    );
    let (_, shards) = reader.describe().await?;
    anyhow::ensure!(
        shards.len() == 1,
        "DynamoDB Local gave {} shards",
        shards.len()
    );
    Ok(shards[0].shard_id.clone())
}

/// The sequence number of the last record of a shard (read from its trim horizon).
async fn last_sequence(stack: &Stack, shard_id: &str) -> Result<String> {
    let reader = StreamReader::new(
        stack.clients.streams.clone(),
        stack.resources.stream_arn.clone(),
    );
    let mut it = Some(reader.iterator(shard_id, &StartAt::TrimHorizon).await?);
    let mut last = None;
    while let Some(i) = it.take() {
        let batch = reader.get_records(&i).await?;
        if batch.records.is_empty() {
            break;
        }
        last = batch
            .records
            .iter()
            .rev()
            .find_map(|r| r.sequence_number.clone())
            .or(last);
        it = batch.next_iterator;
    }
    last.context("the shard holds no record")
}

/// The real `publisher` on the stack's resources, with `table` and `failure_queue` in
/// place of the stack's, extra flags and environment.
fn spawn_publisher_with(
    stack: &Stack,
    table: &str,
    failure_queue: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Child> {
    let r = &stack.resources;
    let mut cmd = stack.publisher_command(table, &r.checkpoint_table, failure_queue, extra)?;
    cmd.envs(env.iter().copied());
    Ok(cmd.spawn()?)
}

async fn metrics(addr: SocketAddr) -> Result<String> {
    Ok(http_get(addr, "/metrics").await?.1)
}

fn metrics_addr() -> Result<(SocketAddr, String)> {
    let addr: SocketAddr = e2e::free_addr()?;
    Ok((addr, addr.to_string()))
}

// ---------------------------------------------------------------- lease and fencing

#[tokio::test]
async fn a_checkpoint_write_after_the_lease_was_lost_is_refused_and_never_moves_back() -> Result<()>
{
    let stack = Stack::new().await?;
    let a = store(&stack, "publisher-a");
    let b = store(&stack, "publisher-b");
    let shard = "shardId-fencing";
    let at = |s: &str| Checkpoint::At(s.into());

    assert_eq!(a.acquire(Duration::from_secs(1)).await?, None);
    a.save(shard, &at("100")).await?;
    // A is paused past its lease; B takes the stream over and moves on.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(b.acquire(Duration::from_secs(30)).await?, None);
    b.save(shard, &at("200")).await?;

    // A wakes up: its write is refused while B holds the lease.
    let refused = a.save(shard, &at("150")).await.unwrap_err();
    assert!(
        matches!(refused, CheckpointError::LeaseLost { .. }),
        "{refused}"
    );
    assert_eq!(b.load(shard).await?, Some(at("200")));

    // B stops and releases; the zombie re-takes the free lease, as the pipeline does
    // after a lost lease, and tries to write its stale position: refused, not moved back.
    b.release().await?;
    assert_eq!(a.acquire(Duration::from_secs(30)).await?, None);
    let behind = a.save(shard, &at("150")).await.unwrap_err();
    assert!(matches!(behind, CheckpointError::Behind { .. }), "{behind}");
    assert_eq!(a.load(shard).await?, Some(at("200")));

    // Positions compare as numbers, whatever their length ("1000" > "200").
    a.save(shard, &at("1000")).await?;
    a.save(shard, &at("1000")).await?; // the same position again: a retried write
    assert!(matches!(
        a.save(shard, &at("999")).await.unwrap_err(),
        CheckpointError::Behind { .. }
    ));
    a.save(shard, &Checkpoint::Finished).await?;
    assert!(matches!(
        a.save(shard, &at("99999999999999999999999999"))
            .await
            .unwrap_err(),
        CheckpointError::Behind { .. }
    ));
    assert_eq!(a.load(shard).await?, Some(Checkpoint::Finished));
    stack.teardown().await
}

#[tokio::test]
async fn two_publishers_on_one_table_publish_each_record_once_and_hand_over_on_stop() -> Result<()>
{
    let stack = Stack::new().await?;
    let mut a = stack.spawn_publisher(&["--worker-id", "pub-a"])?;
    let mut b = stack.spawn_publisher(&["--worker-id", "pub-b"])?;
    let observer = store(&stack, "e2e-observer");
    let first = eventually("a publisher to hold the lease", CONVERGE, || async {
        Ok(observer.holder().await?.map(|h| h.owner))
    })
    .await?;
    let mut traffic = Traffic::new("two");
    write(&stack, &mut traffic, 1, TrafficPlan::new(20, 80).rate(100)).await?;
    let total = traffic.stats.total() as usize;
    let published = tap(&stack, total).await?;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for body in &published {
        *copies.entry(event_id(body)).or_default() += 1;
    }
    // Only the lease holder reads: nothing published twice, nothing lost.
    assert_eq!(copies.len(), total);
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let holder = observer.holder().await?.context("lease")?;
    assert_eq!(holder.owner, first, "the lease moved while both ran");

    // The holder stops (SIGTERM: checkpoint, release); the other takes over and goes on
    // from the checkpoint: again nothing lost, nothing repeated.
    let (stopping, mut staying) = if first.starts_with("pub-a") {
        (&mut a, b)
    } else {
        (&mut b, a)
    };
    assert_eq!(terminate(stopping, Duration::from_secs(30)).await?, Some(0));
    write(&stack, &mut traffic, 2, TrafficPlan::new(20, 80).rate(100)).await?;
    let more = traffic.stats.total() as usize - total;
    let published = tap(&stack, more).await?;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for body in &published {
        *copies.entry(event_id(body)).or_default() += 1;
    }
    assert_eq!(copies.len(), more, "after the hand-over");
    assert!(copies.values().all(|n| *n == 1), "{copies:?}");
    let holder = observer.holder().await?.context("lease")?;
    assert_ne!(holder.owner, first);
    // Every checkpoint was written by the holder of the lease at the time.
    let shard = only_shard(&stack).await?;
    let last = last_sequence(&stack, &shard).await?;
    eventually("the successor's checkpoint", CONVERGE, || async {
        Ok((observer.load(&shard).await? == Some(Checkpoint::At(last.clone()))).then_some(()))
    })
    .await?;
    stack.finish(&mut [&mut staying]).await
}

#[tokio::test]
async fn a_paused_publisher_that_wakes_after_a_takeover_never_moves_the_checkpoint_back()
-> Result<()> {
    let stack = Stack::new().await?;
    let _subscriber = stack.spawn_subscriber(&[])?;
    // A checkpoints only when idle or stopping, so it holds a published position it has
    // not checkpointed when it is paused.
    let lazy = [
        "--checkpoint-interval-ms",
        "600000",
        "--checkpoint-every",
        "100000",
    ];
    let mut zombie = stack.spawn_publisher(&[&["--worker-id", "zombie"][..], &lazy].concat())?;
    let observer = store(&stack, "e2e-observer");
    eventually(
        "the first publisher to hold the lease",
        CONVERGE,
        || async {
            Ok(observer
                .holder()
                .await?
                .filter(|h| h.owner.starts_with("zombie")))
        },
    )
    .await?;
    let mut traffic = Traffic::new("zombie");
    write(&stack, &mut traffic, 3, TrafficPlan::new(20, 40).rate(40)).await?;
    // Let it publish some of a continuing stream, then freeze it mid-flight.
    let writing = {
        let writer = stack.writer();
        let mut more = Traffic::new("zombie2");
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(4);
            more.run(
                &writer,
                &mut rng,
                &TrafficPlan::new(20, 120).rate(40),
                &CancellationToken::new(),
            )
            .await
            .map(|()| more)
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&zombie, "STOP")?;
    // The lease (3 s) runs out; a second publisher takes over and catches up.
    let mut successor = stack.spawn_publisher(&["--worker-id", "successor"])?;
    eventually("the successor to take the lease", CONVERGE, || async {
        Ok(observer
            .holder()
            .await?
            .filter(|h| h.owner.starts_with("successor")))
    })
    .await?;
    let more = writing.await??;
    let total = (traffic.stats.total() + more.stats.total()) as usize;
    let shard = only_shard(&stack).await?;
    let last = last_sequence(&stack, &shard).await?;
    eventually(
        "the successor's checkpoint at the end",
        CONVERGE,
        || async {
            Ok((observer.load(&shard).await? == Some(Checkpoint::At(last.clone()))).then_some(()))
        },
    )
    .await?;
    // The successor stops and releases the lease; then the zombie wakes up to a SIGTERM
    // and tries to checkpoint the position it held, taking the now free lease again.
    stops_cleanly(&mut successor, Duration::from_secs(30)).await?;
    signal(&zombie, "TERM")?;
    signal(&zombie, "CONT")?;
    let exit = tokio::time::timeout(Duration::from_secs(30), zombie.wait())
        .await
        .context("the zombie did not stop")??;
    assert_eq!(
        observer.load(&shard).await?,
        Some(Checkpoint::At(last.clone())),
        "the zombie (exit {exit}) moved the checkpoint back"
    );
    // What the zombie published after it lost the lease was already published: the
    // store converges and history holds each change once.
    let published = tap(&stack, total).await?;
    let distinct: HashSet<String> = published.iter().map(|b| event_id(b)).collect();
    assert_eq!(distinct.len(), total);
    stack.wait_converged(CONVERGE).await?;
    assert_eq!(stack.history_counts().await?, (total as i64, total as i64));
    stack.teardown().await
}

// ---------------------------------------------------------------- stream changes

async fn set_stream(stack: &Stack, enabled: bool) -> Result<()> {
    let spec = StreamSpecification::builder().stream_enabled(enabled);
    let spec = if enabled {
        spec.stream_view_type(StreamViewType::NewAndOldImages)
    } else {
        spec
    };
    stack
        .clients
        .dynamodb
        .update_table()
        .table_name(&stack.resources.table)
        .stream_specification(spec.build()?)
        .send()
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_disabled_and_re_enabled_stream_is_finished_then_followed_and_the_gap_reported()
-> Result<()> {
    let stack = Stack::new().await?;
    let (addr, addr_arg) = metrics_addr()?;
    let mut publisher =
        stack.spawn_publisher(&["--shard-discovery-secs", "1", "--metrics-addr", &addr_arg])?;
    let mut traffic = Traffic::new("before");
    write(&stack, &mut traffic, 5, TrafficPlan::new(10, 20).rate(100)).await?;
    tap(&stack, 20).await?;

    // Written just before the disable: still in the old stream, which must be finished.
    let mut late = Traffic::new("late");
    write(&stack, &mut late, 6, TrafficPlan::new(5, 5).rate(0)).await?;
    set_stream(&stack, false).await?;
    let ready = eventually(
        "/readyz to fail while the stream is disabled",
        CONVERGE,
        || async {
            // The body names the failing check only (why is in the log); the gauge says
            // which condition it is.
            let (status, body) = http_get(addr, "/readyz").await?;
            let disabled = sample(&metrics(addr).await?, "tributary_stream_enabled") == Some(0.0);
            Ok((status == 503 && disabled && body.contains("pipeline: failing")).then_some(body))
        },
    )
    .await?;
    assert!(ready.contains("pipeline:"), "{ready}");
    assert_eq!(
        sample(&metrics(addr).await?, "tributary_stream_enabled"),
        Some(0.0)
    );
    let old = tap(&stack, 5).await?;
    let key = |b: &String| -> String {
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        v["key"].as_str().unwrap_or_default().to_owned()
    };
    assert!(old.iter().all(|b| key(b).starts_with("late")), "{old:?}");

    // Written while no stream is enabled: in no stream (the gap a backfill must fill).
    let mut gap = Traffic::new("gap");
    write(&stack, &mut gap, 7, TrafficPlan::new(3, 3).rate(0)).await?;
    set_stream(&stack, true).await?;
    let mut after = Traffic::new("after");
    write(&stack, &mut after, 8, TrafficPlan::new(10, 20).rate(100)).await?;
    let published = tap(&stack, 20).await?;
    let prefixes: HashSet<&str> = published
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            if v["key"].as_str().unwrap_or("").starts_with("after") {
                "after"
            } else {
                "other"
            }
        })
        .collect();
    assert!(prefixes.contains("after"), "the new stream was not read");
    let text = metrics(addr).await?;
    assert_eq!(
        sample(&text, "tributary_stream_backfill_needed"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tributary_stream_gaps_total"),
        Some(1.0),
        "{text}"
    );
    eventually("/readyz to pass again", CONVERGE, || async {
        Ok((http_get(addr, "/readyz").await?.0 == 200).then_some(()))
    })
    .await?;

    // A restart follows the new stream (recorded in the checkpoint table), not the old.
    stops_cleanly(&mut publisher, Duration::from_secs(30)).await?;
    let mut publisher = stack.spawn_publisher(&["--shard-discovery-secs", "1"])?;
    let mut again = Traffic::new("again");
    write(&stack, &mut again, 9, TrafficPlan::new(5, 10).rate(100)).await?;
    let published = tap(&stack, 10).await?;
    let distinct: HashSet<String> = published.iter().map(|b| event_id(b)).collect();
    assert_eq!(
        distinct.len(),
        10,
        "only the new writes, once each: {published:?}"
    );
    stack.finish(&mut [&mut publisher]).await
}

#[tokio::test]
async fn a_publisher_started_while_the_stream_is_disabled_finishes_the_old_one_and_waits()
-> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut traffic = Traffic::new("first");
    write(&stack, &mut traffic, 13, TrafficPlan::new(3, 5).rate(0)).await?;
    tap(&stack, 5).await?;
    stops_cleanly(&mut publisher, Duration::from_secs(30)).await?;
    // Written while no publisher runs, then the stream is disabled: these are only in
    // the old stream, which the next start must finish.
    let mut unread = Traffic::new("unread");
    write(&stack, &mut unread, 14, TrafficPlan::new(3, 3).rate(0)).await?;
    set_stream(&stack, false).await?;
    let (addr, addr_arg) = metrics_addr()?;
    let mut publisher =
        stack.spawn_publisher(&["--shard-discovery-secs", "1", "--metrics-addr", &addr_arg])?;
    let published = tap(&stack, 3).await?;
    assert!(
        publisher.try_wait()?.is_none(),
        "the publisher did not start"
    );
    assert_eq!(published.len(), 3, "{published:?}");
    eventually(
        "/readyz to fail while the stream is disabled",
        CONVERGE,
        || async {
            let (status, body) = http_get(addr, "/readyz").await?;
            let disabled = sample(&metrics(addr).await?, "tributary_stream_enabled") == Some(0.0);
            Ok((status == 503 && disabled && body.contains("pipeline: failing")).then_some(()))
        },
    )
    .await?;
    set_stream(&stack, true).await?;
    still_publishes_then_stops(stack, publisher, "after", 15).await
}

/// Four more changes (`prefix`, `seed`) all reach the tap, then the publisher stops
/// cleanly and the stack is torn down.
async fn still_publishes_then_stops(
    stack: Stack,
    mut publisher: Child,
    prefix: &str,
    seed: u64,
) -> Result<()> {
    let mut traffic = Traffic::new(prefix);
    write(&stack, &mut traffic, seed, TrafficPlan::new(2, 4).rate(0)).await?;
    tap(&stack, 4).await?;
    stack.finish(&mut [&mut publisher]).await
}

/// DynamoDB Local's address, for a proxy in front of it.
fn dynamodb_addr() -> Result<SocketAddr> {
    let url = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")?;
    Ok(url.trim_start_matches("http://").parse()?)
}

#[tokio::test]
async fn start_position_latest_is_durable_across_a_restart() -> Result<()> {
    let stack = Stack::new().await?;
    let mut first = stack.spawn_publisher(&["--start-position", "latest"])?;
    let observer = store(&stack, "e2e-observer");
    let shard = only_shard(&stack).await?;
    eventually(
        "a durable position after the LATEST start",
        Duration::from_secs(30),
        || async { Ok(observer.load(&shard).await?) },
    )
    .await?;
    first.start_kill()?; // SIGKILL: nothing more is checkpointed
    first.wait().await?;
    // Written while no publisher runs: after the first start, so they must be published.
    let mut traffic = Traffic::new("while-down");
    write(&stack, &mut traffic, 10, TrafficPlan::new(5, 10).rate(0)).await?;
    let mut second = stack.spawn_publisher(&["--start-position", "latest"])?;
    let published = tap(&stack, 10).await?;
    let distinct: HashSet<String> = published.iter().map(|b| event_id(b)).collect();
    assert_eq!(distinct.len(), 10);
    stack.finish(&mut [&mut second]).await
}

// ---------------------------------------------------------------- stuck shards

#[tokio::test]
async fn a_record_that_can_be_neither_published_nor_parked_pauses_its_shard_not_the_publisher()
-> Result<()> {
    let stack = Stack::new().await?;
    let (addr, addr_arg) = metrics_addr()?;
    // A failure queue that does not exist: nothing can be parked.
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS")?;
    let missing = format!("{endpoint}/000000000000/no-such-queue-{}", stack.id);
    let mut publisher = spawn_publisher_with(
        &stack,
        &stack.resources.table,
        &missing,
        &["--metrics-addr", &addr_arg],
        &[],
    )?;
    // A profile without its attributes: the decoder refuses it, so it must be parked.
    stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&stack.resources.table)
        .item("user_id", AttributeValue::S("bad-1".into()))
        .send()
        .await?;
    let shard = only_shard(&stack).await?;
    let series = format!("tributary_shard_paused{{shard=\"{shard}\"}}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(exit) = publisher.try_wait()? {
            anyhow::bail!("the publisher exited ({exit}) instead of pausing the shard");
        }
        // The endpoint is served once the publisher has started.
        let text = metrics(addr).await.unwrap_or_default();
        if sample(&text, &series) == Some(1.0) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the shard was never paused");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = http_get(addr, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    // The body names the failing check only; the paused shard is in the gauge above.
    assert!(body.contains("pipeline: failing"), "{body}");
    assert!(publisher.try_wait()?.is_none(), "the publisher stopped");
    stack.finish(&mut [&mut publisher]).await
}

#[tokio::test]
async fn a_stuck_shard_shows_the_age_of_its_oldest_unpublished_record_growing() -> Result<()> {
    let stack = Stack::new().await?;
    let (addr, addr_arg) = metrics_addr()?;
    let mut publisher = stack.spawn_publisher(&["--metrics-addr", &addr_arg])?;
    let mut traffic = Traffic::new("stuck");
    write(&stack, &mut traffic, 11, TrafficPlan::new(3, 3).rate(0)).await?;
    tap(&stack, 3).await?;
    let shard = only_shard(&stack).await?;
    let series = format!("tributary_shard_oldest_unpublished_age_seconds{{shard=\"{shard}\"}}");
    let caught_up = eventually("the caught-up shard's age", CONVERGE, || async {
        Ok(sample(&metrics(addr).await?, &series).filter(|age| *age < 5.0))
    })
    .await?;
    // An empty map inside a list: DynamoDB Local streams it as `{}`, an answer the AWS
    // SDK cannot parse, so every GetRecords at this position fails from now on.
    stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&stack.resources.table)
        .item("user_id", AttributeValue::S("stuck-poison".into()))
        .item(
            "odd",
            AttributeValue::L(vec![AttributeValue::M(HashMap::new())]),
        )
        .send()
        .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let first = sample(&metrics(addr).await?, &series).context("the shard's age is exported")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = sample(&metrics(addr).await?, &series).context("the shard's age is exported")?;
    assert!(
        first >= 5.0,
        "age {first} after 6 s stuck (caught up: {caught_up})"
    );
    assert!(
        second >= first + 2.5,
        "age did not grow: {first} then {second}"
    );
    assert!(publisher.try_wait()?.is_none());
    stack.finish(&mut [&mut publisher]).await
}

// ---------------------------------------------------------------- start and signals

#[tokio::test]
async fn a_missing_table_exits_2_and_an_unreachable_one_is_retried() -> Result<()> {
    let stack = Stack::new().await?;
    let fq = stack.resources.failure_queue_url.clone();
    let missing = spawn_publisher_with(&stack, "no-such-table", &fq, &[], &[])?;
    let out = tokio::time::timeout(Duration::from_secs(60), missing.wait_with_output())
        .await
        .context("a missing table did not stop the publisher")??;
    assert_eq!(out.status.code(), Some(2));

    // DynamoDB unreachable at start (nothing listens yet): retried, not a bad setting;
    // once it answers, the publisher starts and publishes.
    let port = free_port()?;
    let nowhere = format!("http://127.0.0.1:{port}");
    let mut publisher = spawn_publisher_with(
        &stack,
        &stack.resources.table,
        &fq,
        &[],
        &[("AWS_ENDPOINT_URL_DYNAMODB", &nowhere)],
    )?;
    // Longer than the SDK's own retries (5 attempts, back-off capped per attempt, about
    // 15 s at most): the publisher's retry is what is tested.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        publisher.try_wait()?.is_none(),
        "a DynamoDB that does not answer yet stopped the publisher: {:?}",
        publisher.try_wait()?
    );
    let upstream = dynamodb_addr()?;
    let _proxy = FreezeProxy::start_on(port, upstream).await?;
    still_publishes_then_stops(stack, publisher, "late-start", 12).await
}

#[tokio::test]
async fn a_second_signal_stops_the_publisher_and_the_demo_writer_at_once_with_130() -> Result<()> {
    let stack = Stack::new().await?;
    let upstream = dynamodb_addr()?;
    let proxy = FreezeProxy::start(upstream).await?;
    let through = format!("http://{}", proxy.addr);

    let r = &stack.resources;
    let mut publisher = spawn_publisher_with(
        &stack,
        &r.table,
        &r.failure_queue_url,
        &["--worker-id", "frozen"],
        &[
            ("AWS_ENDPOINT_URL_DYNAMODB", &through),
            ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", &through),
        ],
    )?;
    let observer = store(&stack, "e2e-observer");
    eventually("the publisher to hold the lease", CONVERGE, || async {
        Ok(observer
            .holder()
            .await?
            .filter(|h| h.owner.starts_with("frozen")))
    })
    .await?;
    // DynamoDB stops answering: the drain (checkpoint, lease release) hangs.
    proxy.freeze();
    e2e::a_second_signal_forces_the_exit(&mut publisher, "TERM", "TERM").await?;

    // The demo writer, its PutItem hanging: the first signal waits, the second exits.
    let proxy = FreezeProxy::start(upstream).await?;
    let mut writer = tokio::process::Command::new(e2e::bin("demo-writer")?)
        .args(["--table", &r.table, "--count", "100000", "--rate", "20"])
        .env(
            "AWS_ENDPOINT_URL_DYNAMODB",
            format!("http://{}", proxy.addr),
        )
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    e2e::a_second_signal_forces_the_exit(&mut writer, "INT", "TERM").await?;
    stack.teardown().await
}

/// Under docker-compose the demo writer may start before `bootstrap` has created its
/// table (they wait on different things): it waits for the table instead of failing
/// its first write; with no table at all it stops after its wait with one line naming
/// the table.
#[tokio::test]
async fn the_demo_writer_waits_for_a_table_created_after_it_starts() -> Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let stack = Stack::new().await?;
    let table = format!("late-{}", stack.id);
    let writer = tokio::process::Command::new(e2e::bin("demo-writer")?)
        .args([
            "--table", &table, "--count", "20", "--rate", "0", "--keys", "5",
        ])
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack
        .clients
        .dynamodb
        .create_table()
        .table_name(&table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("user_id")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("user_id")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    let out = tokio::time::timeout(Duration::from_secs(60), writer.wait_with_output())
        .await
        .context("the writer did not finish")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the writer failed: {stderr}");
    assert!(
        stderr.contains("Waiting for the table"),
        "the table existed before the writer started: no test; {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" total=20 "), "{stdout}");
    let items = stack
        .clients
        .dynamodb
        .scan()
        .table_name(&table)
        .send()
        .await?;
    assert!(items.count() > 0, "nothing was written");

    // No table at all: a clear failure after the wait, not a failed write.
    let out = tokio::process::Command::new(e2e::bin("demo-writer")?)
        .args([
            "--table",
            "never-created",
            "--count",
            "5",
            "--table-wait-secs",
            "1",
        ])
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("table never-created is not there and active after 1 s"),
        "{stderr}"
    );
    stack
        .clients
        .dynamodb
        .delete_table()
        .table_name(&table)
        .send()
        .await?;
    stack.teardown().await
}
