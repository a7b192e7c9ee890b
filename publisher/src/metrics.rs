//! The publisher's metrics, one registry per process, served on
//! `TRIBUTARY_METRICS_ADDR` (see [`runtime`]).
//!
//! A process-wide registry, like the subscriber's: the counters are bumped deep in
//! [`crate::pipeline`], and a handle in every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use runtime::metrics::{BATCH_BUCKETS, Metric, Registry};

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
    pub oldest_unpublished_age: Metric,
    pub shards_reading: Metric,
    pub shards_waiting: Metric,
    pub shard_paused: Metric,
    pub shard_pauses: Metric,
    pub stream_enabled: Metric,
    pub stream_gaps: Metric,
    pub backfill_needed: Metric,
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
        oldest_unpublished_age: r.age(
            "tributary_shard_oldest_unpublished_age_seconds",
            "Per shard: seconds since the oldest stream record not yet published was created, computed when scraped. Grows while a shard cannot read or publish.",
            &["shard"],
        ),
        shards_reading: r.gauge(
            "tributary_shards_reading",
            "Shards being read now.",
            &[],
        ),
        shards_waiting: r.gauge(
            "tributary_shards_waiting",
            "Shards ready to be read but not started: more are ready than --max-shards lets run.",
            &[],
        ),
        shard_paused: r.gauge(
            "tributary_shard_paused",
            "1 for each shard paused because a record can be neither published nor parked (tried again later).",
            &["shard"],
        ),
        shard_pauses: r.counter(
            "tributary_shard_pauses_total",
            "Times a shard was paused because a record could be neither published nor parked.",
            &[],
        ),
        stream_enabled: r.gauge(
            "tributary_stream_enabled",
            "1 while the table's stream is enabled with NEW_AND_OLD_IMAGES, 0 while it is disabled or unusable.",
            &[],
        ),
        stream_gaps: r.counter(
            "tributary_stream_gaps_total",
            "Times the table's stream was found replaced (disabled, then enabled): changes made in between are in no stream.",
            &[],
        ),
        backfill_needed: r.gauge(
            "tributary_stream_backfill_needed",
            "1 once this process found a gap between two streams of the table: run a snapshot backfill (replay snapshot), then restart the publisher to clear it.",
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
        m.shard_pauses,
        m.stream_gaps,
    ] {
        m.registry.declare(c, &[]);
    }
    m.registry.set(m.stream_enabled, &[], 1.0);
    m.registry.set(m.backfill_needed, &[], 0.0);
    m.registry.set(m.shards_waiting, &[], 0.0);
    m
});

impl PublisherMetrics {
    /// A record is in the failure queue: the one place that logs it (at ERROR: an
    /// operator should look at it) and counts it, so the two never disagree.
    pub(crate) fn parked(&self, parked: &crate::park::ParkedRecord) {
        self.registry
            .inc_by(self.records_parked, &[parked.reason.as_str()], 1);
        tracing::error!(
            shard_id = %parked.shard_id,
            sequence_number = parked.record.sequence_number.as_deref().unwrap_or("-"),
            event_id = parked.record.event_id.as_deref().unwrap_or("-"),
            reason = %parked.reason,
            detail = %parked.detail,
            "Stream record parked in the failure queue."
        );
    }
}

/// The process's publisher metrics.
pub fn metrics() -> &'static PublisherMetrics {
    &METRICS
}
