//! The failure queue: where a stream record that can never be published goes, with its
//! reason, so that it neither stalls its shard nor is lost.
//!
//! A parked record carries the change's identity — keys, position, sequence number,
//! event id, kind — and the reason, but **nothing of the item's data**: the images hold
//! attributes the contract deliberately omits (a `password_hash`), and a malformed
//! attribute's value is the very thing that must not be copied into a queue or a log.
//! `replay republish` re-reads the item from the table by its keys when it re-publishes
//! (a delete is rebuilt from the parked position).

use aws_sdk_sqs as sqs;
use contracts::Position;
use serde::{Deserialize, Serialize};
use sqs::types::MessageAttributeValue;
use time::OffsetDateTime;

use crate::record::{EventName, Item, StreamRecord, position_of};

/// Longest detail text attached to a parked record (message attributes count towards
/// the 256 KiB message limit).
const MAX_DETAIL_BYTES: usize = 1024;

/// The record could not be parked; the shard must not move past it.
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    #[error("no failure queue is configured (set PUBLISHER_FAILURE_QUEUE_URL)")]
    NotConfigured,
    #[error("sending to the failure queue failed: {0}")]
    Send(String),
}

impl ParkError {
    /// Sending may work on another try; a missing queue will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ParkError::Send(_))
    }
}

/// What the failure queue receives: which change was refused and why, without its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedRecord {
    pub reason: String,
    /// The error text: attribute names, expected and found types, never a value.
    pub detail: String,
    pub stream_arn: String,
    pub shard_id: String,
    pub record: ParkedChange,
}

/// The identity of a parked stream record: enough to find the item again and to rebuild
/// a delete, and nothing of the item's attributes beyond its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedChange {
    pub event_id: Option<String>,
    pub event_name: EventName,
    /// The record's key attributes (the table's key: `user_id`).
    pub keys: Item,
    pub sequence_number: Option<String>,
    pub approximate_creation: Option<OffsetDateTime>,
    /// `userIdentity` as `(type, principalId)`: tells a TTL removal.
    pub user_identity: Option<(String, String)>,
    /// The change's position when the image still gave one (the new image of an insert
    /// or modify, the old image of a remove).
    pub position: Option<ParkedPosition>,
}

/// [`Position`] as it is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedPosition {
    pub generation: i64,
    pub version: i64,
}

impl From<ParkedPosition> for Position {
    fn from(p: ParkedPosition) -> Self {
        Position {
            generation: p.generation,
            version: p.version,
        }
    }
}

impl ParkedChange {
    /// The parked form of `record`: its identity and position, its images left out.
    pub fn of(record: &StreamRecord) -> Self {
        let image = match record.event_name {
            EventName::Remove => record.old_image.as_ref(),
            _ => record.new_image.as_ref(),
        };
        let position = image
            .and_then(|i| position_of(i, "").ok())
            .map(|p| ParkedPosition {
                generation: p.generation,
                version: p.version,
            });
        ParkedChange {
            event_id: record.event_id.clone(),
            event_name: record.event_name,
            keys: record.keys.clone(),
            sequence_number: record.sequence_number.clone(),
            approximate_creation: record.approximate_creation,
            user_identity: record.user_identity.clone(),
            position,
        }
    }
}

/// The SQS queue unpublishable records are parked in.
#[derive(Debug, Clone)]
pub struct FailureQueue {
    client: sqs::Client,
    url: Option<String>,
}

impl FailureQueue {
    pub fn new(client: sqs::Client, url: Option<String>) -> Self {
        FailureQueue { client, url }
    }

    /// Parks one record. Logged at ERROR: an operator should look at it.
    ///
    /// # Errors
    /// [`ParkError`] when there is no queue or it cannot be reached.
    pub async fn park(&self, parked: &ParkedRecord) -> Result<(), ParkError> {
        let url = self.url.as_deref().ok_or(ParkError::NotConfigured)?;
        // JSON that SQS accepts: a key may hold U+FFFE or U+FFFF, which SQS refuses raw.
        let body = sqs_json(parked);
        let mut detail = runtime::sqs_text::sanitize_text(&parked.detail).into_owned();
        truncate_utf8(&mut detail, MAX_DETAIL_BYTES);
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .message_attributes("tributary-reason", attr(&parked.reason))
            .message_attributes(
                "tributary-detail",
                attr(if detail.is_empty() { "-" } else { &detail }),
            )
            .message_attributes("tributary-shard", attr(&parked.shard_id))
            .send()
            .await
            .map_err(|e| ParkError::Send(runtime::report::describe_sdk_error(&e)))?;
        crate::metrics::metrics().parked(parked);
        Ok(())
    }
}

/// The parked record as JSON that SQS accepts (`runtime::sqs_text::escape_json`).
fn sqs_json(parked: &ParkedRecord) -> String {
    let json = serde_json::to_string(parked).expect("a parked record serialises");
    runtime::sqs_text::escape_json(&json).into_owned()
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AttributeValue, Origin, to_event};

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    /// A profile item with a private attribute and a contract field of the wrong type.
    fn bad_item() -> Item {
        Item::from([
            ("user_id".to_string(), s("u-1")),
            (
                "email".to_string(),
                AttributeValue::N("4111111111111111".into()),
            ),
            ("display_name".to_string(), s("A")),
            ("plan".to_string(), s("free")),
            ("created_at".to_string(), s("2026-11-20T09:30:00Z")),
            ("updated_at".to_string(), s("2026-11-25T00:00:00Z")),
            ("version".to_string(), AttributeValue::N("7".into())),
            (
                "password_hash".to_string(),
                s("$argon2id$v=19$secret-hash-value"),
            ),
        ])
    }

    fn record(event_name: EventName, old: Option<Item>, new: Option<Item>) -> StreamRecord {
        StreamRecord {
            event_id: Some("e".into()),
            event_name,
            keys: Item::from([("user_id".to_string(), s("u-1"))]),
            new_image: new,
            old_image: old,
            sequence_number: Some("42".into()),
            approximate_creation: None,
            user_identity: None,
        }
    }

    #[test]
    fn a_parked_record_carries_neither_private_attributes_nor_bad_values() {
        let r = record(EventName::Modify, Some(bad_item()), Some(bad_item()));
        let origin = Origin {
            table: "t".into(),
            stream_arn: "arn".into(),
        };
        let err = to_event(&r, &origin, OffsetDateTime::UNIX_EPOCH).unwrap_err();
        let parked = ParkedRecord {
            reason: err.reason_code().into(),
            detail: err.to_string(),
            stream_arn: "arn".into(),
            shard_id: "shard-1".into(),
            record: ParkedChange::of(&r),
        };
        let body = serde_json::to_string(&parked).unwrap();
        assert!(!body.contains("secret-hash-value"), "{body}");
        assert!(!body.contains("password_hash"), "{body}");
        assert!(!body.contains("4111111111111111"), "{body}");
        // What identifies the change and the problem is kept.
        assert!(
            parked.detail.contains("\"email\"") && parked.detail.contains("expected S"),
            "{}",
            parked.detail
        );
        assert_eq!(parked.record.sequence_number.as_deref(), Some("42"));
        assert_eq!(
            parked.record.position,
            Some(ParkedPosition {
                generation: 1_795_167_000_000_000,
                version: 7
            })
        );
        let back: ParkedRecord = serde_json::from_str(&body).unwrap();
        assert_eq!(back, parked);
    }

    #[test]
    fn a_parked_remove_keeps_the_old_images_position() {
        let r = record(EventName::Remove, Some(bad_item()), None);
        let parked = ParkedChange::of(&r);
        assert_eq!(parked.position.map(|p| p.version), Some(7));
        assert_eq!(parked.event_name, EventName::Remove);
    }

    #[test]
    fn a_parked_key_holding_characters_sqs_refuses_is_escaped_and_decodes_the_same() {
        let mut r = record(EventName::Remove, Some(bad_item()), None);
        let awkward = AttributeValue::S("u\u{FFFE}1\u{FFFF}".into());
        r.keys.insert("user_id".into(), awkward.clone());
        let parked = ParkedRecord {
            reason: "r".into(),
            detail: "d".into(),
            stream_arn: "arn".into(),
            shard_id: "shard-1".into(),
            record: ParkedChange::of(&r),
        };
        let body = sqs_json(&parked);
        assert!(!body.chars().any(runtime::sqs_text::needs_escape), "{body}");
        let back: serde_json::Value = serde_json::from_str(&body).unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&parked).unwrap()).unwrap();
        assert_eq!(back, original);
    }
}
