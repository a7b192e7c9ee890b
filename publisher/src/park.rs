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
        let body = serde_json::to_string(parked).expect("a stream record serialises");
        let mut detail = parked.detail.clone();
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
            reason = %parked.reason,
            detail = %parked.detail,
            "Stream record parked in the failure queue."
        );
        Ok(())
    }
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
