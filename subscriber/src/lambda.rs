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
//! A message that fails for a transient reason (the database is down, the DLQ cannot
//! be reached) is first delayed with `ChangeMessageVisibility`, by
//! [`crate::retry::store_retry_visibility`] of its receive count, then reported: a store outage of
//! hours costs each message a receive every so often, not one per visibility timeout,
//! so the queue's `maxReceiveCount` is not burnt in minutes. One that failed at the
//! last receive SQS allows before its redrive policy moves it is parked by us
//! instead, with the reason [`STORE_UNAVAILABLE`] ([`crate::retry::retry_step`]), so no healthy
//! message reaches the DLQ without a reason.
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
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tracing::{debug, error, info, warn};

use crate::batch::process_batch;
use crate::queue::{DeadLetterQueue, MAX_BATCH_ENTRIES, Parker, ReceivedMessage};
use crate::redrive::max_receive_count_from_redrive_policy;
use crate::retry::{RetryStep, STORE_RETRY_VISIBILITY_MAX, retry_step};
use crate::secret::DatabaseSecret;
use runtime::report::error_chain;

/// `tributary-reason` of a message parked because the store kept failing until the
/// queue's `maxReceiveCount` was about to move it. The message itself is healthy:
/// redrive it (`replay dlq`) once the store is back.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

/// How long an invocation waits for a pooled connection before the batch is reported
/// as failed (and retried by the service).
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// An SQS event as an event-source mapping delivers it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SqsEvent {
    #[serde(rename = "Records")]
    pub records: Vec<SqsEventRecord>,
}

/// One message of an [`SqsEvent`]; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SqsEventRecord {
    pub message_id: Option<String>,
    pub receipt_handle: Option<String>,
    pub body: Option<String>,
    /// System attributes (`ApproximateReceiveCount`, `SentTimestamp`, …), strings.
    pub attributes: BTreeMap<String, Value>,
    pub message_attributes: BTreeMap<String, SqsMessageAttribute>,
    pub md5_of_body: Option<String>,
    pub event_source: Option<String>,
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: Option<String>,
    pub aws_region: Option<String>,
}

/// A message attribute in the Lambda event's shape.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SqsMessageAttribute {
    pub string_value: Option<String>,
    pub binary_value: Option<String>,
    pub data_type: Option<String>,
}

pub use runtime::lambda::{BatchItemFailure, BatchResponse};

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

/// The queue the event-source mapping reads, as resolved once per environment.
#[derive(Debug, Clone)]
struct QueueInfo {
    url: String,
    /// The RedrivePolicy's `maxReceiveCount`; `None` if it could not be read.
    max_receive_count: Option<u32>,
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
    /// The consumed queue's URL, if configured; else resolved from the records'
    /// `eventSourceARN`.
    queue_url: Option<String>,
    /// Resolved on the first transient failure, reused after.
    queue: tokio::sync::OnceCell<QueueInfo>,
    /// Where the database URL came from, to read it again when PostgreSQL refuses the
    /// credentials (a rotated password), and whether its TLS may be unverified.
    secret: Option<(DatabaseSecret, bool)>,
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
            queue_url: None,
            queue: tokio::sync::OnceCell::new(),
            secret: None,
        }
    }

    /// The secret the database URL was read from: when PostgreSQL refuses the
    /// credentials, it is read again and the pool's new connections use the new value
    /// (the batch is then tried once more). `allow_insecure_tls` is
    /// `--allow-insecure-database-tls`, applied to the new URL too.
    #[must_use]
    pub fn with_secret(
        mut self,
        secret: DatabaseSecret,
        allow_insecure_tls: bool,
    ) -> SubscriberLambda {
        self.secret = Some((secret, allow_insecure_tls));
        self
    }

    /// Applies `messages`; if none applied and PostgreSQL refuses the credentials, reads
    /// the secret again and tries the messages to retry once more.
    async fn apply(&self, messages: &[ReceivedMessage]) -> crate::batch::BatchOutcome {
        let mut outcome = process_batch(self.pool(), &self.dlq, messages).await;
        if outcome.succeeded.is_empty()
            && !outcome.retry.is_empty()
            && self.refresh_refused_credentials().await
        {
            let again: Vec<ReceivedMessage> = messages
                .iter()
                .filter(|m| outcome.retry.contains(&m.message_id))
                .cloned()
                .collect();
            let second = process_batch(self.pool(), &self.dlq, &again).await;
            outcome.succeeded.extend(second.succeeded);
            outcome.parked.extend(second.parked);
            outcome.retry = second.retry;
            outcome.report.add(second.report);
        }
        outcome
    }

    /// If a secret is configured and PostgreSQL refuses its credentials, reads it again
    /// and points the pool's new connections at the new value. Whether it did.
    async fn refresh_refused_credentials(&self) -> bool {
        let Some((secret, allow_insecure_tls)) = &self.secret else {
            return false;
        };
        match self.pool().acquire().await {
            Err(e) if crate::secret::is_authentication_failure(&e) => {
                warn!(secret_arn = secret.arn(), error = %error_chain(&e), "PostgreSQL refused the credentials; reading the secret again.");
            }
            _ => return false,
        }
        let url = match secret.read().await {
            Ok(url) => url,
            Err(e) => {
                warn!(error = %error_chain(&e), "Could not read the database secret again.");
                return false;
            }
        };
        if let Err(line) = crate::config::check_database_tls(&url, *allow_insecure_tls) {
            error!(secret_arn = secret.arn(), problem = %line, "The rotated database URL is refused; an operator must act.");
            return false;
        }
        match url.consumer_connect_options() {
            Ok(options) => {
                self.pool().set_connect_options(options);
                info!(
                    secret_arn = secret.arn(),
                    "Database credentials read again from the secret."
                );
                true
            }
            Err(e) => {
                error!(secret_arn = secret.arn(), error = %e, "The rotated database URL is refused; an operator must act.");
                false
            }
        }
    }

    /// The URL of the queue the mapping reads (`SUBSCRIBER_QUEUE_URL`), where failed
    /// messages are delayed. Without it, the URL is resolved from the records'
    /// `eventSourceARN` with `GetQueueUrl`.
    #[must_use]
    pub fn with_queue_url(mut self, queue_url: Option<String>) -> SubscriberLambda {
        self.queue_url = queue_url;
        self
    }

    /// The consumed queue: its URL and `maxReceiveCount`, resolved once.
    async fn queue(&self, event_source_arn: Option<&str>) -> Result<&QueueInfo, String> {
        self.queue
            .get_or_try_init(|| async {
                let client = self.dlq.client();
                let url = match (&self.queue_url, event_source_arn) {
                    (Some(url), _) => url.clone(),
                    (None, Some(arn)) => {
                        let (account, name) = queue_of_arn(arn)
                            .ok_or_else(|| format!("eventSourceARN {arn} is not a queue ARN"))?;
                        client
                            .get_queue_url()
                            .queue_name(name)
                            .queue_owner_aws_account_id(account)
                            .send()
                            .await
                            .map_err(|e| error_chain(&e))?
                            .queue_url()
                            .map(str::to_owned)
                            .ok_or_else(|| "GetQueueUrl returned no URL".to_owned())?
                    }
                    (None, None) => return Err("no SUBSCRIBER_QUEUE_URL nor eventSourceARN".into()),
                };
                let max_receive_count = match client
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
                    .send()
                    .await
                {
                    Ok(out) => out
                        .attributes()
                        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
                        .and_then(|p| max_receive_count_from_redrive_policy(p)),
                    Err(e) => {
                        warn!(queue_url = %url, error = %error_chain(&e), "Could not read the queue's RedrivePolicy; messages near its maxReceiveCount cannot be parked with a reason.");
                        None
                    }
                };
                Ok(QueueInfo {
                    url,
                    max_receive_count,
                })
            })
            .await
    }

    /// Delays each message to retry by [`retry_step`], or parks it with
    /// [`STORE_UNAVAILABLE`]. Returns the ids parked (handled: not to report).
    async fn back_off(
        &self,
        retry: &[&ReceivedMessage],
        event_source_arn: Option<&str>,
    ) -> Vec<String> {
        let queue = match self.queue(event_source_arn).await {
            Ok(queue) => queue,
            Err(why) => {
                warn!(error = %why, messages = retry.len(), "Could not resolve the queue; the messages to retry come back after its visibility timeout.");
                return Vec::new();
            }
        };
        let mut parked = Vec::new();
        let mut delays: Vec<(&ReceivedMessage, Duration)> = Vec::new();
        for &message in retry {
            match retry_step(
                message.receive_count,
                queue.max_receive_count,
                rand::random(),
            ) {
                RetryStep::Delay(delay) => delays.push((message, delay)),
                RetryStep::Park => {
                    let detail = format!(
                        "failed transiently at receive {} of the queue's maxReceiveCount {}; \
                         the message is healthy: redrive it when the store is back",
                        message.receive_count,
                        queue.max_receive_count.unwrap_or_default()
                    );
                    match self.dlq.park(message, STORE_UNAVAILABLE, &detail).await {
                        Ok(()) => parked.push(message.message_id.clone()),
                        Err(e) => {
                            warn!(message_id = %message.message_id, error = %error_chain(&e), "Could not park the message; SQS may move it to the DLQ without a reason.");
                            delays.push((message, STORE_RETRY_VISIBILITY_MAX));
                        }
                    }
                }
            }
        }
        for chunk in delays.chunks(MAX_BATCH_ENTRIES) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, (message, delay))| crate::queue::visibility_entry(i, message, *delay))
                .collect();
            match self
                .dlq
                .client()
                .change_message_visibility_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) if out.failed().is_empty() => {
                    for (message, delay) in chunk {
                        debug!(message_id = %message.message_id, receive_count = message.receive_count, delay_ms = delay.as_millis() as u64, "Message delayed before its retry.");
                    }
                }
                Ok(out) => warn!(
                    failed = out.failed().len(),
                    "Some messages to retry could not be delayed; they come back after the queue's visibility timeout."
                ),
                Err(e) => {
                    warn!(error = %error_chain(&e), "Could not delay the messages to retry; they come back after the queue's visibility timeout.")
                }
            }
        }
        parked
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
        let budget =
            runtime::lambda::work_budget(deadline, self.deadline_margin, SystemTime::now());
        if budget == Some(Duration::ZERO) {
            warn!(
                messages = messages.len(),
                "Too close to the deadline to start; reporting the batch for retry."
            );
            return Ok(all_failed(&messages));
        }
        // Boxed: the callers' futures stay shallow enough for the default recursion limit.
        let work = Box::pin(self.apply(&messages));
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
        let to_retry: Vec<&ReceivedMessage> = messages
            .iter()
            .filter(|m| outcome.retry.contains(&m.message_id))
            .collect();
        let parked_now = if to_retry.is_empty() {
            Vec::new()
        } else {
            let arn = event
                .records
                .iter()
                .find_map(|r| r.event_source_arn.as_deref());
            Box::pin(self.back_off(&to_retry, arn)).await
        };
        info!(
            messages = messages.len(),
            applied = outcome.succeeded.len(),
            parked = outcome.parked.len() + parked_now.len(),
            retry = outcome.retry.len() - parked_now.len(),
            "SQS batch processed."
        );
        // In the event's order, each once.
        Ok(BatchResponse {
            batch_item_failures: to_retry
                .into_iter()
                .filter(|m| !parked_now.contains(&m.message_id))
                .map(|m| BatchItemFailure {
                    item_identifier: m.message_id.clone(),
                })
                .collect(),
        })
    }
}

/// The account and name of an SQS queue ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
fn queue_of_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("sqs"), Some(_region), Some(account), Some(name)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((account, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_arn_gives_its_account_and_name() {
        assert_eq!(
            queue_of_arn("arn:aws:sqs:us-east-2:123456789012:my-queue"),
            Some(("123456789012", "my-queue"))
        );
        assert_eq!(queue_of_arn("arn:aws:sns:us-east-2:123456789012:t"), None);
        assert_eq!(queue_of_arn("nonsense"), None);
    }

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
