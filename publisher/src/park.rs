//! The failure queue: where a stream record that can never be published goes, whole,
//! with its reason, so that it neither stalls its shard nor is lost.

use aws_sdk_sqs as sqs;
use sqs::types::MessageAttributeValue;
use tracing::error;

use crate::record::StreamRecord;

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

/// Largest SQS message body (256 KiB).
///
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html>
pub const MAX_MESSAGE_BYTES: usize = 262_144;
/// Room kept for the message attributes, which count towards the limit.
const ATTRIBUTE_ALLOWANCE: usize = 2048;

/// What the failure queue receives: the full record and why it was refused.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ParkedRecord {
    pub reason: String,
    pub detail: String,
    pub stream_arn: String,
    pub shard_id: String,
    pub record: StreamRecord,
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
        let body = body_within_limit(parked);
        let mut detail = ops::sqs_text::sanitize_text(&parked.detail).into_owned();
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
            .map_err(|e| ParkError::Send(crate::describe_sdk_error(&e)))?;
        error!(
            shard_id = %parked.shard_id,
            sequence_number = parked.record.sequence_number.as_deref().unwrap_or("-"),
            event_id = parked.record.event_id.as_deref().unwrap_or("-"),
            reason = %parked.reason,
            detail = %parked.detail,
            "Stream record parked in the failure queue."
        );
        Ok(())
    }
}

/// The parked record as JSON; when the whole record (both images) does not fit in one
/// SQS message — exactly the case for an event SNS refused as too large — the images are
/// dropped and their sizes noted: the keys, sequence number and reason still identify
/// the change, and the item can be re-read from the table or backfilled.
pub fn body_within_limit(parked: &ParkedRecord) -> String {
    let full = sqs_json(parked);
    if full.len() + ATTRIBUTE_ALLOWANCE <= MAX_MESSAGE_BYTES {
        return full;
    }
    let mut reduced = ParkedRecord {
        reason: parked.reason.clone(),
        detail: format!(
            "{} (images dropped: the record was {} bytes as JSON)",
            parked.detail,
            full.len()
        ),
        stream_arn: parked.stream_arn.clone(),
        shard_id: parked.shard_id.clone(),
        record: parked.record.clone(),
    };
    reduced.record.new_image = None;
    reduced.record.old_image = None;
    sqs_json(&reduced)
}

/// JSON that SQS accepts: an image may hold U+FFFE or U+FFFF, which SQS refuses raw.
fn sqs_json(parked: &ParkedRecord) -> String {
    let json = serde_json::to_string(parked).expect("a stream record serialises");
    ops::sqs_text::escape_json(&json).into_owned()
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
    use crate::record::{AttributeValue, EventName, Item};

    fn parked(image_bytes: usize) -> ParkedRecord {
        let image = Item::from([
            ("user_id".to_string(), AttributeValue::S("u-1".into())),
            (
                "blob".to_string(),
                AttributeValue::S("x".repeat(image_bytes)),
            ),
        ]);
        ParkedRecord {
            reason: "message_too_large".into(),
            detail: "too big".into(),
            stream_arn: "arn".into(),
            shard_id: "shard-1".into(),
            record: StreamRecord {
                event_id: Some("e".into()),
                event_name: EventName::Modify,
                keys: Item::from([("user_id".to_string(), AttributeValue::S("u-1".into()))]),
                new_image: Some(image.clone()),
                old_image: Some(image),
                sequence_number: Some("42".into()),
                approximate_creation: None,
                user_identity: None,
            },
        }
    }

    #[test]
    fn a_record_that_fits_is_parked_whole() {
        let body = body_within_limit(&parked(1000));
        let back: ParkedRecord = serde_json::from_str(&body).unwrap();
        assert!(back.record.new_image.is_some() && back.record.old_image.is_some());
    }

    #[test]
    fn an_oversize_record_is_parked_with_its_keys_but_without_images() {
        let body = body_within_limit(&parked(200_000));
        assert!(body.len() < MAX_MESSAGE_BYTES);
        let back: ParkedRecord = serde_json::from_str(&body).unwrap();
        assert!(back.record.new_image.is_none());
        assert_eq!(back.record.sequence_number.as_deref(), Some("42"));
        assert!(back.detail.contains("images dropped"));
    }

    #[test]
    fn a_parked_image_holding_characters_sqs_refuses_is_escaped_and_decodes_the_same() {
        let mut record = parked(10);
        let awkward = AttributeValue::S("a\u{FFFE}b\u{FFFF}".into());
        if let Some(image) = record.record.new_image.as_mut() {
            image.insert("display_name".into(), awkward.clone());
        }
        let body = body_within_limit(&record);
        assert!(!body.chars().any(ops::sqs_text::needs_escape), "{body}");
        let back: ParkedRecord = serde_json::from_str(&body).unwrap();
        assert_eq!(back.record.new_image.unwrap()["display_name"], awkward);
    }
}
