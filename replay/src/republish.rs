//! `replay republish`: sends again what the publisher could not publish.
//!
//! Two sources, both read here:
//! - the publisher's **failure queue** (both modes park there): a parked record carries
//!   the change's keys, position and reason but none of the item's data, so the item
//!   is re-read from the table (strongly consistent) and sent as a `profile.snapshot`
//!   at the position it has now; a parked delete whose item is still gone is rebuilt
//!   from its parked position;
//! - **invocation records** the Lambda stream mapping wrote to its S3 on-failure
//!   destination for batches it gave up on, read from the bucket (or from downloaded
//!   files): they hold the whole stream records, each re-published as the very event it
//!   was (same event id, same position); a record that does not decode falls back to
//!   re-reading its item, as a parked one does. An object is deleted once every record
//!   in it was republished (or superseded).
//!
//! Every event goes through the same SNS sink (or one queue) and the same version guard
//! as live traffic: it carries a position, so a stale copy never overwrites a newer
//! change and a snapshot never resurrects a deleted item. A queue message is deleted
//! only after its event was accepted; one that cannot be republished stays in the
//! queue (visible again when the run ends), its reason printed.
//!
//! The decisions are pure ([`plan_parked`], [`plan_stream`]); the loop only does I/O.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use contracts::{Change, ChangeEvent, DeleteReason, Position, SchemaVersion, Source};
use publisher::lambda::StreamEvent;
use publisher::park::{ParkedChange, ParkedRecord};
use publisher::record::{self, EventName, Item, Origin, StreamRecord, TTL_PRINCIPAL};
use publisher::sink::Encoded;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dest::{Destination, Target};
use crate::items;

/// Most messages one `ReceiveMessage` returns.
///
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html>
const MAX_RECEIVE: i32 = 10;
/// Long-poll wait of one receive; two empty receives in a row end the run.
const RECEIVE_WAIT_SECS: i32 = 2;

/// What to republish, and where to.
#[derive(Debug, Clone)]
pub struct Options {
    /// The source table, read again for parked records.
    pub table: String,
    pub target: Target,
    pub failure_queue_url: Option<String>,
    /// Invocation records (JSON files) from the stream mapping's S3 destination.
    pub invocation_records: Vec<PathBuf>,
    /// The stream mapping's S3 on-failure destination, and the key prefix to read.
    pub bucket: Option<(String, String)>,
    pub dry_run: bool,
    pub schema_version: SchemaVersion,
    /// How long a received message stays invisible while it is handled.
    pub hold: Duration,
}

/// Why the run could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("cannot read the failure queue {url}: {detail}")]
    Queue { url: String, detail: String },
    #[error("cannot read the invocation record {path}: {detail}")]
    File { path: String, detail: String },
    #[error("cannot list the bucket {bucket}: {detail}")]
    Bucket { bucket: String, detail: String },
}

/// What one parked record or stream record comes to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Send this event.
    Publish(Box<ChangeEvent>),
    /// Nothing to send, and nothing is lost: why.
    Superseded(&'static str),
    /// The item is needed to decide (a stream record that does not decode).
    ReadItem(ParkedChange),
    /// Cannot be republished now: why (kept in the queue).
    Keep(String),
}

/// The plan for a parked record, given the item as the table holds it now (`None`:
/// no such item).
pub(crate) fn plan_parked(
    parked: &ParkedChange,
    item_now: Option<&Item>,
    table: &str,
    now: OffsetDateTime,
) -> Plan {
    match item_now {
        Some(item) => match items::snapshot_event(item, table, now) {
            Ok(event) => Plan::Publish(Box::new(event)),
            Err(e) => Plan::Keep(format!("the item still does not project: {e}")),
        },
        None if parked.event_name == EventName::Remove => match (
            parked.position,
            key_of(&parked.keys),
        ) {
            (Some(position), Some(key)) => {
                Plan::Publish(Box::new(delete_event(parked, key, position.into(), table, now)))
            }
            _ => Plan::Keep(
                "the item is gone and the parked delete has no position: run `replay verify --repair`"
                    .into(),
            ),
        },
        None => Plan::Superseded(
            "the item was deleted since: its delete carries a newer position",
        ),
    }
}

/// The plan for a whole stream record (from an invocation record): the event it
/// decodes to, or the item-read fallback when it does not.
pub(crate) fn plan_stream(record: &StreamRecord, origin: &Origin, now: OffsetDateTime) -> Plan {
    match record::to_event(record, origin, now) {
        Ok(Some(event)) => Plan::Publish(Box::new(event)),
        Ok(None) => Plan::Superseded("a modify that changed nothing the contract carries"),
        Err(_) => Plan::ReadItem(ParkedChange::of(record)),
    }
}

fn key_of(keys: &Item) -> Option<String> {
    match keys.get(record::attr::USER_ID) {
        Some(record::AttributeValue::S(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn delete_event(
    parked: &ParkedChange,
    key: String,
    position: Position,
    table: &str,
    now: OffsetDateTime,
) -> ChangeEvent {
    let reason = match &parked.user_identity {
        Some((kind, principal)) if kind == "Service" && principal == TTL_PRINCIPAL => {
            DeleteReason::Expired
        }
        _ => DeleteReason::Deleted,
    };
    let change = Change::Deleted(reason);
    let event_id = match &parked.event_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => record::derived_event_id(&key, position, &change),
    };
    ChangeEvent {
        event_id,
        key,
        position,
        occurred_at: parked.approximate_creation.unwrap_or(now),
        published_at: now,
        source: Source {
            table: table.to_owned(),
            stream_arn: None,
            sequence_number: parked.sequence_number.clone(),
        },
        published_schema: contracts::CURRENT_SCHEMA_VERSION,
        change,
    }
}

/// The stream records of one invocation record: its `payload` is the batch the function
/// was invoked with (an object, or that object as a JSON string).
///
/// # Errors
/// A description when the document is not an invocation record with a payload.
pub fn invocation_records(document: &str) -> Result<(Option<String>, Vec<StreamRecord>), String> {
    #[derive(Deserialize)]
    struct Invocation {
        payload: Option<serde_json::Value>,
    }
    let invocation: Invocation =
        serde_json::from_str(document).map_err(|e| format!("not JSON: {e}"))?;
    let event: StreamEvent =
        match invocation.payload {
            Some(serde_json::Value::String(s)) => serde_json::from_str(&s)
                .map_err(|e| format!("payload is not a stream event: {e}"))?,
            Some(v @ serde_json::Value::Object(_)) => serde_json::from_value(v)
                .map_err(|e| format!("payload is not a stream event: {e}"))?,
            _ => return Err("no payload: an SQS or SNS destination's metadata-only record".into()),
        };
    let arn = event
        .records
        .iter()
        .find_map(|r| r.event_source_arn.clone());
    Ok((
        arn,
        event.records.iter().map(|r| r.to_stream_record()).collect(),
    ))
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// `queue:<message id>` or `<file>#<index>`.
    pub source: String,
    pub key: Option<String>,
    /// republished, superseded, kept (or would-republish in a dry run).
    pub outcome: &'static str,
    pub why: Option<String>,
}

/// The run's totals.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub examined: u64,
    pub republished: u64,
    pub superseded: u64,
    pub kept: u64,
    pub dry_run: bool,
    pub by_outcome: BTreeMap<String, u64>,
}

/// Republishes everything the sources hold. `print` sees every record as it is done.
///
/// # Errors
/// [`RepublishError`] when a source cannot be read at all.
pub async fn run(
    clients: &runtime::aws::Clients,
    s3: Option<&aws_sdk_s3::Client>,
    options: &Options,
    shutdown: &CancellationToken,
    mut print: impl FnMut(&Seen),
) -> Result<Report, RepublishError> {
    let dest = Destination::new(&options.target, clients.sns.clone(), clients.sqs.clone());
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut note = |seen: Seen| {
        report.examined += 1;
        match seen.outcome {
            "republished" | "would-republish" => report.republished += 1,
            "superseded" => report.superseded += 1,
            _ => report.kept += 1,
        }
        *report
            .by_outcome
            .entry(seen.outcome.to_owned())
            .or_default() += 1;
        print(&seen);
    };
    for path in &options.invocation_records {
        let text = std::fs::read_to_string(path).map_err(|e| RepublishError::File {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let label = path.display().to_string();
        if let Err(detail) =
            republish_document(clients, &dest, options, &text, &label, shutdown, &mut note).await
        {
            return Err(RepublishError::File {
                path: label,
                detail,
            });
        }
    }
    if let (Some(s3), Some((bucket, prefix))) = (s3, &options.bucket) {
        drain_bucket(
            clients, s3, &dest, options, bucket, prefix, shutdown, &mut note,
        )
        .await?;
    }
    if let Some(url) = &options.failure_queue_url {
        drain_queue(clients, &dest, options, url, shutdown, &mut note).await?;
    }
    Ok(report)
}

/// Republishes the records of one invocation record; `Ok(true)` when every one was
/// republished or superseded (the document may go).
async fn republish_document(
    clients: &runtime::aws::Clients,
    dest: &Destination,
    options: &Options,
    text: &str,
    label: &str,
    shutdown: &CancellationToken,
    note: &mut impl FnMut(Seen),
) -> Result<bool, String> {
    let (arn, records) = invocation_records(text)?;
    let origin = Origin {
        table: options.table.clone(),
        stream_arn: arn.unwrap_or_default(),
    };
    let mut all_done = true;
    for (i, record) in records.iter().enumerate() {
        let plan = match plan_stream(record, &origin, OffsetDateTime::now_utc()) {
            Plan::ReadItem(parked) => resolve(clients, options, &parked).await,
            plan => plan,
        };
        let seen = carry_out(
            dest,
            options,
            plan,
            format!("{label}#{i}"),
            key_of(&record.keys),
            shutdown,
        )
        .await;
        all_done &= matches!(seen.outcome, "republished" | "superseded");
        note(seen);
    }
    Ok(all_done)
}

/// Every invocation record under `prefix`: republished, then deleted when all of its
/// records were; kept (and reported) otherwise.
#[allow(clippy::too_many_arguments)]
async fn drain_bucket(
    clients: &runtime::aws::Clients,
    s3: &aws_sdk_s3::Client,
    dest: &Destination,
    options: &Options,
    bucket: &str,
    prefix: &str,
    shutdown: &CancellationToken,
    note: &mut impl FnMut(Seen),
) -> Result<(), RepublishError> {
    let list_error = |detail: String| RepublishError::Bucket {
        bucket: bucket.to_owned(),
        detail,
    };
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| list_error(describe_s3(&e)))?;
        keys.extend(
            page.contents
                .unwrap_or_default()
                .into_iter()
                .filter_map(|o| o.key),
        );
    }
    for key in keys {
        if shutdown.is_cancelled() {
            break;
        }
        let label = format!("s3://{bucket}/{key}");
        let text = match s3.get_object().bucket(bucket).key(&key).send().await {
            Ok(out) => match out.body.collect().await {
                Ok(bytes) => String::from_utf8_lossy(&bytes.into_bytes()).into_owned(),
                Err(e) => {
                    note(kept(&label, format!("reading the object failed: {e}")));
                    continue;
                }
            },
            Err(e) => {
                note(kept(
                    &label,
                    format!("reading the object failed: {}", describe_s3(&e)),
                ));
                continue;
            }
        };
        match republish_document(clients, dest, options, &text, &label, shutdown, note).await {
            Ok(true) if !options.dry_run => {
                if let Err(e) = s3.delete_object().bucket(bucket).key(&key).send().await {
                    // Republished but kept: a later run sends it again, which the
                    // version guard makes harmless.
                    warn!(%label, error = %describe_s3(&e), "Republished invocation record not deleted.");
                }
            }
            Ok(_) => {}
            Err(detail) => note(kept(&label, detail)),
        }
    }
    Ok(())
}

fn kept(source: &str, why: String) -> Seen {
    Seen {
        source: source.to_owned(),
        key: None,
        outcome: "kept",
        why: Some(why),
    }
}

/// One line for an S3 SDK error: the service's code and message, or the error chain.
fn describe_s3<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::ProvideErrorMetadata;
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Re-reads the parked change's item and plans from it.
async fn resolve(
    clients: &runtime::aws::Clients,
    options: &Options,
    parked: &ParkedChange,
) -> Plan {
    if key_of(&parked.keys).is_none() {
        return Plan::Keep("the parked record has no string user_id key".into());
    }
    match clients
        .dynamodb
        .get_item()
        .table_name(&options.table)
        .set_key(Some(items::to_sdk(&parked.keys)))
        .consistent_read(true)
        .send()
        .await
    {
        Ok(out) => {
            let item = out.item.map(items::from_sdk);
            plan_parked(
                parked,
                item.as_ref(),
                &options.table,
                OffsetDateTime::now_utc(),
            )
        }
        Err(e) => Plan::Keep(format!(
            "reading the item failed: {}",
            runtime::report::describe_sdk_error(&e)
        )),
    }
}

/// Sends a planned event (unless a dry run) and says how it ended.
async fn carry_out(
    dest: &Destination,
    options: &Options,
    plan: Plan,
    source: String,
    key: Option<String>,
    shutdown: &CancellationToken,
) -> Seen {
    let seen = |outcome, why: Option<String>| Seen {
        source: source.clone(),
        key: key.clone(),
        outcome,
        why,
    };
    match plan {
        Plan::Publish(event) if options.dry_run => seen(
            "would-republish",
            Some(format!(
                "{} at {}/{}",
                event.change.event_type().as_str(),
                event.position.generation,
                event.position.version
            )),
        ),
        Plan::Publish(event) => {
            let encoded = vec![Encoded::new(0, &event, options.schema_version)];
            match dest.send(encoded, shutdown).await {
                Ok(sent) if sent.rejected.is_empty() && sent.accepted == 1 => {
                    info!(key = %event.key, event_id = %event.event_id, "Record republished.");
                    seen("republished", None)
                }
                Ok(sent) => seen(
                    "kept",
                    Some(
                        sent.rejected
                            .first()
                            .map(|(_, r)| format!("refused: {}: {}", r.reason_code, r.detail))
                            .unwrap_or_else(|| "not accepted".into()),
                    ),
                ),
                Err(e) => seen("kept", Some(format!("not sent: {e}"))),
            }
        }
        Plan::Superseded(why) => seen("superseded", Some(why.to_owned())),
        Plan::Keep(why) => seen("kept", Some(why)),
        Plan::ReadItem(_) => seen("kept", Some("unresolved".into())),
    }
}

/// Receives every message of the failure queue once, republishes what it can and
/// deletes exactly those (and the superseded); the rest is made visible again.
async fn drain_queue(
    clients: &runtime::aws::Clients,
    dest: &Destination,
    options: &Options,
    url: &str,
    shutdown: &CancellationToken,
    note: &mut impl FnMut(Seen),
) -> Result<(), RepublishError> {
    let sqs = &clients.sqs;
    let mut seen_ids = HashSet::new();
    let mut kept_handles = Vec::new();
    let mut empty = 0;
    let hold = i32::try_from(options.hold.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    while empty < 2 && !shutdown.is_cancelled() {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(MAX_RECEIVE)
            .wait_time_seconds(RECEIVE_WAIT_SECS)
            .visibility_timeout(hold)
            .send()
            .await
            .map_err(|e| RepublishError::Queue {
                url: url.to_owned(),
                detail: runtime::report::describe_sdk_error(&e),
            })?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in messages {
            let id = m.message_id.clone().unwrap_or_default();
            let handle = m.receipt_handle.clone().unwrap_or_default();
            if !seen_ids.insert(id.clone()) {
                // A kept message back after --hold-secs: its outcome stands; hide it
                // again so the run ends when nothing new is visible.
                let _ = sqs
                    .change_message_visibility()
                    .queue_url(url)
                    .receipt_handle(&handle)
                    .visibility_timeout(hold)
                    .send()
                    .await;
                kept_handles.push(handle);
                continue;
            }
            let body = m.body.as_deref().unwrap_or("");
            let (plan, key) = match serde_json::from_str::<ParkedRecord>(body) {
                Ok(parked) => (
                    resolve(clients, options, &parked.record).await,
                    key_of(&parked.record.keys),
                ),
                Err(_) => (
                    Plan::Keep("not a parked record (an old on-failure metadata message?)".into()),
                    None,
                ),
            };
            let seen = carry_out(dest, options, plan, format!("queue:{id}"), key, shutdown).await;
            let remove = !options.dry_run && matches!(seen.outcome, "republished" | "superseded");
            if remove {
                if let Err(e) = sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(&handle)
                    .send()
                    .await
                {
                    // Published but not deleted: a later run sends it again, which the
                    // version guard makes harmless.
                    warn!(message_id = %id, error = %runtime::report::describe_sdk_error(&e), "Republished message not deleted from the failure queue.");
                }
            } else {
                kept_handles.push(handle);
            }
            note(seen);
        }
    }
    for handle in kept_handles {
        let _ = sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher::park::ParkedPosition;
    use publisher::record::AttributeValue;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn item(version: i64) -> Item {
        Item::from([
            ("user_id".to_string(), s("u-1")),
            ("email".to_string(), s("a@example.com")),
            ("display_name".to_string(), s("A")),
            ("plan".to_string(), s("free")),
            ("created_at".to_string(), s("2026-11-20T09:30:00Z")),
            ("updated_at".to_string(), s("2026-11-25T00:00:00Z")),
            (
                "version".to_string(),
                AttributeValue::N(version.to_string()),
            ),
        ])
    }

    fn parked(event_name: EventName, position: Option<ParkedPosition>) -> ParkedChange {
        ParkedChange {
            event_id: Some("e-9".into()),
            event_name,
            keys: Item::from([("user_id".to_string(), s("u-1"))]),
            sequence_number: Some("9".into()),
            approximate_creation: None,
            user_identity: None,
            position,
        }
    }

    const NOW: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    #[test]
    fn a_parked_record_whose_item_now_projects_is_sent_as_a_snapshot_at_its_current_position() {
        let Plan::Publish(event) =
            plan_parked(&parked(EventName::Modify, None), Some(&item(8)), "t", NOW)
        else {
            panic!("not published")
        };
        assert!(matches!(event.change, Change::Snapshot(_)));
        assert_eq!(event.position.version, 8);
    }

    #[test]
    fn a_parked_record_whose_item_is_still_bad_stays_with_the_reason() {
        let mut bad = item(8);
        bad.insert("email".into(), AttributeValue::N("1".into()));
        let plan = plan_parked(&parked(EventName::Modify, None), Some(&bad), "t", NOW);
        let Plan::Keep(why) = plan else {
            panic!("{plan:?}")
        };
        assert!(why.contains("email") && why.contains("expected S"), "{why}");
    }

    #[test]
    fn a_parked_delete_of_a_gone_item_is_rebuilt_at_its_parked_position() {
        let position = ParkedPosition {
            generation: 5,
            version: 3,
        };
        let plan = plan_parked(&parked(EventName::Remove, Some(position)), None, "t", NOW);
        let Plan::Publish(event) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(event.change, Change::Deleted(DeleteReason::Deleted));
        assert_eq!(event.event_id, "e-9");
        assert_eq!((event.position.generation, event.position.version), (5, 3));
        assert!(matches!(
            plan_parked(&parked(EventName::Remove, None), None, "t", NOW),
            Plan::Keep(_)
        ));
    }

    #[test]
    fn a_parked_upsert_of_a_since_deleted_item_is_superseded() {
        assert!(matches!(
            plan_parked(&parked(EventName::Insert, None), None, "t", NOW),
            Plan::Superseded(_)
        ));
    }

    #[test]
    fn an_invocation_record_yields_its_stream_records_whole() {
        let event = serde_json::json!({"Records": [{
            "eventID": "e-1", "eventName": "INSERT",
            "eventSourceARN": "arn:aws:dynamodb:r:1:table/t/stream/x",
            "dynamodb": {
                "Keys": {"user_id": {"S": "u-1"}},
                "NewImage": {
                    "user_id": {"S": "u-1"}, "email": {"S": "a@example.com"},
                    "display_name": {"S": "A"}, "plan": {"S": "free"},
                    "created_at": {"S": "2026-11-20T09:30:00Z"},
                    "updated_at": {"S": "2026-11-25T00:00:00Z"}, "version": {"N": "4"}
                },
                "SequenceNumber": "77"
            }
        }]});
        for payload in [event.clone(), serde_json::Value::String(event.to_string())] {
            let doc = serde_json::json!({
                "requestContext": {"condition": "RetryAttemptsExhausted"},
                "version": "1.0",
                "DDBStreamBatchInfo": {"shardId": "s-1"},
                "payload": payload,
            })
            .to_string();
            let (arn, records) = invocation_records(&doc).unwrap();
            assert_eq!(
                arn.as_deref(),
                Some("arn:aws:dynamodb:r:1:table/t/stream/x")
            );
            let origin = Origin {
                table: "t".into(),
                stream_arn: arn.unwrap(),
            };
            let Plan::Publish(event) = plan_stream(&records[0], &origin, NOW) else {
                panic!()
            };
            assert_eq!(event.event_id, "e-1");
            assert_eq!(event.position.version, 4);
        }
        assert!(invocation_records(r#"{"requestContext": {}}"#).is_err());
    }
}
