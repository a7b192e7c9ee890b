//! Receive pacing: how long a caught-up worker waits between receives so that each
//! comes back full, and how it tells that it is behind.
//!
//! SQS bills per request, and a long poll returns as soon as one message is there: at
//! a steady 200 events/s, four workers long-polling back to back get one to three
//! messages per ReceiveMessage and make about one request per event. A caught-up worker
//! therefore waits, after each receive, as long as the measured arrival rate needs to
//! queue a full receive for every worker (`workers × per_call ÷ rate`), bounded by the
//! configured maximum: receives and deletes fall to about one per `per_call` events.
//!
//! Fullness alone cannot tell a worker that it is behind: a paced receive is meant to
//! come back full, and receiving again at once to check would cost the very request the
//! wait saves. The messages' age can: when the oldest one waited in the queue longer
//! than [`lag_threshold`] the worker is behind, so it neither waits nor stops at one
//! receive (it gathers a larger batch). Without timestamps a full receive counts as
//! behind.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shortest span the arrival rate is measured over.
pub(crate) const METER_WINDOW: Duration = Duration::from_secs(1);

/// Messages received per second, over all of a process's workers, measured over
/// windows of at least [`METER_WINDOW`].
#[derive(Debug)]
pub(crate) struct ArrivalMeter {
    state: Mutex<MeterState>,
}

#[derive(Debug)]
struct MeterState {
    since: Instant,
    count: u64,
    /// The last finished window's rate; `None` until one has finished.
    rate: Option<f64>,
}

impl ArrivalMeter {
    pub fn new(now: Instant) -> ArrivalMeter {
        ArrivalMeter {
            state: Mutex::new(MeterState {
                since: now,
                count: 0,
                rate: None,
            }),
        }
    }

    /// Counts `messages` received at `now`; closes the window when it is long enough.
    pub fn record(&self, messages: usize, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.count += messages as u64;
        let elapsed = now.saturating_duration_since(s.since);
        if elapsed >= METER_WINDOW {
            s.rate = Some(s.count as f64 / elapsed.as_secs_f64());
            s.count = 0;
            s.since = now;
        }
    }

    /// Messages per second in the last finished window.
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }
}

/// Whether a worker is behind: the oldest message it just received waited in the queue
/// longer than `threshold` (`SentTimestamp` against this host's clock). `None` when no
/// message carries a timestamp.
pub fn behind(
    messages_sent_ms: impl IntoIterator<Item = Option<u64>>,
    now_ms: u64,
    threshold: Duration,
) -> Option<bool> {
    let oldest = messages_sent_ms.into_iter().flatten().min()?;
    Some(u128::from(now_ms.saturating_sub(oldest)) > threshold.as_millis())
}

/// How old a message may be before its worker counts as behind: twice the longest fill
/// wait (a paced worker's messages wait about one), and never under 500 ms.
pub(crate) fn lag_threshold(max_fill_wait: Duration) -> Duration {
    (max_fill_wait * 2).max(Duration::from_millis(500))
}

/// The wait before a caught-up worker's next receive, after one that returned
/// `received` messages: `workers × per_call ÷ rate`, the time the measured arrival rate
/// needs to queue a full receive for every worker, at most `max`. None after an empty
/// receive (a long poll already waited; a short poll has its own pause), before the
/// rate is known, or when `max` is zero. A worker that is behind does not wait at all;
/// the caller decides that.
pub(crate) fn fill_wait(
    received: usize,
    per_call: usize,
    workers: usize,
    rate: Option<f64>,
    max: Duration,
) -> Duration {
    if received == 0 || max.is_zero() {
        return Duration::ZERO;
    }
    match rate {
        None => Duration::ZERO,
        Some(rate) if rate <= 0.0 => max,
        Some(rate) => {
            let secs = (workers.max(1) * per_call) as f64 / rate;
            Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
        }
    }
}

/// What a worker does after a receive that returned messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterReceive {
    /// It is behind: receive again at once, into a larger batch.
    Gather,
    /// It is caught up: after this batch, wait this long (maybe zero) before the next
    /// receive, so that it comes back fuller.
    FillPause(Duration),
}

/// PURE: [`AfterReceive`] for `received` messages, sent at `sent_ms` (`SentTimestamp`),
/// out of at most `per_call`: behind ([`behind`], or a full receive when no message
/// carries a timestamp) gathers; caught up pauses for the [`fill_wait`].
pub(crate) fn after_receive(
    sent_ms: impl IntoIterator<Item = Option<u64>>,
    received: usize,
    per_call: usize,
    now_ms: u64,
    workers: usize,
    rate: Option<f64>,
    max_fill_wait: Duration,
) -> AfterReceive {
    let lagging =
        behind(sent_ms, now_ms, lag_threshold(max_fill_wait)).unwrap_or(received >= per_call);
    if lagging {
        AfterReceive::Gather
    } else {
        AfterReceive::FillPause(fill_wait(received, per_call, workers, rate, max_fill_wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(250);

    #[test]
    fn empty_or_unmeasured_receives_do_not_wait() {
        assert_eq!(fill_wait(0, 10, 4, Some(200.0), MAX), Duration::ZERO);
        assert_eq!(fill_wait(3, 10, 4, None, MAX), Duration::ZERO);
        assert_eq!(
            fill_wait(3, 10, 4, Some(200.0), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn a_receive_waits_for_a_full_one_per_worker() {
        // 4 workers × 10 messages at 200/s: 200 ms, whether this receive was full or not.
        assert_eq!(
            fill_wait(3, 10, 4, Some(200.0), MAX),
            Duration::from_millis(200)
        );
        assert_eq!(
            fill_wait(10, 10, 4, Some(200.0), MAX),
            Duration::from_millis(200)
        );
        // 1 worker at 1 000/s: 10 ms.
        assert_eq!(
            fill_wait(9, 10, 1, Some(1000.0), MAX),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn a_slow_or_stopped_flow_waits_at_most_the_maximum() {
        assert_eq!(fill_wait(1, 10, 4, Some(5.0), MAX), MAX);
        assert_eq!(fill_wait(1, 10, 4, Some(0.0), MAX), MAX);
    }

    #[test]
    fn a_worker_is_behind_when_its_oldest_message_waited_past_the_threshold() {
        let t = Duration::from_millis(500);
        assert_eq!(behind([Some(9_600), Some(9_800)], 10_000, t), Some(false));
        assert_eq!(
            behind([Some(9_400), None, Some(9_900)], 10_000, t),
            Some(true)
        );
        // A clock behind SQS's: not behind.
        assert_eq!(behind([Some(10_200)], 10_000, t), Some(false));
        assert_eq!(behind([None, None], 10_000, t), None);
        assert_eq!(lag_threshold(Duration::from_millis(250)), t);
        assert_eq!(
            lag_threshold(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_meter_reports_a_window_once_it_is_long_enough() {
        let t0 = Instant::now();
        let meter = ArrivalMeter::new(t0);
        meter.record(50, t0 + Duration::from_millis(500));
        assert_eq!(meter.rate(), None);
        meter.record(150, t0 + Duration::from_secs(1));
        assert_eq!(meter.rate(), Some(200.0));
        meter.record(30, t0 + Duration::from_secs(3));
        assert_eq!(meter.rate(), Some(15.0));
    }

    #[test]
    fn old_messages_or_a_full_untimed_receive_gather_and_a_fresh_one_pauses() {
        let now = 100_000;
        // 2 s old, past the 500 ms threshold of a 250 ms fill wait: behind.
        assert_eq!(
            after_receive([Some(now - 2_000)], 3, 10, now, 4, Some(200.0), MAX),
            AfterReceive::Gather
        );
        // Fresh: paced by the arrival rate, 4 workers × 10 ÷ 200/s = 200 ms.
        assert_eq!(
            after_receive([Some(now - 10)], 3, 10, now, 4, Some(200.0), MAX),
            AfterReceive::FillPause(Duration::from_millis(200))
        );
        // No timestamps: fullness decides.
        assert_eq!(
            after_receive([None; 10], 10, 10, now, 4, Some(200.0), MAX),
            AfterReceive::Gather
        );
        assert_eq!(
            after_receive([None; 3], 3, 10, now, 4, None, MAX),
            AfterReceive::FillPause(Duration::ZERO)
        );
    }
}
