//! The one back-off formula: exponential, capped, with jitter, so that retries after a
//! shared outage spread out instead of arriving together. Every loop that waits before
//! trying again (publishing, reading a shard, receiving, applying, a message's
//! visibility after a failure, binding a queue at start) takes its delay from here.

use std::time::Duration;

/// Exponential back-off: `base` for the first attempt, doubling for each further one,
/// never above `max`; the delay is then scaled by a jitter factor in `[0.5, 1]`
/// ("equal jitter": never less than half, so a retry never comes back at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The full delay before the first retry.
    pub base: Duration,
    /// The largest full delay.
    pub max: Duration,
}

impl Backoff {
    /// A back-off from `base` doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before try number `attempt` (1-based: the first retry is 1), for a
    /// `jitter` in `[0, 1)` (a uniform random number; tests pass fixed ones).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        self.full(attempt)
            .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// [`Backoff::delay`] with a fresh random jitter.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random())
    }

    /// The delay before try `attempt` without jitter: the upper bound of
    /// [`Backoff::delay`].
    pub fn full(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    #[test]
    fn the_delay_doubles_per_attempt_up_to_the_cap() {
        let full: Vec<u64> = (1..=8).map(|a| B.full(a).as_millis() as u64).collect();
        assert_eq!(full, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(B.full(0), B.base, "attempt 0 is read as the first");
        assert_eq!(B.full(u32::MAX), B.max, "no overflow");
    }

    #[test]
    fn jitter_keeps_a_delay_between_half_and_all_of_it() {
        assert_eq!(B.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(B.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(B.delay(3, 7.0), Duration::from_millis(400), "clamped");
        for _ in 0..100 {
            let d = B.delay_random(2);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }
}
