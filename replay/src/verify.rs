//! `replay verify`: compares the source table with the analytics store and reports
//! drift; `--repair` re-emits events for exactly the drifted keys.
//!
//! Memory stays bounded whatever the table size: pass 1 scans the table page by page
//! and compares each page with PostgreSQL in one set-based query (the comparison itself
//! runs in SQL, so numbers compare as NUMERIC, timestamps as timestamptz); pass 2 walks
//! the store's live rows in key order, a hundred at a time, and asks DynamoDB which of
//! those keys still exist (`BatchGetItem`). Only drifted keys are held (up to
//! [`Options::max_held`]), to check them again after `--settle` — a change in flight
//! through the pipeline is not drift — and to repair them.
//!
//! Kinds of drift, for a key:
//! - `missing`: the source item exists, the store has no row;
//! - `stale`: the store's row (or tombstone) is at an older position than the item;
//! - `differs`: same position, different content (the store was edited out of band);
//! - `ahead`: the store is at a *newer* position than the source item (not repairable by
//!   events: the version guard refuses to go back; an operator must look);
//! - `should_be_tombstone`: the store has a live row, the item is gone, and the store's
//!   history holds changes of the key (a delete was missed);
//! - `no_source_item`: the store has a live row, the item is gone, and no change of the
//!   key ever came through the pipeline (the row was written by something else);
//! - `unreadable_source`: the item exists but does not project to a valid profile, so
//!   the store cannot hold it (the publisher parks its changes too).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue as Ddb, KeysAndAttributes};
use contracts::{ChangeEvent, Position, Profile, SchemaVersion};
use publisher::record::{self, Item, attr};
use runtime::aws::Clients;
use serde::Serialize;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dest::QueueSink;
use crate::drift::{Drift, Kind, Stored, classify_absent, classify_present, repair_event};
use crate::items;
use crate::progress::Progress;

/// `BatchGetItem` takes at most this many keys.
const KEYS_PER_BATCH_GET: usize = 100;

#[derive(Debug, Clone)]
pub struct Options {
    pub table: String,
    /// Seconds to wait before checking drifted keys again; keys that are in sync by then
    /// were changes in flight, not drift.
    pub settle: Duration,
    /// Keys shown in the report.
    pub sample: usize,
    /// Drifted keys held for the re-check and the repair; drift beyond is counted only.
    pub max_held: usize,
    /// Page size of the table scan (`Limit`); DynamoDB's 1 MB page when unset.
    pub page_size: Option<u32>,
    /// `--repair`: the subscriber's queue to send the repair events to.
    pub repair_queue: Option<String>,
    /// How long to wait for repaired keys to come back in sync.
    pub repair_timeout: Duration,
    pub schema_version: SchemaVersion,
    pub progress_every: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub table: String,
    pub source_items: u64,
    pub store_live_rows: u64,
    /// Drift found by the passes that was gone at the re-check (changes in flight).
    pub settled_in_flight: u64,
    /// Drifted keys beyond `max_held`: counted in `drift`, not re-checked or repaired.
    pub not_held: u64,
    /// Drift by kind, after the re-check.
    pub drift: BTreeMap<String, u64>,
    pub sample: Vec<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl Report {
    pub fn drifted(&self) -> u64 {
        self.drift.values().sum()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub events_sent: u64,
    /// Drift left after the repair, by kind (unrepairable kinds stay).
    pub remaining: BTreeMap<String, u64>,
    pub remaining_sample: Vec<Drift>,
    pub waited_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("table {table:?}: {detail} (check --table and AWS_ENDPOINT_URL_DYNAMODB / the region)")]
    Table { table: String, detail: String },
    #[error("DynamoDB {operation} failed: {detail}")]
    Dynamo {
        operation: &'static str,
        detail: String,
    },
    #[error("the analytics store refused a query: {0}")]
    Store(#[from] sqlx::Error),
    #[error("sending repair events was interrupted")]
    Interrupted,
}

/// Verifies (and with `repair_queue`, repairs).
///
/// # Errors
/// [`VerifyError`] when the table or the store cannot be read.
pub async fn run(
    clients: &Clients,
    pool: &PgPool,
    options: &Options,
    shutdown: &CancellationToken,
) -> Result<Report, VerifyError> {
    let estimate = crate::snapshot::describe_table(clients, &options.table)
        .await
        .map_err(|e| VerifyError::Table {
            table: options.table.clone(),
            detail: e.to_string(),
        })?;
    let mut found = Found::new(options.max_held);
    let progress = Progress::new("items compared", estimate, 0);
    let stop_logger = CancellationToken::new();
    let logger = progress.spawn_logger(options.progress_every, stop_logger.clone());
    let passes = async {
        let source_items =
            pass_present(clients, pool, options, &mut found, &progress, shutdown).await?;
        let store_live_rows = pass_absent(clients, pool, options, &mut found, shutdown).await?;
        Ok::<_, VerifyError>((source_items, store_live_rows))
    }
    .await;
    stop_logger.cancel();
    if let Some(logger) = logger {
        let _ = logger.await;
    }
    progress.finish();
    let (source_items, store_live_rows) = passes?;

    let first_count = found.held.len() as u64;
    if first_count > 0 && !options.settle.is_zero() {
        info!(
            drifted = first_count,
            settle_secs = options.settle.as_secs_f64(),
            "Drift found; checking those keys again after the settle time."
        );
        tokio::time::sleep(options.settle).await;
    }
    let keys: Vec<String> = found.held.keys().cloned().collect();
    let rechecked = recheck(clients, pool, &options.table, &keys).await?;
    let mut report = Report {
        table: options.table.clone(),
        source_items,
        store_live_rows,
        settled_in_flight: first_count - rechecked.len() as u64,
        not_held: found.not_held,
        ..Report::default()
    };
    for (d, _) in &rechecked {
        *report.drift.entry(d.kind.as_str().to_owned()).or_default() += 1;
    }
    for (kind, n) in &found.not_held_by_kind {
        *report.drift.entry(kind.as_str().to_owned()).or_default() += n;
    }
    report.sample = rechecked
        .iter()
        .take(options.sample)
        .map(|(d, _)| d.clone())
        .collect();

    if let Some(queue) = &options.repair_queue
        && !rechecked.is_empty()
    {
        report.repair = Some(repair(clients, pool, options, queue, &rechecked, shutdown).await?);
    }
    Ok(report)
}

/// Drifted keys held for the re-check, and what did not fit.
struct Found {
    held: BTreeMap<String, Kind>,
    max: usize,
    not_held: u64,
    not_held_by_kind: BTreeMap<Kind, u64>,
}

impl Found {
    fn new(max: usize) -> Self {
        Found {
            held: BTreeMap::new(),
            max,
            not_held: 0,
            not_held_by_kind: BTreeMap::new(),
        }
    }

    fn add(&mut self, d: &Drift) {
        if self.held.contains_key(&d.key) {
            return;
        }
        if self.held.len() < self.max {
            self.held.insert(d.key.clone(), d.kind);
        } else {
            self.not_held += 1;
            *self.not_held_by_kind.entry(d.kind).or_default() += 1;
        }
    }
}

/// Pass 1: every source item against the store. Returns the items read.
async fn pass_present(
    clients: &Clients,
    pool: &PgPool,
    options: &Options,
    found: &mut Found,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<u64, VerifyError> {
    let mut start: Option<HashMap<String, Ddb>> = None;
    let mut read = 0u64;
    loop {
        if shutdown.is_cancelled() {
            return Err(VerifyError::Interrupted);
        }
        let mut request = clients
            .dynamodb
            .scan()
            .table_name(&options.table)
            .set_exclusive_start_key(start.take());
        if let Some(limit) = options.page_size {
            request = request.limit(i32::try_from(limit).unwrap_or(i32::MAX));
        }
        let out = request.send().await.map_err(|e| VerifyError::Dynamo {
            operation: "Scan",
            detail: runtime::report::describe_sdk_error(&e),
        })?;
        let page: Vec<Item> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(items::from_sdk)
            .collect();
        read += page.len() as u64;
        let drift = compare_present(pool, &page).await?;
        progress.add(page.len() as u64, 0, drift.len() as u64);
        for d in &drift {
            found.add(d);
        }
        match out.last_evaluated_key.filter(|k| !k.is_empty()) {
            Some(k) => start = Some(k),
            None => return Ok(read),
        }
    }
}

/// Pass 2: every live row of the store, in key order, against the source. Returns the
/// live rows read.
async fn pass_absent(
    clients: &Clients,
    pool: &PgPool,
    options: &Options,
    found: &mut Found,
    shutdown: &CancellationToken,
) -> Result<u64, VerifyError> {
    let mut after = String::new();
    let mut rows = 0u64;
    loop {
        if shutdown.is_cancelled() {
            return Err(VerifyError::Interrupted);
        }
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM analytics.user_profiles
             WHERE NOT deleted AND user_id > $1 ORDER BY user_id LIMIT $2",
        )
        .bind(&after)
        .bind(KEYS_PER_BATCH_GET as i64)
        .fetch_all(pool)
        .await?;
        let Some(last) = keys.last() else {
            return Ok(rows);
        };
        after.clone_from(last);
        rows += keys.len() as u64;
        let present = batch_get(clients, &options.table, &keys, true).await?;
        let absent: Vec<String> = keys
            .into_iter()
            .filter(|k| !present.contains_key(k))
            .collect();
        for d in compare_absent(pool, &absent).await? {
            found.add(&d);
        }
    }
}

/// The drift among source items (read now), with each drifted item's projection source.
async fn recheck(
    clients: &Clients,
    pool: &PgPool,
    table: &str,
    keys: &[String],
) -> Result<Vec<(Drift, Option<Item>)>, VerifyError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(KEYS_PER_BATCH_GET) {
        let present = batch_get(clients, table, chunk, false).await?;
        let items: Vec<Item> = present.values().cloned().collect();
        for d in compare_present(pool, &items).await? {
            let item = present.get(&d.key).cloned();
            out.push((d, item));
        }
        let absent: Vec<String> = chunk
            .iter()
            .filter(|k| !present.contains_key(*k))
            .cloned()
            .collect();
        for d in compare_absent(pool, &absent).await? {
            out.push((d, None));
        }
    }
    out.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    Ok(out)
}

/// `BatchGetItem` of `keys` (≤ 100): key → item, for those that exist. With `keys_only`
/// only the key attribute is read.
async fn batch_get(
    clients: &Clients,
    table: &str,
    keys: &[String],
    keys_only: bool,
) -> Result<HashMap<String, Item>, VerifyError> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let unique: HashSet<&String> = keys.iter().collect();
    let mut request_keys: Vec<HashMap<String, Ddb>> = unique
        .into_iter()
        .map(|k| HashMap::from([(attr::USER_ID.to_owned(), Ddb::S(k.clone()))]))
        .collect();
    let mut attempt = 0u32;
    while !request_keys.is_empty() {
        attempt += 1;
        let mut kaa = KeysAndAttributes::builder()
            .set_keys(Some(request_keys))
            .consistent_read(true);
        if keys_only {
            kaa = kaa
                .projection_expression("#k")
                .expression_attribute_names("#k", attr::USER_ID);
        }
        let kaa = kaa.build().map_err(|e| VerifyError::Dynamo {
            operation: "BatchGetItem",
            detail: e.to_string(),
        })?;
        let out = clients
            .dynamodb
            .batch_get_item()
            .request_items(table, kaa)
            .send()
            .await
            .map_err(|e| VerifyError::Dynamo {
                operation: "BatchGetItem",
                detail: runtime::report::describe_sdk_error(&e),
            })?;
        for item in out
            .responses
            .and_then(|mut r| r.remove(table))
            .unwrap_or_default()
        {
            let item = items::from_sdk(item);
            found.insert(items::key_of(&item), item);
        }
        request_keys = out
            .unprocessed_keys
            .and_then(|mut u| u.remove(table))
            .map(|k| k.keys)
            .unwrap_or_default();
        if !request_keys.is_empty() {
            if attempt > 20 {
                return Err(VerifyError::Dynamo {
                    operation: "BatchGetItem",
                    detail: format!(
                        "{} keys still unprocessed after {attempt} attempts",
                        request_keys.len()
                    ),
                });
            }
            tokio::time::sleep(publisher::pipeline::backoff(attempt)).await;
        }
    }
    Ok(found)
}

const COMPARE_PRESENT: &str = r#"
WITH s AS (
    SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::bool[], $9::bool[], $10::text[],
                         $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[])
        AS s(user_id, generation, version, email, display_name, country, plan,
             marketing_email, marketing_sms, locale, time_zone, lifetime_value_cents,
             created_at, updated_at)
), compared AS (
    SELECT s.user_id, p.user_id IS NOT NULL AS present, p.deleted, p.generation, p.version,
           p.generation IS DISTINCT FROM s.generation OR p.version IS DISTINCT FROM s.version
               OR p.deleted AS moved,
           (p.email, p.display_name, p.country, p.plan, p.marketing_email, p.marketing_sms,
            p.locale, p.time_zone, p.lifetime_value_cents, p.created_at, p.updated_at)
           IS DISTINCT FROM
           (s.email, s.display_name, s.country, s.plan, s.marketing_email, s.marketing_sms,
            s.locale, s.time_zone, s.lifetime_value_cents::numeric, s.created_at, s.updated_at)
               AS differs
    FROM s LEFT JOIN analytics.user_profiles p ON p.user_id = s.user_id
)
SELECT user_id, present, deleted, generation, version, differs
FROM compared WHERE NOT present OR moved OR differs
"#;

/// Drift among items that exist in the source.
async fn compare_present(pool: &PgPool, page: &[Item]) -> Result<Vec<Drift>, VerifyError> {
    let mut drift = Vec::new();
    let mut projected: Vec<(Position, Profile)> = Vec::with_capacity(page.len());
    for item in page {
        let key = items::key_of(item);
        match record::project(item, &format!("item {key}")) {
            Ok(p) => projected.push(p),
            Err(e) => drift.push(Drift {
                key,
                kind: Kind::UnreadableSource,
                source: None,
                stored: None,
                detail: Some(e.to_string()),
            }),
        }
    }
    if projected.is_empty() {
        return Ok(drift);
    }
    // One array per column, in COMPARE_PRESENT's parameter order.
    fn col<T>(rows: &[(Position, Profile)], f: impl Fn(&(Position, Profile)) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let positions: HashMap<&str, Position> = projected
        .iter()
        .map(|(pos, p)| (p.user_id.as_str(), *pos))
        .collect();
    let rows = sqlx::query(COMPARE_PRESENT)
        .bind(col(&projected, |(_, p)| p.user_id.clone()))
        .bind(col(&projected, |(pos, _)| pos.generation))
        .bind(col(&projected, |(pos, _)| pos.version))
        .bind(col(&projected, |(_, p)| Some(p.email.clone())))
        .bind(col(&projected, |(_, p)| Some(p.display_name.clone())))
        .bind(col(&projected, |(_, p)| p.country.clone()))
        .bind(col(&projected, |(_, p)| Some(p.plan.clone())))
        .bind(col(&projected, |(_, p)| p.consents.marketing_email))
        .bind(col(&projected, |(_, p)| p.consents.marketing_sms))
        .bind(col(&projected, |(_, p)| p.locale.clone()))
        .bind(col(&projected, |(_, p)| p.time_zone.clone()))
        .bind(col(&projected, |(_, p)| {
            p.lifetime_value_cents
                .as_ref()
                .map(|n| n.as_str().to_owned())
        }))
        .bind(col(&projected, |(_, p)| p.created_at))
        .bind(col(&projected, |(_, p)| p.updated_at))
        .fetch_all(pool)
        .await?;
    for row in rows {
        let key: String = row.try_get("user_id")?;
        let stored = stored_of(&row)?;
        let differs: Option<bool> = row.try_get("differs")?;
        let Some(&source) = positions.get(key.as_str()) else {
            continue;
        };
        if let Some(kind) = classify_present(source, stored, differs.unwrap_or(true)) {
            drift.push(Drift {
                key,
                kind,
                source: Some(source),
                stored,
                detail: None,
            });
        }
    }
    Ok(drift)
}

fn stored_of(row: &sqlx::postgres::PgRow) -> Result<Option<Stored>, sqlx::Error> {
    let generation: Option<i64> = row.try_get("generation")?;
    let version: Option<i64> = row.try_get("version")?;
    let deleted: Option<bool> = row.try_get("deleted")?;
    Ok(match (generation, version, deleted) {
        (Some(generation), Some(version), Some(deleted)) => Some(Stored {
            position: Position {
                generation,
                version,
            },
            deleted,
        }),
        _ => None,
    })
}

/// Drift among keys whose source item is gone.
async fn compare_absent(pool: &PgPool, keys: &[String]) -> Result<Vec<Drift>, VerifyError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT p.user_id, p.generation, p.version, p.deleted,
                EXISTS (SELECT 1 FROM analytics.profile_changes c WHERE c.key = p.user_id) AS has_history
         FROM analytics.user_profiles p WHERE p.user_id = ANY($1)",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let mut drift = Vec::new();
    for row in rows {
        let key: String = row.try_get("user_id")?;
        let stored = stored_of(&row)?;
        let has_history: bool = row.try_get("has_history")?;
        if let Some(kind) = classify_absent(stored, has_history) {
            drift.push(Drift {
                key,
                kind,
                source: None,
                stored,
                detail: None,
            });
        }
    }
    Ok(drift)
}

async fn repair(
    clients: &Clients,
    pool: &PgPool,
    options: &Options,
    queue: &str,
    drift: &[(Drift, Option<Item>)],
    shutdown: &CancellationToken,
) -> Result<RepairReport, VerifyError> {
    let now = OffsetDateTime::now_utc();
    let events: Vec<ChangeEvent> = drift
        .iter()
        .filter_map(|(d, item)| repair_event(d, item.as_ref(), &options.table, now))
        .collect();
    let sink = QueueSink::new(clients.sqs.clone(), queue.to_owned());
    let sent = sink
        .send(items::encode_all(&events, options.schema_version), shutdown)
        .await
        .map_err(|_| VerifyError::Interrupted)?;
    for (encoded, rejected) in &sent.rejected {
        warn!(key = %encoded.key, reason = rejected.reason_code, detail = %rejected.detail, "Repair event refused by the queue.");
    }
    info!(
        events = sent.accepted,
        queue, "Repair events sent; waiting for the subscriber to apply them."
    );

    let keys: Vec<String> = drift.iter().map(|(d, _)| d.key.clone()).collect();
    let started = std::time::Instant::now();
    let mut remaining;
    loop {
        remaining = recheck(clients, pool, &options.table, &keys).await?;
        let left_repairable = remaining.iter().any(|(d, _)| d.kind.repairable());
        if !left_repairable
            || started.elapsed() >= options.repair_timeout
            || shutdown.is_cancelled()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut report = RepairReport {
        events_sent: sent.accepted as u64,
        waited_secs: started.elapsed().as_secs_f64(),
        ..RepairReport::default()
    };
    for (d, _) in &remaining {
        *report
            .remaining
            .entry(d.kind.as_str().to_owned())
            .or_default() += 1;
    }
    report.remaining_sample = remaining
        .iter()
        .take(options.sample)
        .map(|(d, _)| d.clone())
        .collect();
    Ok(report)
}
