//! A rate limit shared by concurrent senders: `--rate N` events per second in total.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces permits evenly: `n` permits take `n / rate` seconds of the shared budget.
/// Unlimited when built with no rate.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_permit: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: Option<u32>) -> Self {
        RateLimiter {
            per_permit: rate_per_sec.map(|r| Duration::from_secs(1) / r.max(1)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more permits fit in the rate.
    pub async fn acquire(&self, n: usize) {
        let Some(per) = self.per_permit else { return };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            // Unused budget does not pile up into a burst: at most one second's worth.
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            *next = start + per * n;
            start
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_permits_to_the_rate() {
        let limiter = RateLimiter::new(Some(1000));
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire(10).await;
        }
        // 100 permits at 1000/s: the last batch of 10 may start after 90 ms, not before.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(90), "{elapsed:?}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = RateLimiter::new(None);
        let start = Instant::now();
        limiter.acquire(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
