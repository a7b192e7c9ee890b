//! Receive pacing: how long a worker waits after a receive that was not full, so that
//! the next one comes back fuller.
//!
//! SQS bills per request, and a long poll returns as soon as one message is there: at
//! a steady 200 events/s, four workers long-polling back to back get one to three
//! messages per ReceiveMessage and make about one request per event. Waiting, after a
//! partial receive, for as long as the measured arrival rate needs to put a full
//! receive's worth of messages in the queue for every worker (`workers × per_call ÷
//! rate`) brings receives and deletes to about one per `per_call` events, for an added
//! latency bounded by the configured maximum. A full receive means a backlog: no wait.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shortest span the arrival rate is measured over.
pub const METER_WINDOW: Duration = Duration::from_secs(1);

/// Messages received per second, over all of a process's workers, measured over
/// windows of at least [`METER_WINDOW`].
#[derive(Debug)]
pub struct ArrivalMeter {
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

/// The wait before a worker's next receive, after one that returned `received` of the
/// `per_call` messages asked for. None after an empty receive (a long poll already
/// waited; a short poll has its own pause), after a full one (a backlog), before the
/// rate is known, or when `max` is zero; otherwise `workers × per_call ÷ rate`, at most
/// `max`.
pub fn fill_wait(
    received: usize,
    per_call: usize,
    workers: usize,
    rate: Option<f64>,
    max: Duration,
) -> Duration {
    if received == 0 || received >= per_call || max.is_zero() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(250);

    #[test]
    fn full_empty_or_unmeasured_receives_do_not_wait() {
        assert_eq!(fill_wait(10, 10, 4, Some(200.0), MAX), Duration::ZERO);
        assert_eq!(fill_wait(0, 10, 4, Some(200.0), MAX), Duration::ZERO);
        assert_eq!(fill_wait(3, 10, 4, None, MAX), Duration::ZERO);
        assert_eq!(
            fill_wait(3, 10, 4, Some(200.0), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn a_partial_receive_waits_for_a_full_one_per_worker() {
        // 4 workers × 10 messages at 200/s: 200 ms.
        assert_eq!(
            fill_wait(3, 10, 4, Some(200.0), MAX),
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
}
