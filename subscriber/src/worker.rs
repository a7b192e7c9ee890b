//! The receive loops: receive → [`process_batch`] → settle (delete or delay), until
//! shutdown.
//!
//! The discipline: BEGIN; apply + history; COMMIT; then delete. A message is deleted
//! only after its effect is committed, or parked only after its copy is in the DLQ.
//! Shutdown interrupts only waits (the long poll and back-off sleeps), never a batch
//! between its apply and its delete, so SIGTERM drains the batches in flight.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use contracts::ChangeEvent;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, instrument, warn};

use crate::apply::{ApplyError, ApplyReport, FailureKind, apply_atomically};
use crate::config::RunConfig;
use crate::envelope::decode_body;
use crate::error_chain;
use crate::source::{Parker, ReceiveSettings, ReceivedMessage, SourceError, SqsSource};

/// Reason code of a message whose event the database refuses on its own (a data
/// exception or a constraint violation).
pub const APPLY_REJECTED: &str = "apply_rejected";

/// First visibility delay of a message that failed transiently; doubles with each
/// receive.
pub const RETRY_VISIBILITY_BASE: Duration = Duration::from_secs(5);
/// Longest visibility delay of a message that failed transiently.
pub const RETRY_VISIBILITY_MAX: Duration = Duration::from_secs(15 * 60);
/// First pause of a worker after a failed batch or receive; doubles with each
/// consecutive failure.
pub const WORKER_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest pause of a worker between failures.
pub const WORKER_BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// Why the subscriber could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `SUBSCRIBER_MIGRATE_ON_START` was set and the migrations failed.
    #[error("could not apply the migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The queue or its DLQ could not be bound.
    #[error("could not bind the queue")]
    Source(#[from] SourceError),
    /// A receive loop panicked (a bug); the others were stopped.
    #[error("{count} workers panicked")]
    WorkerPanicked { count: usize },
}

impl RunError {
    /// Whether restarting the process may help (the SQS or database endpoint may come
    /// back); `false` for configuration problems.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Migrate(_) | RunError::WorkerPanicked { .. } => true,
            RunError::Source(e) => e.is_retryable(),
        }
    }
}

/// Runs `config.workers` receive loops until `shutdown` is cancelled and every batch in
/// flight is committed and deleted.
///
/// # Errors
/// [`RunError::Source`] if the queue or its DLQ cannot be bound at start (no DLQ is a
/// refusal to start); [`RunError::Migrate`]; [`RunError::WorkerPanicked`].
pub async fn run(
    config: &RunConfig,
    sqs: aws_sdk_sqs::Client,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if config.migrate_on_start {
        crate::MIGRATOR
            .run(&pool)
            .await
            .map_err(RunError::Migrate)?;
        info!("Migrations applied.");
    }
    let receive = ReceiveSettings {
        max_messages: config.max_messages,
        wait_time_secs: config.wait_time_secs,
    };
    let source =
        SqsSource::connect(sqs, &config.queue_url, config.dlq_url.as_ref(), receive).await?;
    info!(
        queue_url = source.queue_url(),
        dlq_url = source.dlq_url(),
        workers = config.workers.get(),
        "Subscriber consuming."
    );
    let source = Arc::new(source);

    let mut workers = JoinSet::new();
    for worker in 0..config.workers.get() {
        let span = info_span!("worker", worker);
        workers.spawn(
            receive_loop(Arc::clone(&source), pool.clone(), shutdown.clone()).instrument(span),
        );
    }
    let mut panicked = 0;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            error!(error = %e, "Worker panicked, stopping the others.");
            panicked += 1;
            shutdown.cancel();
        }
    }
    info!("All workers stopped.");
    match panicked {
        0 => Ok(()),
        count => Err(RunError::WorkerPanicked { count }),
    }
}

/// A token cancelled on the first SIGTERM (container stop, Lambda/ECS shutdown) or
/// SIGINT (Ctrl-C): [`run`] then stops receiving and drains the batches in flight.
///
/// # Errors
/// The SIGTERM handler could not be installed.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => info!(signal = "SIGTERM", "Shutdown requested, finishing the batches in flight."),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "Shutdown requested, finishing the batches in flight."),
        }
        cancel.cancel();
    });
    Ok(token)
}

/// One worker: at most one batch in flight.
async fn receive_loop(source: Arc<SqsSource>, pool: PgPool, shutdown: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = source.receive() => received,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = worker_backoff(failures, rand::random());
                warn!(error = %error_chain(&e), failures, delay_ms = millis(delay), "Receive failed, backing off.");
                if !sleep_unless_shutdown(delay, &shutdown).await {
                    break;
                }
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }

        // From here to the end of `settle`, shutdown is not looked at: the batch is
        // finished (committed and deleted) before the worker stops.
        let outcome = process_batch(&pool, source.as_ref(), &messages).await;
        settle(&source, &messages, &outcome).await;

        if outcome.retry.is_empty() {
            failures = 0;
            continue;
        }
        // The database (or SQS) is failing: pause before receiving again, so an outage
        // does not burn every message's receive count in a tight loop.
        failures = failures.saturating_add(1);
        let delay = worker_backoff(failures, rand::random());
        debug!(
            failures,
            delay_ms = millis(delay),
            "Backing off before the next receive."
        );
        if !sleep_unless_shutdown(delay, &shutdown).await {
            break;
        }
    }
    debug!("Worker stopped.");
}

/// Deletes what succeeded, and delays what must be retried by its receive count.
async fn settle(source: &SqsSource, messages: &[ReceivedMessage], outcome: &BatchOutcome) {
    let succeeded: HashSet<&str> = outcome.succeeded.iter().map(String::as_str).collect();
    let retry: HashSet<&str> = outcome.retry.iter().map(String::as_str).collect();

    let to_delete: Vec<&ReceivedMessage> = messages
        .iter()
        .filter(|m| succeeded.contains(m.message_id.as_str()))
        .collect();
    if !to_delete.is_empty()
        && let Err(e) = source.delete_batch(&to_delete).await
    {
        // They come back after their visibility timeout and apply as no-ops.
        warn!(error = %error_chain(&e), "Applied messages not deleted; they will be redelivered.");
    }

    let to_delay: Vec<(&ReceivedMessage, Duration)> = messages
        .iter()
        .filter(|m| retry.contains(m.message_id.as_str()))
        .map(|m| (m, visibility_delay(m.receive_count, rand::random())))
        .collect();
    if !to_delay.is_empty()
        && let Err(e) = source.change_visibility_batch(&to_delay).await
    {
        warn!(error = %error_chain(&e), "Could not delay the messages to retry; they come back after the queue's visibility timeout.");
    }
}

/// Decodes, applies and classifies one batch of messages. Deletes nothing: the caller
/// deletes [`BatchOutcome::succeeded`] (or a Lambda reports the rest as failures).
///
/// Undecodable messages are parked at once. The others are applied in one transaction;
/// if the database refuses the batch's data, each event is applied in its own
/// transaction and exactly the ones refused again are parked ([`APPLY_REJECTED`]). A
/// transient failure puts the messages concerned in [`BatchOutcome::retry`]. A message
/// that fails to park is retried too: it is never dropped.
#[instrument(skip_all, fields(messages = messages.len()))]
pub async fn process_batch<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[ReceivedMessage],
) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    let mut decoded: Vec<&ReceivedMessage> = Vec::with_capacity(messages.len());
    let mut events: Vec<ChangeEvent> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode_body(&message.body) {
            Ok(event) => {
                debug!(message_id = %message.message_id, event_id = %event.event_id, "Message decoded.");
                decoded.push(message);
                events.push(event);
            }
            Err(e) => {
                park_or_retry(
                    parker,
                    message,
                    e.reason_code(),
                    &error_chain(&e),
                    &mut outcome,
                )
                .await;
            }
        }
    }
    if events.is_empty() {
        return outcome;
    }

    match apply_atomically(pool, &events).await {
        Ok(report) => {
            debug!(?report, "Batch applied.");
            outcome.report.add(report);
            outcome
                .succeeded
                .extend(decoded.iter().map(|m| m.message_id.clone()));
        }
        Err(e) if e.is_retryable() => {
            log_retryable(&e, decoded.len());
            outcome
                .retry
                .extend(decoded.iter().map(|m| m.message_id.clone()));
        }
        Err(e) => {
            warn!(error = %error_chain(&e), sqlstate = e.sqlstate().as_deref().unwrap_or("none"), "Batch refused by the database, applying its events one by one.");
            isolate(pool, parker, &decoded, &events, &mut outcome).await;
        }
    }
    outcome
}

/// Applies each event in its own transaction, parking exactly those the database
/// refuses on their own.
async fn isolate<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[&ReceivedMessage],
    events: &[ChangeEvent],
    outcome: &mut BatchOutcome,
) {
    for (message, event) in messages.iter().zip(events) {
        let span =
            info_span!("isolated", message_id = %message.message_id, event_id = %event.event_id);
        let applied = apply_atomically(pool, std::slice::from_ref(event))
            .instrument(span)
            .await;
        match applied {
            Ok(report) => {
                outcome.report.add(report);
                outcome.succeeded.push(message.message_id.clone());
            }
            Err(e) if e.is_retryable() => {
                log_retryable(&e, 1);
                outcome.retry.push(message.message_id.clone());
            }
            Err(e) => {
                park_or_retry(parker, message, APPLY_REJECTED, &error_chain(&e), outcome).await;
            }
        }
    }
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
            "The analytics store refuses every batch; an operator must act (are the migrations applied?). Will retry."
        ),
        _ => warn!(
            error = %error_chain(e),
            %sqlstate,
            messages,
            "Apply failed transiently, will retry."
        ),
    }
}

/// The visibility delay of a message that failed transiently: [`RETRY_VISIBILITY_BASE`]
/// doubled per earlier receive, capped at [`RETRY_VISIBILITY_MAX`], scaled by a jitter
/// in `[0.5, 1]` (from `jitter` in `[0, 1)`) so retries of one outage spread out.
pub fn visibility_delay(receive_count: u32, jitter: f64) -> Duration {
    exponential(
        RETRY_VISIBILITY_BASE,
        RETRY_VISIBILITY_MAX,
        receive_count,
        jitter,
    )
}

/// A worker's pause after `consecutive_failures` failed batches or receives: from
/// [`WORKER_BACKOFF_BASE`], doubling, capped at [`WORKER_BACKOFF_MAX`], with jitter as in
/// [`visibility_delay`].
pub fn worker_backoff(consecutive_failures: u32, jitter: f64) -> Duration {
    exponential(
        WORKER_BACKOFF_BASE,
        WORKER_BACKOFF_MAX,
        consecutive_failures,
        jitter,
    )
}

fn exponential(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let full = base.saturating_mul(1 << doublings).min(max);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Sleeps `delay`; `false` if shutdown came first.
async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_delay_doubles_per_receive_and_is_capped() {
        assert_eq!(visibility_delay(1, 1.0), Duration::from_secs(5));
        assert_eq!(visibility_delay(2, 1.0), Duration::from_secs(10));
        assert_eq!(visibility_delay(4, 1.0), Duration::from_secs(40));
        assert_eq!(visibility_delay(1000, 1.0), RETRY_VISIBILITY_MAX);
    }

    #[test]
    fn jitter_keeps_delays_between_half_and_full() {
        assert_eq!(visibility_delay(2, 0.0), Duration::from_secs(5));
        for _ in 0..100 {
            let d = worker_backoff(3, rand::random());
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_zero_receive_count_is_treated_as_the_first() {
        assert_eq!(visibility_delay(0, 1.0), RETRY_VISIBILITY_BASE);
        assert_eq!(worker_backoff(u32::MAX, 1.0), WORKER_BACKOFF_MAX);
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

    #[derive(Debug, Default)]
    struct RecordingParker {
        parked: Mutex<Vec<(String, &'static str, String)>>,
        fail: bool,
    }

    impl Parker for RecordingParker {
        async fn park(
            &self,
            message: &ReceivedMessage,
            reason_code: &'static str,
            detail: &str,
        ) -> Result<(), SourceError> {
            if self.fail {
                return Err(SourceError::EntriesFailed {
                    operation: crate::source::Operation::SendToDlq,
                    queue_url: "dlq".into(),
                    failed: 1,
                    code: "InternalError".into(),
                });
            }
            let entry = (message.message_id.clone(), reason_code, detail.to_owned());
            self.parked.lock().unwrap().push(entry);
            Ok(())
        }
    }

    fn message(id: &str, body: &str) -> ReceivedMessage {
        ReceivedMessage {
            message_id: id.to_owned(),
            receipt_handle: format!("rh-{id}"),
            body: body.to_owned(),
            receive_count: 1,
            message_attributes: HashMap::new(),
        }
    }

    fn body(event: &ChangeEvent) -> String {
        String::from_utf8(event.encode(contracts::SchemaVersion::V2)).unwrap()
    }

    use crate::apply::test_events::{delete, upsert};

    async fn profile_count(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM analytics.user_profiles")
            .fetch_one(pool)
            .await
            .unwrap()
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
    async fn a_store_without_its_tables_retries_everything_and_parks_nothing(pool: PgPool) {
        sqlx::query("DROP SCHEMA analytics CASCADE")
            .execute(&pool)
            .await
            .unwrap();
        let parker = RecordingParker::default();
        let messages = [
            message("m1", &body(&upsert("a", 1, 1, "a@x"))),
            message("m2", &body(&upsert("b", 1, 1, "b@x"))),
        ];
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
