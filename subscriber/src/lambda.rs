//! The `subscriber-lambda` handler: an SQS event-source-mapping batch →
//! [`process_batch`] → a partial batch response naming exactly the failed messages.
//!
//! The same code as the container worker decides: the batch is applied in one
//! transaction when it can be; when the database refuses it, each event is applied on
//! its own and exactly the refused ones are parked in the DLQ with their reason (as
//! [`DeadLetterQueue`] sends them: body, attributes, `tributary-reason`, …). Parked
//! messages count as handled — Lambda deletes them; messages that failed transiently
//! are reported in `batchItemFailures` and come back after their visibility timeout.
//!
//! The event types are our own and lenient: only `messageId` is needed (a message
//! without one cannot be reported, so the invocation fails as a whole and the batch is
//! retried).
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html>

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tracing::{info, warn};

use crate::source::{DeadLetterQueue, ReceivedMessage};
use crate::worker::process_batch;

/// How long an invocation waits for a pooled connection before the batch is reported
/// as failed (and retried by the service).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// An SQS event as an event-source mapping delivers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqsEvent {
    #[serde(rename = "Records", default)]
    pub records: Vec<SqsEventRecord>,
}

/// One message of an [`SqsEvent`]; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsEventRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// System attributes (`ApproximateReceiveCount`, `SentTimestamp`, …), strings.
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    #[serde(default)]
    pub message_attributes: BTreeMap<String, SqsMessageAttribute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5_of_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    #[serde(
        rename = "eventSourceARN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub event_source_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
}

/// A message attribute in the Lambda event's shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsMessageAttribute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
}

pub use ops::{BatchItemFailure, BatchResponse};

/// The invocation failed as a whole; the service retries every message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("record {index} has no messageId, so it could not be reported alone")]
    NoMessageId { index: usize },
}

impl SqsEventRecord {
    /// The message as the worker code takes it; `None` without a message id.
    pub fn to_received(&self) -> Option<ReceivedMessage> {
        let number = |name: &str| -> Option<u64> {
            match self.attributes.get(name)? {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
        };
        let receive_count = number("ApproximateReceiveCount")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1);
        let message_attributes: HashMap<String, MessageAttributeValue> = self
            .message_attributes
            .iter()
            .filter_map(|(name, a)| {
                let value = MessageAttributeValue::builder()
                    .data_type(a.data_type.clone()?)
                    .set_string_value(a.string_value.clone())
                    .build()
                    .ok()?;
                Some((name.clone(), value))
            })
            .collect();
        Some(ReceivedMessage {
            message_id: self.message_id.clone()?,
            receipt_handle: self.receipt_handle.clone().unwrap_or_default(),
            body: self.body.clone().unwrap_or_default(),
            receive_count,
            sent_at_ms: number("SentTimestamp"),
            message_attributes,
        })
    }
}

/// What the handler keeps between invocations of one execution environment.
#[derive(Debug)]
pub struct SubscriberLambda {
    connect: PgConnectOptions,
    max_connections: u32,
    /// Created by the first invocation, reused by every later one.
    pool: OnceLock<PgPool>,
    dlq: DeadLetterQueue,
    deadline_margin: Duration,
}

impl SubscriberLambda {
    /// `max_connections` bounds this environment's pool; the mapping's
    /// `MaximumConcurrency` times it bounds the function's connections.
    pub fn new(
        connect: PgConnectOptions,
        max_connections: u32,
        dlq: DeadLetterQueue,
        deadline_margin: Duration,
    ) -> SubscriberLambda {
        SubscriberLambda {
            connect,
            max_connections: max_connections.max(1),
            pool: OnceLock::new(),
            dlq,
            deadline_margin,
        }
    }

    /// The environment's pool, created on first use. Connections are opened as
    /// needed, so a database that is down fails the batch, not the start.
    pub fn pool(&self) -> &PgPool {
        self.pool.get_or_init(|| {
            PgPoolOptions::new()
                .max_connections(self.max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(self.connect.clone())
        })
    }

    /// Applies one SQS batch and names the messages to retry. Work stops
    /// `deadline_margin` before `deadline`; then every message not known to be settled
    /// is reported (an applied one comes back as a no-op, a parked one is parked again).
    ///
    /// # Errors
    /// [`HandlerError::NoMessageId`]: nothing was applied; the whole batch is retried.
    pub async fn handle(
        &self,
        event: SqsEvent,
        deadline: Option<SystemTime>,
    ) -> Result<BatchResponse, HandlerError> {
        let mut messages = Vec::with_capacity(event.records.len());
        for (index, record) in event.records.iter().enumerate() {
            messages.push(
                record
                    .to_received()
                    .ok_or(HandlerError::NoMessageId { index })?,
            );
        }
        if messages.is_empty() {
            return Ok(BatchResponse::default());
        }
        let all_failed = |messages: &[ReceivedMessage]| BatchResponse {
            batch_item_failures: messages
                .iter()
                .map(|m| BatchItemFailure {
                    item_identifier: m.message_id.clone(),
                })
                .collect(),
        };
        let budget = deadline.map(|d| {
            d.duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(self.deadline_margin)
        });
        if budget == Some(Duration::ZERO) {
            warn!(
                messages = messages.len(),
                "Too close to the deadline to start; reporting the batch for retry."
            );
            return Ok(all_failed(&messages));
        }
        let work = process_batch(self.pool(), &self.dlq, &messages);
        let outcome = match budget {
            Some(budget) => match tokio::time::timeout(budget, work).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    warn!(
                        messages = messages.len(),
                        budget_ms = budget.as_millis() as u64,
                        "Deadline reached while applying; reporting the batch for retry."
                    );
                    return Ok(all_failed(&messages));
                }
            },
            None => work.await,
        };
        info!(
            messages = messages.len(),
            applied = outcome.succeeded.len(),
            parked = outcome.parked.len(),
            retry = outcome.retry.len(),
            "SQS batch processed."
        );
        // In the event's order, each once.
        Ok(BatchResponse {
            batch_item_failures: messages
                .iter()
                .filter(|m| outcome.retry.contains(&m.message_id))
                .map(|m| BatchItemFailure {
                    item_identifier: m.message_id.clone(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_sample_converts() {
        let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [{
            "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
            "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
            "body": "{}",
            "attributes": {
                "ApproximateReceiveCount": "3",
                "SentTimestamp": "1545082649183",
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "ApproximateFirstReceiveTimestamp": "1545082649185"
            },
            "messageAttributes": {"event_type": {
                "stringValue": "profile.upserted", "stringListValues": [],
                "binaryListValues": [], "dataType": "String"
            }},
            "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
            "awsRegion": "us-east-2"
        }]}))
        .unwrap();
        let m = event.records[0].to_received().unwrap();
        assert_eq!(m.message_id, "059f36b4-87a3-44ab-83d2-661975830a7d");
        assert_eq!(m.receive_count, 3);
        assert_eq!(m.sent_at_ms, Some(1_545_082_649_183));
        assert_eq!(
            m.message_attributes["event_type"].string_value(),
            Some("profile.upserted")
        );
    }

    #[test]
    fn a_record_with_only_an_id_converts_and_one_without_does_not() {
        let event: SqsEvent =
            serde_json::from_str(r#"{"Records":[{"messageId":"m1"},{"body":"x"}]}"#).unwrap();
        let first = event.records[0].to_received().unwrap();
        assert_eq!(first.receive_count, 1);
        assert_eq!(first.body, "");
        assert!(event.records[1].to_received().is_none());
    }
}
