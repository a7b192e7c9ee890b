//! The bad-input corpus (`tests/corpus/`, made by `tests/corpus/generate.py`): every
//! file is refused with the reason its directory names, by the decoders directly and
//! through the real queue, table and binaries, among good traffic that still applies.
//!
//! - `subscriber/<reason>/*.body`: SQS bodies; parked in the DLQ with
//!   `tributary-reason = <reason>`.
//! - `publisher/table/<reason>/*.json`: DynamoDB items written through the real table;
//!   parked in the publisher's failure queue with `<reason>` (`published/`: odd but
//!   valid items that must be published).
//! - `publisher/record/<reason>/*.json`: stream records DynamoDB cannot produce, fed to
//!   the record decoder directly (`published/`: good records of every kind).
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue as Ddb;
use base64::Engine;
use e2e::{Stack, eventually};
use publisher::record::{AttributeValue, Item, Origin, StreamRecord, project, to_event};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::Value;
use sqlx::Row;

const CONVERGE: Duration = Duration::from_secs(120);
use runtime::limits::sns::MAX_PAYLOAD_BYTES as SNS_MAX_BYTES;

/// One corpus file: the reason it must be refused with (its directory), its name, path.
#[derive(Debug, Clone)]
struct Case {
    reason: String,
    name: String,
    path: PathBuf,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The files under `corpus/<sub>/<reason>/`, sorted.
fn cases(sub: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for reason_dir in std::fs::read_dir(corpus_dir().join(sub)).unwrap() {
        let reason_dir = reason_dir.unwrap().path();
        let reason = reason_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for file in std::fs::read_dir(&reason_dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push(Case {
                reason: reason.clone(),
                name,
                path,
            });
        }
    }
    out.sort_by(|a, b| (&a.reason, &a.name).cmp(&(&b.reason, &b.name)));
    out
}

fn read(case: &Case) -> String {
    std::fs::read_to_string(&case.path).unwrap()
}

/// Reasons the subscriber's decoder gives; `apply_rejected` comes from the database.
const APPLY_REJECTED: &str = "apply_rejected";

#[test]
fn the_corpus_has_at_least_fifty_files_each_named_for_a_known_reason() {
    let sub = cases("subscriber");
    let table = cases("publisher/table");
    let records = cases("publisher/record");
    assert!(
        sub.len() + table.len() + records.len() >= 50,
        "{} files",
        sub.len() + table.len() + records.len()
    );
    let known_sub: Vec<&str> = subscriber::envelope::BodyError::reason_codes()
        .chain([APPLY_REJECTED])
        .collect();
    for c in &sub {
        assert!(known_sub.contains(&c.reason.as_str()), "{c:?}");
    }
}

#[test]
fn every_subscriber_body_is_refused_by_the_decoder_with_its_reason() {
    let mut wrong = Vec::new();
    for case in cases("subscriber") {
        let body = read(&case);
        let got = match subscriber::entity::decode_body(&body) {
            // Valid to the contract; PostgreSQL refuses it (see the end-to-end test).
            Ok(_) => APPLY_REJECTED.to_owned(),
            Err(e) => e.reason_code().to_owned(),
        };
        if got != case.reason {
            wrong.push(format!("{}/{}: got {got}", case.reason, case.name));
        }
    }
    assert!(wrong.is_empty(), "wrong reasons:\n{}", wrong.join("\n"));
}

/// DynamoDB JSON (`{"S": "x"}`, `{"B": "<base64>"}`, …) → the SDK's attribute value.
fn ddb_value(v: &Value) -> Ddb {
    let (t, x) = v.as_object().unwrap().iter().next().unwrap();
    let strings = |x: &Value| -> Vec<String> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let blob = |x: &Value| {
        Blob::new(
            base64::engine::general_purpose::STANDARD
                .decode(x.as_str().unwrap())
                .unwrap(),
        )
    };
    match t.as_str() {
        "S" => Ddb::S(x.as_str().unwrap().to_owned()),
        "N" => Ddb::N(x.as_str().unwrap().to_owned()),
        "B" => Ddb::B(blob(x)),
        "BOOL" => Ddb::Bool(x.as_bool().unwrap()),
        "NULL" => Ddb::Null(true),
        "SS" => Ddb::Ss(strings(x)),
        "NS" => Ddb::Ns(strings(x)),
        "BS" => Ddb::Bs(x.as_array().unwrap().iter().map(blob).collect()),
        "L" => Ddb::L(x.as_array().unwrap().iter().map(ddb_value).collect()),
        "M" => Ddb::M(
            x.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), ddb_value(v)))
                .collect(),
        ),
        other => panic!("unknown DynamoDB type {other}"),
    }
}

fn ddb_item(case: &Case, user_id: &str) -> HashMap<String, Ddb> {
    let json: Value = serde_json::from_str(&read(case)).unwrap();
    let mut item: HashMap<String, Ddb> = json
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), ddb_value(v)))
        .collect();
    item.insert("user_id".into(), Ddb::S(user_id.to_owned()));
    item
}

/// The SDK's value → the decoder's (what the stream hands the publisher).
fn decoder_value(v: &Ddb) -> AttributeValue {
    match v {
        Ddb::S(s) => AttributeValue::S(s.clone()),
        Ddb::N(n) => AttributeValue::N(n.clone()),
        Ddb::B(b) => AttributeValue::B(b.as_ref().to_vec()),
        Ddb::Bool(b) => AttributeValue::Bool(*b),
        Ddb::Null(_) => AttributeValue::Null,
        Ddb::Ss(v) => AttributeValue::Ss(v.clone()),
        Ddb::Ns(v) => AttributeValue::Ns(v.clone()),
        Ddb::Bs(v) => AttributeValue::Bs(v.iter().map(|b| b.as_ref().to_vec()).collect()),
        Ddb::L(l) => AttributeValue::L(l.iter().map(decoder_value).collect()),
        Ddb::M(m) => AttributeValue::M(
            m.iter()
                .map(|(k, v)| (k.clone(), decoder_value(v)))
                .collect(),
        ),
        _ => AttributeValue::Unsupported,
    }
}

fn origin() -> Origin {
    Origin {
        table: "profiles".into(),
        stream_arn: "arn:aws:dynamodb:us-east-1:000000000000:table/profiles/stream/x".into(),
    }
}

#[test]
fn every_table_item_decodes_as_its_directory_says() {
    let mut wrong = Vec::new();
    for case in cases("publisher/table") {
        let item: Item = ddb_item(&case, "corpus-t")
            .iter()
            .map(|(k, v)| (k.clone(), decoder_value(v)))
            .collect();
        let record = StreamRecord {
            event_id: Some("e-1".into()),
            event_name: publisher::record::EventName::Insert,
            keys: Item::from([("user_id".into(), AttributeValue::S("corpus-t".into()))]),
            new_image: Some(item),
            old_image: None,
            sequence_number: Some("1".into()),
            approximate_creation: None,
            user_identity: None,
        };
        let got = match to_event(&record, &origin(), time::OffsetDateTime::UNIX_EPOCH) {
            Err(e) => e.reason_code().to_owned(),
            Ok(None) => "skipped".to_owned(),
            Ok(Some(event)) => {
                if event.encode(contracts::CURRENT_SCHEMA_VERSION).len() > SNS_MAX_BYTES {
                    "message_too_large".to_owned()
                } else {
                    "published".to_owned()
                }
            }
        };
        if got != case.reason {
            wrong.push(format!("{}/{}: got {got}", case.reason, case.name));
        }
    }
    assert!(wrong.is_empty(), "wrong reasons:\n{}", wrong.join("\n"));
}

#[test]
fn every_stream_record_is_refused_with_its_reason_or_published() {
    let mut wrong = Vec::new();
    for case in cases("publisher/record") {
        let record: StreamRecord = serde_json::from_str(&read(&case))
            .with_context(|| format!("{:?} is not a stream record", case.path))
            .unwrap();
        let got = match to_event(&record, &origin(), time::OffsetDateTime::UNIX_EPOCH) {
            Err(e) => e.reason_code().to_owned(),
            Ok(None) => "skipped".to_owned(),
            Ok(Some(event)) => {
                // What the publisher emits, the subscriber reads back as the same change.
                let back = contracts::decode(&event.encode(contracts::CURRENT_SCHEMA_VERSION))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", case.name))
                    .unwrap();
                assert_eq!(back.change, event.change, "{}", case.name);
                "published".to_owned()
            }
        };
        if got != case.reason {
            wrong.push(format!("{}/{}: got {got}", case.reason, case.name));
        }
        // Whatever the record, projecting its images never panics either.
        for image in [&record.new_image, &record.old_image].into_iter().flatten() {
            let _ = project(image, "corpus");
        }
    }
    assert!(wrong.is_empty(), "wrong reasons:\n{}", wrong.join("\n"));
}

/// A valid v2 upsert of `key` at `version`.
fn good_body(key: &str, version: i64) -> String {
    let mut v: Value =
        serde_json::from_str(include_str!("../../contracts/fixtures/v2/upserted.json")).unwrap();
    v["event_id"] = format!("good-{key}-{version}").into();
    v["key"] = key.into();
    v["version"] = version.into();
    v["data"]["user_id"] = key.into();
    v["data"]["display_name"] = format!("Good {key} v{version}").into();
    v.to_string()
}

fn reason_of(m: &aws_sdk_sqs::types::Message) -> String {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get("tributary-reason"))
        .and_then(|v| v.string_value.clone())
        .unwrap_or_else(|| "<no tributary-reason>".into())
}

/// Collects DLQ messages until every body in `expected` has arrived.
async fn wait_parked(
    stack: &Stack,
    url: &str,
    expected: &HashMap<String, String>,
    parked: &mut HashMap<String, String>,
) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    while expected.keys().any(|b| !parked.contains_key(b)) {
        if Instant::now() > deadline {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(b, _)| !parked.contains_key(*b))
                .map(|(_, name)| name.clone())
                .collect();
            bail!("not parked after {CONVERGE:?}: {missing:?}");
        }
        for m in stack
            .drain(url, Duration::from_millis(500), CONVERGE)
            .await?
        {
            let reason = reason_of(&m);
            let body = m.body.unwrap_or_default();
            // Parking is at least once (sent to the DLQ, then deleted from the queue): a
            // second copy is allowed, a second reason is not.
            if let Some(first) = parked.insert(body.clone(), reason.clone()) {
                anyhow::ensure!(
                    first == reason,
                    "parked twice with different reasons ({first}, {reason}): {}",
                    expected
                        .get(&body)
                        .map_or("a body not sent", |s| s.as_str())
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_corpus_body_sent_among_good_traffic_is_parked_with_its_reason() -> Result<()> {
    let stack = Stack::new().await?;
    let mut subscriber = stack.spawn_subscriber(&["--workers", "4"])?;

    // 20 good keys × 3 versions each, shuffled in among the corpus bodies.
    let good: Vec<String> = (0..20)
        .flat_map(|k| (1..=3).map(move |v| good_body(&format!("good-{k:02}"), v)))
        .collect();
    let all = cases("subscriber");
    let (rejected_by_db, refused): (Vec<_>, Vec<_>) =
        all.iter().partition(|c| c.reason == APPLY_REJECTED);
    let expected: HashMap<String, String> = refused
        .iter()
        .map(|c| (read(c), format!("{}/{}", c.reason, c.name)))
        .collect();
    anyhow::ensure!(
        expected.len() == refused.len(),
        "two corpus files are equal"
    );
    let mut bodies: Vec<String> = good
        .iter()
        .cloned()
        .chain(expected.keys().cloned())
        .collect();
    bodies.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    stack.send_bodies(&bodies).await?;

    let mut parked = HashMap::new();
    wait_parked(&stack, &stack.resources.dlq_url, &expected, &mut parked).await?;

    // The events the database refuses, all at once: the store accepts a good event, so
    // each is parked on its own evidence, whatever else shares its batch.
    let db_bodies: Vec<String> = rejected_by_db.iter().map(|case| read(case)).collect();
    stack.send_bodies(&db_bodies).await?;
    let expected_refused: HashMap<String, String> = rejected_by_db
        .iter()
        .map(|case| (read(case), format!("{}/{}", case.reason, case.name)))
        .collect();
    wait_parked(
        &stack,
        &stack.resources.dlq_url,
        &expected_refused,
        &mut parked,
    )
    .await?;

    let mut wrong = Vec::new();
    for case in &all {
        let got = parked
            .get(&read(case))
            .map_or("<not parked>", |s| s.as_str());
        if got != case.reason {
            wrong.push(format!("{}/{}: parked as {got}", case.reason, case.name));
        }
    }
    assert!(wrong.is_empty(), "wrong reasons:\n{}", wrong.join("\n"));
    assert_eq!(parked.len(), all.len(), "something else was parked");

    // Every good message applied: each key at version 3, one history row per message,
    // and nothing from the corpus reached the store.
    eventually("the good messages to apply", CONVERGE, || async {
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM analytics.profile_changes")
            .fetch_one(&stack.pool)
            .await?
            .try_get("n")?;
        Ok((n >= good.len() as i64).then_some(()))
    })
    .await?;
    let rows = sqlx::query("SELECT user_id, version FROM analytics.user_profiles")
        .fetch_all(&stack.pool)
        .await?;
    let rows: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| Ok((r.try_get("user_id")?, r.try_get("version")?)))
        .collect::<Result<_>>()?;
    assert_eq!(rows.len(), 20, "rows: {rows:?}");
    assert!(rows.iter().all(|(k, v)| k.starts_with("good-") && *v == 3));
    assert_eq!(stack.history_counts().await?, (60, 60));
    assert_eq!(stack.queue_depth(&stack.resources.queue_url).await?, 0);

    // No panic, no stall: the subscriber is still running and stops cleanly.
    assert!(subscriber.try_wait()?.is_none(), "the subscriber died");
    stack.finish(&mut [&mut subscriber]).await
}

fn parked_key(m: &aws_sdk_sqs::types::Message) -> Result<String> {
    let parked: publisher::park::ParkedRecord =
        serde_json::from_str(m.body.as_deref().unwrap_or_default())?;
    match parked.record.keys.get("user_id") {
        Some(AttributeValue::S(k)) => Ok(k.clone()),
        other => bail!("parked record without a string key: {other:?}"),
    }
}

#[tokio::test]
async fn every_corpus_item_written_to_the_table_is_parked_or_published_as_expected() -> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut cases = cases("publisher/table");
    cases.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let key = |c: &Case| format!("corpus-{}-{}", c.reason, c.name);
    for case in &cases {
        stack
            .clients
            .dynamodb
            .put_item()
            .table_name(&stack.resources.table)
            .set_item(Some(ddb_item(case, &key(case))))
            .send()
            .await
            .with_context(|| format!("DynamoDB refused {}", key(case)))?;
    }
    // One plain good profile after all of them: the shard did not stall.
    let last = Case {
        reason: "published".into(),
        name: "written-last".into(),
        path: corpus_dir().join("publisher/table/published/unicode-everywhere.json"),
    };
    stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&stack.resources.table)
        .set_item(Some(ddb_item(&last, &key(&last))))
        .send()
        .await?;

    let want_parked: BTreeMap<String, String> = cases
        .iter()
        .filter(|c| c.reason != "published")
        .map(|c| (key(c), c.reason.clone()))
        .collect();
    let mut want_published: Vec<String> = cases
        .iter()
        .filter(|c| c.reason == "published")
        .map(key)
        .chain([key(&last)])
        .collect();
    want_published.sort();

    let mut parked = BTreeMap::new();
    let deadline = Instant::now() + CONVERGE;
    while parked.len() < want_parked.len() && Instant::now() < deadline {
        for m in stack
            .drain(
                &stack.resources.failure_queue_url,
                Duration::from_millis(500),
                CONVERGE,
            )
            .await?
        {
            parked.insert(parked_key(&m)?, reason_of(&m));
        }
    }
    assert_eq!(parked, want_parked);

    let mut published = Vec::new();
    let quiet = Duration::from_millis(500);
    let tapped = stack.take_at_least(&stack.tap_queue_url, want_published.len(), quiet, CONVERGE);
    for m in tapped.await? {
        let v: Value = serde_json::from_str(m.body.as_deref().unwrap_or_default())?;
        published.push(v["key"].as_str().context("key")?.to_owned());
    }
    published.sort();
    published.dedup(); // at-least-once: a re-publish is allowed, a loss is not
    assert_eq!(published, want_published);

    assert!(publisher.try_wait()?.is_none(), "the publisher died");
    stack.finish(&mut [&mut publisher]).await
}
