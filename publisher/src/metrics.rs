//! The publisher's metrics, one registry per process, served on
//! `TRIBUTARY_METRICS_ADDR` (see [`ops`]).
//!
//! A process-wide registry, like the subscriber's: the counters are bumped deep in
//! [`crate::pipeline`], and a handle in every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use ops::metrics::{BATCH_BUCKETS, Metric, Registry};

/// The publisher's metric families.
#[derive(Debug)]
pub struct PublisherMetrics {
    pub registry: Arc<Registry>,
    pub records_read: Metric,
    pub events_published: Metric,
    pub records_skipped: Metric,
    pub records_parked: Metric,
    pub publish_retries: Metric,
    pub checkpoints_written: Metric,
    pub read_batch_size: Metric,
    pub iterator_age: Metric,
    pub last_poll: Metric,
}

static METRICS: LazyLock<PublisherMetrics> = LazyLock::new(|| {
    let r = Arc::new(Registry::default());
    let m = PublisherMetrics {
        records_read: r.counter(
            "tributary_stream_records_read_total",
            "Stream records read by GetRecords.",
            &[],
        ),
        events_published: r.counter(
            "tributary_events_published_total",
            "Change events accepted by SNS.",
            &[],
        ),
        records_skipped: r.counter(
            "tributary_records_skipped_total",
            "Stream records not published: a MODIFY that changes nothing the contract carries.",
            &[],
        ),
        records_parked: r.counter(
            "tributary_records_parked_total",
            "Stream records parked in the failure queue, by reason code.",
            &["reason"],
        ),
        publish_retries: r.counter(
            "tributary_publish_retries_total",
            "PublishBatch entries sent again after a transient failure.",
            &[],
        ),
        checkpoints_written: r.counter(
            "tributary_checkpoints_written_total",
            "Shard checkpoints written.",
            &[],
        ),
        read_batch_size: r.histogram(
            "tributary_stream_batch_size",
            "Records per non-empty GetRecords answer.",
            &[],
            BATCH_BUCKETS,
        ),
        iterator_age: r.gauge(
            "tributary_stream_iterator_age_seconds",
            "Per shard: now minus the ApproximateCreationDateTime of the last record read; 0 when a read finds the shard drained.",
            &["shard"],
        ),
        last_poll: r.age(
            "tributary_seconds_since_last_poll",
            "Seconds since the last successful GetRecords on any shard.",
            &[],
        ),
        registry: r,
    };
    for c in [
        m.records_read,
        m.events_published,
        m.records_skipped,
        m.publish_retries,
        m.checkpoints_written,
    ] {
        m.registry.declare(c, &[]);
    }
    m
});

/// The process's publisher metrics.
pub fn metrics() -> &'static PublisherMetrics {
    &METRICS
}
