//! Where replayed events go: the topic (every subscriber gets them) or one
//! subscriber's queue (only the subscriber being backfilled or repaired).

use publisher::sink::{BatchLimits, Encoded, PublishError, Rejected, SnsSink, plan_batches_within};
use runtime::batch::{RetryPolicy, answer};
use tokio_util::sync::CancellationToken;

use runtime::limits::sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

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
            RetryPolicy::UNTIL_ACCEPTED,
            Some(shutdown),
            |ids: Vec<usize>| {
                let entries = ids.iter().map(|&i| batch_ref[i].sqs_entry(i, self.fifo));
                let call = self.client.send_message_batch().queue_url(&self.queue_url);
                let call = call.set_entries(Some(entries.collect()));
                async move { answer(&ids, call.send().await) }
            },
        )
        .await;
        let report = publisher::sink::settle(batch, answer, "rejected_by_sqs")?;
        sent.accepted += report.published;
        sent.rejected.extend(report.rejected);
        Ok(())
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
