//! `replay snapshot`: a parallel `Scan` of the source table, each item emitted as a
//! `profile.snapshot` event carrying the item's position.
//!
//! Safe beside live traffic: the subscriber applies a snapshot only where it is newer
//! than what it holds, so an item changed or deleted after the scan read it keeps its
//! newer state (invariant 4). Resumable: see [`crate::state`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use contracts::SchemaVersion;
use publisher::sink::PublishError;
use runtime::aws::Clients;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dest::{Destination, Target};
use crate::items;
use crate::limiter::RateLimiter;
use crate::progress::Progress;
use crate::state::{SnapshotState, StateError};

/// How a snapshot runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub table: String,
    pub target: Target,
    pub segments: u32,
    pub rate: Option<u32>,
    pub page_size: Option<u32>,
    pub state_file: Option<PathBuf>,
    pub dry_run: bool,
    pub schema_version: SchemaVersion,
    pub progress_every: Duration,
}

/// Items that could not be turned into events (kept: the first few, for the report).
const FAILURE_SAMPLE: usize = 20;

/// The final report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table: String,
    pub target: String,
    pub dry_run: bool,
    /// This run resumed an earlier one from the state file.
    pub resumed: bool,
    /// Every segment reached the end of the table.
    pub complete: bool,
    /// Stopped early by a signal; the state file says where to resume.
    pub interrupted: bool,
    /// Counts of this run.
    pub items_read: u64,
    pub events_sent: u64,
    pub failed: u64,
    /// Counts over every run of this state file (equal to this run's without one).
    pub total_items_read: u64,
    pub total_events_sent: u64,
    pub total_failed: u64,
    pub elapsed_secs: f64,
    pub items_per_sec: f64,
    /// Keys of items that could not be sent, with the reason.
    pub failures: Vec<(String, String)>,
}

/// Why a snapshot could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("table {table:?}: {detail} (check --table and AWS_ENDPOINT_URL_DYNAMODB / the region)")]
    Table { table: String, detail: String },
    #[error("destination {target}: {detail} (check --to)")]
    Destination { target: String, detail: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("scan of segment {segment} failed: {detail}")]
    Scan { segment: u32, detail: String },
}

/// The table's approximate item count (for the ETA), checking it exists.
///
/// # Errors
/// [`SnapshotError::Table`] when the table cannot be described.
pub async fn describe_table(clients: &Clients, table: &str) -> Result<Option<u64>, SnapshotError> {
    let out = clients
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| SnapshotError::Table {
            table: table.to_owned(),
            detail: match e.code() {
                Some("ResourceNotFoundException") => "no such table".to_owned(),
                _ => runtime::report::describe_sdk_error(&e),
            },
        })?;
    Ok(out
        .table
        .and_then(|t| t.item_count)
        .and_then(|n| u64::try_from(n).ok()))
}

/// Checks the destination exists before anything is sent.
///
/// # Errors
/// [`SnapshotError::Destination`].
pub(crate) async fn check_target(clients: &Clients, target: &Target) -> Result<(), SnapshotError> {
    let detail = match target {
        Target::Topic(arn) => clients
            .sns
            .get_topic_attributes()
            .topic_arn(arn)
            .send()
            .await
            .err()
            .map(|e| runtime::report::describe_sdk_error(&e)),
        Target::Queue(url) => clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .send()
            .await
            .err()
            .map(|e| runtime::report::describe_sdk_error(&e)),
    };
    match detail {
        None => Ok(()),
        Some(detail) => Err(SnapshotError::Destination {
            target: target.to_string(),
            detail,
        }),
    }
}

/// Runs the snapshot until every segment is done or `shutdown` fires.
///
/// # Errors
/// [`SnapshotError`] when the table, destination or state file is unusable (nothing is
/// sent then), or a scan fails for good.
pub async fn run(
    clients: &Clients,
    options: &Options,
    shutdown: &CancellationToken,
) -> Result<Report, SnapshotError> {
    let estimate = describe_table(clients, &options.table).await?;
    check_target(clients, &options.target).await?;
    let target_name = options.target.to_string();
    let (state, resumed) = match &options.state_file {
        Some(path) if !options.dry_run => {
            SnapshotState::load_or_new(path, &options.table, &target_name, options.segments)?
        }
        _ => (
            SnapshotState::new(&options.table, &target_name, options.segments),
            false,
        ),
    };
    if resumed {
        let t = state.totals();
        info!(
            items_read = t.items_read,
            events_sent = t.events_sent,
            done = t.done,
            "Resuming from the state file."
        );
    }
    let already = state.totals().items_read;
    info!(table = %options.table, target = %target_name, segments = options.segments, rate = options.rate, dry_run = options.dry_run, estimate, "Snapshot starting.");

    let progress = Progress::new("items", estimate, already);
    let stop_logger = CancellationToken::new();
    let logger = progress.spawn_logger(options.progress_every, stop_logger.clone());
    let shared = Arc::new(Shared {
        clients: clients.clone(),
        destination: Destination::new(&options.target, clients.sns.clone(), clients.sqs.clone()),
        limiter: RateLimiter::new(options.rate),
        state: Mutex::new(state),
        failures: Mutex::new(Vec::new()),
        progress: Arc::clone(&progress),
        options: options.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..options.segments {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { shared.scan_segment(segment, &shutdown).await });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(SnapshotError::Scan {
                segment: u32::MAX,
                detail: format!("task failed: {e}"),
            })
        });
        if let Err(e) = result {
            // The other segments stop at their next page; their progress is saved.
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    stop_logger.cancel();
    if let Some(logger) = logger {
        let _ = logger.await;
    }
    progress.finish();
    if let Some(e) = first_error {
        return Err(e);
    }

    let state = shared.state.lock().await;
    let totals = state.totals();
    let elapsed = progress.elapsed().as_secs_f64();
    let read = progress.read.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Report {
        table: options.table.clone(),
        target: target_name,
        dry_run: options.dry_run,
        resumed,
        complete: totals.done,
        interrupted: !totals.done && shutdown.is_cancelled(),
        items_read: read,
        events_sent: progress.sent.load(std::sync::atomic::Ordering::Relaxed),
        failed: progress.failed.load(std::sync::atomic::Ordering::Relaxed),
        total_items_read: totals.items_read,
        total_events_sent: totals.events_sent,
        total_failed: totals.failed,
        elapsed_secs: elapsed,
        items_per_sec: read as f64 / elapsed.max(0.001),
        failures: shared.failures.lock().await.clone(),
    })
}

struct Shared {
    clients: Clients,
    destination: Destination,
    limiter: RateLimiter,
    state: Mutex<SnapshotState>,
    failures: Mutex<Vec<(String, String)>>,
    progress: Arc<Progress>,
    options: Options,
}

impl Shared {
    async fn scan_segment(
        &self,
        segment: u32,
        shutdown: &CancellationToken,
    ) -> Result<(), SnapshotError> {
        let index = segment as usize;
        let mut start = {
            let state = self.state.lock().await;
            if state.segments[index].done {
                return Ok(());
            }
            state.segments[index].last_key.clone()
        };
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let page = self.scan_page(segment, start.as_ref(), shutdown).await?;
            let Some(page) = page else { return Ok(()) };
            let now = OffsetDateTime::now_utc();
            let read = page.items.len() as u64;
            let mut events = Vec::with_capacity(page.items.len());
            let mut failures = Vec::new();
            for item in page.items {
                let item = items::from_sdk(item);
                match items::snapshot_event(&item, &self.options.table, now) {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        warn!(key = %items::key_of(&item), reason = e.reason_code(), error = %e, "Item cannot be sent as a snapshot event; it is counted as failed.");
                        failures.push((items::key_of(&item), e.to_string()));
                    }
                }
            }
            let mut sent = 0u64;
            if !self.options.dry_run && !events.is_empty() {
                self.limiter.acquire(events.len()).await;
                let encoded = items::encode_all(&events, self.options.schema_version);
                match self.destination.send(encoded, shutdown).await {
                    Ok(result) => {
                        sent = result.accepted as u64;
                        for (encoded, rejected) in result.rejected {
                            warn!(key = %encoded.key, reason = rejected.reason_code, detail = %rejected.detail, "Snapshot event refused by the destination; counted as failed.");
                            failures.push((
                                encoded.key,
                                format!("{}: {}", rejected.reason_code, rejected.detail),
                            ));
                        }
                    }
                    // Interrupted mid-page: the page is not recorded, so a resume sends
                    // it again (harmless: same event ids, idempotent apply).
                    Err(PublishError::Interrupted { .. }) => return Ok(()),
                }
            } else if self.options.dry_run {
                self.limiter.acquire(events.len()).await;
            }
            let failed = failures.len() as u64;
            self.progress.add(read, sent, failed);
            {
                let mut all = self.failures.lock().await;
                let room = FAILURE_SAMPLE.saturating_sub(all.len());
                all.extend(failures.into_iter().take(room));
            }
            let next = page.last_key.map(items::from_sdk);
            {
                let mut state = self.state.lock().await;
                let s = &mut state.segments[index];
                s.items_read += read;
                s.events_sent += sent;
                s.failed += failed;
                s.last_key.clone_from(&next);
                s.done = next.is_none();
                if let (Some(path), false) = (&self.options.state_file, self.options.dry_run) {
                    state.save(path)?;
                }
            }
            match next {
                Some(key) => start = Some(key),
                None => return Ok(()),
            }
        }
    }

    /// One page of the segment; `None` when shutdown fired while retrying.
    async fn scan_page(
        &self,
        segment: u32,
        start: Option<&publisher::record::Item>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Page>, SnapshotError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = self
                .clients
                .dynamodb
                .scan()
                .table_name(&self.options.table)
                .segment(i32::try_from(segment).unwrap_or(i32::MAX))
                .total_segments(i32::try_from(self.options.segments).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.map(items::to_sdk));
            if let Some(limit) = self.options.page_size {
                request = request.limit(i32::try_from(limit).unwrap_or(i32::MAX));
            }
            match request.send().await {
                Ok(out) => {
                    return Ok(Some(Page {
                        items: out.items.unwrap_or_default(),
                        last_key: out.last_evaluated_key.filter(|k| !k.is_empty()),
                    }));
                }
                Err(e) => {
                    let detail = runtime::report::describe_sdk_error(&e);
                    // The SDK already retried throttling and transient errors; a few
                    // more rounds ride out a longer blip, then give up with the cause.
                    if attempt >= 5 || e.code() == Some("ResourceNotFoundException") {
                        return Err(SnapshotError::Scan { segment, detail });
                    }
                    warn!(segment, attempt, error = %detail, "Scan failed, will retry.");
                    let delay = publisher::pipeline::backoff(attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(None),
                    }
                }
            }
        }
    }
}

struct Page {
    items: Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>,
    last_key: Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>,
}
