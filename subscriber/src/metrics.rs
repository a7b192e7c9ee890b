//! The subscriber's metrics, one registry per process, served by `subscriber run` on
//! `TRIBUTARY_METRICS_ADDR` (see [`runtime`]).
//!
//! A process-wide registry rather than a parameter: the counters are bumped deep in
//! [`crate::worker`] (and a Lambda handler reusing [`crate::worker::process_batch`]),
//! and threading a handle through every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use runtime::metrics::{BATCH_BUCKETS, LAG_BUCKETS_SECS, Metric, Registry};
use time::OffsetDateTime;

/// Every reason code a message can be parked with, declared at 0 so that a dashboard
/// sees every series before the first park. Built from the codes' own definitions, so
/// it cannot drift from them.
pub(crate) fn park_reasons() -> impl Iterator<Item = &'static str> {
    contracts::DecodeError::REASON_CODES.into_iter().chain([
        crate::envelope::BAD_SNS_ENVELOPE,
        crate::envelope::FOREIGN_TOPIC,
        crate::worker::APPLY_REJECTED,
        crate::lambda::STORE_UNAVAILABLE,
    ])
}

/// The subscriber's metric families.
#[derive(Debug)]
pub struct SubscriberMetrics {
    pub registry: Arc<Registry>,
    pub messages_received: Metric,
    pub receive_batch_size: Metric,
    pub receive_failures: Metric,
    pub last_poll: Metric,
    pub events_applied: Metric,
    pub events_stale: Metric,
    pub history_duplicates: Metric,
    pub messages_parked: Metric,
    pub messages_retried: Metric,
    pub replication_lag: Metric,
}

static METRICS: LazyLock<SubscriberMetrics> = LazyLock::new(|| {
    let r = Arc::new(Registry::default());
    let m = SubscriberMetrics {
        messages_received: r.counter(
            "tributary_messages_received_total",
            "SQS messages received by the subscriber.",
            &[],
        ),
        receive_batch_size: r.histogram(
            "tributary_receive_batch_size",
            "Messages per batch a worker applies: one non-empty ReceiveMessage answer, or several gathered from a backlog.",
            &[],
            BATCH_BUCKETS,
        ),
        receive_failures: r.counter(
            "tributary_receive_failures_total",
            "ReceiveMessage calls that failed.",
            &[],
        ),
        last_poll: r.age(
            "tributary_seconds_since_last_poll",
            "Seconds since the last successful ReceiveMessage (empty or not).",
            &[],
        ),
        events_applied: r.counter(
            "tributary_events_applied_total",
            "Events that changed the analytics state (committed).",
            &[],
        ),
        events_stale: r.counter(
            "tributary_events_stale_total",
            "Events skipped as stale: not newer than the stored row, or superseded in their batch.",
            &[],
        ),
        history_duplicates: r.counter(
            "tributary_history_duplicates_total",
            "Events already in the history table (redeliveries, duplicates).",
            &[],
        ),
        messages_parked: r.counter(
            "tributary_messages_parked_total",
            "Messages parked in the DLQ, by reason code.",
            &["reason"],
        ),
        messages_retried: r.counter(
            "tributary_messages_retried_total",
            "Messages left on the queue for a later attempt after a transient failure.",
            &[],
        ),
        replication_lag: r.histogram(
            "tributary_replication_lag_seconds",
            "Commit time of an applied batch minus each event's occurred_at.",
            &[],
            LAG_BUCKETS_SECS,
        ),
        registry: r,
    };
    for reason in park_reasons() {
        m.registry.declare(m.messages_parked, &[reason]);
    }
    for c in [
        m.messages_received,
        m.receive_failures,
        m.events_applied,
        m.events_stale,
        m.history_duplicates,
        m.messages_retried,
    ] {
        m.registry.declare(c, &[]);
    }
    m
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
        self.registry.inc_by(self.messages_parked, &[reason], 1);
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
        self.registry.touch(self.last_poll, &[]);
        if n > 0 {
            self.registry.inc_by(self.messages_received, &[], n as u64);
            self.registry
                .observe(self.receive_batch_size, &[], n as f64);
        }
    }

    /// Records the lag of events whose batch just committed.
    pub fn committed<'a>(&self, occurred: impl IntoIterator<Item = &'a OffsetDateTime>) {
        let now = OffsetDateTime::now_utc();
        self.registry.observe_many(
            self.replication_lag,
            &[],
            occurred
                .into_iter()
                .map(|t| (now - *t).as_seconds_f64().max(0.0)),
        );
    }
}
