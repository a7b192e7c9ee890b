//! End-to-end tests of what the publisher parks and of `replay republish`: the real
//! `publisher` and `replay` binaries (and the Lambda handler) against DynamoDB Local,
//! moto (SNS, SQS) and PostgreSQL. Run with `scripts/test.sh`, which starts the
//! emulators.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue as Ddb;
use aws_sdk_sqs::types::Message;
use e2e::{Stack, bin_command, eventually, message_attr, output_text, run_to_end, terminate};
use publisher::lambda::{PublisherLambda, StreamEvent};
use publisher::park::{FailureQueue, ParkedRecord};
use publisher::sink::SnsSink;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Private and bad values the test writes: none may appear in a queue or a log.
const PRIVATE: &str = "argon2id-PRIVATE-hash-7f3a";
const BAD_VALUE: &str = "4111111111111111";

fn profile(user_id: &str, email: Ddb, version: u32) -> HashMap<String, Ddb> {
    let s = |v: &str| Ddb::S(v.to_owned());
    HashMap::from([
        ("user_id".to_owned(), s(user_id)),
        ("email".to_owned(), email),
        ("display_name".to_owned(), s("Grace")),
        ("plan".to_owned(), s("pro")),
        ("created_at".to_owned(), s("2026-11-20T09:30:00Z")),
        ("updated_at".to_owned(), s("2026-11-25T00:00:00Z")),
        ("version".to_owned(), Ddb::N(version.to_string())),
        ("password_hash".to_owned(), s(PRIVATE)),
    ])
}

/// The messages of a queue, received and made visible again at once (left in place).
async fn peek(stack: &Stack, queue_url: &str, count: usize) -> Result<Vec<Message>> {
    eventually("messages in the queue", WAIT, || async {
        let got = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await?
            .messages
            .unwrap_or_default();
        Ok((got.len() >= count).then_some(got))
    })
    .await
}

async fn replay(args: &[&str]) -> Result<Output> {
    let mut cmd = bin_command("replay", args)?;
    cmd.env("RUST_LOG", "info");
    run_to_end(cmd, WAIT).await
}

fn events(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_parked_record_holds_no_private_or_bad_value_and_republish_sends_it_once_fixed()
-> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let log_path = std::env::temp_dir().join(format!("publisher-{}.log", stack.id));
    let log = std::fs::File::create(&log_path)?;
    let mut publisher = stack
        .publisher_command(&r.table, &r.checkpoint_table, &r.failure_queue_url, &[])?
        .env("TRIBUTARY_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug,aws=warn,hyper=warn,h2=warn,rustls=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;

    // The profile service writes an email of the wrong type beside a private attribute.
    stack
        .put_item(profile("u-bad", Ddb::N(BAD_VALUE.into()), 1))
        .await?;
    let parked = peek(&stack, &r.failure_queue_url, 1).await?;
    terminate(&mut publisher, Duration::from_secs(10)).await?;
    let m = &parked[0];
    let body = m.body.clone().unwrap_or_default();
    let detail = message_attr(m, "tributary-detail");
    for leak in [PRIVATE, BAD_VALUE] {
        assert!(!body.contains(leak), "the parked body leaks {leak}: {body}");
        assert!(!detail.contains(leak), "the detail leaks {leak}: {detail}");
    }
    assert!(!body.contains("password_hash"), "{body}");
    assert_eq!(message_attr(m, "tributary-reason"), "wrong_attribute_type");
    assert!(
        detail.contains("\"email\"") && detail.contains("expected S"),
        "{detail}"
    );
    let record: ParkedRecord = serde_json::from_str(&body)?;
    assert_eq!(record.record.position.map(|p| p.version), Some(1));
    let log = std::fs::read_to_string(&log_path)?;
    assert!(log.contains("parked"), "the park is logged: {log}");
    for leak in [PRIVATE, BAD_VALUE] {
        assert!(!log.contains(leak), "the publisher's log leaks {leak}");
    }

    // While the item is still bad, republish keeps the message and says why.
    let args = [
        "republish",
        "--table",
        &r.table,
        "--to",
        &r.topic_arn,
        "--failure-queue-url",
        &r.failure_queue_url,
        "--hold-secs",
        "5",
    ];
    let out = replay(&args).await?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("still does not project"),
        "{}",
        output_text(&out)
    );
    assert!(
        !output_text(&out).contains(BAD_VALUE),
        "{}",
        output_text(&out)
    );
    assert_eq!(peek(&stack, &r.failure_queue_url, 1).await?.len(), 1);

    // The service fixes the item; republish sends it and only then empties the queue.
    stack
        .put_item(profile("u-bad", Ddb::S("grace@example.com".into()), 2))
        .await?;
    let out = replay(&args).await?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("republished 1"),
        "{}",
        output_text(&out)
    );
    let sent = events(
        &stack
            .drain(&stack.tap_queue_url, Duration::from_secs(2), WAIT)
            .await?,
    );
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["event_type"], "profile.snapshot");
    assert_eq!(sent[0]["key"], "u-bad");
    assert_eq!(sent[0]["version"], 2);
    assert_eq!(sent[0]["data"]["email"], "grace@example.com");
    assert!(!sent[0].to_string().contains(PRIVATE));
    assert_eq!(stack.queue_depth(&r.failure_queue_url).await?, 0);
    let _ = std::fs::remove_file(&log_path);
    stack.teardown().await
}

#[tokio::test]
async fn a_batch_the_stream_mapping_gave_up_on_is_republished_whole_from_its_s3_invocation_record()
-> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    stack
        .put_item(profile("u-s3-1", Ddb::S("a@example.com".into()), 1))
        .await?;
    stack
        .put_item(profile("u-s3-2", Ddb::S("b@example.com".into()), 1))
        .await?;
    let event = stack.stream_event(2, WAIT).await?;

    // SNS is out (the topic is unreachable): the handler reports the batch unfinished,
    // and after MaximumRetryAttempts the mapping hands it to its S3 destination.
    let handler = PublisherLambda {
        sink: SnsSink::new(
            stack.clients.sns.clone(),
            format!("arn:aws:sns:us-east-1:123456789012:missing-{}", stack.id),
        ),
        failures: FailureQueue::new(stack.clients.sqs.clone(), Some(r.failure_queue_url.clone())),
        emit: contracts::SchemaVersion::V2,
        table: None,
        deadline_margin: Duration::from_secs(1),
    };
    let response = handler
        .handle(
            serde_json::from_value::<StreamEvent>(event.clone())?,
            Some(SystemTime::now() + Duration::from_secs(3)),
        )
        .await?;
    assert_eq!(response.batch_item_failures.len(), 1, "{response:?}");
    // moto runs no event-source mapping: the invocation record is written as Lambda
    // writes it to S3 (metadata, and the whole invocation as `payload`).
    let document = json!({
        "requestContext": {
            "requestId": "c9b8fa9f-5a7f-4a8b-9f3a-0e4a9b8e7d6c",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:publisher",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 11
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": null},
        "version": "1.0",
        "timestamp": "2026-12-01T20:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": "shardId-00000001",
            "batchSize": 2,
            "streamArn": r.stream_arn,
        },
        "payload": event.to_string(),
    });
    // The bucket is on the same emulator (AWS_ENDPOINT_URL_S3), addressed by path.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&runtime::aws::default_sdk_config().await)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("failed-batches-{}", stack.id.to_lowercase());
    s3.create_bucket().bucket(&bucket).send().await?;
    let key = "aws/lambda/8f0c1e2d/shardId-00000001/2026/12/01/2026-12-01T20.00.00-1b2c3d4e";
    s3.put_object()
        .bucket(&bucket)
        .key(key)
        .body(document.to_string().into_bytes().into())
        .send()
        .await?;
    // A metadata-only record (what an SQS or SNS destination holds) cannot be
    // republished: it stays, and says why.
    let metadata_only = "aws/lambda/8f0c1e2d/shardId-00000001/2026/12/01/metadata-only";
    let mut bare = document.clone();
    bare.as_object_mut().unwrap().remove("payload");
    s3.put_object()
        .bucket(&bucket)
        .key(metadata_only)
        .body(bare.to_string().into_bytes().into())
        .send()
        .await?;

    let out = replay(&[
        "republish",
        "--table",
        &r.table,
        "--to",
        &r.topic_arn,
        "--bucket",
        &bucket,
        "--s3-path-style",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no payload"),
        "{}",
        output_text(&out)
    );
    let left: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await?
        .contents
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| o.key)
        .collect();
    assert_eq!(
        left,
        [metadata_only],
        "the republished record is deleted, only"
    );
    let sent = events(
        &stack
            .drain(&stack.tap_queue_url, Duration::from_secs(2), WAIT)
            .await?,
    );
    let mut ids: Vec<(String, String)> = sent
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["event_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    let mut want: Vec<(String, String)> = event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rec| {
            (
                rec["eventID"].as_str().unwrap().to_owned(),
                "profile.upserted".to_owned(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(
        ids, want,
        "the very events of the stream records, once each"
    );
    stack.teardown().await
}
