//! The batch core both modes share: received messages → decoded events → one
//! transaction → what became of each message ([`BatchOutcome`]). The container's receive
//! loop ([`crate::worker`]) settles the outcome on the queue; the Lambda handler
//! ([`crate::lambda`]) reports it as a partial batch response. Nothing here deletes a
//! message; only a message whose copy is in the DLQ counts as parked.
//!
//! Three phases, each its own function: [`decode_or_park`] (an undecodable message is
//! parked at once), [`apply_or_isolate`] (one transaction; on a refusal, the store is
//! probed and the batch applied event by event), and [`count`].

use contracts::entity::Event;
use sqlx::PgPool;
use tracing::{Instrument, debug, error, info_span, instrument, warn};

use crate::apply::{ApplyError, ApplyReport, probe_with_good_event};
use crate::entity::Entity;
use crate::entity::decode_body;
use crate::failure::FailureKind;
use crate::isolation::{KeepStep, keep_step};
use crate::queue::{Parker, ReceivedMessage};
use runtime::report::error_chain;

/// Reason code of a message whose event the database refuses on its own (a data
/// exception or a constraint violation).
pub const APPLY_REJECTED: &str = "apply_rejected";

/// What became of each message of a batch, by message id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Applied and committed: delete them (a Lambda reports them as processed).
    pub succeeded: Vec<String>,
    /// Can never be applied, and handed to the [`Parker`], which settled them.
    pub parked: Vec<String>,
    /// Not applied for a transient reason: leave them on the queue for a later attempt
    /// (a Lambda reports them as batch item failures).
    pub retry: Vec<String>,
    /// What the committed applies did.
    pub report: ApplyReport,
}

/// A retryable failure of the store itself, which opens the [`StoreGate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreFailure {
    /// [`FailureKind::Transient`] or [`FailureKind::NeedsOperator`].
    pub kind: FailureKind,
    /// SQLSTATE and error chain, for the gate's log line.
    pub reason: String,
}

impl StoreFailure {
    fn of(e: &ApplyError) -> StoreFailure {
        StoreFailure {
            kind: e.kind(),
            reason: format!(
                "sqlstate {}: {}",
                e.sqlstate().as_deref().unwrap_or("none"),
                error_chain(e)
            ),
        }
    }
}

/// Decodes, applies and classifies one batch of messages. Deletes nothing: the caller
/// deletes [`BatchOutcome::succeeded`] (or a Lambda reports the rest as failures).
///
/// Undecodable messages are parked at once. The others are applied in one transaction.
/// If the database refuses the batch other than transiently, the store is first asked to
/// accept a known-good event ([`probe_with_good_event`]): if it refuses that too, the
/// store is broken (a schema drift, lost grants) and every message is retried, none
/// parked; if it accepts it, each event is applied in its own transaction and exactly
/// the ones refused again are parked ([`APPLY_REJECTED`]). The decision rests on that
/// evidence, never on how many events of the batch failed. A transient failure puts
/// the messages concerned in [`BatchOutcome::retry`]. A message that fails to park is
/// retried too: it is never dropped.
pub async fn process_batch<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[ReceivedMessage],
) -> BatchOutcome {
    process(pool, parker, messages).await.0
}

/// [`process_batch`], and the store failure, if any, that the gate must hear of.
#[instrument(skip_all, fields(messages = messages.len()))]
pub(crate) async fn process<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[ReceivedMessage],
) -> (BatchOutcome, Option<StoreFailure>) {
    // The messages' visibility was set when they were received, just before this.
    let received = tokio::time::Instant::now();
    let mut outcome = BatchOutcome::default();
    let (decoded, events) = decode_or_park(parker, messages, &mut outcome).await;
    let store_failure = if events.is_empty() {
        None
    } else {
        apply_or_isolate(pool, parker, &decoded, &events, received, &mut outcome).await
    };
    count(&outcome);
    (outcome, store_failure)
}

/// Decodes each message's body; parks (or, when parking fails, retries) the ones that
/// are not an event. Returns the decoded messages and their events, in order.
async fn decode_or_park<'m, P: Parker>(
    parker: &P,
    messages: &'m [ReceivedMessage],
    outcome: &mut BatchOutcome,
) -> (Vec<&'m ReceivedMessage>, Vec<Event>) {
    let mut decoded = Vec::with_capacity(messages.len());
    let mut events = Vec::with_capacity(messages.len());
    for message in messages {
        match decode_body(&message.body) {
            Ok(event) => {
                // An event the contract admits but this consumer's columns cannot hold
                // (an integer column, a value out of its range): refused before any SQL.
                if let Err(e) = Entity::current().table.check(&event) {
                    park_or_retry(parker, message, APPLY_REJECTED, &e.to_string(), outcome).await;
                    continue;
                }
                debug!(message_id = %message.message_id, event_id = %event.event_id, key = %event.key, "Message decoded.");
                decoded.push(message);
                events.push(event);
            }
            Err(e) => {
                park_or_retry(parker, message, e.reason_code(), &error_chain(&e), outcome).await;
            }
        }
    }
    (decoded, events)
}

/// Applies `events` in one transaction. On a refusal other than a transient one, asks
/// the store to accept a known-good event: if it does, the batch is applied event by
/// event ([`isolate`]); if it does not, the store is broken and every message is
/// retried, none parked. Returns the store failure the gate must hear of, if any.
async fn apply_or_isolate<P: Parker>(
    pool: &PgPool,
    parker: &P,
    decoded: &[&ReceivedMessage],
    events: &[Event],
    received: tokio::time::Instant,
    outcome: &mut BatchOutcome,
) -> Option<StoreFailure> {
    let ids = || decoded.iter().map(|m| m.message_id.clone());
    match Entity::current().table.apply_atomically(pool, events).await {
        Ok(report) => {
            debug!(?report, "Batch applied.");
            crate::metrics::metrics().committed(events.iter().map(|e| &e.occurred_at));
            outcome.report.add(report);
            outcome.succeeded.extend(ids());
            None
        }
        Err(e) if e.kind() == FailureKind::Transient => {
            log_retryable(&e, decoded.len());
            outcome.retry.extend(ids());
            Some(StoreFailure::of(&e))
        }
        Err(e) => match probe_with_good_event(pool).await {
            Ok(()) => {
                warn!(error = %error_chain(&e), sqlstate = e.sqlstate().as_deref().unwrap_or("none"), "Batch refused by the database, which accepts a good event: applying the batch's events one by one.");
                isolate(pool, parker, decoded, events, received, outcome).await
            }
            Err(probe) => {
                // The store refuses a known-good event too: the batch is not to blame.
                let failure = if probe.kind() == FailureKind::Transient {
                    log_retryable(&probe, decoded.len());
                    StoreFailure::of(&probe)
                } else {
                    error!(
                        error = %error_chain(&e),
                        sqlstate = e.sqlstate().as_deref().unwrap_or("none"),
                        probe_error = %error_chain(&probe),
                        probe_sqlstate = probe.sqlstate().as_deref().unwrap_or("none"),
                        messages = decoded.len(),
                        "The analytics store refuses a known-good event as well as the batch; an operator must act (are the migrations applied? was a constraint added or a column changed?). Will retry, parking none."
                    );
                    StoreFailure {
                        kind: FailureKind::NeedsOperator,
                        ..StoreFailure::of(&e)
                    }
                };
                outcome.retry.extend(ids());
                Some(failure)
            }
        },
    }
}

/// Adds a batch's outcome to the process's metrics (parks are counted as they happen).
fn count(outcome: &BatchOutcome) {
    let m = crate::metrics::metrics();
    m.events_applied.inc_by(outcome.report.applied);
    m.events_stale.inc_by(outcome.report.stale);
    m.history_duplicates
        .inc_by(outcome.report.history_duplicates);
    m.messages_retried.inc_by(outcome.retry.len() as u64);
}

/// Applies each event in its own transaction, parking exactly those the database
/// refuses on their own (other than transiently). Called only once the store has
/// accepted a known-good event, so a refusal here is this event's data. Returns the
/// first transient store failure met, if any.
async fn isolate<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[&ReceivedMessage],
    events: &[Event],
    received: tokio::time::Instant,
    outcome: &mut BatchOutcome,
) -> Option<StoreFailure> {
    let mut store_failure = None;
    // The batch's messages were received before its first apply and the probe; their
    // visibility is extended now, then again whenever half of it has run.
    let visibility = parker.visibility_timeout();
    let mut visible_set = received;
    if visibility.is_some() && parker.keep_invisible(messages).await {
        visible_set = tokio::time::Instant::now();
    }
    for (i, (message, event)) in messages.iter().zip(events).enumerate() {
        if let Some(visibility) = visibility {
            let mut step = keep_step(visible_set.elapsed(), visibility);
            if step == KeepStep::Extend {
                if parker.keep_invisible(&messages[i..]).await {
                    visible_set = tokio::time::Instant::now();
                }
                step = keep_step(visible_set.elapsed(), visibility);
            }
            if step == KeepStep::GiveBack {
                warn!(
                    remaining = messages.len() - i,
                    visibility_secs = visibility.as_secs(),
                    "The batch's visibility may run out before its next event is applied; giving the rest back to be retried."
                );
                outcome
                    .retry
                    .extend(messages[i..].iter().map(|m| m.message_id.clone()));
                break;
            }
        }
        let span = info_span!("isolated", message_id = %message.message_id, event_id = %event.event_id, key = %event.key);
        let applied = Entity::current()
            .table
            .apply_atomically(pool, std::slice::from_ref(event))
            .instrument(span.clone())
            .await;
        match applied {
            Ok(report) => {
                crate::metrics::metrics().committed([&event.occurred_at]);
                outcome.report.add(report);
                outcome.succeeded.push(message.message_id.clone());
            }
            Err(e) if e.kind() == FailureKind::Transient => {
                log_retryable(&e, 1);
                store_failure.get_or_insert_with(|| StoreFailure::of(&e));
                outcome.retry.push(message.message_id.clone());
            }
            Err(e) => {
                park_or_retry(parker, message, APPLY_REJECTED, &error_chain(&e), outcome)
                    .instrument(span)
                    .await;
            }
        }
    }
    store_failure
}

async fn park_or_retry<P: Parker>(
    parker: &P,
    message: &ReceivedMessage,
    reason: &'static str,
    detail: &str,
    outcome: &mut BatchOutcome,
) {
    match parker.park(message, reason, detail).await {
        Ok(()) => outcome.parked.push(message.message_id.clone()),
        Err(e) => {
            warn!(message_id = %message.message_id, reason, error = %error_chain(&e), "Could not park the message, it stays on the queue.");
            outcome.retry.push(message.message_id.clone());
        }
    }
}

fn log_retryable(e: &ApplyError, messages: usize) {
    let sqlstate = e.sqlstate().unwrap_or_else(|| "none".to_owned());
    match e.kind() {
        FailureKind::NeedsOperator => error!(
            error = %error_chain(e),
            %sqlstate,
            messages,
            "The analytics store refuses the batch; an operator must act (are the migrations applied? was a constraint added?). Will retry."
        ),
        _ => warn!(
            error = %error_chain(e),
            %sqlstate,
            messages,
            "Apply failed transiently, will retry."
        ),
    }
}

#[cfg(test)]
mod db_tests {
    //! `process_batch` against a real PostgreSQL, with a parker that records instead of
    //! calling SQS (or fails, to inject an SQS outage).

    use std::collections::HashMap;
    use std::sync::Mutex;

    use sqlx::PgPool;

    use super::*;
    use crate::queue::QueueError;
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct RecordingParker {
        parked: Mutex<Vec<(String, &'static str, String)>>,
        fail: bool,
        /// `Some`: acts as the container's source, which keeps messages invisible.
        visibility: Option<Duration>,
        /// Whether extending the visibility succeeds.
        extends: bool,
        /// The message ids of each visibility extension asked for.
        extended: Mutex<Vec<Vec<String>>>,
    }

    impl Parker for RecordingParker {
        async fn park(
            &self,
            message: &ReceivedMessage,
            reason_code: &'static str,
            detail: &str,
        ) -> Result<(), QueueError> {
            if self.fail {
                return Err(QueueError::EntriesFailed {
                    operation: crate::queue::Operation::SendToDlq,
                    queue_url: "dlq".into(),
                    failed: 1,
                    code: "InternalError".into(),
                });
            }
            let entry = (message.message_id.clone(), reason_code, detail.to_owned());
            self.parked.lock().unwrap().push(entry);
            Ok(())
        }

        fn visibility_timeout(&self) -> Option<Duration> {
            self.visibility
        }

        async fn keep_invisible(&self, messages: &[&ReceivedMessage]) -> bool {
            let ids = messages.iter().map(|m| m.message_id.clone()).collect();
            self.extended.lock().unwrap().push(ids);
            self.extends
        }
    }

    fn message(id: &str, body: &str) -> ReceivedMessage {
        ReceivedMessage {
            message_id: id.to_owned(),
            receipt_handle: format!("rh-{id}"),
            body: body.to_owned(),
            receive_count: 1,
            sent_at_ms: None,
            message_attributes: HashMap::new(),
        }
    }

    /// `m1` and `m2`, upserts of keys `a` and `b` the schema accepts.
    fn two_good_messages() -> [ReceivedMessage; 2] {
        [
            message("m1", &body(&upsert("a", 1, 1, "a@x"))),
            message("m2", &body(&upsert("b", 1, 1, "b@x"))),
        ]
    }

    fn body(event: &contracts::ChangeEvent) -> String {
        String::from_utf8(event.encode(contracts::SchemaVersion::V2)).unwrap()
    }

    use crate::apply::test_events::{NOT_NULL_COLUMN_ADDED, count, delete, exec, upsert};

    async fn profile_count(pool: &PgPool) -> i64 {
        count(pool, "analytics.user_profiles").await
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn good_messages_succeed_and_undecodable_ones_are_parked(pool: PgPool) {
        let parker = RecordingParker::default();
        let good = body(&upsert("a", 1, 1, "a@x"));
        let messages = [
            message("m1", &good),
            message("m2", "not json"),
            message("m3", &good), // the same body twice in one batch
            message("m4", &body(&delete("b", 1, 1))),
        ];
        let outcome = process_batch(&pool, &parker, &messages).await;
        assert_eq!(outcome.succeeded, ["m1", "m3", "m4"]);
        assert_eq!(outcome.parked, ["m2"]);
        assert!(outcome.retry.is_empty());
        assert_eq!(outcome.report.history_inserted, 2);
        assert_eq!(outcome.report.history_duplicates, 1);
        let (_, reason, detail) = parker.parked.lock().unwrap()[0].clone();
        assert_eq!(reason, "malformed_json");
        assert!(detail.contains("malformed json"), "{detail}");
        assert_eq!(profile_count(&pool).await, 2);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_event_the_database_refuses_is_isolated_and_parked(pool: PgPool) {
        let parker = RecordingParker::default();
        let messages = [
            message("ok-1", &body(&upsert("a", 1, 1, "a@x"))),
            message("bad", &body(&upsert("b", 1, 1, "nul\0byte@x"))),
            message("ok-2", &body(&upsert("c", 1, 1, "c@x"))),
        ];
        let outcome = process_batch(&pool, &parker, &messages).await;
        assert_eq!(outcome.succeeded, ["ok-1", "ok-2"]);
        assert_eq!(outcome.parked, ["bad"]);
        assert!(outcome.retry.is_empty());
        assert_eq!(parker.parked.lock().unwrap()[0].1, APPLY_REJECTED);
        assert_eq!(profile_count(&pool).await, 2);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_of_nothing_but_bad_events_is_parked_event_by_event(pool: PgPool) {
        // Two copies of one bad event, and three bad updates of one profile: the store
        // accepts a good event, so these are poison, however many there are.
        let bad = body(&upsert("a", 1, 1, "nul\0byte@x"));
        for messages in [
            vec![message("copy-1", &bad), message("copy-2", &bad)],
            vec![
                message("v1", &body(&upsert("b", 1, 1, "nul\0one@x"))),
                message("v2", &body(&upsert("b", 1, 2, "nul\0two@x"))),
                message("v3", &body(&upsert("b", 1, 3, "nul\0three@x"))),
            ],
        ] {
            let parker = RecordingParker::default();
            let (outcome, failure) = process(&pool, &parker, &messages).await;
            let ids: Vec<_> = messages.iter().map(|m| m.message_id.clone()).collect();
            assert_eq!(outcome.parked, ids);
            assert!(outcome.retry.is_empty() && outcome.succeeded.is_empty());
            assert_eq!(failure, None, "the store is healthy");
            let parked = parker.parked.lock().unwrap();
            assert!(
                parked
                    .iter()
                    .all(|(_, reason, _)| *reason == APPLY_REJECTED)
            );
        }
        assert_eq!(profile_count(&pool).await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_column_narrowed_under_us_parks_nothing_even_one_message_at_a_time(pool: PgPool) {
        // A schema drift that refuses every event with a data exception (22001), met
        // under low traffic: each batch holds one good message.
        exec(
            &pool,
            "ALTER TABLE analytics.user_profiles ALTER COLUMN email TYPE varchar(3)",
        )
        .await;
        for (id, key) in [("m1", "a"), ("m2", "b")] {
            let parker = RecordingParker::default();
            let messages = [message(id, &body(&upsert(key, 1, 1, "long@example.com")))];
            let (outcome, failure) = process(&pool, &parker, &messages).await;
            assert_eq!(outcome.retry, [id]);
            assert!(outcome.parked.is_empty() && outcome.succeeded.is_empty());
            assert!(parker.parked.lock().unwrap().is_empty());
            let failure = failure.expect("the gate hears of it");
            assert_eq!(failure.kind, FailureKind::NeedsOperator);
            assert!(failure.reason.contains("22001"), "{}", failure.reason);
        }
    }

    fn one_bad_among_good() -> [ReceivedMessage; 3] {
        [
            message("ok-1", &body(&upsert("a", 1, 1, "a@x"))),
            message("bad", &body(&upsert("b", 1, 1, "nul\0byte@x"))),
            message("ok-2", &body(&upsert("c", 1, 1, "c@x"))),
        ]
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_isolated_batch_extends_its_visibility_before_it_starts(pool: PgPool) {
        let parker = RecordingParker {
            visibility: Some(Duration::from_secs(300)),
            extends: true,
            ..RecordingParker::default()
        };
        let outcome = process_batch(&pool, &parker, &one_bad_among_good()).await;
        assert_eq!(outcome.succeeded, ["ok-1", "ok-2"]);
        assert_eq!(outcome.parked, ["bad"]);
        assert_eq!(
            *parker.extended.lock().unwrap(),
            [vec!["ok-1".to_owned(), "bad".to_owned(), "ok-2".to_owned()]]
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_batch_that_cannot_keep_its_messages_invisible_gives_them_back_unapplied(
        pool: PgPool,
    ) {
        // A visibility so short that it has run out by the time isolation starts, and
        // extending it fails: nothing more is applied or parked, everything is retried.
        let parker = RecordingParker {
            visibility: Some(Duration::from_millis(1)),
            extends: false,
            ..RecordingParker::default()
        };
        let outcome = process_batch(&pool, &parker, &one_bad_among_good()).await;
        assert_eq!(outcome.retry, ["ok-1", "bad", "ok-2"]);
        assert!(outcome.succeeded.is_empty() && outcome.parked.is_empty());
        assert!(parker.parked.lock().unwrap().is_empty());
        assert_eq!(profile_count(&pool).await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_store_probe_leaves_nothing_behind(pool: PgPool) {
        crate::apply::probe_with_good_event(&pool).await.unwrap();
        crate::apply::probe_with_good_event(&pool).await.unwrap();
        assert_eq!(profile_count(&pool).await, 0);
        let history = count(&pool, "analytics.profile_changes").await;
        assert_eq!(history, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_single_refused_event_is_still_parked(pool: PgPool) {
        let parker = RecordingParker::default();
        let messages = [message("bad", &body(&upsert("a", 1, 1, "nul\0byte@x")))];
        let (outcome, failure) = process(&pool, &parker, &messages).await;
        assert_eq!(outcome.parked, ["bad"]);
        assert_eq!(failure, None);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_constraint_added_behind_our_back_retries_good_messages_and_opens_the_gate(
        pool: PgPool,
    ) {
        exec(&pool, NOT_NULL_COLUMN_ADDED).await;
        let parker = RecordingParker::default();
        let messages = two_good_messages();
        let (outcome, failure) = process(&pool, &parker, &messages).await;
        assert_eq!(outcome.retry, ["m1", "m2"]);
        assert!(outcome.parked.is_empty());
        assert!(parker.parked.lock().unwrap().is_empty());
        let failure = failure.expect("the gate hears of it");
        assert_eq!(failure.kind, FailureKind::NeedsOperator);
        assert!(failure.reason.contains("23502"), "{}", failure.reason);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_good_batch_reports_no_store_failure(pool: PgPool) {
        let parker = RecordingParker::default();
        let messages = [message("m1", &body(&upsert("a", 1, 1, "a@x")))];
        let (outcome, failure) = process(&pool, &parker, &messages).await;
        assert_eq!(outcome.succeeded, ["m1"]);
        assert_eq!(failure, None);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_store_without_its_tables_retries_everything_and_parks_nothing(pool: PgPool) {
        exec(&pool, "DROP SCHEMA analytics CASCADE").await;
        let parker = RecordingParker::default();
        let messages = two_good_messages();
        let outcome = process_batch(&pool, &parker, &messages).await;
        assert_eq!(outcome.retry, ["m1", "m2"]);
        assert!(outcome.succeeded.is_empty() && outcome.parked.is_empty());
        assert!(parker.parked.lock().unwrap().is_empty());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_message_that_cannot_be_parked_stays_on_the_queue(pool: PgPool) {
        let parker = RecordingParker {
            fail: true,
            ..RecordingParker::default()
        };
        let outcome = process_batch(&pool, &parker, &[message("m1", "not json")]).await;
        assert_eq!(outcome.retry, ["m1"]);
        assert!(outcome.parked.is_empty());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_closed_pool_is_a_transient_failure(pool: PgPool) {
        pool.close().await;
        let parker = RecordingParker::default();
        let outcome = process_batch(
            &pool,
            &parker,
            &[message("m1", &body(&upsert("a", 1, 1, "a@x")))],
        )
        .await;
        assert_eq!(outcome.retry, ["m1"]);
    }
}
