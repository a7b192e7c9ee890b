//! The receive loops: receive → [`crate::batch::process_batch`] → settle (delete or
//! delay), until shutdown.
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

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::batch::BatchOutcome;
use crate::config::RunConfig;
use crate::gate::{Admission, StoreGate, Verdict, verdict};
use crate::pace::{AfterReceive, ArrivalMeter, after_receive};
use crate::queue::{QueueError, ReceiveSettings, ReceivedMessage, SqsQueue};
use crate::retry::{pause_after_empty_receive, redrive_imminent, visibility_delay, worker_backoff};
use runtime::backoff::Backoff;
use runtime::report::error_chain;

/// Messages a half-open [`StoreGate`] lets through on trial: one message's receive
/// count is what a failed trial costs.
pub(crate) const TRIAL_MESSAGES: u8 = 1;
pub use runtime::shutdown::FORCED_EXIT_STATUS;

/// Why the subscriber could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `SUBSCRIBER_MIGRATE_ON_START` was set and the migrations failed.
    #[error("could not apply the migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The declared entity's tables could not be created or extended, or do not match
    /// its mapping (a column of another type, one missing).
    #[error("the analytics store does not fit the mapping")]
    Schema(#[source] crate::schema::SchemaError),
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
            RunError::Schema(e) => matches!(e, crate::schema::SchemaError::Read(_)),
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
    let mapping = &crate::entity::Entity::current().mapping;
    if config.migrate_on_start {
        crate::MIGRATOR
            .run(&pool)
            .await
            .map_err(RunError::Migrate)?;
        let ran = crate::schema::migrate(&pool, mapping)
            .await
            .map_err(RunError::Schema)?;
        info!(statements = ran.len(), "Migrations applied.");
    }
    // A table that does not match the mapping stops the start, naming the column; a
    // store that cannot be read yet (down, or not migrated) is waited out behind the
    // store gate, as before.
    match crate::schema::check(&pool, mapping).await {
        Ok(()) => {}
        Err(crate::schema::SchemaError::Mismatch(m)) if !m.contains("does not exist") => {
            return Err(RunError::Schema(crate::schema::SchemaError::Mismatch(m)));
        }
        Err(e) => {
            warn!(error = %runtime::report::error_chain(&e), "The analytics store cannot be checked against the mapping yet; the store gate waits for it.")
        }
    }
    let receive = ReceiveSettings {
        max_messages: config.max_messages,
        wait_time_secs: config.wait_time_secs,
    };
    let Some(queue) = connect_until_bound(
        sqs,
        &config.queues.queue_url,
        config.queues.dlq_url.as_ref(),
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
                    match after_receive(
                        messages.iter().map(|m| m.sent_at_ms),
                        messages.len(),
                        usize::from(queue.max_messages()),
                        now_ms(),
                        batching.workers,
                        meter.rate(),
                        batching.fill_wait,
                    ) {
                        AfterReceive::Gather => gather(&queue, &mut messages, batching).await,
                        AfterReceive::FillPause(pause) => fill_pause = pause,
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
        let (outcome, store_failure) =
            crate::batch::process(&pool, queue.as_ref(), &messages).await;
        settle(&queue, &messages, &outcome).await;

        let verdict = verdict(
            trial.is_some(),
            !outcome.succeeded.is_empty(),
            store_failure.is_some(),
        );
        match (verdict, trial, &store_failure) {
            (Verdict::TrialPassed, Some(trial), _) => gate.trial_passed(trial),
            (Verdict::TrialFailed, Some(trial), Some(f)) => {
                gate.trial_failed(trial, f.kind, &f.reason);
            }
            (Verdict::Open, _, Some(f)) => {
                gate.open(f.kind, &f.reason);
            }
            _ => {}
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
