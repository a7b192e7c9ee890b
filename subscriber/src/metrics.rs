//! The subscriber's metrics, one registry per process, served by `subscriber run` on
//! `TRIBUTARY_METRICS_ADDR` (see [`runtime`]).
//!
//! A process-wide registry rather than a parameter: the counters are bumped deep in
//! [`crate::batch`] (by both the receive loop and the Lambda handler reusing [`crate::batch::process_batch`]),
//! and threading a handle through every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use runtime::metrics::{
    Age, BATCH_BUCKETS, Counter, Family, Histogram, LAG_BUCKETS_SECS, ReasonLabel, Registry, Unit,
    histogram, register,
};
use time::OffsetDateTime;

/// Every reason code a message can be parked with, declared at 0 so that a dashboard
/// sees every series before the first park. Built from the codes' own definitions, so
/// it cannot drift from them.
pub(crate) fn park_reasons() -> impl Iterator<Item = &'static str> {
    crate::envelope::BodyError::reason_codes().chain([
        crate::batch::APPLY_REJECTED,
        crate::lambda::STORE_UNAVAILABLE,
    ])
}

/// The subscriber's metric families.
#[derive(Debug)]
pub struct SubscriberMetrics {
    pub registry: Arc<Registry>,
    pub messages_received: Counter,
    pub receive_batch_size: Histogram,
    pub receive_failures: Counter,
    pub last_poll: Age,
    pub events_applied: Counter,
    pub events_stale: Counter,
    pub history_duplicates: Counter,
    pub messages_parked: Family<ReasonLabel, Counter>,
    pub messages_retried: Counter,
    pub replication_lag: Histogram,
}

static METRICS: LazyLock<SubscriberMetrics> = LazyLock::new(|| {
    let mut r = runtime::metrics::registry("subscriber");
    let m = SubscriberMetrics {
        registry: Arc::default(),
        messages_received: register(
            &mut r,
            "tributary_messages_received",
            "SQS messages received by the subscriber.",
            None,
            Counter::default(),
        ),
        receive_batch_size: register(
            &mut r,
            "tributary_receive_batch_size",
            "Messages per batch a worker applies: one non-empty ReceiveMessage answer, or several gathered from a backlog.",
            None,
            histogram(BATCH_BUCKETS),
        ),
        receive_failures: register(
            &mut r,
            "tributary_receive_failures",
            "ReceiveMessage calls that failed.",
            None,
            Counter::default(),
        ),
        last_poll: register(
            &mut r,
            "tributary_last_poll_age",
            "Seconds since the last successful ReceiveMessage (empty or not).",
            Some(Unit::Seconds),
            Age::default(),
        ),
        events_applied: register(
            &mut r,
            "tributary_events_applied",
            "Events that changed the analytics state (committed).",
            None,
            Counter::default(),
        ),
        events_stale: register(
            &mut r,
            "tributary_events_stale",
            "Events skipped as stale: not newer than the stored row, or superseded in their batch.",
            None,
            Counter::default(),
        ),
        history_duplicates: register(
            &mut r,
            "tributary_history_duplicates",
            "Events already in the history table (redeliveries, duplicates).",
            None,
            Counter::default(),
        ),
        messages_parked: register(
            &mut r,
            "tributary_messages_parked",
            "Messages parked in the DLQ, by reason code.",
            None,
            Family::default(),
        ),
        messages_retried: register(
            &mut r,
            "tributary_messages_retried",
            "Messages left on the queue for a later attempt after a transient failure.",
            None,
            Counter::default(),
        ),
        replication_lag: register(
            &mut r,
            "tributary_replication_lag",
            "Commit time of an applied batch minus each event's occurred_at.",
            Some(Unit::Seconds),
            histogram(LAG_BUCKETS_SECS),
        ),
    };

    for reason in park_reasons() {
        // Declared at 0, so a dashboard sees every reason before its first park.
        drop(m.messages_parked.get_or_create(&ReasonLabel::of(reason)));
    }
    SubscriberMetrics {
        registry: Arc::new(r),
        ..m
    }
});

/// The process's subscriber metrics.
pub fn metrics() -> &'static SubscriberMetrics {
    &METRICS
}

impl SubscriberMetrics {
    /// A message is in the DLQ: the one place that logs it (at ERROR: an operator must
    /// look at what was parked) and counts it, so the two never disagree.
    pub(crate) fn parked(
        &self,
        message_id: &str,
        reason: &'static str,
        detail: &str,
        dlq_url: &str,
    ) {
        self.messages_parked
            .get_or_create(&ReasonLabel::of(reason))
            .inc();
        tracing::error!(
            message_id,
            reason,
            detail,
            dlq_url,
            "Message parked in the DLQ."
        );
    }

    /// Records a successful receive of `n` messages.
    pub fn received(&self, n: usize) {
        self.last_poll.touch();
        if n > 0 {
            self.messages_received.inc_by(n as u64);
            self.receive_batch_size.observe(n as f64);
        }
    }

    /// Records the lag of events whose batch just committed.
    pub fn committed<'a>(&self, occurred: impl IntoIterator<Item = &'a OffsetDateTime>) {
        let now = OffsetDateTime::now_utc();
        for t in occurred {
            self.replication_lag
                .observe((now - *t).as_seconds_f64().max(0.0));
        }
    }
}
