//! SQL: a batch of change events → the analytics store, set-based.
//!
//! A batch is two statements whatever its size: one insert of every event into the
//! append-only history (`ON CONFLICT DO NOTHING`, so a redelivered change is one row),
//! and one version-guarded upsert of the latest event per key into the current state.
//! Both run on the caller's connection, normally inside one transaction
//! ([`apply_atomically`]), so history and state never disagree.
//!
//! The guard compares ranks ([`contracts::Rank`]) as a PostgreSQL row: a write lands
//! only when `(stored.generation, stored.version, stored.deleted::int,
//! stored.schema_version) < (excluded.…)`. That makes the apply idempotent and
//! order-independent, which is what lets standard (unordered, at least once) SNS/SQS
//! feed several concurrent workers. The schema version is the last component, so two
//! copies of one change published under different schema versions converge on the
//! richer one whatever their order, and a poorer copy never overrides it.
//!
//! One exception: an event at the *same* live rank (position and schema version) whose
//! content differs from the stored row also lands. A correct source never writes two
//! contents under one version, and copies of one change under one schema version are
//! identical, so only a row edited out of band can differ; the event (a snapshot from
//! `replay verify --repair`) restores it, and an identical redelivery writes nothing.
//!
//! The history keeps one row per source change. When a richer copy of a change arrives
//! after a poorer one was recorded, the row's `data` and `schema_version` are upgraded
//! to the richer copy (its event id and type stay those of the first copy): the history
//! never keeps the lossy form of a change for which a richer one was delivered.

use std::collections::BTreeMap;

use contracts::{Change, ChangeEvent};
use sqlx::{PgConnection, PgPool};
use tracing::instrument;

use crate::failure::{FailureKind, classify};

/// What a batch did to the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// History rows written: source changes seen for the first time.
    pub history_inserted: u64,
    /// Events already in the history: a redelivery, a duplicate within the batch, or the
    /// same source change under another event id (stream vs snapshot).
    pub history_duplicates: u64,
    /// State rows inserted or replaced (at most one per key in the batch).
    pub applied: u64,
    /// Events that did not change the state: superseded by a greater event for the same
    /// key in the batch, or not newer than the stored row.
    /// `applied + stale` is the number of events in the batch.
    pub stale: u64,
}

impl ApplyReport {
    /// Adds another report's counts to this one (isolated applies sum up to a batch).
    pub fn add(&mut self, other: ApplyReport) {
        self.history_inserted += other.history_inserted;
        self.history_duplicates += other.history_duplicates;
        self.applied += other.applied;
        self.stale += other.stale;
    }
}

/// Why a batch could not be applied. Nothing of it is committed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No transaction could be started (usually: no connection).
    #[error("could not begin a transaction")]
    Begin(#[source] sqlx::Error),
    /// The history insert failed.
    #[error("could not insert {events} events into the history")]
    History {
        events: usize,
        #[source]
        source: sqlx::Error,
    },
    /// The state upsert failed.
    #[error("could not upsert {keys} profiles")]
    State {
        keys: usize,
        #[source]
        source: sqlx::Error,
    },
    /// The commit failed. The outcome is unknown to us, which is harmless: a retry of an
    /// idempotent batch has one effect either way.
    #[error("could not commit")]
    Commit(#[source] sqlx::Error),
    /// An event's data does not fit its column (a declared table): refused before any
    /// SQL runs, permanently.
    #[error(transparent)]
    Bind(crate::table::BindError),
}

impl ApplyError {
    fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            ApplyError::Begin(e) | ApplyError::Commit(e) => Some(e),
            ApplyError::History { source, .. } | ApplyError::State { source, .. } => Some(source),
            ApplyError::Bind(_) => None,
        }
    }

    /// How to handle this failure; see [`FailureKind`].
    pub fn kind(&self) -> FailureKind {
        self.sqlx().map_or(FailureKind::Permanent, classify)
    }

    /// `true` unless the batch's own data is refused ([`FailureKind::Permanent`]).
    pub fn is_retryable(&self) -> bool {
        self.kind() != FailureKind::Permanent
    }

    /// The PostgreSQL SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<String> {
        match self.sqlx() {
            Some(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// The greatest event per key by [`contracts::Rank`], sorted by key.
///
/// One `INSERT … ON CONFLICT DO UPDATE` cannot touch the same row twice, so the state
/// upsert gets one event per key; and sorted keys make concurrent workers lock rows in
/// the same order, so they cannot deadlock on each other. Of two events of equal rank
/// (the same source change) the first is kept, as the store's guard would.
pub(crate) fn latest_per_key(events: &[ChangeEvent]) -> Vec<&ChangeEvent> {
    let mut latest: BTreeMap<&str, &ChangeEvent> = BTreeMap::new();
    for event in events {
        latest
            .entry(event.key.as_str())
            .and_modify(|kept| {
                if event.rank() > kept.rank() {
                    *kept = event;
                }
            })
            .or_insert(event);
    }
    latest.into_values().collect()
}

/// Applies a batch on `conn`: every event into the history, the latest event per key
/// into the state. Does not begin or commit; see [`apply_atomically`].
///
/// # Errors
/// [`ApplyError::History`] or [`ApplyError::State`] with the failing statement's error;
/// the caller must roll back (dropping the transaction does).
#[instrument(skip_all, fields(events = events.len()))]
pub async fn apply_batch(
    conn: &mut PgConnection,
    events: &[ChangeEvent],
) -> Result<ApplyReport, ApplyError> {
    if events.is_empty() {
        return Ok(ApplyReport::default());
    }
    let history_inserted =
        insert_history(conn, events)
            .await
            .map_err(|source| ApplyError::History {
                events: events.len(),
                source,
            })?;
    let latest = latest_per_key(events);
    let applied = upsert_state(conn, &latest)
        .await
        .map_err(|source| ApplyError::State {
            keys: latest.len(),
            source,
        })?;
    let total = events.len() as u64;
    Ok(ApplyReport {
        history_inserted,
        history_duplicates: total - history_inserted,
        applied,
        stale: total - applied,
    })
}

/// Applies a batch in its own transaction: BEGIN; [`apply_batch`]; COMMIT.
///
/// # Errors
/// Any [`ApplyError`]; nothing is committed then.
pub async fn apply_atomically(
    pool: &PgPool,
    events: &[ChangeEvent],
) -> Result<ApplyReport, ApplyError> {
    let mut tx = pool.begin().await.map_err(ApplyError::Begin)?;
    let report = apply_batch(&mut tx, events).await?;
    tx.commit().await.map_err(ApplyError::Commit)?;
    Ok(report)
}

/// A cheap check that the store is reachable and migrated: reads nothing from the two
/// tables the apply writes, but fails as the apply would if either is missing or not
/// readable.
///
/// # Errors
/// The query's error, as the apply would see it.
pub async fn probe(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(crate::entity::Entity::current().table.probe_sql())
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether the store accepts a known-good event now: the evidence that tells "this
/// batch's data is bad" from "the store is broken" when the database refuses a batch.
///
/// Applies [`probe_event`] exactly as a batch is applied, in a transaction that is
/// always rolled back, so it leaves nothing behind. A store that refuses it (a missing
/// table or column, a NOT NULL column added behind our back, a type narrowed under us,
/// lost grants) refuses good messages too, and parking would dead-letter them all; a
/// store that accepts it refuses only the batch's own data, and those events are parked.
///
/// # Errors
/// The probe's [`ApplyError`], classified as for a batch.
pub(crate) async fn probe_with_good_event(pool: &PgPool) -> Result<(), ApplyError> {
    let entity = crate::entity::Entity::current();
    let mut tx = pool.begin().await.map_err(ApplyError::Begin)?;
    entity
        .table
        .apply_batch(&mut tx, &[entity.probe_event()])
        .await?;
    if let Err(e) = tx.rollback().await {
        // Nothing was committed either way; the connection is discarded by the pool.
        tracing::debug!(error = %e, "Rolling back the store probe failed.");
    }
    Ok(())
}

const INSERT_HISTORY: &str = r#"
WITH written AS (
    INSERT INTO analytics.profile_changes AS recorded
        (event_id, key, generation, version, deleted, event_type, reason, schema_version,
         data, occurred_at, published_at, source_sequence_number)
    SELECT e.event_id, e.key, e.generation, e.version, e.deleted, e.event_type, e.reason,
           e.schema_version, e.data::jsonb, e.occurred_at, e.published_at,
           e.source_sequence_number
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::text[],
                $7::text[], $8::int2[], $9::text[], $10::timestamptz[], $11::timestamptz[],
                $12::text[])
         WITH ORDINALITY
         AS e(event_id, key, generation, version, deleted, event_type, reason,
              schema_version, data, occurred_at, published_at, source_sequence_number, n)
    ORDER BY e.n
    -- The same source change seen again: a redelivery writes nothing; a richer copy
    -- (a higher schema version) upgrades the recorded data, so the history never keeps
    -- the lossy form of a change.
    ON CONFLICT (key, generation, version, deleted) DO UPDATE SET
        data           = excluded.data,
        schema_version = excluded.schema_version
    WHERE recorded.schema_version < excluded.schema_version
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) FROM written
"#;

/// Inserts every event into the history, in (key, rank) order so that concurrent
/// workers take the unique-index locks in the same order. Returns the rows written
/// (new source changes; an upgrade of a recorded change to a richer copy is not one).
///
/// Copies of one change within the batch are reduced to the richest first: one
/// `INSERT … ON CONFLICT DO UPDATE` cannot touch the same row twice.
async fn insert_history(conn: &mut PgConnection, events: &[ChangeEvent]) -> sqlx::Result<u64> {
    let mut sorted: Vec<&ChangeEvent> = events.iter().collect();
    sorted.sort_by(|a, b| (a.key.as_str(), a.rank()).cmp(&(b.key.as_str(), b.rank())));
    // Sorted (stably) by rank, the richest copy of a change ends its run; of copies of
    // equal rank the first is kept, as the history's ON CONFLICT would.
    let mut richest: Vec<&ChangeEvent> = Vec::with_capacity(sorted.len());
    for e in sorted {
        match richest.last_mut() {
            Some(last) if last.key == e.key && last.rank().same_change(&e.rank()) => {
                if e.rank() > last.rank() {
                    *last = e;
                }
            }
            _ => richest.push(e),
        }
    }
    let sorted = richest;

    let n = sorted.len();
    let mut event_id = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut generation = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut published_at = Vec::with_capacity(n);
    let mut sequence_number = Vec::with_capacity(n);
    for e in sorted {
        event_id.push(e.event_id.as_str());
        key.push(e.key.as_str());
        generation.push(e.position.generation);
        version.push(e.position.version);
        deleted.push(matches!(e.change, Change::Deleted(_)));
        event_type.push(e.change.event_type().as_str());
        reason.push(match e.change {
            Change::Deleted(reason) => Some(reason.as_str()),
            _ => None,
        });
        schema_version.push(i16::from(e.published_schema.number()));
        // As text, cast to jsonb by the server: the profile's numbers are decimal
        // strings already, so nothing passes through a float.
        data.push(e.change.profile().map(|p| {
            serde_json::to_string(p).expect("a profile has string keys and always serialises")
        }));
        occurred_at.push(e.occurred_at);
        published_at.push(e.published_at);
        sequence_number.push(e.source.sequence_number.as_deref());
    }
    let inserted: i64 = sqlx::query_scalar(INSERT_HISTORY)
        .bind(event_id)
        .bind(key)
        .bind(generation)
        .bind(version)
        .bind(deleted)
        .bind(event_type)
        .bind(reason)
        .bind(schema_version)
        .bind(data)
        .bind(occurred_at)
        .bind(published_at)
        .bind(sequence_number)
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64::try_from(inserted).expect("count(*) is never negative"))
}

const UPSERT_STATE: &str = r#"
WITH written AS (
    INSERT INTO analytics.user_profiles AS stored
        (user_id, email, display_name, country, plan, marketing_email, marketing_sms,
         locale, time_zone, lifetime_value_cents, created_at, updated_at, deleted,
         deleted_reason, generation, version, schema_version, last_event_id, occurred_at)
    SELECT s.user_id, s.email, s.display_name, s.country, s.plan, s.marketing_email,
           s.marketing_sms, s.locale, s.time_zone, s.lifetime_value_cents::numeric,
           s.created_at, s.updated_at, s.deleted, s.deleted_reason, s.generation,
           s.version, s.schema_version, s.last_event_id, s.occurred_at
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[],
                $7::bool[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                $12::timestamptz[], $13::bool[], $14::text[], $15::int8[], $16::int8[],
                $17::int2[], $18::text[], $19::timestamptz[])
         WITH ORDINALITY
         AS s(user_id, email, display_name, country, plan, marketing_email, marketing_sms,
              locale, time_zone, lifetime_value_cents, created_at, updated_at, deleted,
              deleted_reason, generation, version, schema_version, last_event_id,
              occurred_at, n)
    ORDER BY s.n
    ON CONFLICT (user_id) DO UPDATE SET
        email                = excluded.email,
        display_name         = excluded.display_name,
        country              = excluded.country,
        plan                 = excluded.plan,
        marketing_email      = excluded.marketing_email,
        marketing_sms        = excluded.marketing_sms,
        locale               = excluded.locale,
        time_zone            = excluded.time_zone,
        lifetime_value_cents = excluded.lifetime_value_cents,
        created_at           = excluded.created_at,
        updated_at           = excluded.updated_at,
        deleted              = excluded.deleted,
        deleted_reason       = excluded.deleted_reason,
        generation           = excluded.generation,
        version              = excluded.version,
        schema_version       = excluded.schema_version,
        last_event_id        = excluded.last_event_id,
        occurred_at          = excluded.occurred_at,
        applied_at           = now()
    -- contracts::Rank, as a row value (Rank::SQL_GUARD_COLUMNS).
    WHERE (stored.generation, stored.version, stored.deleted::int, stored.schema_version)
        < (excluded.generation, excluded.version, excluded.deleted::int, excluded.schema_version)
       -- The same live rank with other content: the row was edited out of band (a
       -- correct source never writes one version twice, and copies of a change under
       -- one schema version are identical). The event restores it; this is how
       -- `replay verify --repair` fixes a row that `differs`.
       OR ((stored.generation, stored.version, stored.deleted, stored.schema_version)
             = (excluded.generation, excluded.version, excluded.deleted, excluded.schema_version)
           AND NOT excluded.deleted
           AND (stored.email, stored.display_name, stored.country, stored.plan,
                stored.marketing_email, stored.marketing_sms, stored.locale,
                stored.time_zone, stored.lifetime_value_cents, stored.created_at,
                stored.updated_at)
               IS DISTINCT FROM
               (excluded.email, excluded.display_name, excluded.country, excluded.plan,
                excluded.marketing_email, excluded.marketing_sms, excluded.locale,
                excluded.time_zone, excluded.lifetime_value_cents, excluded.created_at,
                excluded.updated_at))
    RETURNING 1
)
SELECT count(*) FROM written
"#;

/// Upserts one event per key (already reduced and sorted by [`latest_per_key`]) into the
/// state under the position guard. A delete writes a tombstone: the profile columns
/// are NULL. Returns the rows written.
async fn upsert_state(conn: &mut PgConnection, latest: &[&ChangeEvent]) -> sqlx::Result<u64> {
    let n = latest.len();
    let mut user_id = Vec::with_capacity(n);
    let mut email = Vec::with_capacity(n);
    let mut display_name = Vec::with_capacity(n);
    let mut country = Vec::with_capacity(n);
    let mut plan = Vec::with_capacity(n);
    let mut marketing_email = Vec::with_capacity(n);
    let mut marketing_sms = Vec::with_capacity(n);
    let mut locale = Vec::with_capacity(n);
    let mut time_zone = Vec::with_capacity(n);
    let mut lifetime_value_cents = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut deleted_reason = Vec::with_capacity(n);
    let mut generation = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut last_event_id = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    for e in latest {
        let profile = e.change.profile();
        user_id.push(e.key.as_str());
        email.push(profile.map(|p| p.email.as_str()));
        display_name.push(profile.map(|p| p.display_name.as_str()));
        country.push(profile.and_then(|p| p.country.as_deref()));
        plan.push(profile.map(|p| p.plan.as_str()));
        marketing_email.push(profile.map(|p| p.consents.marketing_email));
        marketing_sms.push(profile.map(|p| p.consents.marketing_sms));
        locale.push(profile.and_then(|p| p.locale.as_deref()));
        time_zone.push(profile.and_then(|p| p.time_zone.as_deref()));
        // Bound as text and cast to numeric by the server: up to 38 significant digits
        // survive exactly, which no binary float could promise.
        lifetime_value_cents
            .push(profile.and_then(|p| p.lifetime_value_cents.as_ref().map(|v| v.as_str())));
        created_at.push(profile.map(|p| p.created_at));
        updated_at.push(profile.map(|p| p.updated_at));
        deleted.push(matches!(e.change, Change::Deleted(_)));
        deleted_reason.push(match e.change {
            Change::Deleted(reason) => Some(reason.as_str()),
            _ => None,
        });
        generation.push(e.position.generation);
        version.push(e.position.version);
        schema_version.push(i16::from(e.published_schema.number()));
        last_event_id.push(e.event_id.as_str());
        occurred_at.push(e.occurred_at);
    }
    let written: i64 = sqlx::query_scalar(UPSERT_STATE)
        .bind(user_id)
        .bind(email)
        .bind(display_name)
        .bind(country)
        .bind(plan)
        .bind(marketing_email)
        .bind(marketing_sms)
        .bind(locale)
        .bind(time_zone)
        .bind(lifetime_value_cents)
        .bind(created_at)
        .bind(updated_at)
        .bind(deleted)
        .bind(deleted_reason)
        .bind(generation)
        .bind(version)
        .bind(schema_version)
        .bind(last_event_id)
        .bind(occurred_at)
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64::try_from(written).expect("count(*) is never negative"))
}

#[cfg(test)]
pub(crate) mod test_events {
    //! Event builders shared by this crate's tests.

    use contracts::{
        Change, ChangeEvent, Consents, DeleteReason, Position, Profile, SchemaVersion, Source,
    };
    use time::OffsetDateTime;
    use time::macros::datetime;

    /// A schema change behind the subscriber's back that refuses every insert (23502).
    pub(crate) const NOT_NULL_COLUMN_ADDED: &str =
        "ALTER TABLE analytics.user_profiles ADD COLUMN tenant text NOT NULL";

    const AT: OffsetDateTime = datetime!(2026-11-25 01:02:03.5 UTC);

    fn event(key: &str, generation: i64, version: i64, change: Change) -> ChangeEvent {
        let kind = change.event_type().as_str();
        ChangeEvent {
            event_id: format!("{key}/{generation}/{version}/{kind}"),
            key: key.to_owned(),
            position: Position {
                generation,
                version,
            },
            occurred_at: AT,
            published_at: AT,
            source: Source {
                table: "profiles".to_owned(),
                stream_arn: None,
                sequence_number: Some(format!("{generation}{version:020}")),
            },
            published_schema: SchemaVersion::V2,
            change,
        }
    }

    pub fn profile(key: &str, email: &str) -> Profile {
        Profile {
            user_id: key.to_owned(),
            email: email.to_owned(),
            display_name: format!("User {key}"),
            country: Some("GB".to_owned()),
            plan: "pro".to_owned(),
            consents: Consents {
                marketing_email: true,
                marketing_sms: false,
            },
            locale: Some("en-GB".to_owned()),
            time_zone: Some("Europe/London".to_owned()),
            lifetime_value_cents: Some("1234".parse().expect("valid number")),
            created_at: datetime!(2026-11-20 09:30:00.123456 UTC),
            updated_at: AT,
        }
    }

    pub fn upsert(key: &str, generation: i64, version: i64, email: &str) -> ChangeEvent {
        event(
            key,
            generation,
            version,
            Change::Upserted(profile(key, email)),
        )
    }

    pub fn snapshot(key: &str, generation: i64, version: i64, email: &str) -> ChangeEvent {
        event(
            key,
            generation,
            version,
            Change::Snapshot(profile(key, email)),
        )
    }

    pub fn delete(key: &str, generation: i64, version: i64) -> ChangeEvent {
        event(
            key,
            generation,
            version,
            Change::Deleted(DeleteReason::Deleted),
        )
    }

    /// Runs one statement the test needs (a schema change behind the service's back).
    pub async fn exec(pool: &sqlx::PgPool, sql: &str) {
        sqlx::query(sql).execute(pool).await.unwrap();
    }

    /// Rows in `table`.
    pub async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// [`super::apply_atomically`] of a batch that must commit.
    pub(crate) async fn apply(pool: &sqlx::PgPool, events: &[ChangeEvent]) -> super::ApplyReport {
        super::apply_atomically(pool, events).await.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_events::*;
    use super::*;

    #[test]
    fn latest_per_key_keeps_the_greatest_position_and_sorts_by_key() {
        let events = vec![
            upsert("b", 1, 2, "b2@x"),
            upsert("a", 1, 5, "a5@x"),
            upsert("b", 1, 3, "b3@x"),
            upsert("a", 1, 4, "a4@x"),
            upsert("b", 1, 1, "b1@x"),
        ];
        let latest = latest_per_key(&events);
        let picked: Vec<_> = latest.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(picked, ["a/1/5/profile.upserted", "b/1/3/profile.upserted"]);
    }

    #[test]
    fn a_delete_outranks_an_upsert_of_the_same_position_in_either_order() {
        for events in [
            vec![upsert("a", 1, 3, "a@x"), delete("a", 1, 3)],
            vec![delete("a", 1, 3), upsert("a", 1, 3, "a@x")],
        ] {
            let latest = latest_per_key(&events);
            assert_eq!(latest.len(), 1);
            assert!(matches!(latest[0].change, Change::Deleted(_)));
        }
    }

    #[test]
    fn a_higher_generation_outranks_any_version_of_an_older_one() {
        let events = vec![delete("a", 1, 90), upsert("a", 2, 1, "new@x")];
        assert_eq!(latest_per_key(&events)[0].position.generation, 2);
    }

    #[test]
    fn of_two_events_of_equal_rank_the_first_is_kept() {
        let events = vec![
            upsert("a", 1, 3, "first@x"),
            snapshot("a", 1, 3, "second@x"),
        ];
        assert!(matches!(
            latest_per_key(&events)[0].change,
            Change::Upserted(_)
        ));
    }
}

#[cfg(test)]
mod db_tests {
    //! Against a real PostgreSQL: `#[sqlx::test]` creates a fresh database per test from
    //! `DATABASE_URL` and runs the migrations into it.

    use super::test_events::*;
    use super::*;
    use contracts::DdbNumber;
    use sqlx::PgPool;

    /// (deleted, email, generation, version, deleted_reason)
    type StateRow = (bool, Option<String>, i64, i64, Option<String>);

    async fn state(pool: &PgPool, key: &str) -> Option<StateRow> {
        sqlx::query_as(
            "SELECT deleted, email, generation, version, deleted_reason
             FROM analytics.user_profiles WHERE user_id = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await
        .unwrap()
    }

    async fn history_count(pool: &PgPool) -> i64 {
        count(pool, "analytics.profile_changes").await
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn every_event_applied_twice_has_one_effect(pool: PgPool) {
        let events = vec![
            upsert("a", 1, 1, "a1@x"),
            upsert("a", 1, 2, "a2@x"),
            upsert("b", 1, 1, "b1@x"),
            delete("b", 1, 2),
            snapshot("c", 1, 7, "c7@x"),
        ];
        let first = apply(&pool, &events).await;
        assert_eq!(
            first,
            ApplyReport {
                history_inserted: 5,
                history_duplicates: 0,
                applied: 3,
                stale: 2
            }
        );
        let states = [
            state(&pool, "a").await,
            state(&pool, "b").await,
            state(&pool, "c").await,
        ];

        // Again as a batch, then one by one in reverse order.
        let again = apply(&pool, &events).await;
        assert_eq!(again.history_inserted, 0);
        assert_eq!(again.history_duplicates, 5);
        assert_eq!(again.applied, 0);
        for event in events.iter().rev() {
            let report = apply_atomically(&pool, std::slice::from_ref(event))
                .await
                .unwrap();
            assert_eq!((report.history_inserted, report.applied), (0, 0));
        }

        assert_eq!(history_count(&pool).await, 5);
        assert_eq!(
            [
                state(&pool, "a").await,
                state(&pool, "b").await,
                state(&pool, "c").await
            ],
            states
        );
        assert_eq!(states[0], Some((false, Some("a2@x".into()), 1, 2, None)));
        assert_eq!(states[1], Some((true, None, 1, 2, Some("deleted".into()))));
        assert_eq!(states[2], Some((false, Some("c7@x".into()), 1, 7, None)));
    }

    /// The v2 golden-style upsert with the v2-only fields set, and its v1 twin: the same
    /// change as a v1 publisher sends it (encoded as v1, decoded and upcast).
    fn v2_and_v1_twin() -> (ChangeEvent, ChangeEvent) {
        let mut v2 = upsert("a", 1, 3, "a@x");
        if let Change::Upserted(p) = &mut v2.change {
            p.consents.marketing_sms = true;
            p.time_zone = Some("Europe/London".to_owned());
        }
        let v1 = contracts::decode(&v2.encode(contracts::SchemaVersion::V1)).unwrap();
        assert_eq!(v1.published_schema, contracts::SchemaVersion::V1);
        assert_eq!(v1.position, v2.position);
        (v2, v1)
    }

    /// (marketing_sms, time_zone, schema_version) of the state row, and the history's
    /// (schema_version, data->consents->marketing_sms) for the change.
    async fn sms_and_zone(pool: &PgPool) -> ((bool, Option<String>, i16), (i16, bool)) {
        let state = sqlx::query_as(
            "SELECT marketing_sms, time_zone, schema_version FROM analytics.user_profiles
             WHERE user_id = 'a'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let history = sqlx::query_as(
            "SELECT schema_version, (data->'consents'->>'marketing_sms')::bool
             FROM analytics.profile_changes WHERE key = 'a'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (state, history)
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn v1_and_v2_copies_of_one_change_converge_on_the_v2_content_in_any_order(pool: PgPool) {
        let (v2, v1) = v2_and_v1_twin();
        let richest = ((true, Some("Europe/London".to_owned()), 2), (2, true));
        // One at a time, alternating, in both starting orders: the row never flaps.
        for order in [[&v2, &v1, &v2, &v1], [&v1, &v2, &v1, &v2]] {
            exec(
                &pool,
                "TRUNCATE analytics.user_profiles, analytics.profile_changes",
            )
            .await;
            for (i, event) in order.into_iter().enumerate() {
                apply_atomically(&pool, std::slice::from_ref(event))
                    .await
                    .unwrap();
                if i > 0 || event.published_schema == contracts::SchemaVersion::V2 {
                    assert_eq!(sms_and_zone(&pool).await, richest, "after event {i}");
                }
            }
            assert_eq!(history_count(&pool).await, 1, "one change, one history row");
        }
        // Both copies in one batch, in either order.
        for batch in [[v1.clone(), v2.clone()], [v2.clone(), v1.clone()]] {
            exec(
                &pool,
                "TRUNCATE analytics.user_profiles, analytics.profile_changes",
            )
            .await;
            let report = apply(&pool, &batch).await;
            assert_eq!((report.history_inserted, report.applied), (1, 1));
            assert_eq!(sms_and_zone(&pool).await, richest);
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_sql_guard_orders_every_pair_of_ranks_as_rank_does(pool: PgPool) {
        use contracts::{Position, Rank, SchemaVersion};
        let mut ranks = Vec::new();
        for generation in [1, 2] {
            for version in [1, 2] {
                for deleted in [false, true] {
                    for schema in SchemaVersion::ALL {
                        ranks.push(Rank {
                            position: Position {
                                generation,
                                version,
                            },
                            deleted,
                            schema: schema.number().into(),
                        });
                    }
                }
            }
        }
        let cols = |side: &str| {
            Rank::SQL_GUARD_COLUMNS
                .iter()
                .map(|c| format!("{side}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "WITH r AS (SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::bool[], $4::int2[])
                         WITH ORDINALITY AS r(generation, version, deleted, schema_version, n))
             SELECT a.n, b.n, ({}) < ({}) FROM r a, r b",
            cols("a"),
            cols("b")
        );
        let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&sql)
            .bind(
                ranks
                    .iter()
                    .map(|r| r.position.generation)
                    .collect::<Vec<_>>(),
            )
            .bind(ranks.iter().map(|r| r.position.version).collect::<Vec<_>>())
            .bind(ranks.iter().map(|r| r.deleted).collect::<Vec<_>>())
            .bind(
                ranks
                    .iter()
                    .map(|r| i16::try_from(r.schema).expect("a small schema version"))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), ranks.len() * ranks.len());
        for (a, b, sql_less) in rows {
            let (ra, rb) = (ranks[a as usize - 1], ranks[b as usize - 1]);
            assert_eq!(sql_less, ra < rb, "{ra:?} < {rb:?}");
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn duplicate_events_in_one_batch_are_one_effect(pool: PgPool) {
        let e = upsert("a", 1, 1, "a@x");
        let report = apply(&pool, &[e.clone(), e.clone(), e]).await;
        assert_eq!(report.history_inserted, 1);
        assert_eq!(report.history_duplicates, 2);
        assert_eq!(report.applied, 1);
        assert_eq!(report.stale, 2);
        assert_eq!(history_count(&pool).await, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn delete_then_late_older_upsert_stays_a_tombstone(pool: PgPool) {
        apply(&pool, &[delete("a", 1, 5)]).await;
        let late = apply(&pool, &[upsert("a", 1, 4, "old@x")]).await;
        assert_eq!((late.applied, late.stale), (0, 1));
        // A snapshot read before the delete must not resurrect it either.
        apply(&pool, &[snapshot("a", 1, 5, "snap@x")]).await;
        assert_eq!(
            state(&pool, "a").await,
            Some((true, None, 1, 5, Some("deleted".into())))
        );
        // The history still records every source change.
        assert_eq!(history_count(&pool).await, 3);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn delete_of_a_never_seen_key_inserts_a_tombstone(pool: PgPool) {
        let report = apply(&pool, &[delete("ghost", 3, 9)]).await;
        assert_eq!(report.applied, 1);
        assert_eq!(
            state(&pool, "ghost").await,
            Some((true, None, 3, 9, Some("deleted".into())))
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn tombstone_clears_every_profile_column(pool: PgPool) {
        apply(&pool, &[upsert("a", 1, 1, "a@x")]).await;
        apply(&pool, &[delete("a", 1, 2)]).await;
        let remaining: i32 = sqlx::query_scalar(
            "SELECT num_nonnulls(email, display_name, country, plan, marketing_email,
                    marketing_sms, locale, time_zone, lifetime_value_cents, created_at,
                    updated_at)
             FROM analytics.user_profiles WHERE user_id = 'a'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(remaining, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn recreated_item_wins_over_the_tombstone(pool: PgPool) {
        apply(&pool, &[upsert("a", 100, 1, "old@x"), delete("a", 100, 7)]).await;
        // Re-created: a higher generation, its version counter restarting at 1.
        apply(&pool, &[upsert("a", 200, 1, "new@x")]).await;
        assert_eq!(
            state(&pool, "a").await,
            Some((false, Some("new@x".into()), 200, 1, None))
        );
        // A late event of the old generation changes nothing.
        apply(&pool, &[upsert("a", 100, 6, "older@x")]).await;
        assert_eq!(
            state(&pool, "a").await,
            Some((false, Some("new@x".into()), 200, 1, None))
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn upsert_and_delete_of_the_same_position_in_one_batch_leave_a_tombstone(pool: PgPool) {
        apply(&pool, &[upsert("a", 1, 3, "a@x"), delete("a", 1, 3)]).await;
        apply(&pool, &[delete("b", 1, 3), upsert("b", 1, 3, "b@x")]).await;
        for key in ["a", "b"] {
            assert_eq!(
                state(&pool, key).await,
                Some((true, None, 1, 3, Some("deleted".into())))
            );
        }
        // Both changes of each key are in the history: they are different rows.
        assert_eq!(history_count(&pool).await, 4);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn big_numbers_survive_exactly(pool: PgPool) {
        let cases = [
            ("a", "98765432109876543210987654321098765432"),
            ("b", "-0.12345678901234567890123456789012345678"),
            ("c", "9.9999999999999999999999999999999999999E+125"),
        ];
        for (key, number) in cases {
            let mut event = upsert(key, 1, 1, "x@x");
            if let Change::Upserted(p) = &mut event.change {
                p.lifetime_value_cents = Some(number.parse::<DdbNumber>().unwrap());
            }
            apply(&pool, &[event]).await;
            let exact: bool = sqlx::query_scalar(
                "SELECT lifetime_value_cents = $2::numeric
                 FROM analytics.user_profiles WHERE user_id = $1",
            )
            .bind(key)
            .bind(number)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert!(exact, "{number}");
            // The history keeps the decimal string as published.
            let in_history: String = sqlx::query_scalar(
                "SELECT data->>'lifetime_value_cents' FROM analytics.profile_changes WHERE key = $1",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(in_history, number);
        }
        let text: String = sqlx::query_scalar(
            "SELECT lifetime_value_cents::text FROM analytics.user_profiles WHERE user_id = 'a'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(text, "98765432109876543210987654321098765432");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn same_change_under_another_event_id_is_one_history_row(pool: PgPool) {
        let from_stream = upsert("a", 1, 4, "a@x");
        let mut from_snapshot = snapshot("a", 1, 4, "a@x");
        from_snapshot.event_id = "snapshot-a-1-4".to_owned();
        let report = apply(&pool, &[from_stream, from_snapshot]).await;
        assert_eq!((report.history_inserted, report.history_duplicates), (1, 1));
        assert_eq!(history_count(&pool).await, 1);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn snapshot_never_overwrites_a_newer_change(pool: PgPool) {
        apply(&pool, &[upsert("a", 1, 9, "new@x")]).await;
        apply(&pool, &[snapshot("a", 1, 8, "snap@x")]).await;
        assert_eq!(
            state(&pool, "a").await,
            Some((false, Some("new@x".into()), 1, 9, None))
        );
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_event_at_the_same_position_restores_a_row_edited_out_of_band(pool: PgPool) {
        apply(&pool, &[upsert("a", 1, 4, "a@x")]).await;
        exec(
            &pool,
            "UPDATE analytics.user_profiles SET email = 'tampered@x'",
        )
        .await;
        // An identical redelivery of an untouched row writes nothing …
        apply(&pool, &[upsert("b", 1, 1, "b@x")]).await;
        let again = apply(&pool, &[upsert("b", 1, 1, "b@x")]).await;
        assert_eq!((again.applied, again.stale), (0, 1));
        // … while the same position with the source's content repairs the edited one.
        let repaired = apply(&pool, &[snapshot("a", 1, 4, "a@x")]).await;
        assert_eq!(repaired.applied, 1);
        assert_eq!(
            state(&pool, "a").await,
            Some((false, Some("a@x".into()), 1, 4, None))
        );
        // A tombstone is never revived by an upsert of its own position.
        apply(&pool, &[delete("a", 1, 4)]).await;
        apply(&pool, &[snapshot("a", 1, 4, "a@x")]).await;
        assert_eq!(state(&pool, "a").await.map(|s| s.0), Some(true));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn text_the_database_refuses_is_a_permanent_error(pool: PgPool) {
        let bad = upsert("a", 1, 1, "nul\0byte@x");
        let err = apply_atomically(&pool, &[upsert("b", 1, 1, "b@x"), bad])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), FailureKind::Permanent, "{err:?}");
        assert!(!err.is_retryable());
        // Nothing of the batch was committed.
        assert_eq!(history_count(&pool).await, 0);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_not_null_column_added_behind_our_back_needs_an_operator(pool: PgPool) {
        exec(&pool, NOT_NULL_COLUMN_ADDED).await;
        let err = apply_atomically(&pool, &[upsert("a", 1, 1, "a@x")])
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate().as_deref(), Some("23502"));
        assert_eq!(err.kind(), FailureKind::NeedsOperator);
        assert!(err.is_retryable());
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_probe_passes_on_a_migrated_store_and_fails_without_its_tables(pool: PgPool) {
        probe(&pool).await.unwrap();
        exec(&pool, "DROP TABLE analytics.profile_changes").await;
        let err = probe(&pool).await.unwrap_err();
        assert_eq!(classify(&err), FailureKind::NeedsOperator);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn missing_table_needs_an_operator_and_is_retried(pool: PgPool) {
        exec(&pool, "DROP TABLE analytics.profile_changes").await;
        let err = apply_atomically(&pool, &[upsert("a", 1, 1, "a@x")])
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate().as_deref(), Some("42P01"));
        assert_eq!(err.kind(), FailureKind::NeedsOperator);
        assert!(err.is_retryable());
    }
}
