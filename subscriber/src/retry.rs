//! PURE: what to do with a message that failed for a reason that may pass (the database
//! down, a deadlock, SQS unreachable), and how long a worker pauses. No I/O: the worker
//! loop and the Lambda handler ask, then act.
//!
//! A message that failed transiently is hidden for a delay that doubles with its receive
//! count ([`visibility_delay`] in the container, [`store_retry_visibility`] in Lambda,
//! where a store outage must not burn the queue's `maxReceiveCount` in minutes), and one
//! whose next receive would let the redrive policy move it to the DLQ without a reason
//! is parked by us instead ([`redrive_imminent`], [`retry_step`]).

use std::time::Duration;

use runtime::backoff::Backoff;

/// First visibility delay of a message that failed transiently; doubles with each
/// receive.
pub(crate) const RETRY_VISIBILITY_BASE: Duration = Duration::from_secs(5);

/// Longest visibility delay of a message that failed transiently.
pub(crate) const RETRY_VISIBILITY_MAX: Duration = Duration::from_secs(15 * 60);

/// First pause of a worker after a failed batch or receive; doubles with each
/// consecutive failure.
pub(crate) const WORKER_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest pause of a worker between failures.
pub(crate) const WORKER_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Pause after an empty short poll (`SUBSCRIBER_WAIT_TIME_SECS=0`), so an idle queue is
/// not polled in a tight loop.
pub(crate) const EMPTY_SHORT_POLL_PAUSE: Duration = Duration::from_secs(1);

/// The pause after a receive that returned nothing: none after a long poll (it already
/// waited), [`EMPTY_SHORT_POLL_PAUSE`] after a short poll.
pub(crate) fn pause_after_empty_receive(wait_time_secs: u8) -> Option<Duration> {
    (wait_time_secs == 0).then_some(EMPTY_SHORT_POLL_PAUSE)
}

/// Whether a message that failed retryably at `receive_count` is within one receive of
/// the queue's `maxReceiveCount`, after which SQS moves it to the DLQ without a reason.
pub(crate) fn redrive_imminent(receive_count: u32, max_receive_count: Option<u32>) -> bool {
    max_receive_count.is_some_and(|max| receive_count >= max.saturating_sub(1))
}

/// The visibility delay of a message that failed transiently: [`RETRY_VISIBILITY_BASE`]
/// doubled per earlier receive, capped at [`RETRY_VISIBILITY_MAX`], scaled by a jitter
/// in `[0.5, 1]` (from `jitter` in `[0, 1)`) so retries of one outage spread out.
pub(crate) fn visibility_delay(receive_count: u32, jitter: f64) -> Duration {
    Backoff::new(RETRY_VISIBILITY_BASE, RETRY_VISIBILITY_MAX).delay(receive_count, jitter)
}

/// A worker's pause after `consecutive_failures` failed batches or receives: from
/// [`WORKER_BACKOFF_BASE`], doubling, capped at [`WORKER_BACKOFF_MAX`], with jitter as in
/// [`visibility_delay`].
pub(crate) fn worker_backoff(consecutive_failures: u32, jitter: f64) -> Duration {
    Backoff::new(WORKER_BACKOFF_BASE, WORKER_BACKOFF_MAX).delay(consecutive_failures, jitter)
}

/// First visibility delay of a message that failed transiently; doubles per receive.
pub(crate) const STORE_RETRY_VISIBILITY_BASE: Duration = Duration::from_secs(30);

/// Longest visibility delay of a message that failed transiently: an hour, well under
/// SQS's 12-hour limit on a message's visibility timeout
/// ([`runtime::limits::sqs::MAX_VISIBILITY_TIMEOUT_SECS`]).
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html>
pub(crate) const STORE_RETRY_VISIBILITY_MAX: Duration = Duration::from_secs(60 * 60);

/// The visibility delay of a message that failed transiently at `receive_count`:
/// [`STORE_RETRY_VISIBILITY_BASE`] doubled per earlier receive, capped at
/// [`STORE_RETRY_VISIBILITY_MAX`], scaled by a jitter in `[0.5, 1]` (from `jitter` in
/// `[0, 1)`) so that the messages of one outage do not all come back at once.
pub(crate) fn store_retry_visibility(receive_count: u32, jitter: f64) -> Duration {
    runtime::backoff::Backoff::new(STORE_RETRY_VISIBILITY_BASE, STORE_RETRY_VISIBILITY_MAX)
        .delay(receive_count, jitter)
}

/// What to do with a message that failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryStep {
    /// Hide it this long, then report it for retry.
    Delay(Duration),
    /// Its next receive would let the redrive policy move it to the DLQ without a
    /// reason: park it with [`crate::lambda::STORE_UNAVAILABLE`] instead.
    Park,
}

/// PURE: the step for a message that failed transiently at `receive_count`, on a queue
/// whose redrive policy allows `max_receive_count` receives (`None`: unknown or none).
pub(crate) fn retry_step(
    receive_count: u32,
    max_receive_count: Option<u32>,
    jitter: f64,
) -> RetryStep {
    if redrive_imminent(receive_count, max_receive_count) {
        RetryStep::Park
    } else {
        RetryStep::Delay(store_retry_visibility(receive_count, jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::limits::sqs::MAX_VISIBILITY_TIMEOUT_SECS;

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
    fn an_empty_short_poll_pauses_and_an_empty_long_poll_does_not() {
        assert_eq!(pause_after_empty_receive(0), Some(EMPTY_SHORT_POLL_PAUSE));
        assert_eq!(pause_after_empty_receive(1), None);
        assert_eq!(pause_after_empty_receive(20), None);
    }

    #[test]
    fn a_retry_within_one_receive_of_max_receive_count_is_reported() {
        assert!(!redrive_imminent(3, Some(5)));
        assert!(redrive_imminent(4, Some(5)));
        assert!(redrive_imminent(5, Some(5)));
        assert!(redrive_imminent(9, Some(5)));
        assert!(redrive_imminent(1, Some(1)));
        assert!(!redrive_imminent(100, None));
    }

    #[test]
    fn a_zero_receive_count_is_treated_as_the_first() {
        assert_eq!(visibility_delay(0, 1.0), RETRY_VISIBILITY_BASE);
        assert_eq!(worker_backoff(u32::MAX, 1.0), WORKER_BACKOFF_MAX);
    }

    #[test]
    fn the_retry_delay_doubles_per_receive_with_jitter_and_stays_under_twelve_hours() {
        assert_eq!(store_retry_visibility(1, 1.0), Duration::from_secs(30));
        assert_eq!(store_retry_visibility(1, 0.0), Duration::from_secs(15));
        assert_eq!(store_retry_visibility(2, 1.0), Duration::from_secs(60));
        assert_eq!(store_retry_visibility(4, 1.0), Duration::from_secs(240));
        assert_eq!(store_retry_visibility(8, 1.0), STORE_RETRY_VISIBILITY_MAX);
        assert_eq!(
            store_retry_visibility(u32::MAX, 1.0),
            STORE_RETRY_VISIBILITY_MAX
        );
        assert!(STORE_RETRY_VISIBILITY_MAX.as_secs() < MAX_VISIBILITY_TIMEOUT_SECS);
        let a = store_retry_visibility(3, 0.1);
        let b = store_retry_visibility(3, 0.9);
        assert!(a < b, "jitter spreads the delays: {a:?} {b:?}");
    }

    #[test]
    fn a_message_at_its_last_allowed_receive_is_parked_not_left_to_the_redrive_policy() {
        assert_eq!(
            retry_step(1, Some(20), 1.0),
            RetryStep::Delay(Duration::from_secs(30))
        );
        assert!(matches!(retry_step(18, Some(20), 1.0), RetryStep::Delay(_)));
        assert_eq!(retry_step(19, Some(20), 0.5), RetryStep::Park);
        assert_eq!(retry_step(25, Some(20), 0.5), RetryStep::Park);
        // Without a known redrive policy, only delays.
        assert!(matches!(retry_step(500, None, 0.5), RetryStep::Delay(_)));
    }

    /// The template's `maxReceiveCount` of the analytics queue.
    fn template_max_receive_count() -> u32 {
        let template = include_str!("../../deploy/template.yaml");
        let at = template
            .find("AnalyticsQueue:\n")
            .expect("the queue is in the template");
        let line = template[at..]
            .lines()
            .find(|l| l.trim_start().starts_with("maxReceiveCount:"))
            .expect("the queue has a redrive policy");
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn with_the_templates_max_receive_count_a_six_hour_outage_redrives_nothing() {
        let max = template_max_receive_count();
        // The shortest time a message survives: every delay at its smallest jitter,
        // until the receive at which it would be parked.
        let mut survived = Duration::ZERO;
        let mut receive = 1;
        while retry_step(receive, Some(max), 0.0) != RetryStep::Park {
            survived += store_retry_visibility(receive, 0.0);
            receive += 1;
        }
        assert!(
            survived >= Duration::from_secs(6 * 3600),
            "maxReceiveCount {max} survives only {survived:?} of store outage"
        );
    }
}
