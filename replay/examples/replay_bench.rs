//! Benchmark of `replay snapshot` and `replay verify` on the emulators, beside the
//! emulator's own raw rate measured in the same run.
//!
//! For each table size: loads N profiles into a fresh DynamoDB Local table, measures
//! the raw rate of a parallel Scan + SNS PublishBatch with no logic (the ceiling the
//! emulators allow), runs the real `replay snapshot` binary to an SNS topic (under GNU
//! time for its peak RSS), fills a fresh PostgreSQL database with the same items through
//! the subscriber's apply path, and runs the real `replay verify` against it (time, RSS).
//!
//! ```sh
//! scripts/env-up.sh && . .run/env && export DATABASE_URL=$TRIBUTARY_TEST_DATABASE_URL
//! cargo build --workspace --all-targets --release
//! target/release/examples/replay_bench 10000 200000
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is the report

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_sns::types::PublishBatchRequestEntry;
use futures::StreamExt;
use rand::SeedableRng;
use runtime::aws::Clients;
use sqlx::{ConnectOptions, Connection, postgres::PgPoolOptions};
use stack::bootstrap::{Names, bootstrap};
use stack::demo::ProfileItem;

const SEGMENTS: u32 = 4;

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/replay_bench → target/<profile>/<name>
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// Runs a command under GNU time; returns (seconds, peak RSS in KiB, stdout).
fn timed(cmd: &mut std::process::Command) -> (f64, u64, String) {
    let out_file = std::env::temp_dir().join(format!("replay-bench-time-{}", std::process::id()));
    let mut wrapped = std::process::Command::new("/usr/bin/time");
    wrapped
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("RUST_LOG", "warn");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let out = wrapped.output().expect("GNU time runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut parts = text.split_whitespace();
    let secs = parts.next().unwrap().parse().unwrap();
    let rss = parts.next().unwrap().parse().unwrap();
    (secs, rss, stdout)
}

async fn load(clients: &Clients, table: &str, n: usize) -> Vec<ProfileItem> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let items: Vec<ProfileItem> = (0..n)
        .map(|i| ProfileItem::random(&mut rng, &format!("bench-{i:07}"), true))
        .collect();
    let requests: Vec<Vec<WriteRequest>> = items
        .chunks(25)
        .map(|chunk| {
            chunk
                .iter()
                .map(|item| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item.to_item()))
                                .build()
                                .unwrap(),
                        )
                        .build()
                })
                .collect()
        })
        .collect();
    futures::stream::iter(requests)
        .for_each_concurrent(8, |mut batch| async move {
            while !batch.is_empty() {
                let out = clients
                    .dynamodb
                    .batch_write_item()
                    .request_items(table, batch)
                    .send()
                    .await
                    .expect("BatchWriteItem");
                batch = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
            }
        })
        .await;
    items
}

/// The emulators' own rate: parallel Scan + PublishBatch of each item as JSON, no logic.
async fn raw_scan_publish(clients: &Clients, table: &str, topic: &str) -> (u64, f64) {
    let started = Instant::now();
    let counts = futures::stream::iter(0..SEGMENTS)
        .map(|segment| async move {
            let mut start: Option<HashMap<String, AttributeValue>> = None;
            let mut n = 0u64;
            loop {
                let out = clients
                    .dynamodb
                    .scan()
                    .table_name(table)
                    .segment(segment as i32)
                    .total_segments(SEGMENTS as i32)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .expect("Scan");
                let items = out.items.unwrap_or_default();
                n += items.len() as u64;
                let bodies: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
                let batches: Vec<Vec<String>> = bodies.chunks(10).map(<[String]>::to_vec).collect();
                futures::stream::iter(batches)
                    .for_each_concurrent(4, |batch| async move {
                        let entries = batch
                            .iter()
                            .enumerate()
                            .map(|(i, b)| {
                                PublishBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .message(b)
                                    .build()
                                    .unwrap()
                            })
                            .collect();
                        clients
                            .sns
                            .publish_batch()
                            .topic_arn(topic)
                            .set_publish_batch_request_entries(Some(entries))
                            .send()
                            .await
                            .expect("PublishBatch");
                    })
                    .await;
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => return n,
                }
            }
        })
        .buffer_unordered(SEGMENTS as usize)
        .collect::<Vec<u64>>()
        .await;
    (counts.iter().sum(), started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    };
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL (an admin URL) is set");
    let config = runtime::aws::default_sdk_config().await;
    let clients = Clients::new(&config);
    println!(
        "| items | raw scan+publish items/s | `replay snapshot` items/s | snapshot/raw | snapshot peak RSS | `replay verify` s | verify items/s | verify peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for n in sizes {
        let id = e2e_id();
        let names = Names::scratch("bench-", &id);
        let resources = bootstrap(&clients, &names).await.expect("bootstrap");
        // A topic with no subscription: what is measured is the publish, not delivery.
        let sink = clients
            .sns
            .create_topic()
            .name(format!("bench-sink-{id}"))
            .send()
            .await
            .unwrap();
        let sink = sink.topic_arn.unwrap();
        let t = Instant::now();
        let items = load(&clients, &resources.table, n).await;
        eprintln!("loaded {n} items in {:.1} s", t.elapsed().as_secs_f64());

        let (raw_n, raw_secs) = raw_scan_publish(&clients, &resources.table, &sink).await;
        assert_eq!(raw_n, n as u64);
        let raw_rate = raw_n as f64 / raw_secs;

        let (snap_secs, snap_rss, snap_out) = timed(
            std::process::Command::new(sibling("replay"))
                .args([
                    "--json",
                    "snapshot",
                    "--table",
                    &resources.table,
                    "--to",
                    &sink,
                ])
                .args(["--segments", &SEGMENTS.to_string()]),
        );
        let report: serde_json::Value =
            serde_json::from_str(snap_out.lines().last().unwrap()).unwrap();
        assert_eq!(report["events_sent"], n as u64, "{report}");
        let snap_rate = n as f64 / snap_secs;

        // The store, filled with the same items through the subscriber's apply path.
        let database = format!("replay_bench_{id}");
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let options: sqlx::postgres::PgConnectOptions = admin_url.parse().unwrap();
        let db_url = options
            .clone()
            .database(&database)
            .to_url_lossy()
            .to_string();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.database(&database))
            .await
            .unwrap();
        subscriber::MIGRATOR.run(&pool).await.unwrap();
        let now = time::OffsetDateTime::now_utc();
        for chunk in items.chunks(2000) {
            let events: Vec<_> = chunk
                .iter()
                .map(|p| {
                    let item = replay::items::from_sdk(p.to_item());
                    replay::items::snapshot_event(&item, &resources.table, now).unwrap()
                })
                .collect();
            subscriber::apply::apply_atomically(&pool, &events)
                .await
                .unwrap();
        }
        let (ver_secs, ver_rss, ver_out) =
            timed(std::process::Command::new(sibling("replay")).args([
                "--json",
                "verify",
                "--table",
                &resources.table,
                "--database-url",
                &db_url,
            ]));
        let report: serde_json::Value =
            serde_json::from_str(ver_out.lines().last().unwrap()).unwrap();
        assert_eq!(report["source_items"], n as u64, "{report}");
        assert!(report["drift"].as_object().unwrap().is_empty(), "{report}");
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {database}"))
            .execute(&mut admin)
            .await
            .unwrap();
        clients
            .dynamodb
            .delete_table()
            .table_name(&resources.table)
            .send()
            .await
            .unwrap();

        println!(
            "| {n} | {raw_rate:.0} | {snap_rate:.0} | {:.2} | {:.1} MiB | {ver_secs:.1} | {:.0} | {:.1} MiB |",
            snap_rate / raw_rate,
            snap_rss as f64 / 1024.0,
            n as f64 / ver_secs,
            ver_rss as f64 / 1024.0
        );
    }
}

fn e2e_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}
