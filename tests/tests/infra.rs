//! End-to-end: what the infrastructure around the binaries must guarantee — bodies SQS
//! accepts whatever a profile holds, a dead-letter queue for what SNS cannot deliver
//! (and its redrive), and who may put messages on the queue.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_sqs::types::QueueAttributeName;
use e2e::{Stack, eventually, message_attr};
use rand::SeedableRng;
use rand::rngs::StdRng;
use stack::demo::ProfileItem;

const CONVERGE: Duration = Duration::from_secs(90);

/// A display name with every kind of code point SQS refuses raw or that is a Unicode
/// non-character, between ordinary letters.
const AWKWARD: &str = "Zoë\u{FFFE}a\u{FFFF}b\u{FDD0}c\u{1FFFE}d\u{10FFFF}e 😀";

fn emulator() -> String {
    std::env::var("TRIBUTARY_SNS_SQS_EMULATOR").unwrap_or_default()
}

/// Takes messages from `url` until `count` have come, or fails after [`CONVERGE`].
async fn take(stack: &Stack, url: &str, count: usize) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    stack
        .take_at_least(url, count, Duration::from_millis(500), CONVERGE)
        .await
}

#[tokio::test]
async fn an_item_holding_characters_sqs_refuses_replicates_exactly() -> Result<()> {
    let stack = Stack::new().await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut subscriber = stack.spawn_subscriber(&[])?;
    let mut rng = StdRng::seed_from_u64(12);
    let mut item = ProfileItem::random(&mut rng, "awkward-1", true);
    item.display_name = AWKWARD.to_owned();
    item.locale = Some("\u{FFFF}".to_owned());
    stack.writer().create(&item).await?;
    let plain = ProfileItem::random(&mut rng, "plain-1", true);
    stack.writer().create(&plain).await?;

    // LocalStack, like SQS, refuses the raw characters: without escaping, the event
    // SNS accepted is never delivered and the row never arrives.
    stack.wait_converged(CONVERGE).await?;
    let rows = stack.analytics_rows().await?;
    assert_eq!(rows["awkward-1"].display_name.as_deref(), Some(AWKWARD));
    assert_eq!(rows["awkward-1"].locale.as_deref(), Some("\u{FFFF}"));

    // moto takes the raw characters, so look at what was sent: every body on the wire
    // holds only characters SQS accepts, and decodes to the same value.
    let published = take(&stack, &stack.tap_queue_url, 2).await?;
    for m in &published {
        let body = m.body.as_deref().unwrap_or_default();
        let refused: Vec<String> = body
            .chars()
            .filter(|&c| runtime::sqs_text::needs_escape(c))
            .map(|c| format!("U+{:04X}", u32::from(c)))
            .collect();
        assert!(refused.is_empty(), "raw {refused:?} in a published body");
    }
    let awkward = published
        .iter()
        .filter_map(|m| m.body.as_deref())
        .find(|b| b.contains("awkward-1"))
        .context("the awkward event was not published")?;
    let event: serde_json::Value = serde_json::from_str(awkward)?;
    assert_eq!(event["data"]["display_name"], AWKWARD);

    stack.finish(&mut [&mut publisher, &mut subscriber]).await
}

#[tokio::test]
async fn bootstrap_gives_the_subscription_a_delivery_dlq_only_the_topic_may_send_to() -> Result<()>
{
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let attributes = stack
        .clients
        .sns
        .get_subscription_attributes()
        .subscription_arn(&r.subscription_arn)
        .send()
        .await?
        .attributes
        .unwrap_or_default();
    let redrive: serde_json::Value = serde_json::from_str(
        attributes
            .get("RedrivePolicy")
            .context("the subscription has no RedrivePolicy")?,
    )?;
    let dlq_arn = stack.queue_arn(&r.delivery_dlq_url).await?;
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_ne!(r.delivery_dlq_url, r.dlq_url, "a queue of its own");

    let policy = stack
        .clients
        .sqs
        .get_queue_attributes()
        .queue_url(&r.delivery_dlq_url)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::Policy))
        .context("the delivery DLQ has no policy")?;
    let policy: serde_json::Value = serde_json::from_str(&policy)?;
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Principal"]["Service"], "sns.amazonaws.com");
    assert_eq!(statement["Resource"], dlq_arn.as_str());
    assert_eq!(
        statement["Condition"]["ArnEquals"]["aws:SourceArn"],
        r.topic_arn.as_str()
    );
    assert!(stack.resources.to_env().contains(&format!(
        "export TRIBUTARY_DELIVERY_DLQ_URL={}\n",
        r.delivery_dlq_url
    )));
    stack.teardown().await
}

/// SNS cannot deliver while the queue is gone: the event waits in the delivery DLQ, and
/// `replay dlq` returns it once the queue is back. Only LocalStack moves an undelivered
/// message to a subscription's DLQ (moto keeps the setting but never delivers there).
#[tokio::test]
async fn an_event_sns_could_not_deliver_waits_in_the_delivery_dlq_and_replay_returns_it()
-> Result<()> {
    if emulator() != "localstack" {
        eprintln!(
            "skipped: {} does not redrive undeliverable SNS messages",
            emulator()
        );
        return Ok(());
    }
    let stack = Stack::new().await?;
    let r = stack.resources.clone();
    stack
        .clients
        .sqs
        .delete_queue()
        .queue_url(&r.queue_url)
        .send()
        .await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut rng = StdRng::seed_from_u64(14);
    let item = ProfileItem::random(&mut rng, "undelivered-1", true);
    stack.writer().create(&item).await?;
    eventually("the event in the delivery DLQ", CONVERGE, || async {
        Ok((stack.queue_depth(&r.delivery_dlq_url).await? >= 1).then_some(()))
    })
    .await?;

    // The queue comes back (bootstrap is idempotent: same name, same URL).
    let config = runtime::aws::default_sdk_config().await;
    let clients = runtime::aws::Clients::new(&config);
    let again = stack::bootstrap::bootstrap(&clients, &stack.names()).await?;
    assert_eq!(again.queue_url, r.queue_url);
    let out = tokio::process::Command::new(e2e::bin("replay")?)
        .args([
            "dlq",
            "--dlq-url",
            &r.delivery_dlq_url,
            "--queue-url",
            &r.queue_url,
        ])
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "replay dlq failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut subscriber = stack.spawn_subscriber(&[])?;
    stack.wait_converged(CONVERGE).await?;
    assert_eq!(stack.queue_depth(&r.delivery_dlq_url).await?, 0);
    stack.finish(&mut [&mut publisher, &mut subscriber]).await
}

#[tokio::test]
async fn an_sns_envelope_from_another_topic_is_parked_and_one_from_the_topic_applies() -> Result<()>
{
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let mut rng = StdRng::seed_from_u64(15);
    let item = ProfileItem::random(&mut rng, "wrapped-1", true);
    stack.writer().create(&item).await?;
    let mut publisher = stack.spawn_publisher(&[])?;
    let published = take(&stack, &stack.tap_queue_url, 1).await?;
    e2e::terminate(&mut publisher, CONVERGE).await?;
    let event = published[0].body.clone().unwrap_or_default();
    // The same change as it would arrive without raw delivery, from the topic…
    let wrap = |topic: &str, message: &str| {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": e2e::random_id(),
            "TopicArn": topic,
            "Message": message,
        })
        .to_string()
    };
    // …and a forged change of a key the source never had, from someone else's topic.
    let forged = event
        .replace("wrapped-1", "forged-1")
        .replace("\"version\":1,", "\"version\":9223372036854775807,");
    assert_ne!(forged, event);
    let foreign = "arn:aws:sns:us-east-1:000000000000:someone-elses-topic";
    let foreign_body = wrap(foreign, &forged);
    stack
        .send_bodies(&[wrap(&r.topic_arn, &event), foreign_body.clone()])
        .await?;
    let mut subscriber = stack.spawn_subscriber(&["--topic-arn", &r.topic_arn])?;

    let parked = take(&stack, &r.dlq_url, 1).await?;
    assert_eq!(parked[0].body.as_deref(), Some(foreign_body.as_str()));
    assert_eq!(
        message_attr(&parked[0], "tributary-reason"),
        "foreign_topic"
    );
    stack.wait_converged(CONVERGE).await?;
    assert!(!stack.analytics_rows().await?.contains_key("forged-1"));
    stack.finish(&mut [&mut subscriber]).await
}

/// The repair path docs/operating.md gives for a key frozen by a forged far-ahead version: the SQL it
/// gives, then `replay verify --repair`, bring the key back to the source.
#[tokio::test]
async fn a_key_frozen_by_a_forged_version_is_reset_by_the_documented_repair() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    let mut publisher = stack.spawn_publisher(&[])?;
    let mut subscriber = stack.spawn_subscriber(&[])?;
    let mut rng = StdRng::seed_from_u64(16);
    let mut item = ProfileItem::random(&mut rng, "frozen-1", true);
    stack.writer().create(&item).await?;
    let published = take(&stack, &stack.tap_queue_url, 1).await?;
    stack.wait_converged(CONVERGE).await?;

    let mut forged: serde_json::Value =
        serde_json::from_str(published[0].body.as_deref().unwrap_or_default())?;
    forged["event_id"] = "forged-far-ahead".into();
    forged["version"] = i64::MAX.into();
    stack.send_bodies(&[forged.to_string()]).await?;
    let version = || async {
        let v: i64 = sqlx::query_scalar(
            "SELECT version FROM analytics.user_profiles WHERE user_id = 'frozen-1'",
        )
        .fetch_one(&stack.pool)
        .await?;
        Ok::<i64, anyhow::Error>(v)
    };
    eventually("the forged version applied", CONVERGE, || async {
        Ok((version().await? == i64::MAX).then_some(()))
    })
    .await?;

    // A real change now lands as stale: the key is frozen.
    item.version += 1;
    item.display_name = "After the forgery".into();
    stack.writer().update(&item).await?;
    take(&stack, &stack.tap_queue_url, 1).await?;
    eventually("the queue drained", CONVERGE, || async {
        Ok((stack.queue_depth(&r.queue_url).await? == 0).then_some(()))
    })
    .await?;
    assert_eq!(version().await?, i64::MAX);
    assert!(
        !stack.drift().await?.is_empty(),
        "the forged row must drift"
    );

    // The documented repair: reset the key to the source position, then resnapshot.
    let mut tx = stack.pool.begin().await?;
    let generation: i64 = sqlx::query_scalar(
        "SELECT generation FROM analytics.user_profiles WHERE user_id = 'frozen-1'",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM analytics.profile_changes WHERE key = $1 AND (generation, version) > ($2, $3)",
    )
    .bind("frozen-1")
    .bind(generation)
    .bind(item.version)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM analytics.user_profiles WHERE user_id = $1")
        .bind("frozen-1")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let out = tokio::process::Command::new(e2e::bin("replay")?)
        .args([
            "verify",
            "--table",
            &r.table,
            "--database-url",
            &stack.database_url,
        ])
        .args(["--repair", &r.queue_url, "--settle-secs", "1"])
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stack
        .wait_converged(CONVERGE)
        .await
        .with_context(|| format!("after replay verify --repair: {stdout}"))?;
    let forged_history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics.profile_changes WHERE event_id = 'forged-far-ahead'",
    )
    .fetch_one(&stack.pool)
    .await?;
    assert_eq!(forged_history, 0);
    stack.finish(&mut [&mut publisher, &mut subscriber]).await
}

#[tokio::test]
async fn bootstrap_waits_for_an_endpoint_that_is_still_starting() -> Result<()> {
    // SNS and SQS refuse every connection for a while, as a LocalStack container does
    // just after its health check first passes: bootstrap keeps trying (it used to
    // fail after the SDK's three attempts), then creates everything.
    let sns_sqs = e2e::outage::CutProxy::start(&std::env::var("AWS_ENDPOINT_URL_SQS")?).await?;
    sns_sqs.cut();
    let names = stack::bootstrap::Names::scratch("wait-", &e2e::random_id());
    let mut cmd = e2e::bin_command(
        "bootstrap",
        &[
            "--table",
            &names.table,
            "--checkpoint-table",
            &names.checkpoint_table,
            "--topic",
            &names.topic,
            "--queue",
            &names.queue,
            "--dlq",
            &names.dlq,
            "--delivery-dlq",
            &names.delivery_dlq,
            "--failure-queue",
            &names.failure_queue,
        ],
    )?;
    cmd.env("AWS_ENDPOINT_URL_SNS", &sns_sqs.url)
        .env("AWS_ENDPOINT_URL_SQS", &sns_sqs.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    // The outage lasts until bootstrap has met it and said it will try again (or has
    // given up: then the assertions below fail).
    let stderr = child.stderr.take().context("stderr")?;
    let seen = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut text = String::new();
        let mut restored = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if !restored && line.contains("An endpoint cannot be reached yet; trying again.") {
                sns_sqs.restore();
                restored = true;
            }
            text.push_str(&line);
            text.push('\n');
        }
        (restored, text)
    });
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    let (restored, stderr) = seen.await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        restored,
        "bootstrap never said it would try again: {stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("export PUBLISHER_TABLE={}", names.table)),
        "{stdout}"
    );
    Ok(())
}
