//! Where replayed events go: the topic (every subscriber gets them) or one
//! subscriber's queue (only the subscriber being backfilled or repaired).

use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use backon::{BackoffBuilder, ExponentialBuilder};
use publisher::sink::{Encoded, PublishError, Rejected, SnsSink};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use runtime::limits::sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

/// Allowance per entry for its message attributes.
const ATTRIBUTE_ALLOWANCE: usize = 64;

/// The destination named by `--to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An SNS topic ARN: every subscription receives the events.
    Topic(String),
    /// An SQS queue URL: only that queue's consumer receives them.
    Queue(String),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("arn:") && s.split(':').nth(2) == Some("sns") {
            Ok(Target::Topic(s.to_owned()))
        } else if s.starts_with("https://") || s.starts_with("http://") {
            Ok(Target::Queue(s.to_owned()))
        } else {
            Err(
                "expected an SNS topic ARN (arn:aws:sns:…, reaches every subscriber) \
                 or an SQS queue URL (https://…, reaches only that queue)"
                    .to_owned(),
            )
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Topic(arn) => write!(f, "topic {arn}"),
            Target::Queue(url) => write!(f, "queue {url}"),
        }
    }
}

/// What a send achieved: every event not rejected was accepted.
#[derive(Debug, Default)]
pub struct Sent {
    pub accepted: usize,
    pub rejected: Vec<(Encoded, Rejected)>,
}

/// A connected destination.
#[derive(Debug, Clone)]
pub enum Destination {
    Topic(SnsSink),
    Queue(QueueSink),
}

impl Destination {
    pub fn new(target: &Target, sns: aws_sdk_sns::Client, sqs: aws_sdk_sqs::Client) -> Self {
        match target {
            Target::Topic(arn) => Destination::Topic(SnsSink::new(sns, arn.clone())),
            Target::Queue(url) => Destination::Queue(QueueSink::new(sqs, url.clone())),
        }
    }

    /// Sends every event, retrying failed entries with backoff until accepted; an
    /// entry the service refuses outright (too large, invalid) is returned as rejected.
    ///
    /// # Errors
    /// [`PublishError::Interrupted`] when `shutdown` fires while entries keep failing.
    pub async fn send(
        &self,
        events: Vec<Encoded>,
        shutdown: &CancellationToken,
    ) -> Result<Sent, PublishError> {
        match self {
            Destination::Topic(sink) => {
                let report = sink.publish(events, shutdown).await?;
                Ok(Sent {
                    accepted: report.published,
                    rejected: report.rejected,
                })
            }
            Destination::Queue(sink) => sink.send(events, shutdown).await,
        }
    }
}

/// Sends events straight to one queue, shaped like the topic's raw delivery: the body
/// is the event, with the `event_type` and `schema_version` message attributes.
#[derive(Debug, Clone)]
pub struct QueueSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

impl QueueSink {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        let fifo = queue_url.ends_with(".fifo");
        QueueSink {
            client,
            queue_url,
            fifo,
        }
    }

    /// # Errors
    /// [`PublishError::Interrupted`] when `shutdown` fires while entries keep failing.
    pub async fn send(
        &self,
        events: Vec<Encoded>,
        shutdown: &CancellationToken,
    ) -> Result<Sent, PublishError> {
        let mut sent = Sent::default();
        let mut batch: Vec<Encoded> = Vec::new();
        let mut bytes = 0;
        for event in events {
            let size = event.body.len() + ATTRIBUTE_ALLOWANCE;
            if size > MAX_BATCH_BYTES {
                let r = Rejected {
                    event_id: event.event_id.clone(),
                    reason_code: "message_too_large",
                    detail: format!(
                        "{} bytes encoded, SQS accepts at most {MAX_BATCH_BYTES}",
                        event.body.len()
                    ),
                };
                sent.rejected.push((event, r));
                continue;
            }
            if batch.len() == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES {
                self.send_batch(std::mem::take(&mut batch), &mut sent, shutdown)
                    .await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(event);
        }
        if !batch.is_empty() {
            self.send_batch(batch, &mut sent, shutdown).await?;
        }
        Ok(sent)
    }

    async fn send_batch(
        &self,
        mut batch: Vec<Encoded>,
        sent: &mut Sent,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(20))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let entries: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, e)| self.entry(i, e))
                .collect();
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let mut retry = Vec::new();
            match result {
                Ok(out) => {
                    let ok: std::collections::HashSet<&str> =
                        out.successful().iter().map(|s| s.id()).collect();
                    let failed: std::collections::HashMap<&str, _> =
                        out.failed().iter().map(|f| (f.id(), f)).collect();
                    for (i, event) in batch.into_iter().enumerate() {
                        let id = i.to_string();
                        if ok.contains(id.as_str()) {
                            sent.accepted += 1;
                        } else if let Some(f) = failed.get(id.as_str()).filter(|f| f.sender_fault())
                        {
                            let r = Rejected {
                                event_id: event.event_id.clone(),
                                reason_code: "rejected_by_sqs",
                                detail: format!(
                                    "{}: {}",
                                    f.code(),
                                    f.message().unwrap_or_default()
                                ),
                            };
                            sent.rejected.push((event, r));
                        } else {
                            // Failed on the service's side, or neither accepted nor
                            // failed: send it again rather than lose it.
                            retry.push(event);
                        }
                    }
                }
                Err(err) => {
                    let error = aws_sdk_sqs::error::DisplayErrorContext(&err).to_string();
                    if attempt >= 5 {
                        error!(%error, entries = batch.len(), attempt, "SendMessageBatch keeps failing.");
                    } else {
                        warn!(%error, entries = batch.len(), attempt, "SendMessageBatch failed, will retry.");
                    }
                    retry = batch;
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(20));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Err(PublishError::Interrupted { pending: retry.len(), unfinished: retry.iter().map(|e| e.tag).collect() }),
            }
            batch = retry;
        }
    }

    fn entry(&self, id: usize, event: &Encoded) -> SendMessageBatchRequestEntry {
        let attr = |data_type: &str, v: String| {
            MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(event.body.clone())
            .message_attributes("event_type", attr("String", event.event_type.to_owned()))
            .message_attributes(
                "schema_version",
                attr("Number", event.schema_version.number().to_string()),
            );
        if self.fifo {
            entry = entry
                .message_group_id(publisher::sink::fifo_id(&event.key))
                .message_deduplication_id(publisher::sink::fifo_id(&event.event_id));
        }
        entry.build().expect("id and body are set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_a_topic_arn_or_a_queue_url() {
        assert_eq!(
            "arn:aws:sns:us-east-1:000000000000:profile-changes".parse::<Target>(),
            Ok(Target::Topic(
                "arn:aws:sns:us-east-1:000000000000:profile-changes".into()
            ))
        );
        assert_eq!(
            "http://127.0.0.1:4566/000000000000/q".parse::<Target>(),
            Ok(Target::Queue("http://127.0.0.1:4566/000000000000/q".into()))
        );
        assert!("arn:aws:sqs:us-east-1:0:q".parse::<Target>().is_err());
        assert!("topic".parse::<Target>().is_err());
    }
}
