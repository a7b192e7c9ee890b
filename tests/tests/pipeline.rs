//! End-to-end: DynamoDB Local stream → `publisher` → moto SNS → moto SQS → `subscriber`
//! → PostgreSQL, with the real binaries. Each test owns its resources (random names)
//! and its database. Run with `scripts/test.sh`, which starts the emulators.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::{Stack, eventually, stops_cleanly};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use stack::demo::{ProfileItem, Traffic, TrafficPlan};
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(90);

fn bodies(messages: &[aws_sdk_sqs::types::Message]) -> Vec<String> {
    messages.iter().filter_map(|m| m.body.clone()).collect()
}

fn event_id(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("published bodies are JSON");
    v["event_id"].as_str().expect("events have ids").to_owned()
}

/// Waits until `count` messages sit in the tap queue (a copy of everything published),
/// then takes them all.
async fn tap_all(stack: &Stack, count: usize) -> Result<Vec<String>> {
    take_all(stack, &stack.tap_queue_url, count).await
}

/// Takes messages from `queue_url` until they carry `count` distinct events (and any
/// duplicates that came with them). SNS→SQS delivery may be asynchronous (LocalStack),
/// so a quiet moment proves nothing: only the count ends the wait, or the deadline.
async fn take_all(stack: &Stack, queue_url: &str, count: usize) -> Result<Vec<String>> {
    let deadline = Instant::now() + CONVERGE;
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} events published after {CONVERGE:?}",
            distinct.len()
        );
        let taken = bodies(
            &stack
                .drain(queue_url, Duration::from_millis(500), CONVERGE)
                .await?,
        );
        distinct.extend(taken.iter().map(|b| event_id(b)));
        got.extend(taken);
    }
    Ok(got)
}

/// Writes `plan` as the profile service would, seeded so every run writes the same
/// traffic, and returns what was written.
async fn write(stack: &Stack, prefix: &str, seed: u64, plan: TrafficPlan) -> Result<Traffic> {
    stack.write_traffic(prefix, seed, plan).await
}

/// Writes `plan`'s traffic and waits for all of it on the tap: how many events.
async fn written_and_published(
    stack: &Stack,
    prefix: &str,
    seed: u64,
    plan: TrafficPlan,
) -> Result<usize> {
    let traffic = write(stack, prefix, seed, plan).await?;
    let total = traffic.stats.total() as usize;
    tap_all(stack, total).await?;
    Ok(total)
}

/// A stream sequence number (a decimal string of up to 40 digits, beyond u128),
/// ordered numerically: by digit count, then digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seq(usize, String);

impl Seq {
    const ZERO: Seq = Seq(0, String::new());
    const MAX: Seq = Seq(usize::MAX, String::new());

    fn of(s: &str) -> Seq {
        let digits = s.trim_start_matches('0');
        Seq(digits.len(), digits.to_owned())
    }
}

async fn wait_queue_empty(stack: &Stack, url: &str) -> Result<()> {
    stack.wait_depth(url, 0, CONVERGE).await
}

#[tokio::test]
async fn creates_updates_and_deletes_replicate_and_both_stop_cleanly_on_sigterm() -> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut subscriber = stack.spawn_subscriber(&[])?;
    let traffic = write(&stack, "flow", 1, TrafficPlan::new(25, 160)).await?;
    assert!(
        traffic.stats.deletes > 0 && traffic.stats.recreates > 0,
        "traffic must delete and re-create: {:?}",
        traffic.stats
    );

    stack.wait_converged(CONVERGE).await?;
    let rows = stack.analytics_rows().await?;
    for gone in &traffic.deleted {
        assert!(
            rows[&gone.user_id].deleted,
            "{} must be a tombstone",
            gone.user_id
        );
    }
    // One history row per source change, none twice.
    let total = traffic.stats.total() as i64;
    eventually("history complete", CONVERGE, || async {
        let (n, _) = stack.history_counts().await?;
        Ok((n >= total).then_some(()))
    })
    .await?;
    assert_eq!(stack.history_counts().await?, (total, total));

    stops_cleanly(&mut publisher, Duration::from_secs(20)).await?;
    stack.finish(&mut [&mut subscriber]).await
}

#[tokio::test]
async fn every_message_delivered_twice_leaves_state_and_history_unchanged() -> Result<()> {
    let stack = Stack::new().await?;
    let _publisher = stack.spawn_publisher(&[])?;
    let _subscriber = stack.spawn_subscriber(&[])?;
    let traffic = write(&stack, "dup", 2, TrafficPlan::new(15, 80)).await?;
    let published = tap_all(&stack, traffic.stats.total() as usize).await?;
    stack.wait_converged(CONVERGE).await?;
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;
    let before = stack.history_counts().await?;
    let rows_before = stack.analytics_rows().await?;

    stack.send_bodies(&published).await?;
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;

    assert_eq!(
        stack.history_counts().await?,
        before,
        "a redelivery added history"
    );
    assert_eq!(before.0, traffic.stats.total() as i64);
    // Row contents (not applied_at) are unchanged.
    assert_eq!(stack.analytics_rows().await?, rows_before);
    assert!(stack.drift().await?.is_empty());
    stack.teardown().await
}

#[tokio::test]
async fn shuffled_delivery_converges_to_the_source() -> Result<()> {
    let stack = Stack::new().await?;
    let _publisher = stack.spawn_publisher(&[])?;
    // Few keys, many changes each: plenty of chances to apply an old one last.
    let total = written_and_published(&stack, "shuffle", 3, TrafficPlan::new(6, 90)).await?;
    let mut queued = take_all(&stack, &stack.resources.queue_url, total).await?;
    assert_eq!(queued.len(), total);
    let in_order = queued.clone();
    queued.shuffle(&mut StdRng::seed_from_u64(4));
    assert_ne!(queued, in_order);
    stack.send_bodies(&queued).await?;

    let _subscriber = stack.spawn_subscriber(&[])?;
    stack.wait_converged(CONVERGE).await?;
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;
    assert_eq!(stack.history_counts().await?, (total as i64, total as i64));
    stack.teardown().await
}

#[tokio::test]
async fn a_late_older_update_never_resurrects_and_a_recreated_key_wins() -> Result<()> {
    let stack = Stack::new().await?;
    let _publisher = stack.spawn_publisher(&[])?;
    let writer = stack.writer();
    let mut rng = StdRng::seed_from_u64(5);
    let mut item = ProfileItem::random(&mut rng, "late-1", true);
    writer.create(&item).await?;
    item.mutate(&mut rng);
    writer.update(&item).await?;
    writer.delete(&item).await?;
    tap_all(&stack, 3).await?;
    let queued = bodies(
        &stack
            .drain(&stack.resources.queue_url, Duration::from_secs(1), CONVERGE)
            .await?,
    );
    let kind = |b: &String| {
        serde_json::from_str::<serde_json::Value>(b).unwrap()["event_type"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (deletes, upserts): (Vec<String>, Vec<String>) = queued
        .into_iter()
        .partition(|b| kind(b) == "profile.deleted");
    assert_eq!((deletes.len(), upserts.len()), (1, 2));

    // The delete arrives first, the two older upserts after it.
    stack.send_bodies(&deletes).await?;
    let _subscriber = stack.spawn_subscriber(&[])?;
    eventually("the tombstone", CONVERGE, || async {
        Ok(stack
            .analytics_rows()
            .await?
            .get("late-1")
            .filter(|r| r.deleted)
            .map(|_| ()))
    })
    .await?;
    stack.send_bodies(&upserts).await?;
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;
    let row = stack.analytics_rows().await?["late-1"].clone();
    assert!(
        row.deleted,
        "a late upsert resurrected the deleted profile: {row:?}"
    );
    assert!(row.email.is_none(), "a tombstone keeps no personal data");

    // Re-created: a new generation whose version restarts at 1 wins over the tombstone.
    let mut again = ProfileItem::random(&mut rng, "late-1", true);
    again.created_at = again
        .created_at
        .max(item.created_at + Duration::from_micros(1));
    assert_eq!(again.version, 1);
    writer.create(&again).await?;
    stack.wait_converged(CONVERGE).await?;
    let row = stack.analytics_rows().await?["late-1"].clone();
    assert!(!row.deleted);
    assert_eq!(row.position.version, 1);
    stack.teardown().await
}

#[tokio::test]
async fn poison_messages_are_parked_with_a_reason_and_good_ones_apply() -> Result<()> {
    let stack = Stack::new().await?;
    let _publisher = stack.spawn_publisher(&[])?;
    let traffic = write(&stack, "poison", 6, TrafficPlan::new(10, 40)).await?;
    let published = tap_all(&stack, traffic.stats.total() as usize).await?;
    let good: serde_json::Value = serde_json::from_str(&published[0])?;
    let mut newer = good.clone();
    newer["schema_version"] = 3.into();
    let mut no_email = good.clone();
    no_email["data"]
        .as_object_mut()
        .context("data")?
        .remove("email");
    let poison = vec![
        ("not json at all".to_owned(), "malformed_json"),
        (
            published[0][..published[0].len() / 2].to_owned(),
            "malformed_json",
        ),
        (newer.to_string(), "unsupported_schema_version"),
        (no_email.to_string(), "schema_mismatch"),
        (
            r#"{"Type":"Notification","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":42}"#
                .to_owned(),
            "bad_sns_envelope",
        ),
        (
            r#"{"order_id": 7, "total": "12.50"}"#.to_owned(),
            "missing_schema_version",
        ),
    ];
    stack
        .send_bodies(&poison.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>())
        .await?;
    let _subscriber = stack.spawn_subscriber(&[])?;

    stack.wait_converged(CONVERGE).await?;
    let quiet = Duration::from_millis(500);
    let dlq = &stack.resources.dlq_url;
    let parked: Vec<(String, String)> = stack
        .take_at_least(dlq, poison.len(), quiet, CONVERGE)
        .await?
        .into_iter()
        .map(|m| {
            let reason = e2e::message_attr(&m, "tributary-reason");
            (m.body.unwrap_or_default(), reason)
        })
        .collect();
    assert_eq!(parked.len(), poison.len());
    for (body, reason) in &poison {
        let found = parked
            .iter()
            .find(|(b, _)| b == body)
            .with_context(|| format!("not parked: {body}"))?;
        assert_eq!(&found.1, reason, "reason for {body}");
    }
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;
    stack.teardown().await
}

#[tokio::test]
async fn a_crash_between_commit_and_delete_makes_redelivery_a_no_op() -> Result<()> {
    let stack = Stack::new().await?;
    let _publisher = stack.spawn_publisher(&[])?;
    let total = written_and_published(&stack, "crash", 7, TrafficPlan::new(10, 40)).await?;

    // A subscriber that commits and then dies before DeleteMessageBatch: receive with a
    // short visibility timeout, apply and commit with the subscriber's own code, never
    // delete. The messages come back when their visibility times out.
    let mut committed = HashSet::new();
    while committed.len() < total {
        let msgs = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&stack.resources.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(3)
            .wait_time_seconds(1)
            .send()
            .await?
            .messages
            .unwrap_or_default();
        let mut events = Vec::new();
        for m in &msgs {
            let event = subscriber::entity::decode_body(m.body.as_deref().unwrap_or_default())?;
            committed.insert(event.event_id.clone());
            events.push(event);
        }
        let mut tx = stack.pool.begin().await?;
        subscriber::entity::Entity::current()
            .table
            .apply_batch(&mut tx, &events)
            .await?;
        tx.commit().await?;
    }
    stack.wait_converged(Duration::from_secs(5)).await?;
    let before = stack.history_counts().await?;
    assert_eq!(before, (total as i64, total as i64));

    let _subscriber = stack.spawn_subscriber(&[])?;
    wait_queue_empty(&stack, &stack.resources.queue_url).await?;
    assert_eq!(stack.history_counts().await?, before);
    assert!(stack.drift().await?.is_empty());
    stack.teardown().await
}

#[tokio::test]
async fn a_publisher_killed_mid_stream_resumes_from_its_checkpoint_and_loses_nothing() -> Result<()>
{
    let stack = Stack::new().await?;
    let _subscriber = stack.spawn_subscriber(&[])?;
    let writer = stack.writer();
    let mut traffic = Traffic::new("kill");
    let mut rng = StdRng::seed_from_u64(8);
    let mut publisher = stack.spawn_publisher(&[])?;
    let checkpoints = publisher::checkpoint::CheckpointStore::new(
        stack.clients.dynamodb.clone(),
        stack.resources.checkpoint_table.clone(),
        stack.resources.stream_arn.clone(),
        "e2e-observer".into(),
    );
    let reader = publisher::stream::StreamReader::new(
        stack.clients.streams.clone(),
        stack.resources.stream_arn.clone(),
    );
    // The lowest checkpoint over the shards when each killed publisher died: after that
    // kill, only records above it may be published again.
    let mut checkpoint_at_kill: Vec<Seq> = Vec::new();
    for round in 0..3 {
        traffic
            .run(
                &writer,
                &mut rng,
                &TrafficPlan::new(40, 120).rate(100),
                &CancellationToken::new(),
            )
            .await?;
        if round == 0 {
            // The first kill must find a checkpoint written, or the test proves nothing
            // about resuming from one. On a cold emulator the publisher's start (lease,
            // shard discovery) can outlast the 1.2 s of traffic, so wait for its first
            // checkpoint (bounded). The second kill stays immediate: its publisher may
            // still be waiting for the killed one's lease.
            eventually(
                "the first publisher's first checkpoint",
                Duration::from_secs(60),
                || async {
                    let (_, shards) = reader.describe().await?;
                    for shard in &shards {
                        if let Some(publisher::checkpoint::Checkpoint::At(_)) =
                            checkpoints.load(&shard.shard_id).await?
                        {
                            return Ok(Some(()));
                        }
                    }
                    Ok(None)
                },
            )
            .await?;
        }
        if round < 2 {
            publisher.start_kill()?; // SIGKILL: no checkpoint, no lease release
            publisher.wait().await?;
            let (_, shards) = reader.describe().await?;
            let mut lowest = Seq::MAX;
            for shard in &shards {
                let at = match checkpoints.load(&shard.shard_id).await? {
                    Some(publisher::checkpoint::Checkpoint::At(seq)) => Seq::of(&seq),
                    Some(publisher::checkpoint::Checkpoint::Finished) => Seq::MAX,
                    Some(publisher::checkpoint::Checkpoint::Since(_)) | None => Seq::ZERO,
                };
                lowest = lowest.min(at);
            }
            checkpoint_at_kill.push(lowest);
            publisher = stack.spawn_publisher(&[])?;
        }
    }
    let total = traffic.stats.total() as usize;

    // Every record in the stream reached the topic at least once.
    let stream = &reader;
    let (_, shards) = stream.describe().await?;
    let mut in_stream = HashSet::new();
    for shard in shards {
        let mut it = Some(
            stream
                .iterator(&shard.shard_id, &publisher::stream::StartAt::TrimHorizon)
                .await?,
        );
        while let Some(i) = it.take() {
            let batch = stream.get_records(&i).await?;
            if batch.records.is_empty() {
                break;
            }
            in_stream.extend(batch.records.into_iter().filter_map(|r| r.event_id));
            it = batch.next_iterator;
        }
    }
    assert_eq!(in_stream.len(), total);
    let published = tap_all(&stack, total).await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut sequence: HashMap<String, Seq> = HashMap::new();
    for b in &published {
        *seen.entry(event_id(b)).or_default() += 1;
        let v: serde_json::Value = serde_json::from_str(b)?;
        let seq = v["source"]["sequence_number"]
            .as_str()
            .context("sequence number")?;
        sequence.insert(event_id(b), Seq::of(seq));
    }
    let missing: Vec<_> = in_stream
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "records never published: {missing:?}");
    // Resuming from the checkpoint: a record is published again after a kill only if it
    // lies above the checkpoint the killed publisher left (it was in flight). A restart
    // from the trim horizon would re-publish everything below it too.
    assert!(
        checkpoint_at_kill.iter().any(|c| *c > Seq::ZERO),
        "no checkpoint was ever written before a kill"
    );
    for (id, copies) in &seen {
        let allowed = 1 + checkpoint_at_kill
            .iter()
            .filter(|c| sequence[id] > **c)
            .count();
        assert!(
            *copies <= allowed,
            "{id} (sequence {:?}) published {copies} times; checkpoints at the kills: {checkpoint_at_kill:?}",
            sequence[id]
        );
    }

    stack.wait_converged(CONVERGE).await?;
    assert_eq!(stack.history_counts().await?, (total as i64, total as i64));
    stack.teardown().await
}

/// Takes tap messages until `count` distinct events have been seen published as schema
/// version `schema` (copies under other versions are taken along).
async fn tap_as_version(stack: &Stack, schema: u64, count: usize) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    let mut seen = HashSet::new();
    while seen.len() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} events published as v{schema} after {CONVERGE:?}",
            seen.len()
        );
        let taken = stack
            .drain(&stack.tap_queue_url, Duration::from_millis(500), CONVERGE)
            .await?;
        for body in bodies(&taken) {
            let v: serde_json::Value = serde_json::from_str(&body)?;
            if v["schema_version"].as_u64() == Some(schema) {
                seen.insert(event_id(&body));
            }
        }
    }
    Ok(())
}

/// Waits until the subscriber's queue has stayed empty (nothing visible or in flight)
/// for two consecutive looks a second apart.
async fn queue_consumed(stack: &Stack) -> Result<()> {
    eventually("the subscriber to consume its queue", CONVERGE, || async {
        if stack.queue_depth(&stack.resources.queue_url).await? > 0 {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((stack.queue_depth(&stack.resources.queue_url).await? == 0).then_some(()))
    })
    .await
}

#[tokio::test]
async fn v1_and_v2_publishers_over_the_same_positions_converge_on_v2_in_either_order() -> Result<()>
{
    // A rolling deploy: an old (v1) and a new (v2) publisher each read the whole stream
    // (their own checkpoints), so every change is delivered under both versions. The
    // items carry the v2-only attributes (SMS consent, time zone) that a v1 copy loses.
    let stack = Stack::new().await?;
    let _subscriber = stack.spawn_subscriber(&[])?;
    let writer = stack.writer();
    let mut traffic = Traffic::new("roll");
    let mut rng = StdRng::seed_from_u64(9);
    let plan = TrafficPlan::new(15, 60);
    let v1_checkpoints = stack.create_checkpoint_table("v1").await?;
    let old_publisher =
        |stack: &Stack| stack.spawn_publisher_on(&v1_checkpoints, &["--schema-version", "1"]);

    // Order 1: each change arrives as v1 first, then as v2.
    traffic
        .run(&writer, &mut rng, &plan, &CancellationToken::new())
        .await?;
    let first = traffic.stats.total() as usize;
    let mut old = old_publisher(&stack)?;
    tap_as_version(&stack, 1, first).await?;
    queue_consumed(&stack).await?;
    let _new = stack.spawn_publisher(&["--schema-version", "2"])?;
    tap_as_version(&stack, 2, first).await?;
    stack.wait_converged(CONVERGE).await?;
    stops_cleanly(&mut old, Duration::from_secs(20)).await?;

    // Order 2: the new publisher delivers the next changes first; the old one, started
    // again from its checkpoint, delivers their v1 copies after.
    traffic
        .run(&writer, &mut rng, &plan, &CancellationToken::new())
        .await?;
    let second = traffic.stats.total() as usize - first;
    tap_as_version(&stack, 2, second).await?;
    stack.wait_converged(CONVERGE).await?;
    let _old = old_publisher(&stack)?;
    tap_as_version(&stack, 1, second).await?;
    queue_consumed(&stack).await?;
    stack.wait_converged(CONVERGE).await?;

    // One history row per change, and each holds the richer (v2) copy.
    let total = traffic.stats.total() as i64;
    assert_eq!(stack.history_counts().await?, (total, total));
    let poorer: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics.profile_changes WHERE schema_version <> 2",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(poorer, 0, "history rows left in their v1 form");
    stack.teardown().await
}
