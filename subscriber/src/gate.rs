//! The store gate: a circuit breaker shared by every receive loop.
//!
//! SQS counts every receive, and the queue's RedrivePolicy moves a message to the DLQ
//! (without our reason) after `maxReceiveCount` of them. While the database is down or
//! refuses every batch, each worker that kept receiving would burn the receive counts
//! of good messages until they were redriven. So the first retryable apply failure
//! opens the gate, and while it is open no worker receives: one of them probes the
//! database with exponential back-off and jitter, the others wait. When the probe
//! passes, the gate is half-open: the prober receives one trial message, and only if
//! that applies does the gate close for every worker. A failed trial reopens it, and
//! the back-off keeps growing, so a problem the probe cannot see (a constraint added
//! behind our back) costs one message's receive per probe interval, not a batch per
//! worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::failure::FailureKind;
use runtime::report::error_chain;

/// First pause before probing an open gate; doubles with each failed probe or trial.
pub(crate) const PROBE_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest pause between probes of an open gate.
pub(crate) const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateState {
    /// Every worker receives.
    Closed,
    /// No worker receives; one probes the database.
    Open,
    /// The probe passed; only the prober receives, one trial message.
    HalfOpen,
}

/// What a worker may do next; see [`StoreGate::admit`].
#[derive(Debug)]
pub(crate) enum Admission {
    /// The gate is closed: receive as usual.
    Receive,
    /// The probe passed: receive one trial message, and report its fate with
    /// [`StoreGate::trial_passed`] or [`StoreGate::trial_failed`]. Dropped without a
    /// verdict (nothing was received), the gate stays as it is and the next worker to
    /// come probes again.
    Trial(Trial),
    /// Shutdown was requested while waiting.
    Shutdown,
}

/// The prober's role, held from a passed probe until the trial's verdict.
#[derive(Debug)]
pub(crate) struct Trial {
    /// Consecutive failed probes and trials since the gate opened: the back-off step.
    failures: OwnedMutexGuard<u32>,
}

/// The circuit breaker in front of every worker's ReceiveMessage; share it in an `Arc`.
#[derive(Debug)]
pub(crate) struct StoreGate {
    /// The state, watched by the workers waiting for the gate to close.
    state: watch::Sender<GateState>,
    /// Held by the one worker that probes; holds the back-off step.
    prober: Arc<Mutex<u32>>,
    /// First back-off pause, doubling per failure.
    backoff_base: Duration,
    /// Longest back-off pause.
    backoff_max: Duration,
}

impl Default for StoreGate {
    fn default() -> Self {
        StoreGate::with_backoff(PROBE_BACKOFF_BASE, PROBE_BACKOFF_MAX)
    }
}

impl StoreGate {
    /// A closed gate whose probes back off from `base`, doubling, up to `max`, each
    /// pause scaled by a jitter in `[0.5, 1]`.
    pub fn with_backoff(base: Duration, max: Duration) -> StoreGate {
        StoreGate {
            state: watch::Sender::new(GateState::Closed),
            prober: Arc::new(Mutex::new(0)),
            backoff_base: base,
            backoff_max: max,
        }
    }

    /// Where the gate stands now.
    pub fn state(&self) -> GateState {
        *self.state.borrow()
    }

    /// Opens a closed gate after a retryable apply failure; `reason` is logged, at
    /// ERROR if an operator must act. A gate already open or half-open is left alone
    /// (the failure is of a batch received before it opened). Returns whether it opened.
    pub fn open(&self, kind: FailureKind, reason: &str) -> bool {
        let opened = self.state.send_if_modified(|state| {
            let was_closed = *state == GateState::Closed;
            if was_closed {
                *state = GateState::Open;
            }
            was_closed
        });
        if opened {
            log_open(
                kind,
                reason,
                "Database gate opened: no worker receives until a probe passes.",
            );
        }
        opened
    }

    /// Waits until this worker may receive. A closed gate admits at once. At an open
    /// gate one worker probes with `probe` (with back-off) until it passes, and is
    /// admitted for a [`Trial`]; the others wait until the gate closes. Only waits are
    /// raced against `shutdown`.
    pub async fn admit<P, F>(&self, mut probe: P, shutdown: &CancellationToken) -> Admission
    where
        P: FnMut() -> F,
        F: Future<Output = Result<(), sqlx::Error>>,
    {
        loop {
            if self.state() == GateState::Closed {
                return Admission::Receive;
            }
            let Ok(mut failures) = Arc::clone(&self.prober).try_lock_owned() else {
                // Another worker probes: wait for it to close the gate.
                let mut closed = self.state.subscribe();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Admission::Shutdown,
                    // Cannot fail: `self` holds the sender.
                    _ = closed.wait_for(|s| *s == GateState::Closed) => continue,
                }
            };
            loop {
                // The previous prober may have closed it between our look and our lock.
                if self.state() == GateState::Closed {
                    return Admission::Receive;
                }
                let delay = self.backoff(failures.saturating_add(1), rand::random());
                let slept = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => false,
                    () = tokio::time::sleep(delay) => true,
                };
                if !slept {
                    return Admission::Shutdown;
                }
                match probe().await {
                    Ok(()) => {
                        self.state.send_replace(GateState::HalfOpen);
                        info!(
                            "Database probe passed, trying one message before reopening to every worker."
                        );
                        return Admission::Trial(Trial { failures });
                    }
                    Err(e) => {
                        *failures = failures.saturating_add(1);
                        warn!(error = %error_chain(&e), failures = *failures, "Database probe failed, the gate stays open.");
                    }
                }
            }
        }
    }

    /// The trial message was applied (or parked for its own fault): closes the gate
    /// for every worker.
    pub fn trial_passed(&self, trial: Trial) {
        let mut failures = trial.failures;
        *failures = 0;
        self.state.send_replace(GateState::Closed);
        info!("Database gate closed: every worker receives again.");
    }

    /// The trial message failed retryably again: reopens the gate, and the next probe
    /// waits longer.
    pub fn trial_failed(&self, trial: Trial, kind: FailureKind, reason: &str) {
        let mut failures = trial.failures;
        *failures = failures.saturating_add(1);
        self.state.send_replace(GateState::Open);
        log_open(
            kind,
            reason,
            "Database gate reopened: the trial message failed although the probe passed.",
        );
    }

    fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        runtime::backoff::Backoff::new(self.backoff_base, self.backoff_max).delay(attempt, jitter)
    }
}

fn log_open(kind: FailureKind, reason: &str, message: &'static str) {
    match kind {
        FailureKind::NeedsOperator => error!(reason, "{message} An operator must act."),
        _ => warn!(reason, "{message}"),
    }
}

/// What the gate hears of a settled batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The trial message was applied: close the gate.
    TrialPassed,
    /// The trial failed on the store again: reopen it.
    TrialFailed,
    /// A batch received while closed failed on the store: open it.
    Open,
    /// Nothing the gate must hear.
    None,
}

/// PURE: the gate's [`Verdict`] on a batch: received `on_trial` or not, whether any of
/// its messages was applied, and whether the store itself failed. Only an applied
/// message tells the database is back; a parked one is no verdict (the gate stays
/// half-open for the next probe).
pub(crate) fn verdict(on_trial: bool, applied_any: bool, store_failed: bool) -> Verdict {
    match (on_trial, store_failed) {
        (true, false) if applied_any => Verdict::TrialPassed,
        (true, false) => Verdict::None,
        (true, true) => Verdict::TrialFailed,
        (false, true) => Verdict::Open,
        (false, false) => Verdict::None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn gate() -> Arc<StoreGate> {
        Arc::new(StoreGate::with_backoff(
            Duration::from_millis(5),
            Duration::from_millis(20),
        ))
    }

    /// An open gate (opened by `kind`, `reason`) and a probe call counter.
    fn opened(kind: FailureKind, reason: &str) -> (Arc<StoreGate>, Arc<AtomicUsize>) {
        let gate = gate();
        gate.open(kind, reason);
        (gate, Arc::new(AtomicUsize::new(0)))
    }

    /// The next worker's admission, within [`WAIT`].
    async fn next(workers: &mut tokio::task::JoinSet<Admission>) -> Admission {
        tokio::time::timeout(WAIT, workers.join_next())
            .await
            .expect("a worker is admitted in time")
            .expect("a worker is left")
            .expect("the worker did not panic")
    }

    /// A probe that fails `failing` times, then passes; counts its calls.
    fn probe(
        calls: &Arc<AtomicUsize>,
        failing: usize,
    ) -> impl FnMut() -> std::future::Ready<Result<(), sqlx::Error>> + use<> {
        let calls = Arc::clone(calls);
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n < failing {
                Err(sqlx::Error::PoolTimedOut)
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_closed_gate_admits_at_once_without_probing() {
        let gate = gate();
        let calls = Arc::new(AtomicUsize::new(0));
        let admitted = gate
            .admit(probe(&calls, 0), &CancellationToken::new())
            .await;
        assert!(matches!(admitted, Admission::Receive));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn only_the_first_failure_opens_the_gate() {
        let gate = gate();
        assert!(gate.open(FailureKind::Transient, "connection refused"));
        assert!(!gate.open(FailureKind::NeedsOperator, "42P01"));
        assert_eq!(gate.state(), GateState::Open);
    }

    #[tokio::test]
    async fn while_open_no_worker_is_admitted_until_a_probe_and_a_trial_pass() {
        let (gate, calls) = opened(FailureKind::Transient, "connection refused");
        let shutdown = CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (gate, probe, shutdown) = (Arc::clone(&gate), probe(&calls, 2), shutdown.clone());
            workers.spawn(async move { gate.admit(probe, &shutdown).await });
        }
        let first = next(&mut workers).await;
        let Admission::Trial(trial) = first else {
            panic!("the prober gets the trial, got {first:?}");
        };
        assert_eq!(gate.state(), GateState::HalfOpen);
        // One prober: the two failed probes and the passing one.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(workers.len(), 2);
        assert!(
            workers.try_join_next().is_none(),
            "a worker got past an open gate"
        );

        gate.trial_passed(trial);
        for _ in 0..2 {
            let admitted = next(&mut workers).await;
            assert!(matches!(admitted, Admission::Receive), "{admitted:?}");
        }
        assert_eq!(gate.state(), GateState::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_trial_reopens_the_gate_and_probes_again() {
        let (gate, calls) = opened(FailureKind::NeedsOperator, "23502");
        let shutdown = CancellationToken::new();
        let Admission::Trial(trial) = gate.admit(probe(&calls, 0), &shutdown).await else {
            panic!("expected a trial");
        };
        gate.trial_failed(trial, FailureKind::NeedsOperator, "23502");
        assert_eq!(gate.state(), GateState::Open);
        let again = gate.admit(probe(&calls, 0), &shutdown).await;
        assert!(matches!(again, Admission::Trial(_)), "{again:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn shutdown_releases_the_prober_and_the_waiters_of_an_open_gate() {
        let (gate, calls) = opened(FailureKind::Transient, "connection refused");
        let shutdown = CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (gate, probe, shutdown) = (
                Arc::clone(&gate),
                probe(&calls, usize::MAX),
                shutdown.clone(),
            );
            workers.spawn(async move { gate.admit(probe, &shutdown).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        for _ in 0..2 {
            let admitted = next(&mut workers).await;
            assert!(matches!(admitted, Admission::Shutdown), "{admitted:?}");
        }
        assert!(calls.load(Ordering::SeqCst) >= 2);
    }

    #[test]
    fn probe_back_off_doubles_and_is_capped_at_thirty_seconds() {
        let gate = StoreGate::default();
        assert_eq!(gate.backoff(1, 1.0), PROBE_BACKOFF_BASE);
        assert_eq!(gate.backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(gate.backoff(100, 1.0), Duration::from_secs(30));
        assert_eq!(gate.backoff(100, 0.0), Duration::from_secs(15));
    }

    #[test]
    fn only_an_applied_trial_closes_the_gate_and_only_a_store_failure_opens_it() {
        assert_eq!(verdict(true, true, false), Verdict::TrialPassed);
        assert_eq!(verdict(true, false, false), Verdict::None, "parked only");
        assert_eq!(verdict(true, true, true), Verdict::TrialFailed);
        assert_eq!(verdict(true, false, true), Verdict::TrialFailed);
        assert_eq!(verdict(false, true, true), Verdict::Open);
        assert_eq!(verdict(false, false, false), Verdict::None);
        assert_eq!(verdict(false, true, false), Verdict::None);
    }
}
