//! The Lambda handlers against the real emulators and PostgreSQL: `publisher-lambda`'s
//! and `subscriber-lambda`'s handler functions called directly with events in AWS's
//! documented shapes (fixtures in `tests/fixtures/lambda/`, omission cases included) and
//! with events built from what the real DynamoDB Local stream produced; then both
//! binaries under cargo-lambda's local Lambda runtime emulator.
//! Run with `scripts/test.sh`, which starts the emulators and installs cargo-lambda.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use e2e::stream::stream_record_json;
use e2e::{Stack, eventually, message_attr};
use publisher::lambda::{PublisherLambda, StreamEvent};
use publisher::park::{FailureQueue, ParkedRecord};
use publisher::sink::SnsSink;
use rand::SeedableRng;
use serde_json::{Value, json};
use sqlx::ConnectOptions as _;
use sqlx::Row;
use stack::demo::{Traffic, TrafficPlan};
use subscriber::lambda::{SqsEvent, SubscriberLambda};
use subscriber::queue::{DeadLetterQueue, MAX_MESSAGE_BYTES};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const BIG: &str = "98765432109876543210987654321098765432";

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lambda")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn in_secs(secs: u64) -> Option<SystemTime> {
    Some(SystemTime::now() + Duration::from_secs(secs))
}

fn publisher_handler(stack: &Stack, topic_arn: &str, failure_queue_url: &str) -> PublisherLambda {
    PublisherLambda {
        sink: SnsSink::new(stack.clients.sns.clone(), topic_arn.to_owned()),
        failures: FailureQueue::new(
            stack.clients.sqs.clone(),
            Some(failure_queue_url.to_owned()),
        ),
        emit: contracts::SchemaVersion::V2,
        table: None,
        deadline_margin: Duration::from_secs(1),
    }
}

fn dead_letter_queue(stack: &Stack, dlq_url: &str) -> DeadLetterQueue {
    DeadLetterQueue::new(
        stack.clients.sqs.clone(),
        dlq_url.to_owned(),
        MAX_MESSAGE_BYTES,
    )
}

fn subscriber_handler(stack: &Stack, dlq_url: &str) -> SubscriberLambda {
    // The options the binary uses: the URL's, plus the consumer's session settings.
    let connect = stack
        .database_url
        .parse::<subscriber::config::DatabaseUrl>()
        .unwrap()
        .consumer_connect_options()
        .unwrap();
    SubscriberLambda::new(
        connect,
        2,
        dead_letter_queue(stack, dlq_url),
        Duration::from_secs(1),
    )
}

fn ids(response: &[publisher::lambda::BatchItemFailure]) -> Vec<String> {
    response.iter().map(|f| f.item_identifier.clone()).collect()
}

/// Takes exactly `count` messages from a queue (failing on fewer within the wait, and
/// on more arriving within a short quiet period after).
async fn take(
    stack: &Stack,
    queue_url: &str,
    count: usize,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let got = stack
        .take_at_least(queue_url, count, Duration::from_millis(300), WAIT)
        .await?;
    anyhow::ensure!(
        got.len() == count,
        "{} messages, expected {count}",
        got.len()
    );
    Ok(got)
}

/// A received SQS message in the shape Lambda's SQS event carries it.
fn sqs_record(m: &aws_sdk_sqs::types::Message, queue_arn: &str) -> Value {
    let attributes: BTreeMap<String, String> = m
        .attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    let message_attributes: BTreeMap<String, Value> = m
        .message_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                json!({"stringValue": v.string_value, "stringListValues": [], "binaryListValues": [], "dataType": v.data_type}),
            )
        })
        .collect();
    json!({
        "messageId": m.message_id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    })
}

fn sqs_event(messages: &[aws_sdk_sqs::types::Message]) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| sqs_record(m, "arn:aws:sqs:us-east-1:123456789012:analytics"))
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// Receives what is visible on `queue_url` now (one short poll round of up to 10),
/// hiding it for `visibility_secs`, with every system attribute.
async fn receive_visible(
    stack: &Stack,
    queue_url: &str,
    visibility_secs: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    Ok(stack
        .clients
        .sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility_secs)
        .wait_time_seconds(1)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await?
        .messages
        .unwrap_or_default())
}

#[tokio::test]
async fn subscriber_lambda_backs_off_through_a_database_outage_and_dead_letters_nothing()
-> Result<()> {
    let stack = Stack::new().await?;
    // The outage: the handler's database is behind a proxy the test cuts (the shared
    // server is never touched).
    let (proxy, through) = stack.database_behind_proxy().await?;
    let connect = through.options(subscriber::config::SESSION_SETTINGS);
    let queue_url = stack.resources.queue_url.clone();
    let queue_arn = stack.queue_arn(&queue_url).await?;
    // No SUBSCRIBER_QUEUE_URL: the queue is resolved from the records' eventSourceARN.
    let handler = SubscriberLambda::new(
        connect,
        2,
        dead_letter_queue(&stack, &stack.resources.dlq_url),
        Duration::from_secs(1),
    );
    let event_of = |messages: &[aws_sdk_sqs::types::Message], receive_count: Option<&str>| {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut r = sqs_record(m, &queue_arn);
                if let Some(n) = receive_count {
                    r["attributes"]["ApproximateReceiveCount"] = json!(n);
                }
                r
            })
            .collect();
        serde_json::from_value::<SqsEvent>(json!({ "Records": records })).unwrap()
    };

    let upserted = include_str!("../../contracts/fixtures/v2/upserted.json").to_owned();
    stack.send_bodies(std::slice::from_ref(&upserted)).await?;
    proxy.cut();

    // As the mapping would: received, hidden for 2 s only (far below the back-off).
    let got = eventually("the message to be received", WAIT, || async {
        let got = receive_visible(&stack, &queue_url, 2).await?;
        Ok((!got.is_empty()).then_some(got))
    })
    .await?;
    assert_eq!(got.len(), 1);
    let handled_at = Instant::now();
    let response = handler.handle(event_of(&got, None), in_secs(60)).await?;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "the store is down: the message is reported for retry"
    );
    // The first back-off is 15 to 30 s: it must not be visible again within 10 s,
    // though the receive hid it for 2 s only.
    while handled_at.elapsed() < Duration::from_secs(10) {
        let early = receive_visible(&stack, &queue_url, 30).await?;
        assert!(
            early.is_empty(),
            "the message came back after {:?}: its visibility was not extended",
            handled_at.elapsed()
        );
    }
    let again = eventually("the delayed message to come back", WAIT, || async {
        let got = receive_visible(&stack, &queue_url, 2).await?;
        Ok((!got.is_empty()).then_some(got))
    })
    .await?;
    let waited = handled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(14),
        "came back after {waited:?}"
    );
    assert_eq!(stack.queue_depth(&stack.resources.dlq_url).await?, 0);

    // At the last receive the redrive policy (maxReceiveCount 5) allows before moving
    // it without a reason, the handler parks it itself, with the reason.
    let response = handler
        .handle(event_of(&again, Some("4")), in_secs(60))
        .await?;
    assert!(
        response.batch_item_failures.is_empty(),
        "a parked message is handled: {response:?}"
    );
    let parked = receive_visible(&stack, &stack.resources.dlq_url, 30).await?;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let reason = parked[0]
        .message_attributes
        .as_ref()
        .and_then(|a| a.get(subscriber::parking::REASON_ATTRIBUTE))
        .and_then(|v| v.string_value.clone());
    assert_eq!(
        reason.as_deref(),
        Some(subscriber::lambda::STORE_UNAVAILABLE)
    );
    assert_eq!(parked[0].body.as_deref(), Some(upserted.as_str()));

    // The store is back: the redriven copy applies.
    proxy.restore();
    let response = handler.handle(event_of(&parked, None), in_secs(60)).await?;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.user_profiles")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(rows, 1);
    stack.teardown().await
}

/// A Secrets Manager client on the emulator (moto and LocalStack both serve it on the
/// endpoint they serve SQS on).
async fn secrets_client() -> aws_sdk_secretsmanager::Client {
    let config = runtime::aws::default_sdk_config().await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL_SQS"))
        .expect("the emulator's endpoint is set");
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(&config)
            .endpoint_url(endpoint)
            .build(),
    )
}

#[tokio::test]
async fn subscriber_lambda_reads_a_rotated_database_secret_again_without_a_redeploy() -> Result<()>
{
    use std::str::FromStr;
    let stack = Stack::new().await?;
    let secrets = secrets_client().await;
    let good = sqlx::postgres::PgConnectOptions::from_str(&stack.database_url)?;
    let stale = subscriber::config::DatabaseUrl::from_str(
        good.clone()
            .username(&format!("rotated_away_{}", stack.id.replace('-', "_")))
            .to_url_lossy()
            .as_str(),
    )?;
    let created = secrets
        .create_secret()
        .name(format!("tributary/analytics-{}", stack.id))
        .secret_string(json!({ "url": stale.expose_secret() }).to_string())
        .send()
        .await?;
    let arn = created.arn().context("secret ARN")?.to_owned();

    // Cold start: the URL read from the secret, as the binary does.
    let secret = subscriber::secret::DatabaseSecret::new(secrets.clone(), arn.clone());
    let at_start = secret.read().await?;
    assert_eq!(at_start.expose_secret(), stale.expose_secret());
    let handler = SubscriberLambda::new(
        at_start.consumer_connect_options()?,
        2,
        dead_letter_queue(&stack, &stack.resources.dlq_url),
        Duration::from_secs(1),
    )
    .with_queue_url(Some(stack.resources.queue_url.clone()))
    .with_secret(secret, false);

    // The password is rotated: the secret now holds what the database accepts.
    secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(json!({ "url": stack.database_url }).to_string())
        .send()
        .await?;

    let upserted = include_str!("../../contracts/fixtures/v2/upserted.json").to_owned();
    stack.send_bodies(&[upserted]).await?;
    let got = eventually("the message to be received", WAIT, || async {
        let got = receive_visible(&stack, &stack.resources.queue_url, 30).await?;
        Ok((!got.is_empty()).then_some(got))
    })
    .await?;
    let response = handler.handle(sqs_event(&got), in_secs(60)).await?;
    assert!(
        response.batch_item_failures.is_empty(),
        "the refused login made the handler read the secret again: {response:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.user_profiles")
        .fetch_one(&stack.pool)
        .await?;
    assert_eq!(rows, 1);
    stack.teardown().await
}

async fn parked_records(stack: &Stack, count: usize) -> Result<Vec<(ParkedRecord, String)>> {
    let messages = take(stack, &stack.resources.failure_queue_url, count).await?;
    messages
        .iter()
        .map(|m| {
            let record: ParkedRecord = serde_json::from_str(m.body.as_deref().unwrap_or(""))?;
            Ok((record, message_attr(m, "tributary-reason")))
        })
        .collect()
}

fn event_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn publisher_lambda_publishes_the_documented_samples_and_parks_poison_by_its_keys()
-> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let handler = publisher_handler(&stack, &r.topic_arn, &r.failure_queue_url);
    let event: StreamEvent = serde_json::from_value(fixture("dynamodb-stream-sample.json"))?;
    let response = handler.handle(event, in_secs(30)).await?;
    assert!(
        ids(&response.batch_item_failures).is_empty(),
        "{response:?}"
    );

    // Five records publish (one per change), two are poison.
    let published = take(&stack, &stack.tap_queue_url, 5).await?;
    let events: HashMap<String, Value> = published
        .iter()
        .map(|m| {
            let e = event_of(m.body.as_deref().unwrap());
            (e["event_id"].as_str().unwrap().to_owned(), e)
        })
        .collect();
    let first = &events["c4ca4238a0b923820dcc509a6f75849b"];
    assert_eq!(
        first["data"]["lifetime_value_cents"], BIG,
        "digits kept exactly"
    );
    assert_eq!(
        first["source"]["table"], "profiles",
        "table from the stream ARN"
    );
    assert_eq!(
        events["c81e728d9d4c2f636f067f89cc14862c"]["data"]["display_name"],
        "Ada King"
    );
    let derived: Vec<&String> = events
        .keys()
        .filter(|k| k.starts_with("upserted:u-doc-2:"))
        .collect();
    assert_eq!(
        derived.len(),
        1,
        "a record without eventID gets a derived id: {events:?}"
    );
    assert_eq!(
        events["a87ff679a2f3e71d9181a67b7542122c"]["reason"],
        "expired"
    );
    assert!(
        events.contains_key("8f14e45fceea167a5a36dedd4bea2543"),
        "the record after the poison"
    );

    // The poison is parked with its reason, keys and position, none of its data.
    let parked = parked_records(&stack, 2).await?;
    let mut sequence_numbers: Vec<String> = parked
        .iter()
        .map(|(p, reason)| {
            assert_eq!(reason, "wrong_attribute_type");
            assert_eq!(p.reason, "wrong_attribute_type");
            // The poison's version is malformed: no position to keep, only its keys.
            assert!(
                p.record.keys.contains_key("user_id") && p.record.position.is_none(),
                "keys kept: {p:?}"
            );
            p.record.sequence_number.clone().unwrap()
        })
        .collect();
    sequence_numbers.sort();
    assert_eq!(
        sequence_numbers,
        ["100000000000000000005", "100000000000000000006"]
    );

    // What reached the subscriber's queue applies through the subscriber handler.
    let queued = take(&stack, &r.queue_url, 5).await?;
    let subscriber = subscriber_handler(&stack, &r.dlq_url);
    let response = subscriber.handle(sqs_event(&queued), in_secs(30)).await?;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let rows = stack.analytics_rows().await?;
    assert_eq!(rows["u-doc-1"].display_name.as_deref(), Some("Ada King"));
    assert_eq!(rows["u-doc-1"].lifetime_value_cents.as_deref(), Some(BIG));
    assert!(rows["u-doc-3"].deleted);
    assert!(!rows["u-doc-2"].deleted && !rows["u-doc-6"].deleted);
    assert!(!rows.contains_key("u-doc-4") && !rows.contains_key("u-doc-5"));
    stack.teardown().await
}

#[tokio::test]
async fn publisher_lambda_names_the_first_unfinished_record() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let sample = fixture("dynamodb-stream-sample.json");
    let pick = |order: &[usize]| -> StreamEvent {
        let records: Vec<Value> = order
            .iter()
            .map(|&i| sample["Records"][i].clone())
            .collect();
        serde_json::from_value(json!({ "Records": records })).unwrap()
    };

    // The topic is gone: the two poison records first are parked, the first publishable
    // record after them is the one to retry from.
    let missing_topic = format!("arn:aws:sns:us-east-1:123456789012:missing-{}", stack.id);
    let handler = publisher_handler(&stack, &missing_topic, &r.failure_queue_url);
    let response = handler.handle(pick(&[4, 5, 0, 1, 6]), in_secs(3)).await?;
    assert_eq!(
        ids(&response.batch_item_failures),
        ["100000000000000000001"]
    );
    assert_eq!(parked_records(&stack, 2).await?.len(), 2);

    // The failure queue is gone: the records before the poison publish, the poison is
    // the one to retry from, and nothing after it is published yet.
    let missing_queue = format!("{}-missing", r.failure_queue_url);
    let handler = publisher_handler(&stack, &r.topic_arn, &missing_queue);
    let response = handler.handle(pick(&[0, 1, 4, 6]), in_secs(3)).await?;
    assert_eq!(
        ids(&response.batch_item_failures),
        ["100000000000000000005"]
    );
    let published = take(&stack, &stack.tap_queue_url, 2).await?;
    let published: HashSet<String> = published
        .iter()
        .map(|m| {
            event_of(m.body.as_deref().unwrap())["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        published,
        HashSet::from([
            "c4ca4238a0b923820dcc509a6f75849b".to_owned(),
            "c81e728d9d4c2f636f067f89cc14862c".to_owned()
        ])
    );

    // Lambda retries from the reported record once the queue is back: nothing is lost.
    let handler = publisher_handler(&stack, &r.topic_arn, &r.failure_queue_url);
    let response = handler.handle(pick(&[4, 6]), in_secs(30)).await?;
    assert!(response.batch_item_failures.is_empty());
    take(&stack, &stack.tap_queue_url, 1).await?;
    assert_eq!(
        parked_records(&stack, 1).await?[0].1,
        "wrong_attribute_type"
    );
    stack.teardown().await
}

#[tokio::test]
async fn both_handlers_carry_what_the_dynamodb_local_stream_produced() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let mut traffic = Traffic::new("lambda");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    traffic
        .run(
            &stack.writer(),
            &mut rng,
            &TrafficPlan::new(8, 40),
            &CancellationToken::new(),
        )
        .await?;
    let total = traffic.stats.total() as usize;
    let records = stack.stream_records(total, WAIT).await?;
    assert_eq!(records.len(), total);
    let mut records: Vec<Value> = records
        .iter()
        .map(|rec| stream_record_json(rec, &r.stream_arn))
        .collect();
    // One real record made poison, in the middle of the stream: parked, not stalling.
    let poison_at = total / 2;
    let mut poison = records[poison_at].clone();
    let image = if poison["dynamodb"]["NewImage"].is_object() {
        "NewImage"
    } else {
        "OldImage"
    };
    poison["dynamodb"][image]["version"] = json!({ "S": "not a number" });
    poison["dynamodb"]["SequenceNumber"] = json!("0");
    poison["eventID"] = json!("poison");
    records.insert(poison_at, poison);

    let handler = publisher_handler(&stack, &r.topic_arn, &r.failure_queue_url);
    for batch in records.chunks(17) {
        let event: StreamEvent = serde_json::from_value(json!({ "Records": batch }))?;
        let response = handler.handle(event, in_secs(30)).await?;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }
    let parked = parked_records(&stack, 1).await?;
    assert_eq!(parked[0].0.record.event_id.as_deref(), Some("poison"));

    let subscriber = subscriber_handler(&stack, &r.dlq_url);
    let queued = take(&stack, &r.queue_url, total).await?;
    for batch in queued.chunks(10) {
        let response = subscriber.handle(sqs_event(batch), in_secs(30)).await?;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
    }
    stack.wait_converged(WAIT).await?;
    let (history, distinct) = stack.history_counts().await?;
    assert_eq!((history, distinct), (total as i64, total as i64));
    assert!(
        subscriber.pool().size() <= 2,
        "one small pool per environment"
    );
    stack.teardown().await
}

#[tokio::test]
async fn subscriber_lambda_applies_the_documented_samples_and_reports_exactly_the_failures()
-> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let sample = fixture("sqs-sample.json");
    let event = || -> SqsEvent { serde_json::from_value(sample.clone()).unwrap() };
    let poison: HashMap<&str, &str> = HashMap::from([
        ("4b9d3a2f-1c8e-4d66-8f72-1e3c9a8b7d22", "malformed_json"),
        (
            "5cae4b3a-2d9f-4e77-9a83-2f4d0b9c8e33",
            "unsupported_schema_version",
        ),
        ("7ec06d5c-4fb0-4a99-bca5-4b6f2dbe0a55", "apply_rejected"),
    ]);

    // The DLQ is unreachable: exactly the poison is reported, the rest is applied.
    let unreachable = subscriber_handler(&stack, &format!("{}-missing", r.dlq_url));
    let response = unreachable.handle(event(), in_secs(30)).await?;
    let mut failed = ids_of(&response);
    failed.sort();
    let mut expected: Vec<String> = poison.keys().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(failed, expected);
    let rows = stack.analytics_rows().await?;
    assert!(rows["u-0001"].deleted, "the delete outranks the upserts");
    assert!(!rows["u-0002"].deleted);
    assert!(!rows.contains_key("u-0003"));

    // Redelivered with the DLQ back: the poison is parked with its reason, the applied
    // messages are no-ops, nothing is reported.
    let handler = subscriber_handler(&stack, &r.dlq_url);
    let response = handler.handle(event(), in_secs(30)).await?;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let parked = take(&stack, &r.dlq_url, 3).await?;
    for m in &parked {
        let attr = |name: &str| message_attr(m, name);
        let source_id = attr("tributary-source-message-id");
        assert_eq!(
            attr("tributary-reason"),
            poison[source_id.as_str()],
            "{m:?}"
        );
        let original = sample["Records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rec| rec["messageId"] == source_id.as_str())
            .unwrap();
        assert_eq!(
            m.body.as_deref(),
            original["body"].as_str(),
            "parked in full"
        );
    }
    let history: i64 = sqlx::query("SELECT count(*) AS n FROM analytics.profile_changes")
        .fetch_one(&stack.pool)
        .await?
        .try_get("n")?;
    assert_eq!(
        history, 3,
        "upserted (v1 and v2 are one change), u-0002, deleted"
    );

    // Too close to the deadline to start: everything is reported, nothing is touched.
    let response = handler.handle(event(), Some(SystemTime::now())).await?;
    assert_eq!(ids_of(&response).len(), 7);

    // One pool per environment, reused across invocations.
    let pool = handler.pool() as *const _;
    handler.handle(SqsEvent::default(), in_secs(30)).await?;
    assert!(std::ptr::eq(pool, handler.pool()));
    assert!(handler.pool().size() <= 2);
    stack.teardown().await
}

fn ids_of(response: &subscriber::lambda::BatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

// --- under cargo-lambda's runtime emulator -------------------------------------------

fn cargo_lambda() -> PathBuf {
    std::env::var_os("CARGO_LAMBDA").map_or_else(
        || dirs_home().join(".cache/tributary/cargo-lambda-1.9.2/bin/cargo-lambda"),
        PathBuf::from,
    )
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

/// A child process killed when the test ends, pass or fail.
struct Guard(tokio::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// `cargo lambda watch --only-lambda-apis`: the runtime APIs without a build (the test
/// runs the binaries the workspace build made).
async fn emulator() -> Result<(Guard, u16)> {
    let exe = cargo_lambda();
    anyhow::ensure!(
        exe.exists(),
        "{} not found: run scripts/lambda-tools.sh (scripts/test.sh does)",
        exe.display()
    );
    let port = e2e::free_port()?;
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let child = tokio::process::Command::new(exe)
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            // The function's timeout: the deadline the runtime API hands the handler.
            "--timeout",
            "30",
            "--invoke-address",
            "127.0.0.1",
        ])
        .args(["--invoke-port", &port.to_string()])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let guard = Guard(child);
    eventually("cargo lambda watch to listen", WAIT, || async move {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    Ok((guard, port))
}

/// Runs one Lambda binary against the emulator's runtime API, as the Lambda service
/// would start it.
fn function(name: &str, port: u16, env: &[(&str, &str)]) -> Result<Guard> {
    let child = tokio::process::Command::new(e2e::bin(name)?)
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/{name}"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .env(
            "RUST_LOG",
            std::env::var("TRIBUTARY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(Guard(child))
}

/// `cargo lambda invoke NAME --data-file FILE`: the function's JSON answer.
async fn invoke(name: &str, port: u16, data: &Value) -> Result<Value> {
    let file = std::env::temp_dir().join(format!("tributary-{name}-{}.json", e2e::random_id()));
    std::fs::write(&file, serde_json::to_vec(data)?)?;
    let out = tokio::process::Command::new(cargo_lambda())
        .args(["lambda", "invoke", name, "--invoke-address", "127.0.0.1"])
        .args([
            "--invoke-port",
            &port.to_string(),
            "--output-format",
            "json",
        ])
        .arg("--data-file")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .await?;
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "cargo lambda invoke {name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("answer of {name}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Invokes function `name` with the fixture `event`: every record must be handled.
async fn handles_all(name: &str, port: u16, event: &str) -> Result<()> {
    let answer = invoke(name, port, &fixture(event)).await?;
    let all = json!({ "batchItemFailures": [] });
    anyhow::ensure!(answer == all, "{name} on {event}: {answer}");
    Ok(())
}

#[tokio::test]
async fn publisher_binary_answers_under_cargo_lambdas_runtime_emulator() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let (_emulator, port) = emulator().await?;
    let _publisher = function(
        "publisher-lambda",
        port,
        &[
            ("PUBLISHER_TOPIC_ARN", &r.topic_arn),
            ("PUBLISHER_FAILURE_QUEUE_URL", &r.failure_queue_url),
        ],
    )?;

    // The barest event (no awsRegion, eventVersion, eventID, ApproximateCreationDateTime)
    // reaches the handler through the runtime, and so does the documented sample.
    handles_all("publisher-lambda", port, "dynamodb-stream-minimal.json").await?;
    handles_all("publisher-lambda", port, "dynamodb-stream-sample.json").await?;
    take(&stack, &stack.tap_queue_url, 6).await?;
    assert_eq!(parked_records(&stack, 2).await?.len(), 2);

    stack.teardown().await
}

/// Under `cargo lambda watch --only-lambda-apis` (1.9.2) the deadline header carries
/// the function's timeout, not an epoch time; `runtime::invocation_deadline` reads it so,
/// and the subscriber binary applies the batch instead of reporting it all for retry.
#[tokio::test]
async fn subscriber_binary_answers_under_cargo_lambdas_runtime_emulator() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let (_emulator, port) = emulator().await?;
    let _subscriber = function(
        "subscriber-lambda",
        port,
        &[
            ("DATABASE_URL", &stack.database_url),
            ("SUBSCRIBER_DLQ_URL", &r.dlq_url),
        ],
    )?;
    handles_all("subscriber-lambda", port, "sqs-sample.json").await?;
    take(&stack, &r.dlq_url, 3).await?;
    let rows = stack.analytics_rows().await?;
    assert!(rows.contains_key("u-0002"), "{rows:?}");
    stack.teardown().await
}
