//! Publishing change events to SNS with `PublishBatch`.
//!
//! The request builder ([`plan_batches`], [`entry_for`]) is pure; [`SnsSink`] is the
//! one-method adapter. Entries that SNS rejects as the sender's fault (too large,
//! invalid) are returned to the caller to park; other failed entries — and only those —
//! are retried with exponential back-off and jitter until they succeed or shutdown.

use std::time::Duration;

use aws_sdk_sns as sns;
use contracts::{ChangeEvent, SchemaVersion};
use runtime::batch::{RetryPolicy, Sent, answer};
use sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use tokio_util::sync::CancellationToken;

pub use runtime::limits::sns::{MAX_BATCH_ENTRIES, MAX_DEDUPLICATION_ID, MAX_PAYLOAD_BYTES};

/// Room kept per entry for message attributes, which count towards the payload size.
const ATTRIBUTE_ALLOWANCE: usize = 128;

/// How long a `PublishBatch` in flight at shutdown may still take when the client has
/// no attempt timeout of its own.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One event encoded for publishing.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The caller's index for this event (e.g. its record's place in the batch), handed
    /// back with a rejection.
    pub tag: usize,
    pub event_id: String,
    pub key: String,
    pub event_type: &'static str,
    pub schema_version: SchemaVersion,
    pub body: String,
}

impl Encoded {
    pub fn new(tag: usize, event: &ChangeEvent, as_version: SchemaVersion) -> Self {
        let json = String::from_utf8(event.encode(as_version)).expect("serde_json writes UTF-8");
        // SNS takes characters SQS then refuses to deliver (the event would be lost):
        // escape them, the decoded value is the same. The size checks see the result.
        let body = runtime::sqs_text::escape_json(&json).into_owned();
        Encoded {
            tag,
            event_id: event.event_id.clone(),
            key: event.key.clone(),
            event_type: event.change.event_type().as_str(),
            schema_version: as_version,
            body,
        }
    }

    /// The message attributes every event carries, as `(name, data type, value)`: what
    /// subscription filter policies match on (docs/contract.md). SNS and SQS take the
    /// same ones.
    pub fn attributes(&self) -> [(&'static str, &'static str, String); 2] {
        [
            ("event_type", "String", self.event_type.to_owned()),
            (
                "schema_version",
                "Number",
                self.schema_version.number().to_string(),
            ),
        ]
    }

    /// `(message group id, deduplication id)` on a FIFO topic or queue: the key's group
    /// keeps its events in order, the event id makes a copy a no-op ([`fifo_id`]).
    pub fn fifo_ids(&self) -> (String, String) {
        (fifo_id(&self.key), fifo_id(&self.event_id))
    }
}

/// An event SNS will never accept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub event_id: String,
    pub reason_code: &'static str,
    pub detail: String,
}

/// The limits of one batch call, and how an event counts towards them.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most entries per call.
    pub max_entries: usize,
    /// Most bytes per call, and per message: body plus `attribute_allowance`.
    pub max_bytes: usize,
    /// Bytes counted per entry for its message attributes.
    pub attribute_allowance: usize,
    /// The service's name, for the rejection of a message too large for it.
    pub service: &'static str,
}

/// `PublishBatch`'s limits.
const SNS_LIMITS: BatchLimits = BatchLimits {
    max_entries: MAX_BATCH_ENTRIES,
    max_bytes: MAX_PAYLOAD_BYTES,
    attribute_allowance: ATTRIBUTE_ALLOWANCE,
    service: "SNS",
};

/// Splits events into `PublishBatch` calls within both SNS limits ([`plan_batches_within`]).
pub(crate) fn plan_batches(
    events: Vec<Encoded>,
    fifo: bool,
) -> (Vec<Vec<Encoded>>, Vec<(Encoded, Rejected)>) {
    plan_batches_within(events, fifo, SNS_LIMITS)
}

/// PURE: splits events into batch calls within `limits`; a message too large to send at
/// all is rejected up front. For a FIFO topic or queue a batch holds at most one event
/// per key: a retried entry then can never land behind a later event of its key that
/// succeeded in the same call.
pub fn plan_batches_within(
    events: Vec<Encoded>,
    fifo: bool,
    limits: BatchLimits,
) -> (Vec<Vec<Encoded>>, Vec<(Encoded, Rejected)>) {
    let size = |event: &Encoded| event.body.len() + limits.attribute_allowance;
    let same_key =
        |batch: &[Encoded], event: &Encoded| fifo && batch.iter().any(|e| e.key == event.key);
    let (batches, too_large) =
        runtime::batch::plan(events, limits.max_entries, limits.max_bytes, size, same_key);
    let rejected = too_large
        .into_iter()
        .map(|event| {
            let r = Rejected {
                event_id: event.event_id.clone(),
                reason_code: "message_too_large",
                detail: format!(
                    "{} bytes encoded, {} accepts at most {}",
                    event.body.len(),
                    limits.service,
                    limits.max_bytes
                ),
            };
            (event, r)
        })
        .collect();
    (batches, rejected)
}

/// One batch request entry of an encoded event, for SNS (`PublishBatchRequestEntry`)
/// or SQS (`SendMessageBatchRequestEntry`): the two SDKs' types differ, their fields
/// do not. `id` is the event's index in the batch.
macro_rules! entry_of {
    ($entry:ident, $attribute:path, $body:ident, $id:expr, $event:expr, $fifo:expr) => {{
        let event: &Encoded = $event;
        let mut entry = $entry::builder()
            .id($id.to_string())
            .$body(event.body.clone());
        for (name, data_type, value) in event.attributes() {
            let attribute = <$attribute>::builder()
                .data_type(data_type)
                .string_value(value);
            entry = entry.message_attributes(name, attribute.build().expect("data type is set"));
        }
        if $fifo {
            let (group, deduplication) = event.fifo_ids();
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(deduplication);
        }
        entry.build().expect("id and body are set")
    }};
}

/// The SNS request entry for one event; `id` is its index in the batch.
pub(crate) fn entry_for(id: usize, event: &Encoded, fifo: bool) -> PublishBatchRequestEntry {
    entry_of!(
        PublishBatchRequestEntry,
        MessageAttributeValue,
        message,
        id,
        event,
        fifo
    )
}

impl Encoded {
    /// The SQS request entry for this event; `id` is its index in the batch.
    pub fn sqs_entry(
        &self,
        id: usize,
        fifo: bool,
    ) -> aws_sdk_sqs::types::SendMessageBatchRequestEntry {
        use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
        entry_of!(
            SendMessageBatchRequestEntry,
            MessageAttributeValue,
            message_body,
            id,
            self,
            fifo
        )
    }
}

/// A FIFO message group or deduplication id: the value itself when it fits the 128
/// printable ASCII characters SNS allows, its SHA-256 otherwise (the same value always
/// maps to the same id, so a key keeps its group).
pub fn fifo_id(value: &str) -> String {
    let fits = !value.is_empty()
        && value.len() <= MAX_DEDUPLICATION_ID
        && value.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        value.to_owned()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    }
}

/// Publishing stopped before every event was accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Shutdown was asked for while entries were still failing; nothing after them may
    /// be checkpointed.
    #[error("shutdown while {pending} events were still unpublished")]
    Interrupted {
        pending: usize,
        /// Tags of every event neither accepted by SNS nor handed back as rejected
        /// (rejections of the other batches included: nobody parked them yet).
        unfinished: Vec<usize>,
    },
}

/// What a publish call achieved: everything not rejected is accepted by SNS.
#[derive(Debug, Default)]
pub struct PublishReport {
    pub published: usize,
    pub retries: usize,
    pub rejected: Vec<(Encoded, Rejected)>,
}

/// What one batch of `events` came to, from what [`runtime::batch::send`] did with it:
/// the accepted ones counted, the refused ones handed back as [`Rejected`] with
/// `reason_code`, and, when shutdown ended the retries, [`PublishError::Interrupted`]
/// naming every event not accepted (the rejected ones too: nobody parked them yet).
///
/// # Errors
/// [`PublishError::Interrupted`].
pub fn settle(
    events: Vec<Encoded>,
    answer: Sent<String>,
    reason_code: &'static str,
) -> Result<PublishReport, PublishError> {
    let mut report = PublishReport {
        published: answer.accepted.len(),
        retries: answer.retried,
        rejected: Vec::new(),
    };
    let mut events: Vec<Option<Encoded>> = events.into_iter().map(Some).collect();
    for (i, code, message) in answer.refused {
        if let Some(event) = events[i].take() {
            let r = Rejected {
                event_id: event.event_id.clone(),
                reason_code,
                detail: format!("{code}: {message}"),
            };
            report.rejected.push((event, r));
        }
    }
    // Unsent for whatever reason (shutdown, retries spent, a failed call): never
    // reported as published, so nothing after it is checkpointed.
    if !answer.unsent.is_empty() {
        let unfinished = answer
            .unsent
            .iter()
            .filter_map(|(i, _)| events[*i].as_ref().map(|e| e.tag))
            .chain(report.rejected.iter().map(|(e, _)| e.tag))
            .collect();
        return Err(PublishError::Interrupted {
            pending: answer.unsent.len(),
            unfinished,
        });
    }
    Ok(report)
}

/// The SNS topic events are published to.
#[derive(Debug, Clone)]
pub struct SnsSink {
    client: sns::Client,
    topic_arn: String,
    fifo: bool,
}

impl SnsSink {
    pub fn new(client: sns::Client, topic_arn: String) -> Self {
        let fifo = topic_arn.ends_with(".fifo");
        SnsSink {
            client,
            topic_arn,
            fifo,
        }
    }

    pub fn topic_arn(&self) -> &str {
        &self.topic_arn
    }

    /// How long a call in flight at shutdown may still take: the client's attempt
    /// timeout ([`DRAIN_GRACE`] for a client without one).
    fn drain_grace(&self) -> Duration {
        self.client
            .config()
            .timeout_config()
            .and_then(|t| t.operation_attempt_timeout())
            .unwrap_or(DRAIN_GRACE)
    }

    /// Publishes every event; each batch is retried entry by entry until SNS accepts it.
    /// On a FIFO topic batches go one after another to keep each key's order.
    ///
    /// # Errors
    /// [`PublishError::Interrupted`] if `shutdown` fires while entries keep failing.
    pub async fn publish(
        &self,
        events: Vec<Encoded>,
        shutdown: &CancellationToken,
    ) -> Result<PublishReport, PublishError> {
        let (batches, rejected) = plan_batches(events, self.fifo);
        let mut report = PublishReport {
            rejected,
            ..PublishReport::default()
        };
        let concurrency = if self.fifo { 1 } else { 4 };
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(batches)
            .map(|batch| self.publish_batch(batch, shutdown))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut pending = 0;
        let mut unfinished = Vec::new();
        for result in results {
            match result {
                Ok(r) => {
                    report.published += r.published;
                    report.retries += r.retries;
                    report.rejected.extend(r.rejected);
                }
                Err(PublishError::Interrupted {
                    pending: p,
                    unfinished: u,
                }) => {
                    pending += p;
                    unfinished.extend(u);
                }
            }
        }
        if pending > 0 {
            unfinished.extend(report.rejected.iter().map(|(e, _)| e.tag));
            unfinished.sort_unstable();
            return Err(PublishError::Interrupted {
                pending,
                unfinished,
            });
        }
        Ok(report)
    }

    /// Publishes one batch, retrying only its failed entries until SNS takes them or
    /// shutdown. Retried whatever the error: skipping would lose the records; a
    /// persistent one (topic gone, permissions) stalls the shard, loudly (ERROR after
    /// [`runtime::batch::ESCALATE_AFTER`] rounds). A call in flight when shutdown comes
    /// may finish (usually a matter of milliseconds, and it saves re-publishing it), but
    /// only for one attempt's bound: a call that hangs must not hold the drain.
    /// Abandoned, it counts as unpublished, so nothing after it is checkpointed.
    async fn publish_batch(
        &self,
        batch: Vec<Encoded>,
        shutdown: &CancellationToken,
    ) -> Result<PublishReport, PublishError> {
        let policy = RetryPolicy {
            in_flight_grace: Some(self.drain_grace()),
            ..RetryPolicy::UNTIL_ACCEPTED
        };
        let batch_ref = &batch;
        let answer = runtime::batch::send(
            "PublishBatch",
            batch.len(),
            MAX_BATCH_ENTRIES,
            policy,
            Some(shutdown),
            |ids: Vec<usize>| {
                let entries = ids.iter().map(|&i| entry_for(i, &batch_ref[i], self.fifo));
                let call = self.client.publish_batch().topic_arn(&self.topic_arn);
                let call = call.set_publish_batch_request_entries(Some(entries.collect()));
                async move { answer(&ids, call.send().await) }
            },
        )
        .await;
        settle(batch, answer, "rejected_by_sns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(id: usize, size: usize) -> Encoded {
        Encoded {
            tag: id,
            event_id: format!("e{id}"),
            key: format!("k{id}"),
            event_type: "profile.upserted",
            schema_version: SchemaVersion::V2,
            body: "x".repeat(size),
        }
    }

    #[test]
    fn an_encoded_body_holds_only_characters_sqs_accepts_and_decodes_to_the_same_event() {
        let mut event =
            contracts::decode(include_str!("../../contracts/fixtures/v2/upserted.json").as_bytes())
                .unwrap();
        let contracts::Change::Upserted(profile) = &mut event.change else {
            panic!("the fixture is an upsert");
        };
        profile.display_name = "Zoë\u{FFFE}\u{FFFF}\u{1FFFE}".into();
        for version in [SchemaVersion::V1, SchemaVersion::V2] {
            let encoded = Encoded::new(0, &event, version);
            assert!(!encoded.body.chars().any(runtime::sqs_text::needs_escape));
            assert!(encoded.body.contains(r"\uFFFE\uFFFF"), "{}", encoded.body);
            let back = contracts::decode(encoded.body.as_bytes()).unwrap();
            assert_eq!(
                back.change.profile().map(|p| p.display_name.as_str()),
                Some("Zoë\u{FFFE}\u{FFFF}\u{1FFFE}")
            );
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let (batches, rejected) = plan_batches((0..25).map(|i| encoded(i, 10)).collect(), false);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert!(rejected.is_empty());
    }

    #[test]
    fn batches_stay_under_the_payload_limit() {
        let (batches, _) = plan_batches((0..5).map(|i| encoded(i, 100_000)).collect(), false);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        for b in &batches {
            assert!(
                b.iter()
                    .map(|e| e.body.len() + ATTRIBUTE_ALLOWANCE)
                    .sum::<usize>()
                    <= MAX_PAYLOAD_BYTES
            );
        }
    }

    #[test]
    fn an_oversize_message_is_rejected_without_blocking_the_rest() {
        let (batches, rejected) = plan_batches(
            vec![encoded(0, 10), encoded(1, 300_000), encoded(2, 10)],
            false,
        );
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].1.reason_code, "message_too_large");
    }

    #[test]
    fn fifo_entries_group_by_key_and_deduplicate_by_event_id() {
        let entry = entry_for(3, &encoded(7, 10), true);
        assert_eq!(entry.id(), "3");
        assert_eq!(entry.message_group_id(), Some("k7"));
        assert_eq!(entry.message_deduplication_id(), Some("e7"));
        let attrs = entry.message_attributes().unwrap();
        assert_eq!(attrs["event_type"].string_value(), Some("profile.upserted"));
        assert_eq!(attrs["schema_version"].data_type(), "Number");
        assert_eq!(attrs["schema_version"].string_value(), Some("2"));
        let standard = entry_for(0, &encoded(7, 10), false);
        assert_eq!(standard.message_group_id(), None);
    }

    #[test]
    fn long_or_non_ascii_values_are_hashed_into_valid_fifo_ids() {
        let id = fifo_id(&"é".repeat(100));
        assert_eq!(id.len(), 64);
        assert_eq!(
            fifo_id("user 1"),
            fifo_id("user 1"),
            "a key keeps its group"
        );
        assert_ne!(fifo_id("user 1"), "user 1");
        assert_eq!(fifo_id("abc"), "abc");
    }

    #[test]
    fn fifo_batches_hold_one_event_per_key() {
        let mut events: Vec<Encoded> = (0..6).map(|i| encoded(i, 10)).collect();
        for e in &mut events {
            e.key = if e.tag % 2 == 0 {
                "even".into()
            } else {
                "odd".into()
            };
        }
        let (batches, _) = plan_batches(events, true);
        for b in &batches {
            let keys: std::collections::HashSet<_> = b.iter().map(|e| &e.key).collect();
            assert_eq!(keys.len(), b.len(), "two events of one key in a FIFO batch");
        }
        // Order within a key is kept across batches.
        let evens: Vec<usize> = batches
            .iter()
            .flatten()
            .filter(|e| e.key == "even")
            .map(|e| e.tag)
            .collect();
        assert_eq!(evens, vec![0, 2, 4]);
    }

    /// A client of an SNS endpoint that accepts connections and never answers, whose
    /// calls are bounded only per attempt (1 s) and retried for a long while.
    async fn silent_sns() -> (sns::Client, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hole = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = sns::Config::builder()
            .behavior_version(sns::config::BehaviorVersion::latest())
            .region(sns::config::Region::new("us-east-1"))
            .credentials_provider(sns::config::Credentials::new("a", "b", None, None, "test"))
            .endpoint_url(url)
            .timeout_config(
                sns::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(1))
                    .build(),
            )
            .retry_config(sns::config::retry::RetryConfig::standard().with_max_attempts(30))
            .build();
        (sns::Client::from_conf(config), hole)
    }

    #[tokio::test]
    async fn a_publish_that_hangs_at_shutdown_is_abandoned_after_one_attempt_bound() {
        let (client, hole) = silent_sns().await;
        let sink = SnsSink::new(client, "arn:aws:sns:us-east-1:000000000000:t".into());
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            sink.publish(vec![encoded(0, 10), encoded(1, 10)], &shutdown),
        )
        .await
        .expect("the publish returns, it does not hang");
        let elapsed = started.elapsed();
        match result {
            Err(PublishError::Interrupted {
                pending,
                unfinished,
            }) => {
                assert_eq!((pending, unfinished), (2, vec![0, 1]));
            }
            other => panic!("expected an interrupted publish, got {other:?}"),
        }
        // Shutdown at 0.2 s plus one attempt's bound (1 s), not the SDK's 30 attempts.
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        hole.abort();
    }
}
