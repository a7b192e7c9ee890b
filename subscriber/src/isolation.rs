//! PURE: the clock of a batch whose events are applied one by one.
//!
//! Isolating a refused batch costs a transaction per event, which can outlast the
//! queue's visibility timeout; a message whose visibility runs out is handed to another
//! consumer while this one still works on it (applied twice, which is harmless, but
//! also parked twice and counted towards `maxReceiveCount`). So the worker extends the
//! visibility of the messages it still holds once half of it has run, and gives back
//! (to be retried, unapplied) what it can no longer keep invisible.

use std::time::Duration;

/// What the isolating worker does before its next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepStep {
    /// The messages stay invisible long enough: apply the next event.
    Go,
    /// Half the visibility has run since it was last extended: extend it first.
    Extend,
    /// The visibility may run out before the next event is done (extending failed):
    /// give the remaining messages back to be retried, unapplied.
    GiveBack,
}

/// Part of the visibility timeout after which the worker extends it.
const EXTEND_AT: f64 = 0.5;
/// Part of the visibility timeout after which a worker that could not extend it stops
/// working on the messages it holds.
const GIVE_BACK_AT: f64 = 0.8;

/// The next step, from the time since the messages' visibility was last set (their
/// receive, or the last successful extension) and the visibility timeout.
pub(crate) fn keep_step(since_visible_set: Duration, visibility_timeout: Duration) -> KeepStep {
    if since_visible_set >= visibility_timeout.mul_f64(GIVE_BACK_AT) {
        KeepStep::GiveBack
    } else if since_visible_set >= visibility_timeout.mul_f64(EXTEND_AT) {
        KeepStep::Extend
    } else {
        KeepStep::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(30);

    /// `keep_step` after `elapsed` seconds of a 30 s visibility timeout.
    fn after(elapsed: u64) -> KeepStep {
        keep_step(Duration::from_secs(elapsed), VISIBILITY)
    }

    #[test]
    fn a_fresh_batch_goes_on() {
        assert_eq!(keep_step(Duration::ZERO, VISIBILITY), KeepStep::Go);
        assert_eq!(after(14), KeepStep::Go);
    }

    #[test]
    fn half_the_visibility_gone_asks_for_an_extension() {
        assert_eq!(after(15), KeepStep::Extend);
        assert_eq!(after(23), KeepStep::Extend);
    }

    #[test]
    fn a_visibility_about_to_run_out_gives_the_messages_back() {
        assert_eq!(after(24), KeepStep::GiveBack);
        assert_eq!(after(90), KeepStep::GiveBack);
    }
}
