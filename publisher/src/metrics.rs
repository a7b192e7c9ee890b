//! The publisher's metrics, one registry per process, served on
//! `TRIBUTARY_METRICS_ADDR` (see [`runtime`]).
//!
//! A process-wide registry, like the subscriber's: the counters are bumped deep in
//! [`crate::pipeline`], and a handle in every signature buys nothing a test needs.

use std::sync::{Arc, LazyLock};

use runtime::metrics::{
    Age, BATCH_BUCKETS, Counter, Family, Gauge, Histogram, ReasonLabel, Registry, ShardLabel, Unit,
    histogram,
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
        records_read: Counter::default(),
        events_published: Counter::default(),
        records_skipped: Counter::default(),
        records_parked: Family::default(),
        publish_retries: Counter::default(),
        checkpoints_written: Counter::default(),
        read_batch_size: histogram(BATCH_BUCKETS),
        iterator_age: Family::default(),
        last_poll: Age::default(),
        oldest_unpublished_age: Family::default(),
        shards_reading: Gauge::default(),
        shards_waiting: Gauge::default(),
        shard_paused: Family::default(),
        shard_pauses: Counter::default(),
        stream_enabled: Gauge::default(),
        stream_gaps: Counter::default(),
        backfill_needed: Gauge::default(),
        parked_total: Counter::default(),
    };
    r.register(
        "tributary_stream_records_read",
        "Stream records read by GetRecords.",
        m.records_read.clone(),
    );
    r.register(
        "tributary_events_published",
        "Change events accepted by SNS.",
        m.events_published.clone(),
    );
    r.register(
        "tributary_records_skipped",
        "Stream records not published: a MODIFY that changes nothing the contract carries.",
        m.records_skipped.clone(),
    );
    r.register(
        "tributary_records_parked",
        "Stream records parked in the failure queue, by reason code.",
        m.records_parked.clone(),
    );
    r.register(
        "tributary_publish_retries",
        "PublishBatch entries sent again after a transient failure.",
        m.publish_retries.clone(),
    );
    r.register(
        "tributary_checkpoints_written",
        "Shard checkpoints written.",
        m.checkpoints_written.clone(),
    );
    r.register(
        "tributary_stream_batch_size",
        "Records per non-empty GetRecords answer.",
        m.read_batch_size.clone(),
    );
    r.register_with_unit(
        "tributary_stream_iterator_age",
        "Per shard: now minus the ApproximateCreationDateTime of the last record read; 0 when a read finds the shard drained.",
        Unit::Seconds,
        m.iterator_age.clone(),
    );
    r.register_with_unit(
        "tributary_last_poll_age",
        "Seconds since the last successful GetRecords on any shard.",
        Unit::Seconds,
        m.last_poll.clone(),
    );
    r.register_with_unit(
        "tributary_shard_oldest_unpublished_age",
        "Per shard: seconds since the oldest stream record not yet published was created, computed when scraped. Grows while a shard cannot read or publish.",
        Unit::Seconds,
        m.oldest_unpublished_age.clone(),
    );
    r.register(
        "tributary_shards_reading",
        "Shards being read now.",
        m.shards_reading.clone(),
    );
    r.register(
        "tributary_shards_waiting",
        "Shards ready to be read but not started: more are ready than --max-shards lets run.",
        m.shards_waiting.clone(),
    );
    r.register(
        "tributary_shard_paused",
        "1 for each shard paused because a record can be neither published nor parked (tried again later).",
        m.shard_paused.clone(),
    );
    r.register(
        "tributary_shard_pauses",
        "Times a shard was paused because a record could be neither published nor parked.",
        m.shard_pauses.clone(),
    );
    r.register(
        "tributary_stream_enabled",
        "1 while the table's stream is enabled with NEW_AND_OLD_IMAGES, 0 while it is disabled or unusable.",
        m.stream_enabled.clone(),
    );
    r.register(
        "tributary_stream_gaps",
        "Times the table's stream was found replaced (disabled, then enabled): changes made in between are in no stream.",
        m.stream_gaps.clone(),
    );
    r.register(
        "tributary_stream_backfill_needed",
        "1 once this process found a gap between two streams of the table: run a snapshot backfill (replay snapshot), then restart the publisher to clear it.",
        m.backfill_needed.clone(),
    );
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
