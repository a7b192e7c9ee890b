//! The container-mode loop: lease → shards → records → events → SNS → checkpoint.
//!
//! Delivery discipline: a shard's checkpoint moves only after every record up to it is
//! accepted by SNS or parked in the failure queue, so a crash at any point re-publishes
//! (at least once), never skips. Shutdown is observed only around waits (`GetRecords`,
//! idle and back-off sleeps): a batch that was read is published and checkpointed
//! before the loop stops.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use contracts::SchemaVersion;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::batch::{BatchStep, StepError};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::config::{PublisherConfig, StartPosition};
use crate::park::{FailureQueue, ParkError};
use crate::record::{Origin, StreamRecord};
use crate::sink::SnsSink;
use crate::stream::{StartAt, StreamError, StreamReader, ready_shards};

/// Why the publisher stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("table {table:?} has no stream; enable one with StreamViewType NEW_AND_OLD_IMAGES")]
    NoStream { table: String },
    #[error("stream {stream_arn} has view type {view_type}; NEW_AND_OLD_IMAGES is required")]
    WrongViewType {
        stream_arn: String,
        view_type: String,
    },
    #[error("describing table {table:?}: {message}")]
    DescribeTable { table: String, message: String },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "record {sequence_number} of shard {shard_id} can be neither published nor parked: {source}"
    )]
    Park {
        shard_id: String,
        sequence_number: String,
        source: ParkError,
    },
}

/// Counters over the life of one run, shared by the shard tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub records_read: AtomicU64,
    pub events_published: AtomicU64,
    pub records_skipped: AtomicU64,
    pub records_parked: AtomicU64,
    pub publish_retries: AtomicU64,
    pub checkpoints_written: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Poll pacing of idle shards.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub idle_min: Duration,
    pub idle_max: Duration,
    pub discovery: Duration,
    /// Shortest time between two reads of a caught-up shard.
    pub read_interval: Duration,
}

/// Everything a shard task needs, built once.
#[derive(Debug)]
pub struct Pipeline {
    pub reader: StreamReader,
    pub sink: SnsSink,
    pub checkpoints: CheckpointStore,
    pub failures: FailureQueue,
    pub origin: Origin,
    pub emit: SchemaVersion,
    pub start_position: StartPosition,
    pub pacing: Pacing,
    pub lease_ttl: Duration,
    pub max_shards: usize,
    /// Records published between two checkpoint writes (a page is published in slices).
    pub checkpoint_every: usize,
    /// Longest time a published position waits for its checkpoint.
    pub checkpoint_interval: Duration,
    pub stats: Stats,
}

/// The clients the publisher talks through, built once from one SDK config.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            streams: aws_sdk_dynamodbstreams::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }
}

/// The stream ARN of a table, checked to carry both images.
///
/// # Errors
/// [`PipelineError`] when the table has no stream or the wrong view type.
pub async fn resolve_stream(clients: &Clients, table: &str) -> Result<String, PipelineError> {
    let out = clients
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| PipelineError::DescribeTable {
            table: table.to_owned(),
            message: crate::describe_sdk_error(&e),
        })?;
    let desc = out.table.ok_or_else(|| PipelineError::NoStream {
        table: table.to_owned(),
    })?;
    let stream_arn = desc
        .latest_stream_arn
        .filter(|_| {
            desc.stream_specification
                .as_ref()
                .is_some_and(|s| s.stream_enabled)
        })
        .ok_or_else(|| PipelineError::NoStream {
            table: table.to_owned(),
        })?;
    let view = desc
        .stream_specification
        .and_then(|s| s.stream_view_type)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    if view != "NEW_AND_OLD_IMAGES" {
        return Err(PipelineError::WrongViewType {
            stream_arn,
            view_type: view,
        });
    }
    Ok(stream_arn)
}

impl Pipeline {
    /// Builds the pipeline for `config`'s table.
    ///
    /// # Errors
    /// [`PipelineError`] when the table or its stream is unusable.
    pub async fn build(
        config: &PublisherConfig,
        clients: &Clients,
    ) -> Result<Pipeline, PipelineError> {
        let stream_arn = resolve_stream(clients, &config.table).await?;
        Ok(Pipeline {
            reader: StreamReader::new(clients.streams.clone(), stream_arn.clone()),
            sink: SnsSink::new(clients.sns.clone(), config.topic_arn.clone()),
            checkpoints: CheckpointStore::new(
                clients.dynamodb.clone(),
                config.checkpoint_table.clone(),
                stream_arn.clone(),
                config.owner(),
            ),
            failures: FailureQueue::new(clients.sqs.clone(), config.failure_queue_url.clone()),
            origin: Origin {
                table: config.table.clone(),
                stream_arn,
            },
            emit: config.schema_version.into(),
            start_position: config.start_position,
            pacing: Pacing {
                idle_min: config.idle_poll_min,
                idle_max: config.idle_poll_max.max(config.idle_poll_min),
                discovery: config.shard_discovery,
                read_interval: config.read_interval,
            },
            lease_ttl: config.lease_ttl,
            max_shards: config.max_shards.get(),
            checkpoint_every: config.checkpoint_every.get(),
            checkpoint_interval: config.checkpoint_interval,
            stats: Stats::default(),
        })
    }

    /// Runs until `shutdown` fires (then returns `Ok`) or a fatal error.
    ///
    /// # Errors
    /// [`PipelineError`] on a lost lease, an unreachable checkpoint table, or a record
    /// that can be neither published nor parked.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), PipelineError> {
        if !self.acquire_lease(&shutdown).await? {
            return Ok(());
        }
        let work = shutdown.child_token();
        let lease_lost = CancellationToken::new();
        // The renewer outlives `work`: on shutdown the shards still finish and checkpoint
        // their batch in flight, which needs the lease.
        let renewing = CancellationToken::new();
        let renewer = tokio::spawn(self.clone().renew_lease(
            renewing.clone(),
            work.clone(),
            lease_lost.clone(),
        ));
        let result = self.schedule_shards(&work).await;
        work.cancel();
        renewing.cancel();
        let _ = renewer.await;
        if lease_lost.is_cancelled() {
            return Err(CheckpointError::LeaseLost {
                stream_arn: self.origin.stream_arn.clone(),
            }
            .into());
        }
        if let Err(e) = self.checkpoints.release().await {
            warn!(error = %e, "Releasing the lease failed; a successor waits for it to expire.");
        }
        self.log_stats();
        result
    }

    fn log_stats(&self) {
        let s = &self.stats;
        info!(
            records_read = s.records_read.load(Ordering::Relaxed),
            events_published = s.events_published.load(Ordering::Relaxed),
            records_skipped = s.records_skipped.load(Ordering::Relaxed),
            records_parked = s.records_parked.load(Ordering::Relaxed),
            publish_retries = s.publish_retries.load(Ordering::Relaxed),
            checkpoints_written = s.checkpoints_written.load(Ordering::Relaxed),
            "Publisher stopped."
        );
    }

    /// Waits for the lease. `Ok(false)` when shutdown came first.
    async fn acquire_lease(&self, shutdown: &CancellationToken) -> Result<bool, PipelineError> {
        let mut announced = false;
        loop {
            match self.checkpoints.acquire(self.lease_ttl).await {
                Ok(None) => {
                    info!(owner = %self.checkpoints.owner(), stream_arn = %self.origin.stream_arn, "Lease acquired.");
                    return Ok(true);
                }
                Ok(Some(holder)) if !announced => {
                    info!(holder = %holder.owner, expires_at_ms = holder.expires_at_ms, "Stream leased by another publisher; waiting.");
                    announced = true;
                }
                Ok(Some(_)) => {}
                Err(e) => warn!(error = %e, "Lease request failed, will retry."),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.lease_ttl / 6) => {}
                _ = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    async fn renew_lease(
        self: Arc<Self>,
        renewing: CancellationToken,
        work: CancellationToken,
        lost: CancellationToken,
    ) {
        // The lease runs from when a renewal was sent, not from when its answer came.
        let mut renewed_at = tokio::time::Instant::now();
        let mut pause = self.lease_ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = renewing.cancelled() => return,
            }
            let sent_at = tokio::time::Instant::now();
            match self.checkpoints.acquire(self.lease_ttl).await {
                Ok(None) => {
                    renewed_at = sent_at;
                    pause = self.lease_ttl / 3;
                }
                Ok(Some(holder)) => {
                    error!(holder = %holder.owner, "Lease lost to another publisher; stopping.");
                    lost.cancel();
                    work.cancel();
                    return;
                }
                Err(e) => {
                    // Stop reading well before the lease can expire under us; until then
                    // retry every second (a renewal can conflict with a checkpoint
                    // transaction on the same item).
                    if renewed_at.elapsed() > self.lease_ttl * 2 / 3 {
                        error!(error = %e, "Lease could not be renewed in time; stopping.");
                        lost.cancel();
                        work.cancel();
                        return;
                    }
                    warn!(error = %e, "Lease renewal failed, will retry.");
                    pause = Duration::from_secs(1).min(self.lease_ttl / 6);
                }
            }
        }
    }

    async fn schedule_shards(
        self: &Arc<Self>,
        work: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut finished: HashSet<String> = HashSet::new();
        let mut known: HashMap<String, Option<Checkpoint>> = HashMap::new();
        let mut active: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, Result<bool, PipelineError>)> = JoinSet::new();
        let mut outcome = Ok(());
        // `--start-position latest` means "from now on" for the shards open when this
        // publisher first looks. Shards that appear later (children of a split or a
        // rollover) must be read from their start, or their first records are lost.
        let mut latest_allowed: Option<HashSet<String>> = None;
        'outer: while !work.is_cancelled() {
            match self.reader.describe().await {
                Ok((_, shards)) => {
                    let mut load_failed = false;
                    for shard in &shards {
                        if known.contains_key(&shard.shard_id) {
                            continue;
                        }
                        match self.checkpoints.load(&shard.shard_id).await {
                            Ok(cp) => {
                                if cp == Some(Checkpoint::Finished) {
                                    finished.insert(shard.shard_id.clone());
                                }
                                known.insert(shard.shard_id.clone(), cp);
                            }
                            Err(e) => {
                                warn!(shard_id = %shard.shard_id, error = %e, "Loading a checkpoint failed; retrying at the next discovery.");
                                load_failed = true;
                                break;
                            }
                        }
                    }
                    let latest_allowed = latest_allowed.get_or_insert_with(|| {
                        shards
                            .iter()
                            .filter(|s| {
                                s.ending_sequence_number.is_none() && s.parent_shard_id.is_none()
                            })
                            .map(|s| s.shard_id.clone())
                            .collect()
                    });
                    if load_failed {
                        known.retain(|id, _| finished.contains(id) || active.contains(id));
                    }
                    for shard_id in ready_shards(&shards, &finished, &active) {
                        if active.len() >= self.max_shards || !known.contains_key(&shard_id) {
                            break;
                        }
                        let start = match known.get(&shard_id).cloned().flatten() {
                            Some(Checkpoint::At(seq)) => StartAt::After(seq),
                            _ => match self.start_position {
                                StartPosition::Latest if latest_allowed.contains(&shard_id) => {
                                    StartAt::Latest
                                }
                                _ => StartAt::TrimHorizon,
                            },
                        };
                        info!(%shard_id, ?start, "Reading shard.");
                        active.insert(shard_id.clone());
                        let me = self.clone();
                        let token = work.clone();
                        let span = info_span!("shard", %shard_id);
                        tasks.spawn(
                            async move {
                                let result = me.read_shard(&shard_id, start, &token).await;
                                (shard_id, result)
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => warn!(error = %e, "DescribeStream failed, will retry."),
            }
            // Wait for a shard to end (its children may be ready), the next discovery
            // tick, or shutdown.
            let tick = tokio::time::sleep(self.pacing.discovery);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                        let (shard_id, result) = joined.expect("shard tasks do not panic");
                        active.remove(&shard_id);
                        match result {
                            Ok(true) => {
                                info!(%shard_id, "Shard finished.");
                                finished.insert(shard_id.clone());
                                known.insert(shard_id, Some(Checkpoint::Finished));
                                continue 'outer;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                error!(%shard_id, error = %e, "Shard stopped; stopping the publisher.");
                                outcome = Err(e);
                                work.cancel();
                                break 'outer;
                            }
                        }
                    }
                    _ = &mut tick => continue 'outer,
                    _ = work.cancelled() => break 'outer,
                }
            }
        }
        // Shards finish the batch they hold, then stop.
        while let Some(joined) = tasks.join_next().await {
            let (shard_id, result) = joined.expect("shard tasks do not panic");
            if let Err(e) = result {
                error!(%shard_id, error = %e, "Shard stopped with an error.");
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome
    }

    /// Reads one shard until it ends (`Ok(true)`) or work stops (`Ok(false)`); on a
    /// stop, the position published but not yet checkpointed is checkpointed first, so
    /// a graceful shutdown re-publishes nothing.
    async fn read_shard(
        &self,
        shard_id: &str,
        start: StartAt,
        work: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let mut progress = Progress::new();
        let finished = self
            .read_shard_until(shard_id, start, work, &mut progress)
            .await?;
        if !finished {
            self.flush_checkpoint(shard_id, &mut progress).await?;
        }
        Ok(finished)
    }

    async fn read_shard_until(
        &self,
        shard_id: &str,
        mut start: StartAt,
        work: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<bool, PipelineError> {
        let mut iterator: Option<String> = None;
        let mut idle = self.pacing.idle_min;
        let mut failures: u32 = 0;
        // When the last GetRecords started, and whether it returned a full page.
        let mut last_read: Option<tokio::time::Instant> = None;
        let mut backlog = false;
        loop {
            if work.is_cancelled() {
                return Ok(false);
            }
            let current = match iterator.take() {
                Some(it) => it,
                None => match self.reader.iterator(shard_id, &start).await {
                    Ok(it) => it,
                    Err(StreamError::Trimmed) => {
                        error!(%shard_id, ?start, "Checkpoint is older than the stream's retention: records were lost to this publisher; resuming at the trim horizon. Run a snapshot backfill.");
                        start = StartAt::TrimHorizon;
                        continue;
                    }
                    Err(e) if e.is_retryable() => {
                        failures += 1;
                        warn!(%shard_id, error = %e, attempt = failures, "GetShardIterator failed, will retry.");
                        if !self.pause(backoff(failures), work).await {
                            return Ok(false);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            // A caught-up shard is read at most once per interval, so each read brings
            // what accumulated meanwhile (fuller SNS batches, fewer requests per event).
            if !backlog && let Some(at) = last_read {
                let wait = self.pacing.read_interval.saturating_sub(at.elapsed());
                if !wait.is_zero() && !self.pause(wait, work).await {
                    return Ok(false);
                }
            }
            last_read = Some(tokio::time::Instant::now());
            let batch = tokio::select! {
                b = self.reader.get_records(&current) => b,
                _ = work.cancelled() => return Ok(false),
            };
            let batch = match batch {
                Ok(b) => {
                    failures = 0;
                    backlog = b.records.len() >= crate::stream::MAX_RECORDS_PER_CALL as usize;
                    observe_read(shard_id, &b.records);
                    b
                }
                Err(StreamError::IteratorExpired) => {
                    debug!(%shard_id, "Iterator expired; re-acquiring from the last position.");
                    continue;
                }
                Err(StreamError::Trimmed) => {
                    error!(%shard_id, "Records trimmed before they were read; resuming at the trim horizon.");
                    start = StartAt::TrimHorizon;
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if failures < STUCK_AFTER {
                        warn!(%shard_id, error = %e, attempt = failures, "GetRecords failed, will retry.");
                    } else {
                        // Never skipped (that would lose the records), so say loudly that
                        // this shard is not moving. One known cause: DynamoDB Local writes
                        // an empty map inside a list as `{}`, an answer the SDK rejects.
                        error!(%shard_id, error = %e, attempt = failures, ?start, "GetRecords keeps failing at the same position: this shard makes no progress until it succeeds. Retrying.");
                    }
                    iterator = Some(current);
                    if !self.pause(backoff(failures), work).await {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let had_records = !batch.records.is_empty();
            if had_records {
                match self
                    .publish_records(shard_id, batch.records, work, progress)
                    .await?
                {
                    Published::Through(Some(last)) => start = StartAt::After(last),
                    Published::Through(None) => {}
                    Published::Interrupted => return Ok(false),
                }
                idle = self.pacing.idle_min;
            }
            match batch.next_iterator {
                None => {
                    self.save_checkpoint(shard_id, &Checkpoint::Finished)
                        .await?;
                    let m = crate::metrics::metrics();
                    m.registry.remove(m.iterator_age, &[shard_id]);
                    return Ok(true);
                }
                Some(next) => iterator = Some(next),
            }
            if !had_records {
                // Caught up and idle: nothing more is coming to share a checkpoint with.
                self.flush_checkpoint(shard_id, progress).await?;
                if !self.pause(idle, work).await {
                    return Ok(false);
                }
                idle = (idle * 2).min(self.pacing.idle_max);
            }
        }
    }

    /// Sleeps unless work stops first; `false` when it did.
    async fn pause(&self, d: Duration, work: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = work.cancelled() => false,
        }
    }

    /// Publishes one GetRecords page in slices of `checkpoint_every` records. The
    /// position is checkpointed once `checkpoint_every` records or `checkpoint_interval`
    /// have gone by since the last checkpoint, so a crash mid-page repeats at most that
    /// much, and a trickle of small pages does not cost a checkpoint each. Returns the
    /// last published sequence number.
    async fn publish_records(
        &self,
        shard_id: &str,
        records: Vec<StreamRecord>,
        work: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<Published, PipelineError> {
        let mut through = None;
        for slice in records.chunks(self.checkpoint_every.max(1)) {
            let published = self.publish_slice(shard_id, slice, work).await?;
            if let Published::Through(Some(seq)) = &published {
                progress.pending = Some(seq.clone());
                progress.since_checkpoint += slice.len();
                if progress.since_checkpoint >= self.checkpoint_every
                    || progress.last_checkpoint.elapsed() >= self.checkpoint_interval
                {
                    self.flush_checkpoint(shard_id, progress).await?;
                }
            }
            match published {
                Published::Through(Some(seq)) => through = Some(seq),
                Published::Through(None) => {}
                Published::Interrupted => return Ok(Published::Interrupted),
            }
        }
        Ok(Published::Through(through))
    }

    /// Checkpoints the position published but not yet checkpointed, if any.
    async fn flush_checkpoint(
        &self,
        shard_id: &str,
        progress: &mut Progress,
    ) -> Result<(), PipelineError> {
        let Some(seq) = progress.pending.take() else {
            return Ok(());
        };
        self.save_checkpoint(shard_id, &Checkpoint::At(seq)).await?;
        progress.since_checkpoint = 0;
        progress.last_checkpoint = tokio::time::Instant::now();
        Stats::add(&self.stats.checkpoints_written, 1);
        let m = crate::metrics::metrics();
        m.registry.inc_by(m.checkpoints_written, &[], 1);
        Ok(())
    }

    /// Runs the [`BatchStep`] (decode, publish, park what cannot be published) on a
    /// slice. Returns the sequence number of its last record.
    async fn publish_slice(
        &self,
        shard_id: &str,
        records: &[StreamRecord],
        work: &CancellationToken,
    ) -> Result<Published, PipelineError> {
        Stats::add(&self.stats.records_read, records.len());
        let m = crate::metrics::metrics();
        m.registry.inc_by(m.records_read, &[], records.len() as u64);
        let step = BatchStep {
            sink: &self.sink,
            failures: &self.failures,
            origin: &self.origin,
            emit: self.emit,
        };
        let report = match step.run(shard_id, records, work).await {
            Ok(r) => r,
            // This slice is not checkpointed: the next publisher reads it again.
            Err(StepError::Interrupted { pending, .. }) => {
                warn!(%shard_id, pending, "Shutdown while publishing; the unfinished records will be read again.");
                return Ok(Published::Interrupted);
            }
            Err(StepError::Park { index, source, .. }) => {
                return Err(PipelineError::Park {
                    shard_id: shard_id.to_owned(),
                    sequence_number: records
                        .get(index)
                        .and_then(|r| r.sequence_number.clone())
                        .unwrap_or_default(),
                    source,
                });
            }
        };
        Stats::add(&self.stats.events_published, report.published);
        Stats::add(&self.stats.records_skipped, report.skipped);
        Stats::add(&self.stats.records_parked, report.parked);
        Stats::add(&self.stats.publish_retries, report.retries);
        m.registry
            .inc_by(m.events_published, &[], report.published as u64);
        m.registry
            .inc_by(m.publish_retries, &[], report.retries as u64);
        m.registry
            .inc_by(m.records_skipped, &[], report.skipped as u64);
        let last = records.iter().rev().find_map(|r| r.sequence_number.clone());
        debug!(%shard_id, records = records.len(), events = report.published, through = last.as_deref().unwrap_or("-"), "Batch published.");
        Ok(Published::Through(last))
    }

    /// Writes a checkpoint, retrying what is worth retrying (a transaction that
    /// conflicted with a lease renewal or another shard's checkpoint, a throttle). A lost
    /// lease is final. Gives up after about a lease TTL: by then the lease is gone anyway.
    async fn save_checkpoint(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), PipelineError> {
        let deadline = tokio::time::Instant::now() + self.lease_ttl;
        let mut attempt = 0;
        let mut retaken = false;
        loop {
            match self.checkpoints.save(shard_id, checkpoint).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    attempt += 1;
                    warn!(%shard_id, error = %e, attempt, "Checkpoint write failed, will retry.");
                    tokio::time::sleep(backoff(attempt).min(Duration::from_secs(2))).await;
                }
                // The lease may merely have run out (this process was paused or starved
                // past its TTL) with nobody else taking it: take it again, as a newly
                // started publisher would, and write. Only another owner is final.
                Err(CheckpointError::LeaseLost { .. }) if !retaken => {
                    retaken = true;
                    match self.checkpoints.acquire(self.lease_ttl).await {
                        Ok(None) => {
                            warn!(%shard_id, "Lease had expired under this publisher; taken again.")
                        }
                        Ok(Some(holder)) => {
                            error!(%shard_id, holder = %holder.owner, "Lease taken by another publisher; stopping.");
                            return Err(CheckpointError::LeaseLost {
                                stream_arn: self.origin.stream_arn.clone(),
                            }
                            .into());
                        }
                        Err(e) => warn!(%shard_id, error = %e, "Re-taking the lease failed."),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Records a successful GetRecords: the poll time, the batch size, and the shard's
/// iterator age (as a stream event-source mapping reports it: the age of the last
/// record read; 0 when the shard has nothing more).
fn observe_read(shard_id: &str, records: &[StreamRecord]) {
    let m = crate::metrics::metrics();
    m.registry.touch(m.last_poll, &[]);
    if records.is_empty() {
        m.registry.set(m.iterator_age, &[shard_id], 0.0);
        return;
    }
    m.registry
        .observe(m.read_batch_size, &[], records.len() as f64);
    if let Some(created) = records.iter().rev().find_map(|r| r.approximate_creation) {
        let age = (time::OffsetDateTime::now_utc() - created)
            .as_seconds_f64()
            .max(0.0);
        m.registry.set(m.iterator_age, &[shard_id], age);
    }
}

/// A shard's position published since its last checkpoint.
#[derive(Debug)]
struct Progress {
    /// The last sequence number published and not yet checkpointed.
    pending: Option<String>,
    since_checkpoint: usize,
    last_checkpoint: tokio::time::Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            pending: None,
            since_checkpoint: 0,
            last_checkpoint: tokio::time::Instant::now(),
        }
    }
}

/// How far a batch got.
#[derive(Debug)]
enum Published {
    /// Published through this sequence number.
    Through(Option<String>),
    /// Shutdown while entries were still failing; nothing was checkpointed.
    Interrupted,
}

/// Consecutive GetRecords failures after which a shard is reported as stuck (ERROR).
const STUCK_AFTER: u32 = 5;

/// Exponential back-off with full jitter: 100 ms doubling to 20 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(8))
        .min(Duration::from_secs(20));
    let millis = rand::random_range(0..=cap.as_millis() as u64);
    Duration::from_millis(millis.max(10))
}
