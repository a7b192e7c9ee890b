//! End-to-end: the operator's view. `/metrics`, `/healthz` and `/readyz` of the real
//! `publisher` and `subscriber run` while events flow; readiness when PostgreSQL goes
//! away (a proxy between the subscriber and the shared server is cut — the server
//! itself is never touched); `replay status` against a state set up on purpose.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use e2e::operator::{http_get, sample};
use e2e::{Stack, eventually};
use sqlx::ConnectOptions;
use stack::demo::{Traffic, TrafficPlan};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(90);

async fn write(stack: &Stack, prefix: &str, seed: u64, plan: TrafficPlan) -> Result<Traffic> {
    stack.write_traffic(prefix, seed, plan).await
}

async fn metrics(addr: SocketAddr) -> Result<String> {
    let (status, body) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    Ok(body)
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// Waits until `addr`'s `/readyz` answers `want`; returns the body.
async fn readiness(addr: SocketAddr, want: u16, timeout: Duration) -> Result<String> {
    eventually(
        &format!("/readyz on {addr} to answer {want}"),
        timeout,
        || async {
            Ok(match http_get(addr, "/readyz").await {
                Ok((status, body)) if status == want => Some(body),
                _ => None,
            })
        },
    )
    .await
}

#[tokio::test]
async fn metrics_move_with_the_events_and_readiness_follows_the_database() -> Result<()> {
    let stack = Stack::new().await?;
    let (proxy, through) = stack.database_behind_proxy().await?;
    let proxied_url = through.to_url_lossy().to_string();

    let pub_addr: SocketAddr = e2e::free_addr()?;
    let sub_addr: SocketAddr = e2e::free_addr()?;
    let mut publisher = stack.spawn_publisher(&["--metrics-addr", &pub_addr.to_string()])?;
    let mut subscriber = stack.spawn_subscriber(&[
        "--database-url",
        &proxied_url,
        "--metrics-addr",
        &sub_addr.to_string(),
    ])?;

    let body = readiness(sub_addr, 200, CONVERGE).await?;
    assert_eq!(body, "database: ok\nqueue: ok\n");
    let body = readiness(pub_addr, 200, CONVERGE).await?;
    assert_eq!(body, "pipeline: ok\ncheckpoint_table: ok\ntopic: ok\n");
    assert_eq!(http_get(sub_addr, "/healthz").await?.0, 200);
    assert_eq!(http_get(pub_addr, "/healthz").await?.0, 200);

    let before = metrics(sub_addr).await?;
    assert_eq!(value(&before, "tributary_events_applied_total"), 0.0);
    // Each process says which build answers.
    for (addr, service) in [(sub_addr, "subscriber"), (pub_addr, "publisher")] {
        let info = format!(
            "tributary_build_info{{version=\"{}\",service=\"{service}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&metrics(addr).await?, &info), 1.0);
    }
    assert_eq!(
        value(
            &before,
            "tributary_messages_parked_total{reason=\"malformed_json\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &metrics(pub_addr).await?,
            "tributary_events_published_total"
        ),
        0.0
    );

    // Events flow: the counters follow them.
    let traffic = write(&stack, "ops", 11, TrafficPlan::new(8, 40)).await?;
    let total = traffic.stats.total() as f64;
    stack.wait_converged(CONVERGE).await?;
    // The checkpoint follows the publish by design (after 200 records, 1 s, or as
    // soon as the shard is idle), so both are waited for.
    let published = eventually(
        "the publisher to count every event and checkpoint it",
        CONVERGE,
        || async {
            let m = metrics(pub_addr).await?;
            Ok((value(&m, "tributary_events_published_total") >= total
                && value(&m, "tributary_checkpoints_written_total") >= 1.0)
                .then_some(m))
        },
    )
    .await?;
    assert!(value(&published, "tributary_stream_records_read_total") >= total);
    assert!(value(&published, "tributary_stream_batch_size_count") >= 1.0);
    assert!(
        published.contains("tributary_stream_iterator_age_seconds{shard=\""),
        "an iterator age per shard:\n{published}"
    );
    assert!(value(&published, "tributary_last_poll_age_seconds") < 30.0);

    let after = eventually("the subscriber to count every event", CONVERGE, || async {
        let m = metrics(sub_addr).await?;
        let seen =
            value(&m, "tributary_events_applied_total") + value(&m, "tributary_events_stale_total");
        Ok((seen >= total).then_some(m))
    })
    .await?;
    assert!(value(&after, "tributary_events_applied_total") > 0.0);
    assert!(value(&after, "tributary_messages_received_total") >= total);
    assert!(value(&after, "tributary_receive_batch_size_count") >= 1.0);
    assert!(value(&after, "tributary_replication_lag_seconds_count") >= total);
    assert!(
        value(
            &after,
            "tributary_replication_lag_seconds_bucket{le=\"+Inf\"}"
        ) >= total
    );
    assert!(value(&after, "tributary_last_poll_age_seconds") < 30.0);

    // PostgreSQL goes away: not ready, still alive.
    proxy.cut();
    let body = readiness(sub_addr, 503, Duration::from_secs(30)).await?;
    assert!(body.starts_with("database: "), "{body}");
    assert!(body.ends_with("queue: ok\n"), "{body}");
    assert_eq!(http_get(sub_addr, "/healthz").await?.0, 200);

    // It comes back: ready again, and replication resumes.
    proxy.restore();
    readiness(sub_addr, 200, CONVERGE).await?;
    write(&stack, "ops-after", 12, TrafficPlan::new(4, 12)).await?;
    stack.wait_converged(CONVERGE).await?;

    e2e::stops_cleanly(&mut publisher, Duration::from_secs(20)).await?;
    stack.finish(&mut [&mut subscriber]).await
}

/// A v2 upsert of `key` whose change happened `ago` before now.
fn event(key: &str, version: i64, ago: Duration) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../../contracts/fixtures/v2/upserted.json"))?;
    let occurred = (OffsetDateTime::now_utc() - ago).format(&Rfc3339)?;
    v["event_id"] = format!("{key}-v{version}").into();
    v["key"] = key.into();
    v["version"] = version.into();
    v["occurred_at"] = occurred.clone().into();
    v["data"]["user_id"] = key.into();
    v["data"]["updated_at"] = occurred.into();
    Ok(v.to_string())
}

#[tokio::test]
async fn status_shows_the_parked_messages_by_reason_and_the_lag_it_was_given() -> Result<()> {
    let stack = Stack::new().await?;
    let space = format!("status-{}", stack.id);
    let lag = Duration::from_secs(120);
    let mut bodies: Vec<String> = (0..5)
        .map(|i| event(&format!("{space}-{i:03}"), 1, lag))
        .collect::<Result<_>>()?;
    let mut newer: serde_json::Value = serde_json::from_str(&bodies[0])?;
    newer["schema_version"] = 9.into();
    bodies.push("not json".to_owned());
    bodies.push("{\"half\": ".to_owned());
    bodies.push(newer.to_string());
    stack.send_bodies(&bodies).await?;

    let mut subscriber = stack.spawn_subscriber(&[])?;
    eventually("5 changes applied and 3 parked", CONVERGE, || async {
        let (history, _) = stack.history_counts().await?;
        let parked = stack.queue_depth(&stack.resources.dlq_url).await?;
        Ok((history == 5 && parked == 3).then_some(()))
    })
    .await?;
    e2e::stops_cleanly(&mut subscriber, Duration::from_secs(30)).await?;

    // `replay status`, in text or JSON, told of the publisher's failure queue or not.
    let run_status = |json: bool, failure_queue: bool| -> Result<serde_json::Value> {
        let mut cmd = std::process::Command::new(e2e::bin("replay")?);
        cmd.arg("status")
            .env("DATABASE_URL", &stack.database_url)
            .env("SUBSCRIBER_QUEUE_URL", &stack.resources.queue_url)
            .env("RUST_LOG", "warn");
        if failure_queue {
            let url = &stack.resources.failure_queue_url;
            cmd.env("PUBLISHER_FAILURE_QUEUE_URL", url);
        }
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "replay status failed: {stderr}");
        Ok(if json {
            serde_json::from_slice(&out.stdout)?
        } else {
            String::from_utf8(out.stdout)?.into()
        })
    };
    let s = run_status(true, false)?;

    assert_eq!(s["in_sync"], false, "{s:#}");
    assert_eq!(
        s["queue"]["visible"].as_u64().unwrap() + s["queue"]["in_flight"].as_u64().unwrap(),
        0,
        "{s:#}"
    );
    assert_eq!(
        s["dlq"]["url"],
        stack.resources.dlq_url.as_str(),
        "the DLQ from the redrive policy"
    );
    assert_eq!(s["dlq"]["visible"], 3, "{s:#}");
    assert_eq!(s["parked_peeked"], 3);
    let groups: Vec<(String, u64)> = s["parked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["reason"].as_str().unwrap().to_owned(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        vec![
            ("malformed_json".to_owned(), 2),
            ("unsupported_schema_version".to_owned(), 1)
        ]
    );
    let sample = &s["parked"][1]["sample"];
    assert_eq!(
        sample["body"].as_str().unwrap().chars().count(),
        160.min(newer.to_string().chars().count())
    );
    assert!(sample["detail"].as_str().unwrap().contains('9'), "{sample}");

    // The lag it was given: occurred two minutes before it was applied.
    let last_ms = s["lag"]["last_ms"].as_i64().unwrap();
    assert!((120_000..150_000).contains(&last_ms), "lag {last_ms} ms");
    assert_eq!(s["lag"]["window"]["changes"], 5);
    let p50 = s["lag"]["window"]["p50_ms"].as_i64().unwrap();
    assert!((120_000..150_000).contains(&p50), "p50 {p50} ms");
    assert!(!s["lag"]["per_minute"].as_array().unwrap().is_empty());
    assert_eq!(s["key_spaces"][0]["key_space"], space.as_str());
    assert_eq!(s["key_spaces"][0]["changes"], 5);

    // Read-only: the peeked messages are visible again at once.
    assert_eq!(stack.queue_depth(&stack.resources.dlq_url).await?, 3);

    let text = run_status(false, false)?;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.starts_with("analytics   NOT IN SYNC: 3 messages parked in the DLQ\n"),
        "{text}"
    );
    assert!(text.contains("malformed_json"), "{text}");
    assert!(text.contains(space.as_str()), "{text}");

    // Once the DLQ is dealt with, it is in sync.
    stack
        .drain(
            &stack.resources.dlq_url,
            Duration::from_millis(500),
            CONVERGE,
        )
        .await?;
    let s = run_status(true, false)?;
    assert_eq!(s["in_sync"], true, "{s:#}");

    // A record the publisher parked in its failure queue: not in sync, and said so.
    stack
        .clients
        .sqs
        .send_message()
        .queue_url(&stack.resources.failure_queue_url)
        .message_body("{\"reason\":\"publish_refused\"}")
        .send()
        .await?;
    let s = run_status(true, true)?;
    assert_eq!(s["in_sync"], false, "{s:#}");
    assert_eq!(s["failure_queue"]["visible"], 1, "{s:#}");
    let text = run_status(false, true)?;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.starts_with(
            "analytics   NOT IN SYNC: 1 records parked in the publisher's failure queue"
        ),
        "{text}"
    );
    stack.teardown().await
}

#[tokio::test]
async fn a_readyz_flood_neither_takes_the_workers_connections_nor_stops_them() -> Result<()> {
    let stack = Stack::new().await?;
    let addr: SocketAddr = e2e::free_addr()?;
    let mut subscriber = stack.spawn_subscriber(&[
        "--metrics-addr",
        &addr.to_string(),
        "--workers",
        "1",
        "--db-max-connections",
        "2",
    ])?;
    readiness(addr, 200, CONVERGE).await?;

    let space = format!("flood-{}", stack.id);
    let bodies: Vec<String> = (0..20)
        .map(|i| event(&format!("{space}-{i:03}"), 1, Duration::ZERO))
        .collect::<Result<_>>()?;
    let flooding = CancellationToken::new();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let stop = flooding.clone();
        flood.spawn(async move {
            let mut answered = 0u32;
            while !stop.is_cancelled() {
                // Refused connections (over the server's limit) are part of a flood.
                if let Ok((code, _)) = http_get(addr, "/readyz").await {
                    answered += u32::from(code == 200);
                }
            }
            answered
        });
    }
    stack.send_bodies(&bodies).await?;
    // The workers apply everything while the flood goes on.
    eventually("every event applied under the flood", CONVERGE, || async {
        let (history, _) = stack.history_counts().await?;
        Ok((history == 20).then_some(()))
    })
    .await?;
    // The readiness probe holds one connection of its own, named, and no more.
    let probes: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = $1",
    )
    .bind(subscriber::readiness::READINESS_APPLICATION_NAME)
    .fetch_all(&stack.pool)
    .await?;
    assert_eq!(probes, [1], "the probe's own connection");
    flooding.cancel();
    let mut answered = 0;
    while let Some(n) = flood.join_next().await {
        answered += n?;
    }
    assert!(answered > 0, "the flood was answered");
    let m = metrics(addr).await?;
    assert_eq!(
        value(&m, "tributary_messages_retried_total"),
        0.0,
        "no batch failed for want of a connection"
    );
    stack.finish(&mut [&mut subscriber]).await
}

/// A GetRecords page larger than `--checkpoint-every` is published in slices, each
/// checkpointed: a publisher killed mid-page resends one slice, not the page (the large
/// chaos run stalled when every restart re-published the same 1 000-record page).
#[tokio::test]
async fn a_large_page_is_checkpointed_slice_by_slice() -> Result<()> {
    let stack = Stack::new().await?;
    // Written before the publisher starts, so its first reads return big pages.
    let traffic = write(&stack, "slices", 12, TrafficPlan::new(300, 300)).await?;
    let total = traffic.stats.total() as f64;
    let addr: SocketAddr = e2e::free_addr()?;
    let mut publisher = stack.spawn_publisher(&[
        "--checkpoint-every",
        "50",
        "--metrics-addr",
        &addr.to_string(),
    ])?;
    eventually("the publisher to publish every event", CONVERGE, || async {
        let Ok(m) = metrics(addr).await else {
            return Ok(None);
        };
        Ok((value(&m, "tributary_events_published_total") >= total).then_some(()))
    })
    .await?;
    // The last slice's checkpoint follows its publish: wait for the count to settle.
    let mut last = String::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = metrics(addr).await?;
        let settled = value(&m, "tributary_checkpoints_written_total")
            == sample(&last, "tributary_checkpoints_written_total").unwrap_or(-1.0);
        last = m;
        if settled {
            break;
        }
    }
    let pages = value(&last, "tributary_stream_batch_size_count");
    let checkpoints = value(&last, "tributary_checkpoints_written_total");
    // One checkpoint per slice of 50: at least 300 / 50, and more than one per page.
    assert!(
        checkpoints >= total / 50.0 && checkpoints > pages,
        "{checkpoints} checkpoints for {total} records in {pages} non-empty pages"
    );
    stack.finish(&mut [&mut publisher]).await
}

/// Under a backlog a worker gathers several receives into one transaction
/// (`--batch-max-messages`); the batch-size histogram shows batches above one receive's
/// 10 messages, and the state converges.
#[tokio::test]
async fn a_backlog_is_applied_in_batches_larger_than_one_receive() -> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let traffic = write(&stack, "gather", 13, TrafficPlan::new(60, 200)).await?;
    let total = traffic.stats.total();
    // The whole backlog is queued before any subscriber runs.
    eventually("every event to be queued", CONVERGE, || async {
        Ok((stack.queue_depth(&stack.resources.queue_url).await? >= total).then_some(()))
    })
    .await?;
    let addr: SocketAddr = e2e::free_addr()?;
    let mut subscriber = stack.spawn_subscriber(&[
        "--workers",
        "1",
        "--batch-max-messages",
        "100",
        "--batch-window-ms",
        "1000",
        "--metrics-addr",
        &addr.to_string(),
    ])?;
    stack.wait_converged(CONVERGE).await?;
    let m = metrics(addr).await?;
    let batches = value(&m, "tributary_receive_batch_size_count");
    let at_most_ten = value(&m, "tributary_receive_batch_size_bucket{le=\"10.0\"}");
    let messages = value(&m, "tributary_messages_received_total");
    assert!(messages >= total as f64, "{messages} received of {total}");
    assert!(
        at_most_ten < batches,
        "every one of {batches} batches held at most 10 messages"
    );
    assert!(value(&m, "tributary_receive_batch_size_bucket{le=\"100.0\"}") == batches);
    e2e::stops_cleanly(&mut subscriber, Duration::from_secs(30)).await?;
    stack.finish(&mut [&mut publisher]).await
}
