//! SQL built from a subscriber [`Mapping`]: the same two set-based statements as
//! [`crate::apply`] (one history insert, one rank-guarded state upsert per batch) for
//! any declared entity.
//!
//! The statements are built once, at start, from the mapping alone: identifiers are
//! quoted, and no SQL is ever assembled from an event's data, which travels only in
//! bound arrays (one per column, typed by the column's SQL type). The guard is
//! [`contracts::Rank`]'s, from [`Rank::SQL_GUARD_COLUMNS`].

use contracts::entity::{Event, kind};
use contracts::{DeleteReason, Rank};
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apply::{ApplyError, ApplyReport};
use crate::mapping::{Column, DeletePolicy, Mapping, SqlType};

/// Why an event's data cannot be bound to its columns: permanent, so the event is parked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event {event_id:?}: field {field:?} cannot be stored in column {column:?} ({sql}): {problem}"
)]
pub struct BindError {
    pub event_id: String,
    pub field: String,
    pub column: String,
    pub sql: &'static str,
    pub problem: String,
}

/// The statements of one declared table, built once from its mapping.
#[derive(Debug, Clone)]
pub struct Table {
    /// The key columns first, then the others.
    columns: Vec<Column>,
    keys: usize,
    soft: bool,
    catch_all: Option<String>,
    upsert_state: String,
    insert_history: String,
    probe: String,
}

/// `"name"`, with any `"` doubled. Mapped names are plain identifiers already; quoting
/// them anyway keeps a reserved word (`order`, `user`) a column name.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified((schema, table): &(String, String)) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// The rank guard's columns on one side of the upsert (`stored` or `excluded`).
fn guard_of(side: &str) -> String {
    Rank::SQL_GUARD_COLUMNS
        .iter()
        .map(|c| format!("{side}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a column's bound array is declared, and how its element becomes the column's
/// value in the SELECT.
fn binding(sql: SqlType, value: &str) -> (&'static str, String) {
    let from_json_array = |element: &str| {
        format!(
            "CASE WHEN {value} IS NULL THEN NULL ELSE ARRAY(SELECT {element} FROM jsonb_array_elements_text({value}::jsonb) AS x) END"
        )
    };
    match sql {
        SqlType::Text => ("text[]", value.to_owned()),
        SqlType::Numeric => ("text[]", format!("{value}::numeric")),
        SqlType::SmallInt => ("int8[]", format!("{value}::smallint")),
        SqlType::Integer => ("int8[]", format!("{value}::integer")),
        SqlType::BigInt => ("int8[]", value.to_owned()),
        SqlType::Boolean => ("bool[]", value.to_owned()),
        SqlType::TimestampTz => ("timestamptz[]", value.to_owned()),
        SqlType::Bytea => ("bytea[]", value.to_owned()),
        SqlType::Jsonb => ("text[]", format!("{value}::jsonb")),
        SqlType::TextArray => ("text[]", from_json_array("x")),
        SqlType::NumericArray => ("text[]", from_json_array("x::numeric")),
        SqlType::ByteaArray => ("text[]", from_json_array("decode(x, 'base64')")),
    }
}

impl Table {
    /// Builds the statements of `mapping`'s table.
    pub fn new(mapping: &Mapping) -> Table {
        let mut columns: Vec<Column> = mapping.key.clone();
        columns.extend(mapping.columns.iter().cloned());
        let state = qualified(&mapping.table);
        let history = qualified(&mapping.history);
        let soft = mapping.delete == DeletePolicy::Soft;

        // The data columns, then the catch-all, then tributary's own.
        let mut names: Vec<String> = columns.iter().map(|c| quote(&c.column)).collect();
        let mut declared: Vec<&'static str> = Vec::new();
        let mut selected: Vec<String> = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let (array, select) = binding(c.sql, &format!("s.c{i}"));
            declared.push(array);
            selected.push(select);
        }
        let mut aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        if let Some(c) = &mapping.catch_all {
            names.push(quote(c));
            declared.push("text[]");
            selected.push("s.catch_all::jsonb".into());
            aliases.push("catch_all".into());
        }
        let data_names = names.clone();
        let own: [(&str, &str); 7] = [
            ("deleted", "bool[]"),
            ("deleted_reason", "text[]"),
            ("generation", "int8[]"),
            ("version", "int8[]"),
            ("schema_version", "int2[]"),
            ("last_event_id", "text[]"),
            ("occurred_at", "timestamptz[]"),
        ];
        for (name, array) in own {
            names.push(quote(name));
            declared.push(array);
            selected.push(format!("s.{name}"));
            aliases.push(name.to_owned());
        }
        if soft {
            // A soft delete keeps the row with the latest data the item had: that data's
            // own position travels beside the row's, so an upsert older than the delete
            // but newer than the data held still lands its data, in any order.
            for name in ["data_generation", "data_version"] {
                names.push(quote(name));
                declared.push("int8[]");
                selected.push(format!("s.{name}"));
                aliases.push(name.to_owned());
            }
            names.push(quote("deleted_at"));
            selected.push("CASE WHEN s.deleted THEN s.occurred_at END".into());
        }
        let params: Vec<String> = declared
            .iter()
            .enumerate()
            .map(|(i, array)| format!("${}::{array}", i + 1))
            .collect();
        let key_names: Vec<String> = mapping.key.iter().map(|c| quote(&c.column)).collect();
        let rank_newer = format!("({}) < ({})", guard_of("stored"), guard_of("excluded"));
        let data_newer = |op: &str| {
            format!(
                "(excluded.data_generation IS NOT NULL AND (stored.data_generation IS NULL OR (stored.data_generation, stored.data_version) {op} (excluded.data_generation, excluded.data_version)))"
            )
        };
        let mut set: Vec<String> = data_names
            .iter()
            .filter(|n| !key_names.contains(n))
            .map(|n| {
                if soft {
                    format!(
                        "{n} = CASE WHEN {} THEN excluded.{n} ELSE stored.{n} END",
                        data_newer("<=")
                    )
                } else {
                    format!("{n} = excluded.{n}")
                }
            })
            .collect();
        for (name, _) in own {
            let n = quote(name);
            if soft {
                set.push(format!(
                    "{n} = CASE WHEN {rank_newer} THEN excluded.{n} ELSE stored.{n} END"
                ));
            } else {
                set.push(format!("{n} = excluded.{n}"));
            }
        }
        if soft {
            for name in ["data_generation", "data_version"] {
                let n = quote(name);
                set.push(format!(
                    "{n} = CASE WHEN {} THEN excluded.{n} ELSE stored.{n} END",
                    data_newer("<=")
                ));
            }
            let n = quote("deleted_at");
            set.push(format!(
                "{n} = CASE WHEN {rank_newer} THEN excluded.{n} ELSE stored.{n} END"
            ));
        }
        set.push("\"applied_at\" = now()".into());
        let also = if soft {
            format!("\n   OR {}", data_newer("<"))
        } else {
            String::new()
        };
        let guard = guard_of;
        let same = |side: &str| {
            Rank::SQL_GUARD_COLUMNS
                .iter()
                .map(|c| format!("{side}.{}", c.trim_end_matches("::int")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let content = |side: &str| {
            data_names
                .iter()
                .filter(|n| !key_names.contains(n))
                .map(|n| format!("{side}.{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let upsert_state = format!(
            "WITH written AS (\n\
             INSERT INTO {state} AS stored ({names})\n\
             SELECT {selected}\n\
             FROM UNNEST({params}) WITH ORDINALITY AS s({aliases}, n)\n\
             ORDER BY s.n\n\
             ON CONFLICT ({key}) DO UPDATE SET {set}\n\
             WHERE ({guard_stored}) < ({guard_excluded})\n\
                OR (({same_stored}) = ({same_excluded}) AND NOT excluded.deleted\n\
                    AND ({content_stored}) IS DISTINCT FROM ({content_excluded})){also}\n\
             RETURNING 1)\n\
             SELECT count(*) FROM written",
            names = names.join(", "),
            selected = selected.join(", "),
            params = params.join(", "),
            aliases = aliases.join(", "),
            key = key_names.join(", "),
            set = set.join(", "),
            guard_stored = guard("stored"),
            guard_excluded = guard("excluded"),
            same_stored = same("stored"),
            same_excluded = same("excluded"),
            content_stored = content("stored"),
            content_excluded = content("excluded"),
        );
        let insert_history = format!(
            "WITH written AS (\n\
             INSERT INTO {history} AS recorded\n\
                 (event_id, key, generation, version, deleted, event_type, reason, schema_version,\n\
                  data, occurred_at, published_at, source_sequence_number)\n\
             SELECT e.event_id, e.key, e.generation, e.version, e.deleted, e.event_type, e.reason,\n\
                    e.schema_version, e.data::jsonb, e.occurred_at, e.published_at, e.source_sequence_number\n\
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bool[], $6::text[],\n\
                         $7::text[], $8::int2[], $9::text[], $10::timestamptz[], $11::timestamptz[],\n\
                         $12::text[])\n\
                  WITH ORDINALITY\n\
                  AS e(event_id, key, generation, version, deleted, event_type, reason,\n\
                       schema_version, data, occurred_at, published_at, source_sequence_number, n)\n\
             ORDER BY e.n\n\
             ON CONFLICT (key, generation, version, deleted) DO UPDATE SET\n\
                 data = excluded.data, schema_version = excluded.schema_version\n\
             WHERE recorded.schema_version < excluded.schema_version\n\
             RETURNING (xmax = 0) AS inserted)\n\
             SELECT count(*) FILTER (WHERE inserted) FROM written"
        );
        Table {
            columns,
            keys: mapping.key.len(),
            soft,
            catch_all: mapping.catch_all.clone(),
            upsert_state,
            insert_history,
            probe: format!("SELECT 1 FROM {state}, {history} LIMIT 0"),
        }
    }

    /// Applies a batch in its own transaction: BEGIN; [`Table::apply_batch`]; COMMIT.
    ///
    /// # Errors
    /// Any [`ApplyError`]; nothing is committed then.
    pub async fn apply_atomically(
        &self,
        pool: &sqlx::PgPool,
        events: &[Event],
    ) -> Result<ApplyReport, ApplyError> {
        let mut tx = pool.begin().await.map_err(ApplyError::Begin)?;
        let report = self.apply_batch(&mut tx, events).await?;
        tx.commit().await.map_err(ApplyError::Commit)?;
        Ok(report)
    }

    /// A statement that reads nothing from the two tables but fails as the apply would
    /// if either is missing or not readable.
    pub fn probe_sql(&self) -> &str {
        &self.probe
    }

    /// The state upsert, for review and tests.
    pub fn upsert_sql(&self) -> &str {
        &self.upsert_state
    }

    /// Checks that every event's data binds to its columns, before anything is sent.
    ///
    /// # Errors
    /// The first event's [`BindError`]: park it, apply the rest.
    pub fn check(&self, event: &Event) -> Result<(), BindError> {
        let mut columns = Columns::new(&self.columns, 1);
        columns.push(&self.columns, self.keys, event, event.data.as_ref())
    }

    /// Applies a batch on `conn`, as [`crate::apply::apply_batch`] does for the coded
    /// profile: every event into the history, the greatest event per key into the state.
    ///
    /// # Errors
    /// [`ApplyError::History`] or [`ApplyError::State`]; the caller rolls back.
    /// An event whose data does not bind is refused before any SQL runs
    /// ([`ApplyError::Bind`]).
    pub async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Event],
    ) -> Result<ApplyReport, ApplyError> {
        if events.is_empty() {
            return Ok(ApplyReport::default());
        }
        let history_inserted =
            self.insert_history(conn, events)
                .await
                .map_err(|source| ApplyError::History {
                    events: events.len(),
                    source,
                })?;
        let latest = latest_per_key(events);
        let upserts = if self.soft {
            latest_per_key_where(events, |e| e.deleted.is_none())
        } else {
            Vec::new()
        };
        let applied = self.upsert_state(conn, &latest, &upserts).await?;
        let total = events.len() as u64;
        Ok(ApplyReport {
            history_inserted,
            history_duplicates: total - history_inserted,
            applied,
            stale: total - applied,
        })
    }

    async fn insert_history(&self, conn: &mut PgConnection, events: &[Event]) -> sqlx::Result<u64> {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by(|a, b| (a.key.as_str(), a.rank()).cmp(&(b.key.as_str(), b.rank())));
        // Copies of one change: the richest, first of equals (see apply::insert_history).
        let mut richest: Vec<&Event> = Vec::with_capacity(sorted.len());
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
        let inserted: i64 = sqlx::query_scalar(&self.insert_history)
            .bind(
                richest
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(richest.iter().map(|e| e.key.as_str()).collect::<Vec<_>>())
            .bind(
                richest
                    .iter()
                    .map(|e| e.position.generation)
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| e.position.version)
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| e.deleted.is_some())
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| e.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| e.deleted.map(DeleteReason::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| schema_i16(e.schema))
                    .collect::<Vec<_>>(),
            )
            .bind(
                richest
                    .iter()
                    .map(|e| e.data.as_ref().map(Value::to_string))
                    .collect::<Vec<_>>(),
            )
            .bind(richest.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
            .bind(richest.iter().map(|e| e.published_at).collect::<Vec<_>>())
            .bind(
                richest
                    .iter()
                    .map(|e| e.source.sequence_number.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_one(&mut *conn)
            .await?;
        Ok(u64::try_from(inserted).expect("count(*) is never negative"))
    }

    /// `latest`: the greatest event per key; `upserts` (soft deletes only): the
    /// greatest upsert per key, whose data the row holds.
    async fn upsert_state(
        &self,
        conn: &mut PgConnection,
        latest: &[&Event],
        upserts: &[&Event],
    ) -> Result<u64, ApplyError> {
        let mut columns = Columns::new(&self.columns, latest.len());
        let mut catch_all: Vec<Option<String>> = Vec::with_capacity(latest.len());
        // The event whose data each row carries: the row's own event, or (soft deletes)
        // the key's greatest upsert in the batch, if it has one.
        let data_events: Vec<Option<&Event>> = latest
            .iter()
            .map(|e| {
                if self.soft {
                    upserts
                        .binary_search_by(|u| u.key.as_str().cmp(&e.key))
                        .ok()
                        .map(|i| upserts[i])
                } else {
                    Some(*e)
                }
            })
            .collect();
        for (e, d) in latest.iter().zip(&data_events) {
            let data = d.and_then(|d| d.data.as_ref());
            columns
                .push(&self.columns, self.keys, e, data)
                .map_err(ApplyError::Bind)?;
            if self.catch_all.is_some() {
                catch_all.push(data.map(|d| self.unmapped(d).to_string()));
            }
        }
        let mut query: QueryScalar<'_, sqlx::Postgres, i64, PgArguments> =
            sqlx::query_scalar(&self.upsert_state);
        for values in columns.values {
            query = match values {
                Values::Text(v) => query.bind(v),
                Values::Int(v) => query.bind(v),
                Values::Bool(v) => query.bind(v),
                Values::Time(v) => query.bind(v),
                Values::Bytes(v) => query.bind(v),
            };
        }
        if self.catch_all.is_some() {
            query = query.bind(catch_all);
        }
        query = query
            .bind(
                latest
                    .iter()
                    .map(|e| e.deleted.is_some())
                    .collect::<Vec<_>>(),
            )
            .bind(
                latest
                    .iter()
                    .map(|e| e.deleted.map(DeleteReason::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(
                latest
                    .iter()
                    .map(|e| e.position.generation)
                    .collect::<Vec<_>>(),
            )
            .bind(
                latest
                    .iter()
                    .map(|e| e.position.version)
                    .collect::<Vec<_>>(),
            )
            .bind(
                latest
                    .iter()
                    .map(|e| schema_i16(e.schema))
                    .collect::<Vec<_>>(),
            )
            .bind(
                latest
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(latest.iter().map(|e| e.occurred_at).collect::<Vec<_>>());
        if self.soft {
            query = query
                .bind(
                    data_events
                        .iter()
                        .map(|d| d.map(|d| d.position.generation))
                        .collect::<Vec<_>>(),
                )
                .bind(
                    data_events
                        .iter()
                        .map(|d| d.map(|d| d.position.version))
                        .collect::<Vec<_>>(),
                );
        }
        let written: i64 =
            query
                .fetch_one(&mut *conn)
                .await
                .map_err(|source| ApplyError::State {
                    keys: latest.len(),
                    source,
                })?;
        Ok(u64::try_from(written).expect("count(*) is never negative"))
    }

    /// The fields of `data` no column maps, for the catch-all column.
    fn unmapped(&self, data: &Value) -> Value {
        let mut rest = data.clone();
        for c in &self.columns {
            remove_path(&mut rest, &c.field);
        }
        rest
    }
}

fn schema_i16(schema: u16) -> i16 {
    i16::try_from(schema).unwrap_or(i16::MAX)
}

/// The greatest event per key by [`Rank`], sorted by key (see [`crate::apply`]).
fn latest_per_key(events: &[Event]) -> Vec<&Event> {
    latest_per_key_where(events, |_| true)
}

/// [`latest_per_key`] of the events `keep` accepts.
fn latest_per_key_where(events: &[Event], keep: impl Fn(&Event) -> bool) -> Vec<&Event> {
    let mut latest: std::collections::BTreeMap<&str, &Event> = std::collections::BTreeMap::new();
    for event in events.iter().filter(|e| keep(e)) {
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

/// One column's bound values.
enum Values {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<OffsetDateTime>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

struct Columns {
    values: Vec<Values>,
}

/// The key's parts, one per key column: the key itself, or the elements of the JSON
/// array a composite key is (see the contract's docs).
fn key_parts(key: &str, columns: usize) -> Option<Vec<Value>> {
    if columns == 1 {
        return Some(vec![Value::String(key.to_owned())]);
    }
    match serde_json::from_str::<Value>(key).ok()? {
        Value::Array(parts) if parts.len() == columns && parts.iter().all(Value::is_string) => {
            Some(parts)
        }
        _ => None,
    }
}

impl Columns {
    fn new(columns: &[Column], n: usize) -> Columns {
        let values = columns
            .iter()
            .map(|c| match c.sql {
                SqlType::SmallInt | SqlType::Integer | SqlType::BigInt => {
                    Values::Int(Vec::with_capacity(n))
                }
                SqlType::Boolean => Values::Bool(Vec::with_capacity(n)),
                SqlType::TimestampTz => Values::Time(Vec::with_capacity(n)),
                SqlType::Bytea => Values::Bytes(Vec::with_capacity(n)),
                _ => Values::Text(Vec::with_capacity(n)),
            })
            .collect();
        Columns { values }
    }

    /// Pushes one row: its key from `event`, its data columns from `data`.
    fn push(
        &mut self,
        columns: &[Column],
        keys: usize,
        event: &Event,
        data: Option<&Value>,
    ) -> Result<(), BindError> {
        let parts = key_parts(&event.key, keys).ok_or_else(|| BindError {
            event_id: event.event_id.clone(),
            field: "key".into(),
            column: columns
                .first()
                .map(|c| c.column.clone())
                .unwrap_or_default(),
            sql: "text",
            problem: format!(
                "the key {:?} is not the JSON array of {keys} strings a composite key is",
                event.key
            ),
        })?;
        for (i, (column, values)) in columns.iter().zip(&mut self.values).enumerate() {
            let value = if i < keys {
                Some(&parts[i])
            } else {
                data.and_then(|data| get_path(data, &column.field).filter(|v| !v.is_null()))
            };
            let fail = |problem: String| BindError {
                event_id: event.event_id.clone(),
                field: column.field.clone(),
                column: column.column.clone(),
                sql: column.sql.sql(),
                problem,
            };
            match values {
                Values::Text(v) => v.push(match value {
                    None => None,
                    Some(Value::String(s))
                        if !matches!(
                            column.sql,
                            SqlType::Jsonb
                                | SqlType::TextArray
                                | SqlType::NumericArray
                                | SqlType::ByteaArray
                        ) =>
                    {
                        Some(s.clone())
                    }
                    Some(other) => Some(other.to_string()),
                }),
                Values::Int(v) => v.push(match value {
                    None => None,
                    Some(Value::String(s)) => Some(integer(s, column.sql).map_err(fail)?),
                    Some(other) => {
                        return Err(fail(format!("is {}, not a decimal string", kind(other))));
                    }
                }),
                Values::Bool(v) => v.push(match value {
                    None => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(other) => return Err(fail(format!("is {}, not a boolean", kind(other)))),
                }),
                Values::Time(v) => v.push(match value {
                    None => None,
                    Some(Value::String(s)) => Some(
                        OffsetDateTime::parse(s, &Rfc3339)
                            .map_err(|e| fail(format!("not an RFC 3339 timestamp: {e}")))?,
                    ),
                    Some(other) => {
                        return Err(fail(format!("is {}, not a timestamp string", kind(other))));
                    }
                }),
                Values::Bytes(v) => v.push(match value {
                    None => None,
                    Some(Value::String(s)) => {
                        use base64::Engine as _;
                        Some(
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map_err(|e| fail(format!("not base64: {e}")))?,
                        )
                    }
                    Some(other) => {
                        return Err(fail(format!("is {}, not a base64 string", kind(other))));
                    }
                }),
            }
        }
        Ok(())
    }
}

/// A decimal string as an integer of the column's type: exact, or refused (never
/// truncated or rounded).
fn integer(s: &str, sql: SqlType) -> Result<i64, String> {
    let n: contracts::DdbNumber = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    let (negative, digits, exponent) = n.decompose();
    let mut value: i128 = 0;
    for d in digits.bytes() {
        value = value * 10 + i128::from(d - b'0');
    }
    let mut exponent = exponent;
    while exponent > 0 {
        value = value
            .checked_mul(10)
            .ok_or_else(|| format!("is out of range for {}", sql.sql()))?;
        exponent -= 1;
    }
    while exponent < 0 {
        if value % 10 != 0 {
            return Err(format!(
                "is not an integer, and {} holds only integers",
                sql.sql()
            ));
        }
        value /= 10;
        exponent += 1;
    }
    if negative {
        value = -value;
    }
    let (lo, hi) = match sql {
        SqlType::SmallInt => (i128::from(i16::MIN), i128::from(i16::MAX)),
        SqlType::Integer => (i128::from(i32::MIN), i128::from(i32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    if value < lo || value > hi {
        return Err(format!("is out of range for {}", sql.sql()));
    }
    Ok(i64::try_from(value).expect("within the column's range"))
}

fn get_path<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut here = data;
    for part in path.split('.') {
        here = here.as_object()?.get(part)?;
    }
    Some(here)
}

fn remove_path(data: &mut Value, path: &str) {
    match path.split_once('.') {
        None => {
            if let Some(map) = data.as_object_mut() {
                map.remove(path);
            }
        }
        Some((head, rest)) => {
            if let Some(inner) = data.get_mut(head) {
                remove_path(inner, rest);
                if inner.as_object().is_some_and(serde_json::Map::is_empty)
                    && let Some(map) = data.as_object_mut()
                {
                    map.remove(head);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_exact_or_refused() {
        assert_eq!(integer("42", SqlType::Integer), Ok(42));
        assert_eq!(integer("-1.5E+3", SqlType::SmallInt), Ok(-1500));
        assert_eq!(integer("12.000", SqlType::BigInt), Ok(12));
        assert_eq!(
            integer("12.5", SqlType::BigInt),
            Err("is not an integer, and bigint holds only integers".into())
        );
        assert_eq!(
            integer("40000", SqlType::SmallInt),
            Err("is out of range for smallint".into())
        );
        assert_eq!(
            integer("9223372036854775808", SqlType::BigInt),
            Err("is out of range for bigint".into())
        );
    }
}

#[cfg(test)]
mod db_tests {
    //! Against a real PostgreSQL: the statements built from the profile's declared
    //! mapping write exactly what the hand-written ones write.

    use std::path::Path;

    use contracts::{Change, ChangeEvent, SchemaVersion};
    use sqlx::PgPool;

    use super::*;
    use crate::apply::test_events::{delete, snapshot, upsert};

    fn profile_table() -> Table {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/subscriber/profile.toml");
        Table::new(&Mapping::load(&path).unwrap())
    }

    /// Batches of profile events over few keys: every kind, both schema versions,
    /// duplicates, stale and re-created items, and now and then a same-rank copy with
    /// other content (the repair path).
    fn batches() -> Vec<Vec<ChangeEvent>> {
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        (0..30)
            .map(|_| {
                (0..12)
                    .map(|_| {
                        let key = format!("k{}", next(6));
                        let g = 1 + next(2) as i64;
                        let v = 1 + next(5) as i64;
                        let mut e = match next(7) {
                            0 | 1 => delete(&key, g, v),
                            2 => snapshot(&key, g, v, &format!("{key}-{g}-{v}@x")),
                            3 => {
                                let mut e = upsert(&key, g, v, "edited@x");
                                if let Change::Upserted(p) = &mut e.change {
                                    p.country = None;
                                    p.lifetime_value_cents = Some("-1.5E+3".parse().unwrap());
                                }
                                e
                            }
                            _ => upsert(&key, g, v, &format!("{key}-{g}-{v}@x")),
                        };
                        if next(3) == 0 {
                            e.published_schema = SchemaVersion::V1;
                            if let Change::Upserted(p) | Change::Snapshot(p) = &mut e.change {
                                p.time_zone = None;
                                p.consents.marketing_sms = false;
                            }
                        }
                        e
                    })
                    .collect()
            })
            .collect()
    }

    async fn dump(pool: &PgPool) -> (Vec<Value>, Vec<Value>) {
        let state = sqlx::query_scalar(
            "SELECT to_jsonb(t) - 'applied_at' FROM analytics.user_profiles t ORDER BY user_id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let history = sqlx::query_scalar(
            "SELECT to_jsonb(t) - 'applied_at' - 'id' FROM analytics.profile_changes t
             ORDER BY key, generation, version, deleted",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        (state, history)
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_declared_profile_table_writes_what_the_coded_apply_writes(pool: PgPool) {
        let table = profile_table();
        let batches = batches();
        let mut coded_reports = Vec::new();
        for batch in &batches {
            coded_reports.push(crate::apply::apply_atomically(&pool, batch).await.unwrap());
        }
        let coded = dump(&pool).await;
        assert!(
            coded.0.len() >= 5 && coded.1.len() >= 30,
            "the batches exercise the store"
        );
        sqlx::query("TRUNCATE analytics.user_profiles, analytics.profile_changes")
            .execute(&pool)
            .await
            .unwrap();
        for (batch, coded_report) in batches.iter().zip(&coded_reports) {
            let events: Vec<Event> = batch.iter().map(Event::from).collect();
            let mut tx = pool.begin().await.unwrap();
            let report = table.apply_batch(&mut tx, &events).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(report, *coded_report);
        }
        let declared = dump(&pool).await;
        assert_eq!(declared.0, coded.0, "state rows");
        assert_eq!(declared.1, coded.1, "history rows");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_field_that_does_not_fit_its_column_is_refused_before_any_sql(pool: PgPool) {
        let table = profile_table();
        let mut event = Event::from(&upsert("a", 1, 1, "a@x"));
        if let Some(data) = &mut event.data {
            data["consents"]["marketing_sms"] = "yes".into();
        }
        let mut conn = pool.acquire().await.unwrap();
        let err = table
            .apply_batch(&mut conn, &[event.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Bind(_)), "{err}");
        assert_eq!(err.kind(), crate::failure::FailureKind::Permanent);
        assert_eq!(
            table.check(&event).unwrap_err().to_string(),
            "event \"a/1/1/profile.upserted\": field \"consents.marketing_sms\" cannot be stored in column \"marketing_sms\" (boolean): is a string, not a boolean"
        );
    }
}
