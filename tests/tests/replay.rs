//! End-to-end tests of `replay` (snapshot, dlq, verify/repair): the real binary against
//! DynamoDB Local, moto (SNS, SQS) and PostgreSQL, beside the real `publisher` and
//! `subscriber`. Run with `scripts/test.sh`, which starts the emulators.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue as Ddb;
use e2e::{Stack, bin_command, eventually, run_to_end, stops_cleanly};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use stack::bootstrap::Resources;
use stack::demo::{ProfileItem, Traffic, TrafficPlan};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(90);

fn replay_command(args: &[&str]) -> Result<Command> {
    bin_command("replay", args)
}

/// `replay snapshot` of the stack's table to `to`, `extra` flags appended.
fn snapshot<'a>(r: &'a Resources, to: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["snapshot", "--table", r.table.as_str(), "--to", to];
    args.extend_from_slice(extra);
    args
}

/// Runs `replay` to the end (bounded), returning its output.
async fn replay(args: &[&str]) -> Result<Output> {
    run_to_end(replay_command(args)?, CONVERGE).await
}

/// Runs `replay dlq` from the stack's DLQ to its queue, `extra` flags appended; it must
/// exit 0.
async fn replay_dlq(stack: &Stack, extra: &[&str]) -> Result<Output> {
    let r = &stack.resources;
    let mut args = vec!["dlq", "--dlq-url", &r.dlq_url, "--queue-url", &r.queue_url];
    args.extend_from_slice(extra);
    let out = replay(&args).await?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: stderr: {}",
        stderr(&out)
    );
    Ok(out)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON report `--json` prints as the last line of standard out.
fn parse_report(out: &Output) -> Result<Value> {
    let text = stdout(out);
    let line = text
        .lines()
        .last()
        .with_context(|| format!("no report; stderr: {}", stderr(out)))?;
    serde_json::from_str(line).with_context(|| format!("report is not JSON: {line}"))
}

async fn write(stack: &Stack, prefix: &str, seed: u64, plan: TrafficPlan) -> Result<Traffic> {
    stack.write_traffic(prefix, seed, plan).await
}

/// Creates `n` profiles and updates every third one, as the profile service would.
async fn seed_items(stack: &Stack, prefix: &str, n: usize, seed: u64) -> Result<Vec<ProfileItem>> {
    let writer = stack.writer();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let mut item = ProfileItem::random(&mut rng, &format!("{prefix}-{i:05}"), true);
        writer.create(&item).await?;
        if i % 3 == 0 {
            item.mutate(&mut rng);
            writer.update(&item).await?;
        }
        items.push(item);
    }
    Ok(items)
}

#[tokio::test]
async fn snapshot_backfills_an_empty_store_through_one_queue_only() -> Result<()> {
    let stack = Stack::new().await?;
    // The source has history the store never saw: no publisher runs.
    let live = seed_items(&stack, "fill", 80, 11).await?.len() as u64;

    // A dry run reads and counts, sends nothing; off a terminal, progress is logged.
    let r = &stack.resources;
    let mut dry = replay_command(&snapshot(
        r,
        &r.queue_url,
        &[
            "--dry-run",
            "--rate",
            "40",
            "--progress-secs",
            "1",
            "--json",
        ],
    ))?;
    let out = dry.env("RUST_LOG", "info").output().await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = parse_report(&out)?;
    assert_eq!(
        (
            report["items_read"].as_u64(),
            report["events_sent"].as_u64()
        ),
        (Some(live), Some(0))
    );
    assert!(
        stderr(&out).contains("Progress."),
        "no progress lines: {}",
        stderr(&out)
    );
    assert_eq!(stack.queue_depth(&r.queue_url).await?, 0);

    let mut subscriber = stack.spawn_subscriber(&[])?;
    let r = &stack.resources;
    let out = replay(&snapshot(r, &r.queue_url, &["--segments", "3", "--json"])).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = parse_report(&out)?;
    assert_eq!(report["items_read"], live);
    assert_eq!(report["events_sent"], live);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["complete"], true);

    stack.wait_converged(CONVERGE).await?;
    // One history row per item version: nothing applied twice.
    let (rows, distinct) = stack.history_counts().await?;
    assert_eq!((rows, distinct), (live as i64, live as i64));
    // Sent to the analytics queue only: the topic's other subscriber saw nothing.
    let tapped = stack
        .drain(&stack.tap_queue_url, Duration::from_secs(2), CONVERGE)
        .await?;
    assert!(
        tapped.is_empty(),
        "{} messages reached the topic",
        tapped.len()
    );

    stack.finish(&mut [&mut subscriber]).await
}

#[tokio::test]
async fn snapshot_during_live_traffic_converges_without_resurrection() -> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut subscriber = stack.spawn_subscriber(&[])?;
    // Seed, then keep writing (updates, deletes, re-creates) while the snapshot runs.
    let mut traffic = Traffic::new("live");
    traffic.live = seed_items(&stack, "live", 60, 12).await?;
    let writer = stack.writer();
    let stop = CancellationToken::new();
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(13);
            let plan = TrafficPlan::new(60, 400).rate(80);
            traffic
                .run(&writer, &mut rng, &plan, &stop)
                .await
                .map(|()| traffic)
        })
    };
    // Small, rate-limited pages: each page is sent a while after it was read, so many
    // snapshot events carry versions the live traffic has already superseded.
    let r = &stack.resources;
    let out = replay(&snapshot(
        r,
        &r.topic_arn,
        &[
            "--segments",
            "2",
            "--page-size",
            "5",
            "--rate",
            "20",
            "--json",
        ],
    ))
    .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = parse_report(&out)?;
    assert_eq!(report["failed"], 0);
    // Most items were read before the traffic deleted them.
    assert!(report["events_sent"].as_u64().unwrap() >= 40, "{report}");
    let traffic = writing.await??;
    assert!(
        traffic.stats.deletes > 0 && traffic.stats.recreates > 0,
        "{:?}",
        traffic.stats
    );

    // Converged: every live item equal to its latest state, every deleted one a
    // tombstone or absent (a resurrected row would be live here).
    stack.wait_converged(CONVERGE).await?;
    for gone in &traffic.deleted {
        let deleted: Option<bool> =
            sqlx::query_scalar("SELECT deleted FROM analytics.user_profiles WHERE user_id = $1")
                .bind(&gone.user_id)
                .fetch_optional(&stack.pool)
                .await?;
        assert_ne!(deleted, Some(false), "{} was resurrected", gone.user_id);
    }
    stack.finish(&mut [&mut publisher, &mut subscriber]).await
}

#[tokio::test]
async fn a_killed_snapshot_resumes_from_its_state_file() -> Result<()> {
    let stack = Stack::new().await?;
    let live = seed_items(&stack, "resume", 300, 14).await?.len() as u64;
    let dir = std::env::temp_dir().join(format!("replay-{}", stack.id));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("state.json");
    let state_arg = state.to_str().unwrap();
    let r = &stack.resources;
    let args = snapshot(
        r,
        &r.queue_url,
        &[
            "--segments",
            "2",
            "--page-size",
            "10",
            "--state-file",
            state_arg,
            "--json",
        ],
    );

    // Slowly, then kill -9 once part of the table is recorded as sent.
    let mut slow: Vec<&str> = args.to_vec();
    slow.extend(["--rate", "100"]);
    let mut child = replay_command(&slow)?.spawn()?;
    let recorded = |path: &Path| -> Option<u64> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(
            v["segments"]
                .as_array()?
                .iter()
                .filter_map(|s| s["items_read"].as_u64())
                .sum(),
        )
    };
    eventually("a third of the table recorded", CONVERGE, || async {
        Ok(recorded(&state).filter(|n| *n >= live / 3))
    })
    .await?;
    child.start_kill()?;
    child.wait().await?;
    let at_kill = recorded(&state).unwrap();
    assert!(
        at_kill < live,
        "killed too late to test a resume: {at_kill} of {live}"
    );

    let out = replay(&args).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = parse_report(&out)?;
    assert_eq!(report["resumed"], true);
    assert_eq!(report["complete"], true);
    // Every item read exactly once over both runs, as recorded; this run read the rest.
    assert_eq!(report["total_items_read"], live);
    assert_eq!(report["total_events_sent"], live);
    assert!(report["items_read"].as_u64().unwrap() <= live - at_kill);
    // On the queue: every item, plus at most the pages in flight at the kill
    // (two segments of ten), sent again by the resume.
    let queued = stack.queue_depth(&r.queue_url).await?;
    assert!(
        queued >= live && queued <= live + 20,
        "{queued} messages for {live} items"
    );

    let mut subscriber = stack.spawn_subscriber(&[])?;
    stack.wait_converged(CONVERGE).await?;
    let (rows, distinct) = stack.history_counts().await?;
    assert_eq!((rows, distinct), (live as i64, live as i64));
    stops_cleanly(&mut subscriber, CONVERGE).await?;
    std::fs::remove_dir_all(&dir)?;
    stack.teardown().await
}

#[tokio::test]
async fn dlq_redrive_applies_everything_parked_once_the_cause_is_fixed() -> Result<()> {
    let stack = Stack::new().await?;
    let writer = stack.writer();
    let mut rng = StdRng::seed_from_u64(15);
    let mut long_names = Vec::new();
    for i in 0..30 {
        let mut item = ProfileItem::random(&mut rng, &format!("dlq-{i:03}"), true);
        if i % 5 == 0 {
            item.display_name = format!("A display name far too long {i}");
            long_names.push(item.user_id.clone());
        }
        writer.create(&item).await?;
    }
    // The cause: a migration gone wrong narrowed a column under the running
    // subscriber (one started on a narrowed column refuses to start, naming it); long
    // names are refused (SQLSTATE 22001), one message per batch so each is parked on
    // its own. The subscriber's connections carry an application name, so the test
    // knows it has started (checked its tables) before the column changes.
    let app = format!("dlq-redrive-{}", std::process::id());
    let separator = if stack.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut subscriber = stack
        .subscriber_command("1", &["--max-messages", "1"])?
        .env(
            "DATABASE_URL",
            format!("{}{separator}application_name={app}", stack.database_url),
        )
        .spawn()?;
    eventually(
        "the subscriber to have checked its tables",
        CONVERGE,
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&app)
            .fetch_one(&stack.pool)
            .await?;
            Ok((n > 0).then_some(()))
        },
    )
    .await?;
    sqlx::query("ALTER TABLE analytics.user_profiles ALTER COLUMN display_name TYPE varchar(20)")
        .execute(&stack.pool)
        .await?;
    let r = &stack.resources;
    let out = replay(&snapshot(r, &r.queue_url, &[])).await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let parked = long_names.len() as u64;
    stack.wait_depth(&r.dlq_url, parked, CONVERGE).await?;
    stack.wait_depth(&r.queue_url, 0, CONVERGE).await?;

    // A filter for another reason moves nothing; a dry run lists without moving.
    let out = replay_dlq(&stack, &["--reason", "undecodable_body", "--json"]).await?;
    let report = parse_report(&out)?;
    assert_eq!(
        (report["moved"].as_u64(), report["kept"].as_u64()),
        (Some(0), Some(parked))
    );
    let out = replay_dlq(&stack, &["--reason", "apply_rejected", "--dry-run"]).await?;
    let listed = stdout(&out);
    for key in &long_names {
        assert!(
            listed.contains(key.as_str()),
            "{key} not listed in:\n{listed}"
        );
    }
    assert!(listed.contains(&format!("would move {parked}")), "{listed}");
    assert_eq!(stack.queue_depth(&r.dlq_url).await?, parked);

    // Fixed: the column is text again. Redrive: all of it applied, the DLQ empty.
    sqlx::query("ALTER TABLE analytics.user_profiles ALTER COLUMN display_name TYPE text")
        .execute(&stack.pool)
        .await?;
    let out = replay_dlq(&stack, &[]).await?;
    assert!(
        stdout(&out).contains(&format!("moved {parked}")),
        "{}",
        stdout(&out)
    );
    stack.wait_converged(CONVERGE).await?;
    stack.wait_depth(&r.dlq_url, 0, CONVERGE).await?;
    stack.finish(&mut [&mut subscriber]).await
}

/// `replay verify`'s JSON report, after checking its exit status is `code` (`what`
/// says why it should be).
async fn verify_report(stack: &Stack, extra: &[&str], code: i32, what: &str) -> Result<Value> {
    let out = verify(stack, extra).await?;
    anyhow::ensure!(
        out.status.code() == Some(code),
        "{what}, got {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    parse_report(&out)
}

async fn verify(stack: &Stack, extra: &[&str]) -> Result<Output> {
    let mut args = vec![
        "verify",
        "--table",
        &stack.resources.table,
        "--database-url",
        &stack.database_url,
        "--settle-secs",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    replay(&args).await
}

async fn exec(stack: &Stack, sql: &str, key: &str) -> Result<()> {
    let done = sqlx::query(sql).bind(key).execute(&stack.pool).await?;
    anyhow::ensure!(
        done.rows_affected() == 1,
        "{sql} touched {} rows",
        done.rows_affected()
    );
    Ok(())
}

#[tokio::test]
async fn verify_finds_each_kind_of_drift_and_repair_fixes_what_events_can() -> Result<()> {
    let stack = Stack::new().await?;
    let traffic = write(&stack, "drift", 16, TrafficPlan::new(40, 300)).await?;
    let mut subscriber = stack.spawn_subscriber(&[])?;
    let mut publisher = stack.spawn_publisher(&["--start-position", "trim-horizon"])?;
    stack.wait_converged(CONVERGE).await?;
    stops_cleanly(&mut publisher, CONVERGE).await?;

    let r = &stack.resources;
    let out = verify(&stack, &[]).await?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "in sync at first: {}",
        stdout(&out)
    );

    // Inject one drift of each kind straight into PostgreSQL (and one unreadable item
    // into the source).
    let live: Vec<&ProfileItem> = traffic.live.iter().collect();
    let updated = live
        .iter()
        .find(|p| p.version > 1)
        .context("an updated profile")?;
    let others: Vec<&&ProfileItem> = live
        .iter()
        .filter(|p| p.user_id != updated.user_id)
        .collect();
    exec(
        &stack,
        "DELETE FROM analytics.user_profiles WHERE user_id = $1",
        &others[0].user_id,
    )
    .await?;
    exec(
        &stack,
        "UPDATE analytics.user_profiles SET version = version - 1 WHERE user_id = $1",
        &updated.user_id,
    )
    .await?;
    exec(
        &stack,
        "UPDATE analytics.user_profiles SET email = 'tampered@example.com' WHERE user_id = $1",
        &others[1].user_id,
    )
    .await?;
    exec(
        &stack,
        "UPDATE analytics.user_profiles SET version = version + 5 WHERE user_id = $1",
        &others[2].user_id,
    )
    .await?;
    let gone = traffic.deleted.first().context("a deleted profile")?;
    exec(&stack, "UPDATE analytics.user_profiles SET deleted = false, deleted_reason = NULL, email = 'x@example.com', display_name = 'X', plan = 'free', marketing_email = false, marketing_sms = false, created_at = now(), updated_at = now() WHERE user_id = $1", &gone.user_id).await?;
    exec(&stack, "INSERT INTO analytics.user_profiles (user_id, email, display_name, plan, marketing_email, marketing_sms, created_at, updated_at, deleted, generation, version, last_event_id, occurred_at) VALUES ($1, 'g@example.com', 'Ghost', 'free', false, false, now(), now(), false, 1, 1, 'manual', now())", "ghost-1").await?;
    stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&r.table)
        .item("user_id", Ddb::S("broken-1".into()))
        .item("version", Ddb::S("not a number".into()))
        .send()
        .await?;

    let report = verify_report(&stack, &["--sample", "50"], 1, "drift is exit 1").await?;
    let kinds = [
        ("missing", others[0].user_id.as_str()),
        ("stale", updated.user_id.as_str()),
        ("differs", others[1].user_id.as_str()),
        ("ahead", others[2].user_id.as_str()),
        ("should_be_tombstone", gone.user_id.as_str()),
        ("no_source_item", "ghost-1"),
        ("unreadable_source", "broken-1"),
    ];
    for (kind, key) in kinds {
        assert_eq!(report["drift"][kind], 1, "{kind} in {report}");
        let sampled = report["sample"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == kind && d["key"] == key);
        assert!(sampled, "{kind} {key} not in the sample: {report}");
    }
    assert_eq!(
        report["drift"].as_object().unwrap().len(),
        kinds.len(),
        "{report}"
    );

    // Repair: events for exactly the drifted keys; what events cannot fix is left.
    let repair = ["--repair", r.queue_url.as_str()];
    let report = verify_report(&stack, &repair, 1, "unrepairable drift is left").await?;
    let repair = &report["repair"];
    assert_eq!(repair["events_sent"], 5, "{report}");
    assert_eq!(repair["remaining"]["ahead"], 1, "{report}");
    assert_eq!(repair["remaining"]["unreadable_source"], 1, "{report}");
    assert_eq!(
        repair["remaining"].as_object().unwrap().len(),
        2,
        "{report}"
    );

    // An operator fixes the rest; then everything is in sync, by both checks.
    exec(
        &stack,
        "UPDATE analytics.user_profiles SET version = version - 5 WHERE user_id = $1",
        &others[2].user_id,
    )
    .await?;
    stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&r.table)
        .key("user_id", Ddb::S("broken-1".into()))
        .send()
        .await?;
    let out = verify(&stack, &[]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    stack.wait_converged(CONVERGE).await?;
    stack.finish(&mut [&mut subscriber]).await
}

#[tokio::test]
async fn bad_flags_stop_replay_before_anything_is_sent() -> Result<()> {
    let stack = Stack::new().await?;
    write(&stack, "flags", 17, TrafficPlan::new(5, 5)).await?;
    let r = &stack.resources;
    let dir = std::env::temp_dir().join(format!("replay-{}", stack.id));
    std::fs::create_dir_all(&dir)?;
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{ half a file")?;

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["snapshot", "--table", "no-such-table", "--to", &r.queue_url],
            "no such table",
        ),
        (snapshot(r, &r.queue_url, &["--rate", "0"]), "--rate"),
        (
            snapshot(r, &r.queue_url, &["--rate", "fast"]),
            "REPLAY_RATE",
        ),
        (
            vec!["snapshot", "--table", &r.table, "--to", "the-queue"],
            "--to",
        ),
        (
            snapshot(
                r,
                &r.queue_url,
                &["--state-file", garbage.to_str().unwrap()],
            ),
            "not a replay snapshot state",
        ),
        (
            snapshot(r, &r.queue_url, &["--state-file", dir.to_str().unwrap()]),
            "cannot read the state file",
        ),
        (
            vec![
                "dlq",
                "--dlq-url",
                "http://127.0.0.1:9/nope",
                "--queue-url",
                &r.queue_url,
            ],
            "--dlq-url",
        ),
        (
            vec![
                "verify",
                "--table",
                &r.table,
                "--database-url",
                "mysql://db/x",
            ],
            "DATABASE_URL",
        ),
    ];
    for (args, says) in cases {
        let out = replay(&args).await?;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
        assert!(
            err.lines().filter(|l| l.starts_with("error")).count() == 1,
            "{args:?}: one error line: {err}"
        );
    }
    // Nothing reached the queue or the topic.
    assert_eq!(stack.queue_depth(&r.queue_url).await?, 0);
    assert_eq!(stack.queue_depth(&stack.tap_queue_url).await?, 0);
    std::fs::remove_dir_all(&dir)?;
    stack.teardown().await
}
