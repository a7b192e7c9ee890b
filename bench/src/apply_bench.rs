//! Apply rate: the same events through PostgreSQL's own ceiling, a one-transaction-per-
//! event peer, and tributary's apply path, in one run, each verified against the
//! workload's expected final state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use contracts::{Change, ChangeEvent, SchemaVersion};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use subscriber::queue::{Parker, QueueError, ReceivedMessage};
use tokio::sync::Mutex;

use crate::workload::{self, Mix, Workload};

/// Settings of one apply run.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// Events in the workload (creates, updates, deletes, duplicates, reordered).
    #[arg(long, default_value = "100000")]
    pub events: usize,
    /// Distinct profiles the events touch.
    #[arg(long, default_value = "20000")]
    pub keys: usize,
    /// Events the peer applies (a prefix of the workload): at one commit per event it
    /// would take minutes to do them all, and its rate does not depend on the count.
    #[arg(long, default_value = "10000")]
    pub peer_events: usize,
    /// Concurrent workers for the peer and for tributary (the subscriber's default).
    #[arg(long, default_value = "4")]
    pub workers: usize,
    /// Events per transaction of the container worker under backlog: the subscriber's
    /// default `--batch-max-messages`.
    #[arg(long, default_value_t = 100)]
    pub container_batch: usize,
    /// Events per Lambda invocation: the BatchSize of the SQS event source mapping in
    /// deploy/template.yaml.
    #[arg(long, default_value = "100")]
    pub lambda_batch: usize,
    /// Rows per statement of the ceiling.
    #[arg(long, default_value = "10000")]
    pub ceiling_rows: usize,
}

/// One contender's result.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    how: String,
    events: usize,
    elapsed: Duration,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs every contender against a scratch database and prints the table.
pub async fn run(admin_url: &str, args: &ApplyArgs) -> Result<()> {
    let mix = Mix {
        events: args.events,
        keys: args.keys,
        ..Mix::standard()
    };
    let w = workload::generate(mix);
    println!(
        "## Apply rate: {} events ({} creates, {} updates, {} deletes, {} duplicates, {} out of order) over {} keys",
        w.events.len(),
        w.stats.creates,
        w.stats.updates,
        w.stats.deletes,
        w.stats.duplicates,
        w.stats.out_of_order,
        mix.keys
    );
    let db = ScratchDb::create(admin_url).await?;
    let result = contenders(args, &w, &db).await;
    db.drop_it().await?;
    let rows = result?;

    let ceiling = rows[0].rate();
    let peer = rows[1].rate();
    println!();
    println!("| contender | how | events | seconds | events/s | × ceiling | × peer |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.1} |",
            r.name,
            r.how,
            r.events,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.rate() / ceiling,
            r.rate() / peer
        );
    }
    println!();
    println!(
        "Every contender's final state was verified: one row per key at its greatest position (tombstone or the latest email), one history row per distinct change."
    );
    Ok(())
}

async fn contenders(args: &ApplyArgs, w: &Workload, db: &ScratchDb) -> Result<Vec<Row>> {
    let (events, batch, workers) = (&w.events[..], args.container_batch, args.workers);
    let sample = &events[..args.peer_events.min(events.len())];
    Ok(vec![
        measure(
            db,
            events,
            "ceiling",
            format!(
                "one SQL statement per {} rows (history insert + guarded upsert), 1 connection",
                args.ceiling_rows
            ),
            ceiling(db, events, args.ceiling_rows),
        )
        .await?,
        measure(
            db,
            sample,
            "peer",
            format!(
                "one transaction per event, {workers} connections (first {} events)",
                sample.len()
            ),
            peer(db, sample, workers),
        )
        .await?,
        // Diagnostic: the same SQL without the decode, to tell the client's share from
        // the server's.
        measure(
            db,
            events,
            "(diagnostic) apply_atomically only",
            format!("pre-decoded events, {batch} per transaction, {workers} workers"),
            apply_only(db, events, batch, workers),
        )
        .await?,
        // Diagnostic: the statements built from the profile's declared mapping
        // (subscriber::table), on the same pre-decoded events: what the generic path
        // costs against the hand-written one above.
        measure(
            db,
            events,
            "(diagnostic) declared table only",
            format!("subscriber::table from mappings/subscriber/profile.toml, pre-decoded events, {batch} per transaction, {workers} workers"),
            declared_only(db, events, batch, workers),
        )
        .await?,
        measure(
            db,
            events,
            "tributary container",
            format!(
                "batch::process_batch (decode + apply_atomically): {batch} events per transaction, {workers} workers"
            ),
            tributary(db, events, batch, workers),
        )
        .await?,
        measure(
            db,
            events,
            "tributary lambda handler",
            format!(
                "SubscriberLambda::handle on SQS events of {} records (JSON-shaped, as the service sends them), {workers} environments at once, 1 connection each",
                args.lambda_batch
            ),
            lambda(db, events, args.lambda_batch, workers),
        )
        .await?,
    ])
}

/// One contender: empties the store, runs `run` (not started before: futures are
/// lazy), checks the invariants against `events`, and names the result.
async fn measure(
    db: &ScratchDb,
    events: &[ChangeEvent],
    name: &str,
    how: String,
    run: impl std::future::Future<Output = Result<Duration>>,
) -> Result<Row> {
    db.reset().await?;
    let elapsed = run.await?;
    verify(db, events).await.context(name.to_owned())?;
    Ok(Row {
        name: name.into(),
        how,
        events: events.len(),
        elapsed,
    })
}

/// The subscriber Lambda's handler, called as the runtime calls it: `workers`
/// execution environments (each its own `SubscriberLambda` and pool), each taking the
/// next SQS event of `batch` records. The events are built as JSON values and
/// deserialized before the clock starts; the handler's conversion, decode and apply run
/// inside it. Nothing is parked by a clean workload, so the DLQ client is never called.
async fn lambda(
    db: &ScratchDb,
    events: &[ChangeEvent],
    batch: usize,
    workers: usize,
) -> Result<Duration> {
    use subscriber::lambda::{SqsEvent, SubscriberLambda};
    let mut invocations = Vec::new();
    for (n, chunk) in events.chunks(batch).enumerate() {
        let records: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(serde_json::json!({
                    "messageId": format!("m-{n}-{i}"),
                    "receiptHandle": format!("r-{n}-{i}"),
                    "body": String::from_utf8(e.encode(SchemaVersion::V2))?,
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                }))
            })
            .collect::<Result<_>>()?;
        let event: SqsEvent = serde_json::from_value(serde_json::json!({ "Records": records }))?;
        invocations.push(event);
    }
    let invocations = Arc::new(Mutex::new(invocations.into_iter()));
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let handler = SubscriberLambda::new(
            db.options.clone(),
            1,
            subscriber::queue::DeadLetterQueue::new(
                sqs.clone(),
                "http://127.0.0.1:1/unused-dlq".into(),
                subscriber::queue::MAX_MESSAGE_BYTES,
            ),
            Duration::from_secs(3),
        );
        let invocations = Arc::clone(&invocations);
        tasks.spawn(async move {
            loop {
                let next = invocations.lock().await.next();
                let Some(event) = next else {
                    handler.pool().close().await;
                    return Ok::<(), anyhow::Error>(());
                };
                let mut attempt = 0;
                let mut event = event;
                loop {
                    attempt += 1;
                    let response = handler.handle(event.clone(), None).await?;
                    if response.batch_item_failures.is_empty() {
                        break;
                    }
                    // A deadlock between environments: the service would redeliver
                    // exactly the reported messages.
                    ensure!(attempt < 5, "an invocation kept failing");
                    let failed: std::collections::HashSet<String> = response
                        .batch_item_failures
                        .into_iter()
                        .map(|f| f.item_identifier)
                        .collect();
                    event
                        .records
                        .retain(|r| r.message_id.as_ref().is_some_and(|id| failed.contains(id)));
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(start.elapsed())
}

/// A database of our own, migrated, dropped at the end.
pub(crate) struct ScratchDb {
    admin_url: String,
    name: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl ScratchDb {
    pub(crate) async fn create(admin_url: &str) -> Result<ScratchDb> {
        let name = format!("tributary_bench_{}", crate::random_id());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options: PgConnectOptions = admin_url.parse()?;
        let options = options.database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await?;
        subscriber::MIGRATOR
            .run(&pool)
            .await
            .context("migrations")?;
        Ok(ScratchDb {
            admin_url: admin_url.to_owned(),
            name,
            options,
            pool,
        })
    }

    async fn reset(&self) -> Result<()> {
        sqlx::query("TRUNCATE analytics.user_profiles, analytics.profile_changes")
            .execute(&self.pool)
            .await?;
        sqlx::query("CHECKPOINT").execute(&self.pool).await.ok();
        Ok(())
    }

    async fn pool(&self, connections: u32) -> Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .connect_with(self.options.clone())
            .await?)
    }

    /// The scratch database's URL, for a child process.
    pub(crate) fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    pub(crate) fn pool_ref(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn drop_it(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// Checks the invariants: every key at its greatest position, tombstones where the
/// greatest event is a delete, the latest email on live rows, one history row per
/// distinct change.
async fn verify(db: &ScratchDb, events: &[ChangeEvent]) -> Result<()> {
    let (expected, _) = workload::expected_state(events);
    let rows: Vec<(String, i64, i64, bool, Option<String>)> = sqlx::query_as(
        "SELECT user_id, generation, version, deleted, email FROM analytics.user_profiles",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(
        rows.len() == expected.len(),
        "{} state rows, expected {}",
        rows.len(),
        expected.len()
    );
    for (key, generation, version, deleted, email) in rows {
        let want = expected
            .get(&key)
            .with_context(|| format!("unexpected key {key}"))?;
        if (
            want.position.generation,
            want.position.version,
            want.deleted,
            &want.email,
        ) != (generation, version, deleted, &email)
        {
            bail!(
                "{key}: stored ({generation}, {version}, {deleted}, {email:?}), expected {want:?}"
            );
        }
    }
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.profile_changes")
        .fetch_one(&db.pool)
        .await?;
    let distinct = workload::distinct_changes(events);
    ensure!(
        history as usize == distinct,
        "{history} history rows, expected {distinct}"
    );
    Ok(())
}

/// The state upsert's conflict clause and version guard, shared by [`CEILING`] and
/// [`PEER_STATE`]: every column from `excluded`, only when the event ranks above the
/// stored row (the guard of `contracts::Rank::SQL_GUARD_COLUMNS`).
macro_rules! guarded_update {
    () => {
        r#"ON CONFLICT (user_id) DO UPDATE SET
    email = excluded.email, display_name = excluded.display_name,
    country = excluded.country, plan = excluded.plan,
    marketing_email = excluded.marketing_email, marketing_sms = excluded.marketing_sms,
    locale = excluded.locale, time_zone = excluded.time_zone,
    lifetime_value_cents = excluded.lifetime_value_cents,
    created_at = excluded.created_at, updated_at = excluded.updated_at,
    deleted = excluded.deleted, deleted_reason = excluded.deleted_reason,
    generation = excluded.generation, version = excluded.version,
    schema_version = excluded.schema_version,
    last_event_id = excluded.last_event_id, occurred_at = excluded.occurred_at,
    applied_at = now()
WHERE (stored.generation, stored.version, stored.deleted::int, stored.schema_version)
    < (excluded.generation, excluded.version, excluded.deleted::int, excluded.schema_version)
"#
    };
}

/// PostgreSQL's own ceiling: the workload in one statement per chunk. `DISTINCT ON
/// (key)` keeps each key's greatest-ranked row, ordered by [`ceiling_sql`]'s
/// `{rank_order}`, which is [`contracts::Rank::sql_order_greatest_first`].
const CEILING: &str = concat!(
    r#"
WITH e AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[],
                         $6::text[], $7::text[], $8::int2[], $9::text[], $10::timestamptz[],
                         $11::timestamptz[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::text[], $17::bool[], $18::bool[], $19::text[], $20::text[],
                         $21::text[], $22::timestamptz[], $23::timestamptz[])
        AS e(event_id, key, generation, version, deleted, event_type, reason, schema_version,
             data, occurred_at, published_at, seq, email, display_name, country, plan,
             marketing_email, marketing_sms, locale, time_zone, ltv, created_at, updated_at)
), history AS (
    INSERT INTO analytics.profile_changes
        (event_id, key, generation, version, deleted, event_type, reason, schema_version,
         data, occurred_at, published_at, source_sequence_number)
    SELECT event_id, key, generation, version, deleted, event_type, reason, schema_version,
           data::jsonb, occurred_at, published_at, seq
    FROM e
    ON CONFLICT DO NOTHING
)
INSERT INTO analytics.user_profiles AS stored
    (user_id, email, display_name, country, plan, marketing_email, marketing_sms, locale,
     time_zone, lifetime_value_cents, created_at, updated_at, deleted, deleted_reason,
     generation, version, schema_version, last_event_id, occurred_at)
SELECT DISTINCT ON (key) key, email, display_name, country, plan, marketing_email,
       marketing_sms, locale, time_zone, ltv::numeric, created_at, updated_at, deleted,
       reason, generation, version, schema_version, event_id, occurred_at
FROM e
ORDER BY key, {rank_order}
"#,
    guarded_update!()
);

/// [`CEILING`] with the rank order filled in.
fn ceiling_sql() -> String {
    CEILING.replace("{rank_order}", &contracts::Rank::sql_order_greatest_first())
}

/// The columns of a chunk of events, built before the clock starts: the ceiling is what
/// the server does, not what a client spends preparing it.
#[derive(Default)]
struct Columns {
    event_id: Vec<String>,
    key: Vec<String>,
    generation: Vec<i64>,
    version: Vec<i64>,
    deleted: Vec<bool>,
    event_type: Vec<&'static str>,
    reason: Vec<Option<&'static str>>,
    schema_version: Vec<i16>,
    data: Vec<Option<String>>,
    occurred_at: Vec<time::OffsetDateTime>,
    published_at: Vec<time::OffsetDateTime>,
    seq: Vec<Option<String>>,
    email: Vec<Option<String>>,
    display_name: Vec<Option<String>>,
    country: Vec<Option<String>>,
    plan: Vec<Option<String>>,
    marketing_email: Vec<Option<bool>>,
    marketing_sms: Vec<Option<bool>>,
    locale: Vec<Option<String>>,
    time_zone: Vec<Option<String>>,
    ltv: Vec<Option<String>>,
    created_at: Vec<Option<time::OffsetDateTime>>,
    updated_at: Vec<Option<time::OffsetDateTime>>,
}

impl Columns {
    fn of(events: &[ChangeEvent]) -> Result<Columns> {
        let mut c = Columns::default();
        for e in events {
            let p = e.change.profile();
            c.event_id.push(e.event_id.clone());
            c.key.push(e.key.clone());
            c.generation.push(e.position.generation);
            c.version.push(e.position.version);
            c.deleted.push(matches!(e.change, Change::Deleted(_)));
            c.event_type.push(e.change.event_type().as_str());
            c.reason.push(match e.change {
                Change::Deleted(r) => Some(r.as_str()),
                _ => None,
            });
            c.schema_version
                .push(i16::from(e.published_schema.number()));
            c.data.push(p.map(serde_json::to_string).transpose()?);
            c.occurred_at.push(e.occurred_at);
            c.published_at.push(e.published_at);
            c.seq.push(e.source.sequence_number.clone());
            c.email.push(p.map(|p| p.email.clone()));
            c.display_name.push(p.map(|p| p.display_name.clone()));
            c.country.push(p.and_then(|p| p.country.clone()));
            c.plan.push(p.map(|p| p.plan.clone()));
            c.marketing_email
                .push(p.map(|p| p.consents.marketing_email));
            c.marketing_sms.push(p.map(|p| p.consents.marketing_sms));
            c.locale.push(p.and_then(|p| p.locale.clone()));
            c.time_zone.push(p.and_then(|p| p.time_zone.clone()));
            c.ltv.push(p.and_then(|p| {
                p.lifetime_value_cents
                    .as_ref()
                    .map(|v| v.as_str().to_owned())
            }));
            c.created_at.push(p.map(|p| p.created_at));
            c.updated_at.push(p.map(|p| p.updated_at));
        }
        Ok(c)
    }
}

async fn ceiling(db: &ScratchDb, events: &[ChangeEvent], rows: usize) -> Result<Duration> {
    let chunks = events
        .chunks(rows)
        .map(Columns::of)
        .collect::<Result<Vec<_>>>()?;
    let sql = ceiling_sql();
    let mut conn = db.pool.acquire().await?;
    let start = Instant::now();
    for c in chunks {
        sqlx::query(&sql)
            .bind(c.event_id)
            .bind(c.key)
            .bind(c.generation)
            .bind(c.version)
            .bind(c.deleted)
            .bind(c.event_type)
            .bind(c.reason)
            .bind(c.schema_version)
            .bind(c.data)
            .bind(c.occurred_at)
            .bind(c.published_at)
            .bind(c.seq)
            .bind(c.email)
            .bind(c.display_name)
            .bind(c.country)
            .bind(c.plan)
            .bind(c.marketing_email)
            .bind(c.marketing_sms)
            .bind(c.locale)
            .bind(c.time_zone)
            .bind(c.ltv)
            .bind(c.created_at)
            .bind(c.updated_at)
            .execute(&mut *conn)
            .await
            .context("ceiling statement")?;
    }
    Ok(start.elapsed())
}

const PEER_HISTORY: &str = r#"
INSERT INTO analytics.profile_changes
    (event_id, key, generation, version, deleted, event_type, reason, schema_version, data,
     occurred_at, published_at, source_sequence_number)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12)
ON CONFLICT DO NOTHING
"#;

const PEER_STATE: &str = concat!(
    r#"
INSERT INTO analytics.user_profiles AS stored
    (user_id, email, display_name, country, plan, marketing_email, marketing_sms, locale,
     time_zone, lifetime_value_cents, created_at, updated_at, deleted, deleted_reason,
     generation, version, last_event_id, occurred_at, schema_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::numeric, $11, $12, $13, $14, $15, $16, $17, $18,
        $19)
"#,
    guarded_update!()
);

/// What a typical Lambda subscriber does: per event, BEGIN; insert the history row;
/// upsert the state row under the same guard; COMMIT. Prepared statements (sqlx caches
/// them per connection), `workers` events in flight.
async fn peer(db: &ScratchDb, events: &[ChangeEvent], workers: usize) -> Result<Duration> {
    let pool = db.pool(u32::try_from(workers)?).await?;
    let elapsed = drain(events.to_vec(), workers, {
        let pool = pool.clone();
        move |e: ChangeEvent| {
            let pool = pool.clone();
            async move {
                // A deadlock between two per-event transactions is retried, as a
                // Lambda's failed invocation would be.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match peer_one(&pool, &e).await {
                        Ok(()) => return Ok(()),
                        Err(err) if attempt < 5 => {
                            eprintln!("peer: retrying {}: {err}", e.event_id);
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
    })
    .await?;
    pool.close().await;
    Ok(elapsed)
}

/// Runs `workers` tasks, each taking the next item of `work` and handing it to `apply`
/// until none is left; the time from the start to the last task's end. The first error
/// ends the run.
async fn drain<T, F, Fut>(work: Vec<T>, workers: usize, apply: F) -> Result<Duration>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let work = Arc::new(Mutex::new(work.into_iter()));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (work, apply) = (Arc::clone(&work), apply.clone());
        tasks.spawn(async move {
            loop {
                let next = work.lock().await.next();
                let Some(item) = next else {
                    return Ok::<(), anyhow::Error>(());
                };
                apply(item).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(start.elapsed())
}

async fn peer_one(pool: &PgPool, e: &ChangeEvent) -> sqlx::Result<()> {
    let p = e.change.profile();
    let deleted = matches!(e.change, Change::Deleted(_));
    let reason = match e.change {
        Change::Deleted(r) => Some(r.as_str()),
        _ => None,
    };
    let mut tx = pool.begin().await?;
    sqlx::query(PEER_HISTORY)
        .bind(&e.event_id)
        .bind(&e.key)
        .bind(e.position.generation)
        .bind(e.position.version)
        .bind(deleted)
        .bind(e.change.event_type().as_str())
        .bind(reason)
        .bind(i16::from(e.published_schema.number()))
        .bind(p.map(|p| serde_json::to_string(p).unwrap_or_default()))
        .bind(e.occurred_at)
        .bind(e.published_at)
        .bind(e.source.sequence_number.as_deref())
        .execute(&mut *tx)
        .await?;
    sqlx::query(PEER_STATE)
        .bind(&e.key)
        .bind(p.map(|p| p.email.as_str()))
        .bind(p.map(|p| p.display_name.as_str()))
        .bind(p.and_then(|p| p.country.as_deref()))
        .bind(p.map(|p| p.plan.as_str()))
        .bind(p.map(|p| p.consents.marketing_email))
        .bind(p.map(|p| p.consents.marketing_sms))
        .bind(p.and_then(|p| p.locale.as_deref()))
        .bind(p.and_then(|p| p.time_zone.as_deref()))
        .bind(p.and_then(|p| p.lifetime_value_cents.as_ref().map(|v| v.as_str())))
        .bind(p.map(|p| p.created_at))
        .bind(p.map(|p| p.updated_at))
        .bind(deleted)
        .bind(reason)
        .bind(e.position.generation)
        .bind(e.position.version)
        .bind(&e.event_id)
        .bind(e.occurred_at)
        .bind(i16::from(e.published_schema.number()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A parker for the benchmark: the workload has no poison, so parking is a failure.
#[derive(Debug, Default)]
struct CountingParker {
    parked: AtomicUsize,
}

impl Parker for CountingParker {
    async fn park(
        &self,
        _message: &ReceivedMessage,
        _reason_code: &'static str,
        _detail: &str,
    ) -> Result<(), QueueError> {
        self.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// tributary's apply path as the worker drives it: SQS bodies (the encoded events, as
/// raw delivery puts them in the queue) in batches of `batch`, `workers` batches in
/// flight, each decoded and applied in one transaction by `batch::process_batch`, on a
/// pool sized as `subscriber run` sizes it (workers + 1).
async fn tributary(
    db: &ScratchDb,
    events: &[ChangeEvent],
    batch: usize,
    workers: usize,
) -> Result<Duration> {
    let messages: Vec<ReceivedMessage> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(ReceivedMessage {
                message_id: format!("m-{i}"),
                receipt_handle: format!("r-{i}"),
                body: String::from_utf8(e.encode(SchemaVersion::V2))?,
                receive_count: 1,
                sent_at_ms: None,
                message_attributes: Default::default(),
            })
        })
        .collect::<Result<_>>()?;
    let batches: Vec<Vec<ReceivedMessage>> = messages.chunks(batch).map(<[_]>::to_vec).collect();
    let pool = db.pool(u32::try_from(workers + 1)?).await?;
    let parker = Arc::new(CountingParker::default());
    let elapsed = drain(batches, workers, {
        let (pool, parker) = (pool.clone(), Arc::clone(&parker));
        move |batch: Vec<ReceivedMessage>| {
            let (pool, parker) = (pool.clone(), Arc::clone(&parker));
            async move {
                for _attempt in 0..5 {
                    let outcome =
                        subscriber::batch::process_batch(&pool, parker.as_ref(), &batch).await;
                    if outcome.retry.is_empty() {
                        ensure!(
                            outcome.succeeded.len() == batch.len(),
                            "a batch of {} had {} succeeded",
                            batch.len(),
                            outcome.succeeded.len()
                        );
                        return Ok(());
                    }
                    // A deadlock or serialization failure between workers: the worker
                    // would retry these after a visibility delay.
                    eprintln!("tributary: retrying a batch of {}", batch.len());
                }
                bail!("a batch kept failing")
            }
        }
    })
    .await?;
    pool.close().await;
    ensure!(
        parker.parked.load(Ordering::Relaxed) == 0,
        "tributary parked messages of a clean workload"
    );
    Ok(elapsed)
}

/// `apply::apply_atomically` on events decoded beforehand: the SQL side of the apply
/// path alone.
async fn apply_only(
    db: &ScratchDb,
    events: &[ChangeEvent],
    batch: usize,
    workers: usize,
) -> Result<Duration> {
    let batches: Vec<Vec<ChangeEvent>> = events.chunks(batch).map(<[_]>::to_vec).collect();
    let pool = db.pool(u32::try_from(workers + 1)?).await?;
    let elapsed = drain(batches, workers, {
        let pool = pool.clone();
        move |batch: Vec<ChangeEvent>| {
            let pool = pool.clone();
            async move {
                let mut attempt = 0;
                while let Err(e) = subscriber::apply::apply_atomically(&pool, &batch).await {
                    attempt += 1;
                    ensure!(attempt < 5 && e.is_retryable(), "apply failed: {e}");
                }
                Ok(())
            }
        }
    })
    .await?;
    pool.close().await;
    Ok(elapsed)
}

/// `subscriber::table` built from the profile's declared mapping, on events converted
/// beforehand: the generic statements' side of the apply path alone.
async fn declared_only(
    db: &ScratchDb,
    events: &[ChangeEvent],
    batch: usize,
    workers: usize,
) -> Result<Duration> {
    let mapping = subscriber::mapping::Mapping::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mappings/subscriber/profile.toml"
    )))
    .map_err(anyhow::Error::msg)?;
    let table = std::sync::Arc::new(subscriber::table::Table::new(&mapping));
    let batches: Vec<Vec<contracts::entity::Event>> = events
        .chunks(batch)
        .map(|c| c.iter().map(contracts::entity::Event::from).collect())
        .collect();
    let pool = db.pool(u32::try_from(workers + 1)?).await?;
    let elapsed = drain(batches, workers, {
        let pool = pool.clone();
        move |batch: Vec<contracts::entity::Event>| {
            let pool = pool.clone();
            let table = table.clone();
            async move {
                let mut attempt = 0;
                loop {
                    let mut tx = pool.begin().await?;
                    match table.apply_batch(&mut tx, &batch).await {
                        Ok(_) => {
                            tx.commit().await?;
                            break;
                        }
                        Err(e) => {
                            attempt += 1;
                            ensure!(attempt < 5 && e.is_retryable(), "apply failed: {e}");
                        }
                    }
                }
                Ok(())
            }
        }
    })
    .await?;
    pool.close().await;
    Ok(elapsed)
}
