//! The container-mode loop: lease → shards → records → events → SNS → checkpoint.
//!
//! Delivery discipline: a shard's checkpoint moves only after every record up to it is
//! accepted by SNS or parked in the failure queue, so a crash at any point re-publishes
//! (at least once), never skips. Shutdown is observed only around waits (`GetRecords`,
//! idle and back-off sleeps): a batch that was read is published and checkpointed
//! before the loop stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use contracts::SchemaVersion;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use runtime::aws::Clients;
use runtime::metrics::ShardLabel;

use crate::batch::{BatchStep, StepError};
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::config::{PublisherConfig, StartPosition};
use crate::park::{FailureQueue, ParkError};
use crate::reading::{self, AfterPage, OnError, STUCK_AFTER};
use crate::record::{Origin, StreamRecord};
use crate::sink::SnsSink;
use crate::stream::{ShardInfo, StartAt, StreamError, StreamReader, ready_shards};

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
    #[error("table {table:?} not found: {message}")]
    TableNotFound { table: String, message: String },
    #[error("describing table {table:?}: {message}")]
    DescribeTable { table: String, message: String },
    /// Shutdown came while the publisher was still starting.
    #[error("stopped before the table could be described")]
    Interrupted,
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

impl PipelineError {
    /// A setting an operator must fix (the table, its stream, its view type): the
    /// binary exits 2 at start. Anything else there is retried first.
    pub fn is_bad_setting(&self) -> bool {
        matches!(
            self,
            PipelineError::NoStream { .. }
                | PipelineError::WrongViewType { .. }
                | PipelineError::TableNotFound { .. }
        )
    }

    /// A shard stopped by this error is paused (reported, retried later) while the
    /// others go on; any other error stops the publisher.
    fn pauses_the_shard(&self) -> bool {
        matches!(self, PipelineError::Park { .. })
    }
}

/// What `/readyz` reports about the pipeline itself: whether the table's stream is
/// enabled, and which shards are paused because they cannot make progress.
#[derive(Debug)]
pub struct Health {
    stream_enabled: AtomicBool,
    paused: Mutex<BTreeMap<String, String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            stream_enabled: AtomicBool::new(true),
            paused: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Health {
    /// One line per problem; empty when ready.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.stream_enabled.load(Ordering::Relaxed) {
            out.push("the table's stream is disabled: changes are not being recorded".into());
        }
        for (shard, why) in self.paused_shards().iter() {
            out.push(format!("shard {shard} paused: {why}"));
        }
        out
    }

    fn paused_shards(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_stream_enabled(&self, enabled: bool) {
        self.stream_enabled.store(enabled, Ordering::Relaxed);
        let m = crate::metrics::metrics();
        m.stream_enabled.set(if enabled { 1.0 } else { 0.0 });
    }

    fn pause(&self, shard_id: &str, why: String) {
        self.paused_shards().insert(shard_id.to_owned(), why);
        let m = crate::metrics::metrics();
        m.shard_paused
            .get_or_create(&ShardLabel::of(shard_id))
            .set(1.0);
        m.shard_pauses.inc();
    }

    fn resume(&self, shard_id: &str) {
        self.paused_shards().remove(shard_id);
        let m = crate::metrics::metrics();
        m.shard_paused.remove(&ShardLabel::of(shard_id));
    }
}

/// How long a paused shard waits before it is tried again.
pub(crate) const PAUSED_SHARD_RETRY: Duration = Duration::from_secs(60);

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
    /// Shared with `/readyz`.
    pub health: Arc<Health>,
    /// Re-reads the table's `LatestStreamArn` on every discovery tick.
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub checkpoint_table: String,
}

/// The stream a table has now, as `DescribeTable` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableStream {
    /// `LatestStreamArn`: after a disable it still names the old stream.
    pub latest_arn: Option<String>,
    pub enabled: bool,
    pub view_type: Option<String>,
}

impl TableStream {
    /// The ARN to read when the stream is enabled with both images.
    ///
    /// # Errors
    /// [`PipelineError::NoStream`], [`PipelineError::WrongViewType`].
    pub fn usable(&self, table: &str) -> Result<String, PipelineError> {
        let arn = self
            .latest_arn
            .clone()
            .filter(|_| self.enabled)
            .ok_or_else(|| PipelineError::NoStream {
                table: table.to_owned(),
            })?;
        match self.view_type.as_deref() {
            Some("NEW_AND_OLD_IMAGES") => Ok(arn),
            other => Err(PipelineError::WrongViewType {
                stream_arn: arn,
                view_type: other.unwrap_or_default().to_owned(),
            }),
        }
    }
}

/// The table's stream, one `DescribeTable`.
///
/// # Errors
/// [`PipelineError::TableNotFound`] (a bad setting), [`PipelineError::DescribeTable`]
/// (anything else: worth a retry).
pub(crate) async fn describe_table_stream(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<TableStream, PipelineError> {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            let message = runtime::report::describe_sdk_error(&e);
            if e.code() == Some("ResourceNotFoundException") {
                PipelineError::TableNotFound {
                    table: table.to_owned(),
                    message,
                }
            } else {
                PipelineError::DescribeTable {
                    table: table.to_owned(),
                    message,
                }
            }
        })?;
    let desc = out.table.ok_or_else(|| PipelineError::TableNotFound {
        table: table.to_owned(),
        message: "DescribeTable answered without a table".into(),
    })?;
    let spec = desc.stream_specification;
    Ok(TableStream {
        latest_arn: desc.latest_stream_arn,
        enabled: spec.as_ref().is_some_and(|s| s.stream_enabled),
        view_type: spec
            .and_then(|s| s.stream_view_type)
            .map(|v| v.as_str().to_owned()),
    })
}

/// The table's stream at start. A `DescribeTable` that fails for another reason than a
/// missing table (throttling, a network error, an endpoint still starting) is retried
/// with back-off until it answers or `shutdown`.
///
/// # Errors
/// [`PipelineError::TableNotFound`] when the table does not exist;
/// [`PipelineError::Interrupted`] on shutdown.
pub(crate) async fn resolve_stream(
    clients: &Clients,
    table: &str,
    shutdown: &CancellationToken,
) -> Result<TableStream, PipelineError> {
    let mut attempt = 0;
    loop {
        match describe_table_stream(&clients.dynamodb, table).await {
            Ok(stream) => return Ok(stream),
            Err(PipelineError::DescribeTable { message, .. }) => {
                attempt += 1;
                if attempt < STUCK_AFTER {
                    warn!(%table, attempt, error = %message, "DescribeTable failed at start, will retry.");
                } else {
                    error!(%table, attempt, error = %message, "DescribeTable keeps failing: the publisher cannot start until it answers. Retrying.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = shutdown.cancelled() => return Err(PipelineError::Interrupted),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The stream to read first: a stream followed before that the table has since
/// replaced is finished first (ARNs end in the stream's creation time, so an older
/// stream's sorts first); while the table's stream is disabled, the one followed
/// before is finished (the publisher is not ready until the stream is enabled again).
///
/// # Errors
/// [`PipelineError::NoStream`] or [`PipelineError::WrongViewType`] when the table's
/// stream is unusable and no stream was followed before.
pub(crate) fn first_stream(
    table: &str,
    now: &TableStream,
    followed: Option<String>,
) -> Result<String, PipelineError> {
    match (now.usable(table), followed) {
        (Ok(latest), Some(old)) if old < latest => Ok(old),
        (Ok(latest), _) => Ok(latest),
        (Err(PipelineError::NoStream { .. }), Some(old)) => Ok(old),
        (Err(e), _) => Err(e),
    }
}

impl Pipeline {
    /// Builds the pipeline for `config`'s table.
    ///
    /// # Errors
    /// [`PipelineError`] when the table or its stream is unusable.
    pub async fn build(
        config: &PublisherConfig,
        clients: &Clients,
        shutdown: &CancellationToken,
    ) -> Result<Pipeline, PipelineError> {
        let now = resolve_stream(clients, &config.table, shutdown).await?;
        let owner = config.owner();
        // A stream this table had before (disabled, then enabled again while no
        // publisher ran, or while one was still finishing it) is finished first.
        let followed = CheckpointStore::new(
            clients.dynamodb.clone(),
            config.checkpoint_table.clone(),
            String::new(),
            owner.clone(),
        )
        .followed_stream(&config.table)
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "Reading the stream followed before failed; following the table's latest stream.");
            None
        });
        let stream_arn = first_stream(&config.table, &now, followed)?;
        if now.latest_arn.as_deref() != Some(stream_arn.as_str()) || !now.enabled {
            warn!(table = %config.table, followed = %stream_arn, latest = now.latest_arn.as_deref().unwrap_or("-"), enabled = now.enabled, "The table's stream changed since the last run: finishing the stream followed before first.");
        }
        Ok(Pipeline {
            reader: StreamReader::new(clients.streams.clone(), stream_arn.clone()),
            sink: SnsSink::new(clients.sns.clone(), config.topic_arn.clone()),
            checkpoints: CheckpointStore::new(
                clients.dynamodb.clone(),
                config.checkpoint_table.clone(),
                stream_arn.clone(),
                owner,
            ),
            failures: FailureQueue::new(
                clients.sqs.clone(),
                Some(config.failure_queue_url.to_string()),
            ),
            origin: Origin {
                table: config.table.clone(),
                stream_arn,
            },
            emit: config.emit.schema_version.into(),
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
            health: Arc::default(),
            dynamodb: clients.dynamodb.clone(),
            checkpoint_table: config.checkpoint_table.clone(),
        })
    }

    /// The same pipeline on the table's next stream, read from its trim horizon (every
    /// record of a new stream is newer than the old stream's).
    fn following(&self, stream_arn: String) -> Pipeline {
        Pipeline {
            reader: StreamReader::new(self.reader.client().clone(), stream_arn.clone()),
            sink: self.sink.clone(),
            checkpoints: self.checkpoints.for_stream(stream_arn.clone()),
            failures: self.failures.clone(),
            origin: Origin {
                table: self.origin.table.clone(),
                stream_arn,
            },
            emit: self.emit,
            start_position: StartPosition::TrimHorizon,
            pacing: self.pacing,
            lease_ttl: self.lease_ttl,
            max_shards: self.max_shards,
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: self.checkpoint_interval,
            health: Arc::clone(&self.health),
            dynamodb: self.dynamodb.clone(),
            checkpoint_table: self.checkpoint_table.clone(),
        }
    }

    /// Runs until `shutdown` fires (then returns `Ok`) or a fatal error. When the table's
    /// stream is replaced (disabled and enabled again), the old stream is read to its
    /// end, then the new one from its trim horizon.
    ///
    /// # Errors
    /// [`PipelineError`] on a lost lease, an unreachable checkpoint table, or a
    /// checkpoint another publisher moved on.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), PipelineError> {
        let mut current = self;
        loop {
            match current.clone().run_stream(&shutdown).await {
                Ok(Some(next)) => {
                    info!(old = %current.origin.stream_arn, new = %next, "Old stream finished; following the table's new stream from its trim horizon.");
                    current = Arc::new(current.following(next));
                }
                Ok(None) => {
                    current.log_stats();
                    return Ok(());
                }
                Err(e) => {
                    current.log_stats();
                    return Err(e);
                }
            }
        }
    }

    /// Holds the lease of this pipeline's stream and reads it until shutdown
    /// (`Ok(None)`), until it is finished and the table has a newer one (`Ok(Some(arn))`),
    /// or a fatal error. The lease is released on every way out (a release by a
    /// publisher that no longer holds it changes nothing).
    async fn run_stream(
        self: Arc<Self>,
        shutdown: &CancellationToken,
    ) -> Result<Option<String>, PipelineError> {
        if !self.acquire_lease(shutdown).await? {
            return Ok(None);
        }
        if let Err(e) = self.checkpoints.follow_stream(&self.origin.table).await {
            warn!(error = %e, "Recording the followed stream failed; a restart may skip the rest of this stream if the table's stream changes.");
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
        if let Err(e) = self.checkpoints.release().await {
            warn!(error = %e, "Releasing the lease failed; a successor waits for it to expire.");
        }
        if lease_lost.is_cancelled() {
            return Err(CheckpointError::LeaseLost {
                stream_arn: self.origin.stream_arn.clone(),
            }
            .into());
        }
        result
    }

    /// The process's totals, from its metrics (counted once, where they happen).
    fn log_stats(&self) {
        let m = crate::metrics::metrics();
        info!(
            records_read = m.records_read.get(),
            events_published = m.events_published.get(),
            records_skipped = m.records_skipped.get(),
            records_parked = m.records_parked_total(),
            publish_retries = m.publish_retries.get(),
            checkpoints_written = m.checkpoints_written.get(),
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

    /// Re-reads the table's stream (on every discovery tick): reports a disabled stream
    /// (`/readyz`, metric, ERROR) and returns the table's newer stream once there is one.
    async fn watch_table(&self, successor: &mut Option<String>) {
        let stream = match describe_table_stream(&self.dynamodb, &self.origin.table).await {
            Ok(s) => s,
            Err(e) => {
                warn!(table = %self.origin.table, error = %e, "DescribeTable failed; checking the table's stream again at the next discovery.");
                return;
            }
        };
        let usable = stream.usable(&self.origin.table);
        let was_enabled = self.health.stream_enabled.load(Ordering::Relaxed);
        match (&usable, was_enabled) {
            (Err(e), true) => {
                error!(table = %self.origin.table, stream_arn = %self.origin.stream_arn, error = %e, "The table's stream is disabled or unusable: changes made now are recorded in no stream. Finishing what the old stream holds; enable the stream again, then run a snapshot backfill for the gap.");
            }
            (Ok(_), false) => {
                info!(table = %self.origin.table, "The table's stream is enabled again.")
            }
            _ => {}
        }
        self.health.set_stream_enabled(usable.is_ok());
        if let Ok(latest) = usable
            && latest != self.origin.stream_arn
            && successor.is_none()
        {
            error!(table = %self.origin.table, old = %self.origin.stream_arn, new = %latest, "The table's stream was replaced (disabled, then enabled again): changes made in between are in neither stream and were not published. Run a snapshot backfill (replay snapshot). Finishing the old stream, then reading the new one from its trim horizon.");
            let m = crate::metrics::metrics();
            m.backfill_needed.set(1.0);
            m.stream_gaps.inc();
            *successor = Some(latest);
        }
    }

    async fn schedule_shards(
        self: &Arc<Self>,
        work: &CancellationToken,
    ) -> Result<Option<String>, PipelineError> {
        let mut finished: HashSet<String> = HashSet::new();
        let mut known: HashMap<String, Option<Checkpoint>> = HashMap::new();
        let mut active: HashSet<String> = HashSet::new();
        // Shards that could not make progress, and when each is tried again.
        let mut paused: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut tasks: JoinSet<(String, Result<bool, PipelineError>)> = JoinSet::new();
        let mut outcome = Ok(None);
        // The table's newer stream, once it has one.
        let mut successor: Option<String> = None;
        // `--start-position latest` means "from now on" for the shards open when this
        // publisher first looks. Shards that appear later (children of a split or a
        // rollover) must be read from their start, or their first records are lost.
        let mut latest_allowed: Option<HashSet<String>> = None;
        let mut waiting_reported = 0;
        'outer: while !work.is_cancelled() {
            self.watch_table(&mut successor).await;
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
                    if load_failed {
                        known.retain(|id, _| finished.contains(id) || active.contains(id));
                    } else if let Some(next) = &successor
                        && active.is_empty()
                        && stream_finished(&shards, &finished)
                    {
                        outcome = Ok(Some(next.clone()));
                        break 'outer;
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
                    let now = tokio::time::Instant::now();
                    let ready: Vec<String> = ready_shards(&shards, &finished, &active)
                        .into_iter()
                        .filter(|id| known.contains_key(id))
                        .filter(|id| paused.get(id).is_none_or(|at| *at <= now))
                        .collect();
                    let (start_now, waiting) = admit(ready, active.len(), self.max_shards);
                    report_waiting(
                        waiting,
                        active.len() + start_now.len(),
                        self.max_shards,
                        &mut waiting_reported,
                    );
                    for shard_id in start_now {
                        if paused.remove(&shard_id).is_some() {
                            info!(%shard_id, "Trying the paused shard again.");
                            self.health.resume(&shard_id);
                        }
                        let start = match known.get(&shard_id).cloned().flatten() {
                            Some(Checkpoint::At(seq)) => StartAt::After(seq),
                            Some(Checkpoint::Since(ms)) => StartAt::Since(ms),
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
                // A finished stream may be trimmed away (24 hours after it closed).
                Err(StreamError::NotFound(why)) if successor.is_some() && active.is_empty() => {
                    warn!(stream_arn = %self.origin.stream_arn, %why, "The old stream is gone; following the new one.");
                    outcome = Ok(successor.clone());
                    break 'outer;
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
                                self.health.resume(&shard_id);
                                finished.insert(shard_id.clone());
                                known.insert(shard_id, Some(Checkpoint::Finished));
                                continue 'outer;
                            }
                            Ok(false) => {}
                            Err(e) if e.pauses_the_shard() && !work.is_cancelled() => {
                                error!(%shard_id, error = %e, retry_in_secs = PAUSED_SHARD_RETRY.as_secs(), "Shard paused: it cannot make progress. The other shards go on; this one is tried again later from its checkpoint.");
                                self.health.pause(&shard_id, e.to_string());
                                paused.insert(shard_id.clone(), tokio::time::Instant::now() + PAUSED_SHARD_RETRY);
                                // Its progress is re-read from the table when it resumes.
                                known.remove(&shard_id);
                            }
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
        // `latest` takes a LATEST iterator once; its position is made durable first (a
        // `Since` marker), so a restart or an expired iterator resumes from there, not
        // from a new LATEST that would skip what was written meanwhile.
        let mut first_start = None;
        if start == StartAt::Latest {
            let since = crate::checkpoint::now_ms();
            self.save_checkpoint(shard_id, &Checkpoint::Since(since))
                .await?;
            first_start = Some(StartAt::Latest);
            start = StartAt::Since(since);
        }
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
                None => match self
                    .reader
                    .iterator(shard_id, first_start.as_ref().unwrap_or(&start))
                    .await
                {
                    Ok(it) => it,
                    Err(e) => match reading::on_error(&e, failures) {
                        OnError::TrimHorizon => {
                            error!(%shard_id, ?start, "Checkpoint is older than the stream's retention: records were lost to this publisher; resuming at the trim horizon. Run a snapshot backfill.");
                            start = StartAt::TrimHorizon;
                            continue;
                        }
                        // Not an answer GetShardIterator gives; should it, retrying
                        // with back-off keeps the loop from spinning.
                        OnError::NewIterator => {
                            failures += 1;
                            if !self.pause(backoff(failures), work).await {
                                return Ok(false);
                            }
                            continue;
                        }
                        OnError::Retry { attempt, stuck } => {
                            failures = attempt;
                            if stuck {
                                error!(%shard_id, error = %e, attempt, "GetShardIterator keeps failing: this shard makes no progress until it succeeds. Retrying.");
                            } else {
                                warn!(%shard_id, error = %e, attempt, "GetShardIterator failed, will retry.");
                            }
                            if !self.pause(backoff(attempt), work).await {
                                return Ok(false);
                            }
                            continue;
                        }
                        OnError::Fail => return Err(e.into()),
                    },
                },
            };
            let wait = reading::read_wait(
                backlog,
                last_read.map(|at| at.elapsed()),
                self.pacing.read_interval,
            );
            if !wait.is_zero() && !self.pause(wait, work).await {
                return Ok(false);
            }
            first_start = None;
            last_read = Some(tokio::time::Instant::now());
            let read_at = SystemTime::now();
            let batch = tokio::select! {
                b = self.reader.get_records(&current) => b,
                _ = work.cancelled() => return Ok(false),
            };
            let batch = match batch {
                Ok(b) => {
                    failures = 0;
                    backlog = b.records.len()
                        >= runtime::limits::dynamodb_streams::MAX_RECORDS_PER_CALL as usize;
                    observe_read(shard_id, &b.records);
                    b
                }
                Err(e) => match reading::on_error(&e, failures) {
                    OnError::NewIterator => {
                        debug!(%shard_id, "Iterator expired; re-acquiring from the last position.");
                        continue;
                    }
                    OnError::TrimHorizon => {
                        error!(%shard_id, "Records trimmed before they were read; resuming at the trim horizon.");
                        start = StartAt::TrimHorizon;
                        continue;
                    }
                    OnError::Retry { attempt, stuck } => {
                        failures = attempt;
                        if stuck {
                            // One known cause: DynamoDB Local writes an empty map inside
                            // a list as `{}`, an answer the SDK rejects.
                            error!(%shard_id, error = %e, attempt, ?start, "GetRecords keeps failing at the same position: this shard makes no progress until it succeeds. Retrying.");
                        } else {
                            warn!(%shard_id, error = %e, attempt, "GetRecords failed, will retry.");
                        }
                        iterator = Some(current);
                        if !self.pause(backoff(attempt), work).await {
                            return Ok(false);
                        }
                        continue;
                    }
                    OnError::Fail => return Err(e.into()),
                },
            };
            let had_records = !batch.records.is_empty();
            let mut records = batch.records;
            if let StartAt::Since(since) = start {
                let (kept, last_skipped, skipped) = crate::stream::skip_older_than(records, since);
                records = kept;
                if let Some(last) = last_skipped {
                    debug!(%shard_id, skipped, "Records older than the start (latest) skipped.");
                    if records.is_empty() {
                        progress.pending = Some(last.clone());
                    }
                    start = StartAt::After(last);
                }
            }
            oldest_unpublished(shard_id, records.first(), read_at);
            if !records.is_empty() {
                let newest = records.last().and_then(|r| r.approximate_creation);
                match self
                    .publish_records(shard_id, records, work, progress)
                    .await?
                {
                    Published::Through(Some(last)) => start = StartAt::After(last),
                    Published::Through(None) => {}
                    Published::Interrupted => return Ok(false),
                }
                // What follows the published records was written after them.
                oldest_unpublished_since(shard_id, newest.map_or(read_at, SystemTime::from));
            }
            let open = batch.next_iterator.is_some();
            iterator = batch.next_iterator;
            match reading::after_page(
                had_records,
                open,
                idle,
                self.pacing.idle_min,
                self.pacing.idle_max,
            ) {
                AfterPage::Finished => {
                    self.save_checkpoint(shard_id, &Checkpoint::Finished)
                        .await?;
                    let m = crate::metrics::metrics();
                    m.iterator_age.remove(&ShardLabel::of(shard_id));
                    m.oldest_unpublished_age.remove(&ShardLabel::of(shard_id));
                    return Ok(true);
                }
                AfterPage::ReadOn { idle: next } => idle = next,
                AfterPage::Idle { pause, idle: next } => {
                    // Caught up: nothing more is coming to share a checkpoint with.
                    self.flush_checkpoint(shard_id, progress).await?;
                    if !self.pause(pause, work).await {
                        return Ok(false);
                    }
                    idle = next;
                }
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
        let m = crate::metrics::metrics();
        m.checkpoints_written.inc();
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
        let m = crate::metrics::metrics();
        m.records_read.inc_by(records.len() as u64);
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
        m.events_published.inc_by(report.published as u64);
        m.publish_retries.inc_by(report.retries as u64);
        m.records_skipped.inc_by(report.skipped as u64);
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
    m.last_poll.touch();
    let age = || m.iterator_age.get_or_create(&ShardLabel::of(shard_id));
    if records.is_empty() {
        age().set(0.0);
        return;
    }
    m.read_batch_size.observe(records.len() as f64);
    if let Some(created) = records.iter().rev().find_map(|r| r.approximate_creation) {
        let seconds = (time::OffsetDateTime::now_utc() - created)
            .as_seconds_f64()
            .max(0.0);
        age().set(seconds);
    }
}

/// Per shard, the time the oldest record not yet published was created, rendered as an
/// age when scraped. Before publishing a page: its first record's creation time (the
/// read's time when the page is empty: the shard was caught up then). A shard whose
/// reads or publishes keep failing thus shows an age that keeps growing.
fn oldest_unpublished(shard_id: &str, first: Option<&StreamRecord>, read_at: SystemTime) {
    let at = first
        .and_then(|r| r.approximate_creation)
        .map_or(read_at, SystemTime::from);
    oldest_unpublished_since(shard_id, at);
}

fn oldest_unpublished_since(shard_id: &str, at: SystemTime) {
    let m = crate::metrics::metrics();
    m.oldest_unpublished_age
        .get_or_create(&ShardLabel::of(shard_id))
        .touch_at(at);
}

/// True when every listed shard of a stream is finished.
fn stream_finished(shards: &[ShardInfo], finished: &HashSet<String>) -> bool {
    shards.iter().all(|s| finished.contains(&s.shard_id))
}

/// Which ready shards start now, within `max` running at once, and how many are left
/// waiting for a free slot.
fn admit(ready: Vec<String>, running: usize, max: usize) -> (Vec<String>, usize) {
    let free = max.saturating_sub(running);
    let waiting = ready.len().saturating_sub(free);
    (ready.into_iter().take(free).collect(), waiting)
}

/// Exports how many ready shards wait for a slot, and warns when that number changes to
/// a non-zero one (`--max-shards` is too low for the stream: they fall behind).
fn report_waiting(waiting: usize, running: usize, max: usize, reported: &mut usize) {
    let m = crate::metrics::metrics();
    m.shards_waiting.set(waiting as f64);
    m.shards_reading.set(running as f64);
    if waiting != *reported && waiting > 0 {
        warn!(
            waiting,
            running,
            max_shards = max,
            "More shards are ready than --max-shards lets run: the waiting ones fall behind. Raise PUBLISHER_MAX_SHARDS."
        );
    }
    *reported = waiting;
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

/// The back-off of a failing read, checkpoint or lease call: from 200 ms, doubling up to
/// 20 s, with jitter.
const RETRY_BACKOFF: runtime::backoff::Backoff =
    runtime::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(20));

/// The pause before retry number `attempt` (1-based) of a failing call.
pub fn backoff(attempt: u32) -> Duration {
    RETRY_BACKOFF.delay_random(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_beyond_max_shards_wait_and_are_counted() {
        assert_eq!(admit(ids(&["a", "b", "c"]), 0, 2), (ids(&["a", "b"]), 1));
        assert_eq!(admit(ids(&["c"]), 2, 2), (ids(&[]), 1));
        assert_eq!(admit(ids(&["c"]), 1, 2), (ids(&["c"]), 0));
        assert_eq!(admit(ids(&[]), 5, 2), (ids(&[]), 0));
    }

    #[test]
    fn a_stream_is_finished_only_when_every_listed_shard_is() {
        let shard = |id: &str| ShardInfo {
            shard_id: id.into(),
            parent_shard_id: None,
            ending_sequence_number: Some("9".into()),
        };
        let shards = [shard("a"), shard("b")];
        let done: HashSet<String> = ["a".to_string()].into();
        assert!(!stream_finished(&shards, &done));
        let done: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        assert!(stream_finished(&shards, &done));
    }

    #[test]
    fn only_a_record_that_cannot_be_parked_pauses_a_shard() {
        let park = PipelineError::Park {
            shard_id: "s".into(),
            sequence_number: "1".into(),
            source: ParkError::Send("down".into()),
        };
        assert!(park.pauses_the_shard());
        let lost = PipelineError::Checkpoint(CheckpointError::LeaseLost {
            stream_arn: "arn".into(),
        });
        assert!(!lost.pauses_the_shard());
        let behind = PipelineError::Checkpoint(CheckpointError::Behind {
            shard_id: "s".into(),
        });
        assert!(!behind.pauses_the_shard());
    }

    #[test]
    fn only_a_missing_table_or_an_unusable_stream_is_a_bad_setting() {
        let stream = |arn: Option<&str>, enabled, view: Option<&str>| TableStream {
            latest_arn: arn.map(Into::into),
            enabled,
            view_type: view.map(Into::into),
        };
        assert_eq!(
            stream(Some("arn:s"), true, Some("NEW_AND_OLD_IMAGES"))
                .usable("t")
                .unwrap(),
            "arn:s"
        );
        let disabled = stream(Some("arn:s"), false, None).usable("t").unwrap_err();
        assert!(matches!(disabled, PipelineError::NoStream { .. }) && disabled.is_bad_setting());
        let keys = stream(Some("arn:s"), true, Some("KEYS_ONLY"))
            .usable("t")
            .unwrap_err();
        assert!(matches!(keys, PipelineError::WrongViewType { .. }) && keys.is_bad_setting());
        let transient = PipelineError::DescribeTable {
            table: "t".into(),
            message: "timeout".into(),
        };
        assert!(!transient.is_bad_setting());
    }

    #[test]
    fn an_older_followed_stream_is_finished_first_even_while_the_table_has_none() {
        let t = |arn: &str, enabled| TableStream {
            latest_arn: Some(arn.into()),
            enabled,
            view_type: enabled.then(|| "NEW_AND_OLD_IMAGES".to_owned()),
        };
        let old = "arn:t/stream/2026-12-01T20:15:49.190".to_owned();
        let new = "arn:t/stream/2026-12-01T20:15:49.703".to_owned();
        assert_eq!(
            first_stream("t", &t(&new, true), Some(old.clone())).unwrap(),
            old
        );
        assert_eq!(
            first_stream("t", &t(&new, true), Some(new.clone())).unwrap(),
            new
        );
        assert_eq!(first_stream("t", &t(&new, true), None).unwrap(), new);
        assert_eq!(
            first_stream("t", &t(&old, false), Some(old.clone())).unwrap(),
            old
        );
        let err = first_stream("t", &t(&old, false), None).unwrap_err();
        assert!(err.is_bad_setting(), "{err}");
    }

    #[test]
    fn health_reports_a_disabled_stream_and_each_paused_shard() {
        let health = Health::default();
        assert!(health.problems().is_empty());
        health.set_stream_enabled(false);
        health.pause("shard-1", "cannot park".into());
        let problems = health.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].contains("shard-1"), "{problems:?}");
        health.set_stream_enabled(true);
        health.resume("shard-1");
        assert!(health.problems().is_empty());
    }
}
