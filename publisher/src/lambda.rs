//! The `publisher-lambda` handler: a DynamoDB-stream event-source-mapping batch →
//! the shared [`BatchStep`] → a partial batch response.
//!
//! The event types are our own, and deliberately lenient: every field real or emulated
//! events have been seen to omit (`awsRegion`, `eventVersion`,
//! `ApproximateCreationDateTime`, `SequenceNumber`, …) is optional, and an attribute
//! value of an unknown shape becomes [`AttributeValue::Unsupported`], so a strange
//! record is refused (and parked) on its own instead of failing the whole batch before
//! the handler runs. DynamoDB numbers stay the decimal strings the event carries.
//!
//! Stream semantics: the response names the **first** record that is neither published
//! nor parked; Lambda retries the batch from there (with `BisectBatchOnFunctionError`
//! and bounded retries in the mapping). Records that can never be published are parked
//! whole in the failure queue, so they never hold the shard.
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html>

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use contracts::SchemaVersion;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::batch::BatchStep;
use crate::park::FailureQueue;
use crate::record::{AttributeValue, EventName, Item, Origin, StreamRecord};
use crate::sink::SnsSink;

/// Shard id recorded on a record parked from Lambda: the stream event does not carry it
/// (the stream ARN and sequence number still identify the record).
pub(crate) const UNKNOWN_SHARD: &str = "-";

/// A DynamoDB-stream event as an event-source mapping delivers it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StreamEvent {
    #[serde(rename = "Records")]
    pub records: Vec<StreamEventRecord>,
}

/// One record of a [`StreamEvent`]. Only what the publisher reads is typed; every field
/// is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StreamEventRecord {
    #[serde(rename = "eventID")]
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub event_version: Option<String>,
    pub event_source: Option<String>,
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: Option<String>,
    pub aws_region: Option<String>,
    pub dynamodb: StreamEventData,
    pub user_identity: Option<UserIdentity>,
}

/// The `dynamodb` part of a record. Attribute values are kept as JSON until converted,
/// so one odd value cannot make the whole event undecodable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct StreamEventData {
    pub keys: BTreeMap<String, Value>,
    pub new_image: Option<BTreeMap<String, Value>>,
    pub old_image: Option<BTreeMap<String, Value>>,
    pub sequence_number: Option<String>,
    /// Epoch seconds (a JSON number, sometimes fractional or in exponent form). A
    /// timestamp, not an item number: reading it as `f64` loses nothing that matters.
    pub approximate_creation_date_time: Option<Value>,
    pub size_bytes: Option<u64>,
    pub stream_view_type: Option<String>,
}

/// Who made the change; `Service` / `dynamodb.amazonaws.com` for a TTL removal.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UserIdentity {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub principal_id: Option<String>,
}

pub use runtime::lambda::{BatchItemFailure, BatchResponse};

/// The invocation failed as a whole; Lambda retries the whole batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The first unfinished record has no `SequenceNumber` to report, so only a failed
    /// invocation keeps it (a real stream always sets one).
    #[error("record {index} is unfinished and has no SequenceNumber to report")]
    NoSequenceNumber { index: usize },
}

impl StreamEventRecord {
    /// The record in the one form both modes decode.
    pub fn to_stream_record(&self) -> StreamRecord {
        let event_name = match self.event_name.as_deref() {
            Some("INSERT") => EventName::Insert,
            Some("MODIFY") => EventName::Modify,
            Some("REMOVE") => EventName::Remove,
            _ => EventName::Unsupported,
        };
        let data = &self.dynamodb;
        StreamRecord {
            event_id: self.event_id.clone(),
            event_name,
            keys: item_from_json(&data.keys),
            new_image: data.new_image.as_ref().map(item_from_json),
            old_image: data.old_image.as_ref().map(item_from_json),
            sequence_number: data.sequence_number.clone(),
            approximate_creation: data
                .approximate_creation_date_time
                .as_ref()
                .and_then(epoch_seconds),
            user_identity: self.user_identity.as_ref().map(|u| {
                (
                    u.kind.clone().unwrap_or_default(),
                    u.principal_id.clone().unwrap_or_default(),
                )
            }),
        }
    }
}

/// An item in DynamoDB JSON (`{"name": {"S": "…"}}`) → our item type.
pub(crate) fn item_from_json(item: &BTreeMap<String, Value>) -> Item {
    item.iter()
        .map(|(k, v)| (k.clone(), attribute_from_json(v)))
        .collect()
}

/// One attribute value in DynamoDB JSON. Anything but exactly one known type key with
/// a value of the documented JSON type is [`AttributeValue::Unsupported`]; in
/// particular a number must be a JSON string (a JSON number would already have passed
/// through `f64`).
pub(crate) fn attribute_from_json(value: &Value) -> AttributeValue {
    let Some(object) = value.as_object() else {
        return AttributeValue::Unsupported;
    };
    let mut entries = object.iter();
    let (Some((kind, v)), None) = (entries.next(), entries.next()) else {
        return AttributeValue::Unsupported;
    };
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let bytes = |v: &Value| -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()
    };
    let converted = match kind.as_str() {
        "S" => v.as_str().map(|s| AttributeValue::S(s.to_owned())),
        "N" => v.as_str().map(|s| AttributeValue::N(s.to_owned())),
        "B" => bytes(v).map(AttributeValue::B),
        "BOOL" => v.as_bool().map(AttributeValue::Bool),
        "NULL" => v.as_bool().map(|_| AttributeValue::Null),
        "M" => v.as_object().map(|m| {
            AttributeValue::M(
                m.iter()
                    .map(|(k, v)| (k.clone(), attribute_from_json(v)))
                    .collect(),
            )
        }),
        "L" => v
            .as_array()
            .map(|l| AttributeValue::L(l.iter().map(attribute_from_json).collect())),
        "SS" => strings(v).map(AttributeValue::Ss),
        "NS" => strings(v).map(AttributeValue::Ns),
        "BS" => v
            .as_array()
            .and_then(|l| l.iter().map(bytes).collect::<Option<Vec<_>>>())
            .map(AttributeValue::Bs),
        _ => None,
    };
    converted.unwrap_or(AttributeValue::Unsupported)
}

fn epoch_seconds(value: &Value) -> Option<OffsetDateTime> {
    let seconds = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.parse::<f64>().ok()?,
        _ => return None,
    };
    if !seconds.is_finite() {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos((seconds * 1e9).round() as i128).ok()
}

/// The table name in a stream ARN (`arn:…:table/NAME/stream/LABEL`).
pub(crate) fn table_of_stream_arn(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":table/")?.1;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Everything the handler keeps between invocations: built once per execution
/// environment.
#[derive(Debug, Clone)]
pub struct PublisherLambda {
    pub sink: SnsSink,
    pub failures: FailureQueue,
    /// The contract version to publish.
    pub emit: SchemaVersion,
    /// The table name when the event's ARN does not tell it.
    pub table: Option<String>,
    /// Time kept before the function's deadline to park or report what is unfinished.
    pub deadline_margin: Duration,
}

impl PublisherLambda {
    /// Publishes one stream batch. `deadline` is the invocation's (from the runtime
    /// context); publishing stops `deadline_margin` before it and the rest is reported.
    ///
    /// # Errors
    /// [`HandlerError`] only when the record to report cannot be named.
    pub async fn handle(
        &self,
        event: StreamEvent,
        deadline: Option<SystemTime>,
    ) -> Result<BatchResponse, HandlerError> {
        if event.records.is_empty() {
            return Ok(BatchResponse::default());
        }
        let stream_arn = event
            .records
            .iter()
            .find_map(|r| r.event_source_arn.clone())
            .unwrap_or_default();
        let table = table_of_stream_arn(&stream_arn)
            .map(str::to_owned)
            .or_else(|| self.table.clone())
            .unwrap_or_default();
        let origin = Origin { table, stream_arn };
        let records: Vec<StreamRecord> = event
            .records
            .iter()
            .map(StreamEventRecord::to_stream_record)
            .collect();

        let work = CancellationToken::new();
        let budget =
            runtime::lambda::work_budget(deadline, self.deadline_margin, SystemTime::now());
        let _timer = budget.map(|remaining| {
            let work = work.clone();
            DropGuard(tokio::spawn(async move {
                tokio::time::sleep(remaining).await;
                work.cancel();
            }))
        });
        let step = BatchStep {
            sink: &self.sink,
            failures: &self.failures,
            origin: &origin,
            emit: self.emit,
        };
        match step.run(UNKNOWN_SHARD, &records, &work).await {
            Ok(report) => {
                info!(
                    records = records.len(),
                    published = report.published,
                    skipped = report.skipped,
                    parked = report.parked,
                    "Stream batch published."
                );
                Ok(BatchResponse::default())
            }
            Err(e) => {
                let index = e.first_unfinished();
                match records.get(index).and_then(|r| r.sequence_number.clone()) {
                    Some(sequence_number) => {
                        warn!(error = %e, %sequence_number, "Stream batch unfinished; Lambda retries it from this record.");
                        Ok(BatchResponse {
                            batch_item_failures: vec![BatchItemFailure {
                                item_identifier: sequence_number,
                            }],
                        })
                    }
                    None => {
                        error!(error = %e, index, "Stream batch unfinished at a record without a SequenceNumber; failing the whole invocation.");
                        Err(HandlerError::NoSequenceNumber { index })
                    }
                }
            }
        }
    }
}

/// Aborts the deadline timer when the invocation ends.
struct DropGuard(tokio::task::JoinHandle<()>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_missing_every_optional_field_still_decodes() {
        let event: StreamEvent = serde_json::from_str(
            r#"{"Records":[{"eventName":"INSERT","dynamodb":{"Keys":{"user_id":{"S":"u1"}}}}]}"#,
        )
        .unwrap();
        let record = event.records[0].to_stream_record();
        assert_eq!(record.event_name, EventName::Insert);
        assert_eq!(record.sequence_number, None);
        assert_eq!(record.approximate_creation, None);
        assert_eq!(record.keys["user_id"], AttributeValue::S("u1".into()));
    }

    #[test]
    fn numbers_stay_decimal_strings_and_json_numbers_are_refused() {
        let big = "12345678901234567890123456789012345678";
        assert_eq!(
            attribute_from_json(&serde_json::json!({ "N": big })),
            AttributeValue::N(big.into())
        );
        assert_eq!(
            attribute_from_json(&serde_json::json!({ "N": 1.5 })),
            AttributeValue::Unsupported
        );
        assert_eq!(
            attribute_from_json(&serde_json::json!({ "NS": ["1", "2.50"] })),
            AttributeValue::Ns(vec!["1".into(), "2.50".into()])
        );
    }

    #[test]
    fn every_documented_attribute_type_converts() {
        let v = serde_json::json!({"M": {
            "b": {"B": "aGk="}, "t": {"BOOL": true}, "n": {"NULL": true},
            "l": {"L": [{"S": "x"}]}, "ss": {"SS": ["a"]}, "bs": {"BS": ["aGk="]}
        }});
        let AttributeValue::M(m) = attribute_from_json(&v) else {
            panic!("not a map")
        };
        assert_eq!(m["b"], AttributeValue::B(b"hi".to_vec()));
        assert_eq!(m["t"], AttributeValue::Bool(true));
        assert_eq!(m["n"], AttributeValue::Null);
        assert_eq!(
            m["l"],
            AttributeValue::L(vec![AttributeValue::S("x".into())])
        );
        assert_eq!(m["ss"], AttributeValue::Ss(vec!["a".into()]));
        assert_eq!(m["bs"], AttributeValue::Bs(vec![b"hi".to_vec()]));
    }

    #[test]
    fn odd_attribute_shapes_are_unsupported_not_errors() {
        for v in [
            serde_json::json!("plain"),
            serde_json::json!({}),
            serde_json::json!({"S": "a", "N": "1"}),
            serde_json::json!({"X": "a"}),
            serde_json::json!({"B": "not base64!"}),
        ] {
            assert_eq!(attribute_from_json(&v), AttributeValue::Unsupported, "{v}");
        }
    }

    #[test]
    fn creation_time_accepts_integer_fractional_and_exponent_forms() {
        for raw in ["1428537600", "1428537600.0", "1.4285376E9"] {
            let v: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(
                epoch_seconds(&v).map(OffsetDateTime::unix_timestamp),
                Some(1_428_537_600),
                "{raw}"
            );
        }
    }

    #[test]
    fn ttl_removals_keep_their_user_identity() {
        let record: StreamEventRecord = serde_json::from_value(serde_json::json!({
            "eventName": "REMOVE",
            "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
            "dynamodb": {"Keys": {"user_id": {"S": "u1"}}}
        }))
        .unwrap();
        assert_eq!(
            record.to_stream_record().user_identity,
            Some(("Service".into(), "dynamodb.amazonaws.com".into()))
        );
    }

    #[test]
    fn the_table_is_read_from_the_stream_arn() {
        assert_eq!(
            table_of_stream_arn(
                "arn:aws:dynamodb:us-east-1:123456789012:table/profiles/stream/2024-01-01T00:00:00.000"
            ),
            Some("profiles")
        );
        assert_eq!(table_of_stream_arn("nonsense"), None);
    }

    #[test]
    fn the_response_has_the_documented_shape() {
        let response = BatchResponse {
            batch_item_failures: vec![BatchItemFailure {
                item_identifier: "42".into(),
            }],
        };
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "42"}]})
        );
    }
}
