//! PURE: what a shard reader does next. The read loop in [`crate::pipeline`] does the
//! I/O (GetShardIterator, GetRecords, publishing, checkpoints, sleeping) and asks these
//! functions what each answer means, so the decisions have unit tests of their own.

use std::time::Duration;

use crate::stream::StreamError;

/// Consecutive failures of one call after which a shard is reported as stuck (ERROR).
pub(crate) const STUCK_AFTER: u32 = 5;

/// What to do after a failed `GetShardIterator` or `GetRecords`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// The position is older than the stream's retention: records were lost to this
    /// publisher. Start again at the trim horizon (and say a backfill is needed).
    TrimHorizon,
    /// The iterator expired: take a new one at the same position, at once.
    NewIterator,
    /// Wait `backoff(attempt)`, then make the same call again. `stuck` once the call
    /// has failed [`STUCK_AFTER`] times in a row: never skipped (that would lose the
    /// records), so the shard says loudly that it is not moving.
    Retry { attempt: u32, stuck: bool },
    /// Not something waiting can fix: the shard stops with the error.
    Fail,
}

/// The step after `error`, the call having failed `failures` times in a row before.
pub(crate) fn on_error(error: &StreamError, failures: u32) -> OnError {
    match error {
        StreamError::Trimmed => OnError::TrimHorizon,
        StreamError::IteratorExpired => OnError::NewIterator,
        e if e.is_retryable() => {
            let attempt = failures.saturating_add(1);
            OnError::Retry {
                attempt,
                stuck: attempt >= STUCK_AFTER,
            }
        }
        _ => OnError::Fail,
    }
}

/// How long to wait before reading a shard again, `since_last` after the last read
/// started: a caught-up shard is read at most once per `read_interval`, so each read
/// brings what accumulated meanwhile (fuller SNS batches, fewer requests per event); a
/// shard with a backlog (the last page was full) is read again at once.
pub(crate) fn read_wait(
    backlog: bool,
    since_last: Option<Duration>,
    read_interval: Duration,
) -> Duration {
    match since_last {
        Some(elapsed) if !backlog => read_interval.saturating_sub(elapsed),
        _ => Duration::ZERO,
    }
}

/// What follows a page of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterPage {
    /// The shard is closed and read to its end: checkpoint it as finished.
    Finished,
    /// Read on at once; the idle pause starts over at its shortest.
    ReadOn { idle: Duration },
    /// Caught up: checkpoint what is published, sleep `pause`, then read on with the
    /// idle pause doubled (up to its longest).
    Idle { pause: Duration, idle: Duration },
}

/// The step after a page that `had_records`, with a next iterator or not (`open`),
/// `idle` being the current idle pause and `idle_min`..`idle_max` its bounds.
pub(crate) fn after_page(
    had_records: bool,
    open: bool,
    idle: Duration,
    idle_min: Duration,
    idle_max: Duration,
) -> AfterPage {
    if !open {
        AfterPage::Finished
    } else if had_records {
        AfterPage::ReadOn { idle: idle_min }
    } else {
        AfterPage::Idle {
            pause: idle,
            idle: (idle * 2).min(idle_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> StreamError {
        StreamError::Sdk {
            operation: "GetRecords",
            code: Some("InternalServerError".into()),
            message: "boom".into(),
        }
    }

    #[test]
    fn a_trimmed_position_restarts_at_the_horizon_and_an_expired_iterator_is_renewed() {
        assert_eq!(on_error(&StreamError::Trimmed, 3), OnError::TrimHorizon);
        assert_eq!(
            on_error(&StreamError::IteratorExpired, 3),
            OnError::NewIterator
        );
    }

    #[test]
    fn a_transient_failure_is_retried_and_called_stuck_from_the_fifth_in_a_row() {
        assert_eq!(
            on_error(&sdk(), 0),
            OnError::Retry {
                attempt: 1,
                stuck: false
            }
        );
        assert_eq!(
            on_error(&sdk(), 3),
            OnError::Retry {
                attempt: 4,
                stuck: false
            }
        );
        assert_eq!(
            on_error(&sdk(), 4),
            OnError::Retry {
                attempt: 5,
                stuck: true
            }
        );
        assert_eq!(
            on_error(&sdk(), u32::MAX),
            OnError::Retry {
                attempt: u32::MAX,
                stuck: true
            }
        );
    }

    #[test]
    fn a_missing_stream_stops_the_shard() {
        assert_eq!(
            on_error(&StreamError::NotFound("gone".into()), 0),
            OnError::Fail
        );
    }

    #[test]
    fn a_caught_up_shard_waits_out_the_interval_and_a_backlog_does_not() {
        let interval = Duration::from_millis(250);
        assert_eq!(
            read_wait(false, None, interval),
            Duration::ZERO,
            "first read"
        );
        assert_eq!(
            read_wait(false, Some(Duration::from_millis(100)), interval),
            Duration::from_millis(150)
        );
        assert_eq!(
            read_wait(false, Some(Duration::from_secs(1)), interval),
            Duration::ZERO
        );
        assert_eq!(
            read_wait(true, Some(Duration::from_millis(100)), interval),
            Duration::ZERO
        );
    }

    #[test]
    fn an_empty_page_doubles_the_idle_pause_and_a_full_one_resets_it() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(1));
        assert_eq!(
            after_page(false, true, min, min, max),
            AfterPage::Idle {
                pause: min,
                idle: Duration::from_millis(400)
            }
        );
        assert_eq!(
            after_page(false, true, Duration::from_millis(800), min, max),
            AfterPage::Idle {
                pause: Duration::from_millis(800),
                idle: max
            }
        );
        assert_eq!(
            after_page(true, true, max, min, max),
            AfterPage::ReadOn { idle: min }
        );
        assert_eq!(after_page(true, false, max, min, max), AfterPage::Finished);
        assert_eq!(after_page(false, false, max, min, max), AfterPage::Finished);
    }
}
