//! The receive loops: receive → [`process_batch`] → settle (delete or delay), until
//! shutdown.
//!
//! The discipline: BEGIN; apply + history; COMMIT; then delete. A message is deleted
//! only after its effect is committed, or parked only after its copy is in the DLQ.
//! Shutdown interrupts only waits (the [`StoreGate`] and back-off sleeps), never a
//! ReceiveMessage in flight (at most the long-poll wait, 20 s) nor a batch between its
//! apply and its delete: a batch received is processed and settled before the worker
//! stops, so none of its messages is left invisible until its visibility timeout. A
//! second SIGTERM or SIGINT exits at once (status 130), leaving whatever is in flight
//! to come back after its visibility timeout.
//!
//! While the database fails, the workers stop receiving altogether ([`StoreGate`]), so
//! an outage does not burn the receive counts of good messages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use contracts::ChangeEvent;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, instrument, warn};

use crate::apply::{ApplyError, ApplyReport, apply_atomically, probe_with_good_event};
use crate::config::RunConfig;
use crate::envelope::decode_body;
use crate::failure::FailureKind;
use crate::gate::{Admission, StoreGate};
use crate::isolation::{KeepStep, keep_step};
use crate::pace::{ArrivalMeter, behind, fill_wait, lag_threshold};
use crate::queue::{Parker, QueueError, ReceiveSettings, ReceivedMessage, SqsQueue};
use crate::retry::{pause_after_empty_receive, redrive_imminent, visibility_delay, worker_backoff};
use runtime::backoff::Backoff;
use runtime::report::error_chain;

/// Reason code of a message whose event the database refuses on its own (a data
/// exception or a constraint violation).
pub const APPLY_REJECTED: &str = "apply_rejected";

/// Messages a half-open [`StoreGate`] lets through on trial: one message's receive
/// count is what a failed trial costs.
pub(crate) const TRIAL_MESSAGES: u8 = 1;
pub use runtime::shutdown::FORCED_EXIT_STATUS;

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
    Queue(#[from] QueueError),
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
            RunError::Queue(e) => e.is_retryable(),
        }
    }
}

/// The back-off between tries to bind the queue: from 1 s, doubling, capped at 30 s.
const BIND_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Binds the queue (and its DLQ), trying again with back-off while the failure is one
/// that may pass (SQS unreachable, throttled, a 5xx): a subscriber started while SQS is
/// down waits for it, as it would mid-run, instead of exiting. A configuration problem
/// (no DLQ, an unusable RedrivePolicy, access denied) still stops it at once. `None`
/// when `shutdown` fires first.
async fn connect_until_bound(
    sqs: aws_sdk_sqs::Client,
    queue_url: &url::Url,
    dlq_url: Option<&url::Url>,
    receive: ReceiveSettings,
    shutdown: &CancellationToken,
) -> Result<Option<SqsQueue>, RunError> {
    let mut attempt = 0u32;
    loop {
        match SqsQueue::connect(sqs.clone(), queue_url, dlq_url, receive).await {
            Ok(queue) => return Ok(Some(queue)),
            Err(e) if e.is_retryable() => {
                attempt += 1;
                let delay = BIND_BACKOFF.delay_random(attempt);
                warn!(
                    error = %runtime::report::error_chain(&e),
                    attempt,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "Could not bind the queue yet; trying again."
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(RunError::Queue(e)),
        }
    }
}

/// Runs `config.workers` receive loops until `shutdown` is cancelled and every batch in
/// flight is committed and deleted.
///
/// # Errors
/// [`RunError::Queue`] if the queue or its DLQ cannot be bound at start for a reason
/// that will not pass (no DLQ is a refusal to start; SQS unreachable is waited out); [`RunError::Migrate`]; [`RunError::WorkerPanicked`].
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
    let Some(queue) = connect_until_bound(
        sqs,
        &config.queue_url,
        config.dlq_url.as_ref(),
        receive,
        &shutdown,
    )
    .await?
    else {
        info!("Shutdown requested before the queue could be bound; nothing was received.");
        return Ok(());
    };
    info!(
        queue_url = queue.queue_url(),
        dlq_url = queue.dlq_url(),
        max_receive_count = queue.max_receive_count(),
        workers = config.workers.get(),
        "Subscriber consuming."
    );
    let queue = Arc::new(queue);
    let gate = Arc::new(StoreGate::default());
    let batching = Batching {
        max_messages: usize::from(config.batch_max_messages),
        window: Duration::from_millis(u64::from(config.batch_window_ms)),
        fill_wait: Duration::from_millis(u64::from(config.fill_wait_ms)),
        workers: config.workers.get(),
    };
    let meter = Arc::new(ArrivalMeter::new(tokio::time::Instant::now()));

    let mut workers = JoinSet::new();
    for worker in 0..config.workers.get() {
        let span = info_span!("worker", worker);
        workers.spawn(
            receive_loop(
                Arc::clone(&queue),
                pool.clone(),
                Arc::clone(&gate),
                batching,
                Arc::clone(&meter),
                shutdown.clone(),
            )
            .instrument(span),
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

/// How a worker gathers a backlog into one transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most messages in one batch.
    pub max_messages: usize,
    /// Longest time spent gathering after the first, full, receive.
    pub window: Duration,
    /// Longest pause after a partial receive ([`crate::pace::fill_wait`]).
    pub fill_wait: Duration,
    /// Workers receiving from the queue in this process.
    pub workers: usize,
}

/// For a worker that is behind: after a full receive, receives again at once (short
/// polls) until `batching.max_messages`, the window's end, or a receive that is not full.
/// A message received twice (its visibility ran out, or the emulator handed it out
/// twice) is kept once, with its newest receipt handle. A failed receive only ends
/// the gathering: what is in hand is processed.
async fn gather(queue: &SqsQueue, messages: &mut Vec<ReceivedMessage>, batching: Batching) {
    let per_call = usize::from(queue.max_messages());
    if messages.len() < per_call {
        return;
    }
    let deadline = tokio::time::Instant::now() + batching.window;
    while messages.len() < batching.max_messages && tokio::time::Instant::now() < deadline {
        let want = (batching.max_messages - messages.len()).min(per_call);
        let more = match queue
            .receive_now(u8::try_from(want).unwrap_or(u8::MAX))
            .await
        {
            Ok(more) => more,
            Err(e) => {
                debug!(error = %error_chain(&e), held = messages.len(), "Receive while gathering failed; processing what is held.");
                break;
            }
        };
        let backlog = more.len() >= want;
        for m in more {
            match messages
                .iter_mut()
                .find(|held| held.message_id == m.message_id)
            {
                Some(held) => *held = m,
                None => messages.push(m),
            }
        }
        if !backlog {
            break;
        }
    }
}

/// One worker: at most one batch in flight, and no receive while the gate is open.
async fn receive_loop(
    queue: Arc<SqsQueue>,
    pool: PgPool,
    gate: Arc<StoreGate>,
    batching: Batching,
    meter: Arc<ArrivalMeter>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let trial = match gate.admit(|| crate::apply::probe(&pool), &shutdown).await {
            Admission::Receive => None,
            Admission::Trial(trial) => Some(trial),
            Admission::Shutdown => break,
        };
        // Not raced against shutdown: cancelling a ReceiveMessage whose response is on
        // its way would leave its messages invisible, unprocessed, until their
        // visibility timeout. It ends within the long-poll wait.
        let received = match trial {
            Some(_) => queue.receive_at_most(TRIAL_MESSAGES).await,
            None => queue.receive().await,
        };
        let received_at = tokio::time::Instant::now();
        let mut fill_pause = Duration::ZERO;
        let messages = match received {
            Ok(mut messages) => {
                if trial.is_none() {
                    let per_call = usize::from(queue.max_messages());
                    let lagging = behind(
                        messages.iter().map(|m| m.sent_at_ms),
                        now_ms(),
                        lag_threshold(batching.fill_wait),
                    )
                    .unwrap_or(messages.len() >= per_call);
                    if lagging {
                        gather(&queue, &mut messages, batching).await;
                    } else {
                        fill_pause = fill_wait(
                            messages.len(),
                            per_call,
                            batching.workers,
                            meter.rate(),
                            batching.fill_wait,
                        );
                    }
                }
                meter.record(messages.len(), received_at);
                crate::metrics::metrics().received(messages.len());
                messages
            }
            Err(e) => {
                let m = crate::metrics::metrics();
                m.receive_failures.inc();
                failures = failures.saturating_add(1);
                let delay = worker_backoff(failures, rand::random());
                if e.is_retryable() {
                    warn!(error = %error_chain(&e), failures, delay_ms = millis(delay), "Receive failed, backing off.");
                } else {
                    // Permissions, a deleted queue, a bad URL: retrying will not help
                    // until someone fixes it, but exiting would only restart-loop.
                    error!(error = %error_chain(&e), failures, delay_ms = millis(delay), "Receive refused; an operator must act. Backing off.");
                }
                if !sleep_unless_shutdown(delay, &shutdown).await {
                    break;
                }
                continue;
            }
        };
        if messages.is_empty() {
            // A trial without a message is no verdict: dropping it leaves the gate
            // half-open for the next probe.
            if let Some(pause) = pause_after_empty_receive(queue.wait_time_secs())
                && !sleep_unless_shutdown(pause, &shutdown).await
            {
                break;
            }
            continue;
        }

        // From here to the end of `settle`, shutdown is not looked at: the batch is
        // finished (committed and deleted) before the worker stops.
        let (outcome, store_failure) = process_batch_inner(&pool, queue.as_ref(), &messages).await;
        settle(&queue, &messages, &outcome).await;

        match (trial, &store_failure) {
            // Only an applied message tells the database is back; a parked one is no
            // verdict, and the gate stays half-open for the next probe.
            (Some(trial), None) if !outcome.succeeded.is_empty() => gate.trial_passed(trial),
            (Some(_), None) => {}
            (Some(trial), Some(f)) => gate.trial_failed(trial, f.kind, &f.reason),
            (None, Some(f)) => {
                gate.open(f.kind, &f.reason);
            }
            (None, None) => {}
        }
        if outcome.retry.is_empty() || store_failure.is_some() {
            // The gate paces the retries of a database failure, for every worker.
            failures = 0;
            // Let the queue fill the next receive (counted from this one's arrival).
            let pause = fill_pause.saturating_sub(received_at.elapsed());
            if !pause.is_zero() && !sleep_unless_shutdown(pause, &shutdown).await {
                break;
            }
            continue;
        }
        // SQS is failing (a message could not be parked): pause this worker.
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
async fn settle(queue: &SqsQueue, messages: &[ReceivedMessage], outcome: &BatchOutcome) {
    let succeeded: HashSet<&str> = outcome.succeeded.iter().map(String::as_str).collect();
    let retry: HashSet<&str> = outcome.retry.iter().map(String::as_str).collect();

    let to_delete: Vec<&ReceivedMessage> = messages
        .iter()
        .filter(|m| succeeded.contains(m.message_id.as_str()))
        .collect();
    if !to_delete.is_empty()
        && let Err(e) = queue.delete_batch(&to_delete).await
    {
        // They come back after their visibility timeout and apply as no-ops.
        warn!(error = %error_chain(&e), "Applied messages not deleted; they will be redelivered.");
    }

    let max_receive_count = queue.max_receive_count();
    let to_delay: Vec<(&ReceivedMessage, Duration)> = messages
        .iter()
        .filter(|m| retry.contains(m.message_id.as_str()))
        .inspect(|m| {
            if redrive_imminent(m.receive_count, max_receive_count) {
                error!(
                    message_id = %m.message_id,
                    receive_count = m.receive_count,
                    max_receive_count,
                    dlq_url = queue.dlq_url(),
                    "Message failed again near the queue's maxReceiveCount: SQS is about to move it to the DLQ without a tributary-reason."
                );
            }
        })
        .map(|m| (m, visibility_delay(m.receive_count, rand::random())))
        .collect();
    if !to_delay.is_empty()
        && let Err(e) = queue.change_visibility_batch(&to_delay).await
    {
        warn!(error = %error_chain(&e), "Could not delay the messages to retry; they come back after the queue's visibility timeout.");
    }
}

/// A retryable failure of the store itself, which opens the [`StoreGate`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreFailure {
    /// [`FailureKind::Transient`] or [`FailureKind::NeedsOperator`].
    kind: FailureKind,
    /// SQLSTATE and error chain, for the gate's log line.
    reason: String,
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
    process_batch_inner(pool, parker, messages).await.0
}

/// [`process_batch`], and the store failure, if any, that the gate must hear of.
#[instrument(skip_all, fields(messages = messages.len()))]
async fn process_batch_inner<P: Parker>(
    pool: &PgPool,
    parker: &P,
    messages: &[ReceivedMessage],
) -> (BatchOutcome, Option<StoreFailure>) {
    // The messages' visibility was set when they were received, just before this.
    let received = tokio::time::Instant::now();
    let mut outcome = BatchOutcome::default();
    let mut decoded: Vec<&ReceivedMessage> = Vec::with_capacity(messages.len());
    let mut events: Vec<ChangeEvent> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode_body(&message.body) {
            Ok(event) => {
                debug!(message_id = %message.message_id, event_id = %event.event_id, key = %event.key, "Message decoded.");
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
        count(&outcome);
        return (outcome, None);
    }

    let store_failure = match apply_atomically(pool, &events).await {
        Ok(report) => {
            debug!(?report, "Batch applied.");
            crate::metrics::metrics().committed(events.iter().map(|e| &e.occurred_at));
            outcome.report.add(report);
            outcome
                .succeeded
                .extend(decoded.iter().map(|m| m.message_id.clone()));
            None
        }
        Err(e) if e.kind() == FailureKind::Transient => {
            log_retryable(&e, decoded.len());
            outcome
                .retry
                .extend(decoded.iter().map(|m| m.message_id.clone()));
            Some(StoreFailure::of(&e))
        }
        Err(e) => match probe_with_good_event(pool).await {
            Ok(()) => {
                warn!(error = %error_chain(&e), sqlstate = e.sqlstate().as_deref().unwrap_or("none"), "Batch refused by the database, which accepts a good event: applying the batch's events one by one.");
                isolate(pool, parker, &decoded, &events, received, &mut outcome).await
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
                outcome
                    .retry
                    .extend(decoded.iter().map(|m| m.message_id.clone()));
                Some(failure)
            }
        },
    };
    count(&outcome);
    (outcome, store_failure)
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
    events: &[ChangeEvent],
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
        let applied = apply_atomically(pool, std::slice::from_ref(event))
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

/// Sleeps `delay`; `false` if shutdown came first.
async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// This host's clock, in milliseconds since the epoch (SQS's `SentTimestamp` unit).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bind_back_off_doubles_from_one_second_to_thirty() {
        let secs = |a, j| super::BIND_BACKOFF.delay(a, j).as_secs_f64();
        assert_eq!(secs(1, 1.0), 1.0);
        assert_eq!(secs(2, 1.0), 2.0);
        assert_eq!(secs(5, 1.0), 16.0);
        assert_eq!(secs(6, 1.0), 30.0);
        assert_eq!(secs(60, 1.0), 30.0);
        assert_eq!(secs(1, 0.0), 0.5);
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
            let (outcome, failure) = process_batch_inner(&pool, &parker, &messages).await;
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
        sqlx::query("ALTER TABLE analytics.user_profiles ALTER COLUMN email TYPE varchar(3)")
            .execute(&pool)
            .await
            .unwrap();
        for (id, key) in [("m1", "a"), ("m2", "b")] {
            let parker = RecordingParker::default();
            let messages = [message(id, &body(&upsert(key, 1, 1, "long@example.com")))];
            let (outcome, failure) = process_batch_inner(&pool, &parker, &messages).await;
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
        let history: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.profile_changes")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(history, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_single_refused_event_is_still_parked(pool: PgPool) {
        let parker = RecordingParker::default();
        let messages = [message("bad", &body(&upsert("a", 1, 1, "nul\0byte@x")))];
        let (outcome, failure) = process_batch_inner(&pool, &parker, &messages).await;
        assert_eq!(outcome.parked, ["bad"]);
        assert_eq!(failure, None);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_constraint_added_behind_our_back_retries_good_messages_and_opens_the_gate(
        pool: PgPool,
    ) {
        sqlx::query("ALTER TABLE analytics.user_profiles ADD COLUMN tenant text NOT NULL")
            .execute(&pool)
            .await
            .unwrap();
        let parker = RecordingParker::default();
        let messages = [
            message("m1", &body(&upsert("a", 1, 1, "a@x"))),
            message("m2", &body(&upsert("b", 1, 1, "b@x"))),
        ];
        let (outcome, failure) = process_batch_inner(&pool, &parker, &messages).await;
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
        let (outcome, failure) = process_batch_inner(&pool, &parker, &messages).await;
        assert_eq!(outcome.succeeded, ["m1"]);
        assert_eq!(failure, None);
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
