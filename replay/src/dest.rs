//! Where replayed events go: the topic (every subscriber gets them) or one
//! subscriber's queue (only the subscriber being backfilled or repaired).

use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use publisher::sink::{BatchLimits, Encoded, PublishError, Rejected, SnsSink, plan_batches_within};
use runtime::backoff::Backoff;
use runtime::batch::{RetryPolicy, entry_results_of};
use tokio_util::sync::CancellationToken;

use runtime::limits::sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

/// Retries of a send to a queue: until it passes or shutdown, from 50 ms doubling to
/// 20 s, one call at a time (with one event per key per batch, a FIFO queue keeps each
/// key's order).
const RETRY: RetryPolicy = RetryPolicy {
    backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(20)),
    max_retries: None,
    concurrency: 1,
    retry_call_errors: true,
    in_flight_grace: None,
};
/// `SendMessageBatch`'s limits, and the allowance per entry for its message attributes.
const SQS_LIMITS: BatchLimits = BatchLimits {
    max_entries: MAX_BATCH_ENTRIES,
    max_bytes: MAX_BATCH_BYTES,
    attribute_allowance: ATTRIBUTE_ALLOWANCE,
    service: "SQS",
};
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
pub(crate) enum Destination {
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
pub(crate) struct QueueSink {
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
        // On a FIFO queue a batch holds at most one event per key, so a retried entry
        // never lands behind a later event of its key that passed in the same call.
        let (batches, rejected) = plan_batches_within(events, self.fifo, SQS_LIMITS);
        let mut sent = Sent {
            rejected,
            ..Sent::default()
        };
        for batch in batches {
            self.send_batch(batch, &mut sent, shutdown).await?;
        }
        Ok(sent)
    }

    /// Sends one batch (within SQS's limits), retrying the failed entries until they
    /// pass or shutdown: a replayed event must not be dropped for a throttle.
    async fn send_batch(
        &self,
        batch: Vec<Encoded>,
        sent: &mut Sent,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let batch_ref = &batch;
        let answer = runtime::batch::send(
            "SendMessageBatch",
            batch.len(),
            MAX_BATCH_ENTRIES,
            RETRY,
            Some(shutdown),
            |ids: Vec<usize>| {
                let entries: Vec<_> = ids.iter().map(|&i| self.entry(i, &batch_ref[i])).collect();
                async move {
                    let out = self
                        .client
                        .send_message_batch()
                        .queue_url(&self.queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| runtime::report::describe_sdk_error(&e))?;
                    let successful = out.successful().iter().map(|s| s.id());
                    Ok::<_, String>(entry_results_of(&ids, successful, out.failed()))
                }
            },
        )
        .await;
        let report = publisher::sink::settle(batch, answer, "rejected_by_sqs")?;
        sent.accepted += report.published;
        sent.rejected.extend(report.rejected);
        Ok(())
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

    fn encoded(tag: usize, key: &str, bytes: usize) -> Encoded {
        Encoded {
            tag,
            event_id: format!("e{tag}"),
            key: key.to_owned(),
            event_type: "profile.snapshot",
            schema_version: contracts::SchemaVersion::V2,
            body: "x".repeat(bytes),
        }
    }

    #[test]
    fn a_fifo_queue_batch_holds_one_event_per_key_and_a_standard_one_does_not() {
        let events = || {
            vec![
                encoded(0, "a", 10),
                encoded(1, "a", 10),
                encoded(2, "b", 10),
            ]
        };
        let (fifo, _) = plan_batches_within(events(), true, SQS_LIMITS);
        let keys: Vec<Vec<&str>> = fifo
            .iter()
            .map(|b| b.iter().map(|e| e.key.as_str()).collect())
            .collect();
        assert_eq!(keys, [vec!["a"], vec!["a", "b"]]);
        let (standard, _) = plan_batches_within(events(), false, SQS_LIMITS);
        assert_eq!(standard.len(), 1);
    }

    #[test]
    fn a_message_larger_than_sqs_takes_is_rejected_naming_sqs() {
        let (batches, rejected) =
            plan_batches_within(vec![encoded(0, "a", MAX_BATCH_BYTES)], false, SQS_LIMITS);
        assert!(batches.is_empty());
        assert_eq!(rejected[0].1.reason_code, "message_too_large");
        assert!(
            rejected[0].1.detail.contains("SQS accepts at most 262144"),
            "{:?}",
            rejected[0].1
        );
    }

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
