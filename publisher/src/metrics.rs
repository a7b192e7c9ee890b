//! The publisher's metrics, one registry per process, served on
//! `TRIBUTARY_METRICS_ADDR` (see [`runtime`]).
//!
//! A process-wide registry, like the subscriber's: the counters are bumped deep in
//! [`crate::pipeline`], and a handle in every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use runtime::metrics::{
    Age, BATCH_BUCKETS, Counter, Family, Gauge, Histogram, ReasonLabel, Registry, ShardLabel, Unit,
    histogram, register,
};

/// The publisher's metric families.
#[derive(Debug)]
pub struct PublisherMetrics {
    pub registry: Arc<Registry>,
    pub records_read: Counter,
    pub events_published: Counter,
    pub records_skipped: Counter,
    pub records_parked: Family<ReasonLabel, Counter>,
    pub publish_retries: Counter,
    pub checkpoints_written: Counter,
    pub read_batch_size: Histogram,
    pub iterator_age: Family<ShardLabel, Gauge>,
    pub last_poll: Age,
    pub oldest_unpublished_age: Family<ShardLabel, Age>,
    pub shards_reading: Gauge,
    pub shards_waiting: Gauge,
    pub shard_paused: Family<ShardLabel, Gauge>,
    pub shard_pauses: Counter,
    pub stream_enabled: Gauge,
    pub stream_gaps: Counter,
    pub backfill_needed: Gauge,
    /// `records_parked` over every reason; not exported.
    parked_total: Counter,
}

static METRICS: LazyLock<PublisherMetrics> = LazyLock::new(|| {
    let mut r = runtime::metrics::registry("publisher");
    let m = PublisherMetrics {
        registry: Arc::default(),
        records_read: register(
            &mut r,
            "tributary_stream_records_read",
            "Stream records read by GetRecords.",
            None,
            Counter::default(),
        ),
        events_published: register(
            &mut r,
            "tributary_events_published",
            "Change events accepted by SNS.",
            None,
            Counter::default(),
        ),
        records_skipped: register(
            &mut r,
            "tributary_records_skipped",
            "Stream records not published: a MODIFY that changes nothing the contract carries.",
            None,
            Counter::default(),
        ),
        records_parked: register(
            &mut r,
            "tributary_records_parked",
            "Stream records parked in the failure queue, by reason code.",
            None,
            Family::default(),
        ),
        publish_retries: register(
            &mut r,
            "tributary_publish_retries",
            "PublishBatch entries sent again after a transient failure.",
            None,
            Counter::default(),
        ),
        checkpoints_written: register(
            &mut r,
            "tributary_checkpoints_written",
            "Shard checkpoints written.",
            None,
            Counter::default(),
        ),
        read_batch_size: register(
            &mut r,
            "tributary_stream_batch_size",
            "Records per non-empty GetRecords answer.",
            None,
            histogram(BATCH_BUCKETS),
        ),
        iterator_age: register(
            &mut r,
            "tributary_stream_iterator_age",
            "Per shard: now minus the ApproximateCreationDateTime of the last record read; 0 when a read finds the shard drained.",
            Some(Unit::Seconds),
            Family::default(),
        ),
        last_poll: register(
            &mut r,
            "tributary_last_poll_age",
            "Seconds since the last successful GetRecords on any shard.",
            Some(Unit::Seconds),
            Age::default(),
        ),
        oldest_unpublished_age: register(
            &mut r,
            "tributary_shard_oldest_unpublished_age",
            "Per shard: seconds since the oldest stream record not yet published was created, computed when scraped. Grows while a shard cannot read or publish.",
            Some(Unit::Seconds),
            Family::default(),
        ),
        shards_reading: register(
            &mut r,
            "tributary_shards_reading",
            "Shards being read now.",
            None,
            Gauge::default(),
        ),
        shards_waiting: register(
            &mut r,
            "tributary_shards_waiting",
            "Shards ready to be read but not started: more are ready than --max-shards lets run.",
            None,
            Gauge::default(),
        ),
        shard_paused: register(
            &mut r,
            "tributary_shard_paused",
            "1 for each shard paused because a record can be neither published nor parked (tried again later).",
            None,
            Family::default(),
        ),
        shard_pauses: register(
            &mut r,
            "tributary_shard_pauses",
            "Times a shard was paused because a record could be neither published nor parked.",
            None,
            Counter::default(),
        ),
        stream_enabled: register(
            &mut r,
            "tributary_stream_enabled",
            "1 while the table's stream is enabled with NEW_AND_OLD_IMAGES, 0 while it is disabled or unusable.",
            None,
            Gauge::default(),
        ),
        stream_gaps: register(
            &mut r,
            "tributary_stream_gaps",
            "Times the table's stream was found replaced (disabled, then enabled): changes made in between are in no stream.",
            None,
            Counter::default(),
        ),
        backfill_needed: register(
            &mut r,
            "tributary_stream_backfill_needed",
            "1 once this process found a gap between two streams of the table: run a snapshot backfill (replay snapshot), then restart the publisher to clear it.",
            None,
            Gauge::default(),
        ),
        parked_total: Counter::default(),
    };

    m.stream_enabled.set(1.0);
    PublisherMetrics {
        registry: Arc::new(r),
        ..m
    }
});

impl PublisherMetrics {
    /// A record is in the failure queue: the one place that logs it (at ERROR: an
    /// operator should look at it) and counts it, so the two never disagree.
    pub(crate) fn parked(&self, parked: &crate::park::ParkedRecord) {
        self.records_parked
            .get_or_create(&ReasonLabel::of(parked.reason.clone()))
            .inc();
        self.parked_total.inc();
        tracing::error!(
            shard_id = %parked.shard_id,
            sequence_number = parked.record.sequence_number.as_deref().unwrap_or("-"),
            event_id = parked.record.event_id.as_deref().unwrap_or("-"),
            reason = %parked.reason,
            detail = %parked.detail,
            "Stream record parked in the failure queue."
        );
    }

    /// How many records this process parked, over every reason: for the summary line
    /// at exit (a family cannot be summed; [`Self::parked`] counts both).
    pub(crate) fn records_parked_total(&self) -> u64 {
        self.parked_total.get()
    }
}

/// The process's publisher metrics.
pub fn metrics() -> &'static PublisherMetrics {
    &METRICS
}
