//! The analytics store's tables for a declared entity: what `subscriber migrate`
//! creates or adds, and the start check that the tables match the mapping.
//!
//! Additive only: a missing table is created, a mapped column the table lacks is added
//! (nullable, since existing rows have no value for it). A column is never dropped,
//! narrowed or retyped: a column whose type differs from the mapping's is refused with
//! its name, for a person to resolve. The profile's tables come from the SQL migrations
//! (`migrations/`), which run first; for them this finds nothing to do.

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::mapping::{Column, DeletePolicy, Mapping, POSITION_COLUMNS};

/// A table's columns as PostgreSQL formats their types (`format_type`), by name.
pub type Columns = BTreeMap<String, String>;

/// The type `format_type` gives a column declared as `sql` in a mapping.
/// (`bigint NOT NULL` is `bigint`: constraints are not compared.)
fn formatted(sql: &str) -> &str {
    let ty = sql.split(" NOT NULL").next().unwrap_or(sql);
    match ty {
        "timestamptz" => "timestamp with time zone",
        other => other,
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified((schema, table): &(String, String)) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

fn data_columns(mapping: &Mapping) -> Vec<&Column> {
    mapping.key.iter().chain(&mapping.columns).collect()
}

/// The statements that bring the store to `mapping`, given the tables' current
/// columns (`None`: the table does not exist).
///
/// # Errors
/// One line naming a column whose type differs from the mapping's.
pub fn plan(
    mapping: &Mapping,
    state: Option<&Columns>,
    history: Option<&Columns>,
) -> Result<Vec<String>, String> {
    let table = qualified(&mapping.table);
    let mut out = Vec::new();
    out.push(format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        quote(&mapping.table.0)
    ));
    if mapping.history.0 != mapping.table.0 {
        out.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote(&mapping.history.0)
        ));
    }
    match state {
        None => out.push(create_state(mapping)),
        Some(existing) => {
            for c in data_columns(mapping) {
                let want = c.sql.sql();
                match existing.get(&c.column) {
                    None => out.push(format!(
                        "ALTER TABLE {table} ADD COLUMN {} {want}",
                        quote(&c.column)
                    )),
                    Some(have) if have != formatted(want) => {
                        return Err(mismatch(mapping, &c.column, have, formatted(want)));
                    }
                    Some(_) => {}
                }
            }
            if let Some(c) = &mapping.catch_all {
                match existing.get(c) {
                    None => out.push(format!("ALTER TABLE {table} ADD COLUMN {} jsonb", quote(c))),
                    Some(have) if have != "jsonb" => {
                        return Err(mismatch(mapping, c, have, "jsonb"));
                    }
                    Some(_) => {}
                }
            }
            if mapping.delete == DeletePolicy::Soft {
                for (name, sql) in SOFT_COLUMNS {
                    if !existing.contains_key(name) {
                        out.push(format!(
                            "ALTER TABLE {table} ADD COLUMN {} {sql}",
                            quote(name)
                        ));
                    }
                }
            }
            for (name, sql) in POSITION_COLUMNS {
                match existing.get(name) {
                    None => {
                        return Err(format!(
                            "{}.{}: has no column {name:?}, which tributary keeps: it is not a table tributary created; name another table",
                            mapping.table.0, mapping.table.1
                        ));
                    }
                    Some(have) if have != formatted(sql) => {
                        return Err(mismatch(mapping, name, have, formatted(sql)));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    if history.is_none() {
        out.extend(create_history(mapping));
    }
    Ok(out)
}

/// The columns a soft-delete table has besides [`POSITION_COLUMNS`]: when the row was
/// deleted, and the position of the data it holds (see [`crate::table`]).
const SOFT_COLUMNS: [(&str, &str); 3] = [
    ("deleted_at", "timestamptz"),
    ("data_generation", "bigint"),
    ("data_version", "bigint"),
];

fn mismatch(mapping: &Mapping, column: &str, have: &str, want: &str) -> String {
    format!(
        "{}.{}: column {column:?} is {have}, but the mapping declares {want}: migrate never changes a column's type; change the column or the mapping",
        mapping.table.0, mapping.table.1
    )
}

fn create_state(mapping: &Mapping) -> String {
    let table = qualified(&mapping.table);
    let mut lines: Vec<String> = Vec::new();
    for c in &mapping.key {
        lines.push(format!("{} {} NOT NULL", quote(&c.column), c.sql.sql()));
    }
    // Data columns are nullable: a tombstone clears them, a delete may arrive before
    // any upsert; the CHECK below keeps live rows complete.
    for c in &mapping.columns {
        lines.push(format!("{} {}", quote(&c.column), c.sql.sql()));
    }
    if let Some(c) = &mapping.catch_all {
        lines.push(format!("{} jsonb", quote(c)));
    }
    for (name, sql) in POSITION_COLUMNS {
        lines.push(format!("{} {sql}", quote(name)));
    }
    lines.push("\"applied_at\" timestamptz NOT NULL DEFAULT now()".into());
    if mapping.delete == DeletePolicy::Soft {
        for (name, sql) in SOFT_COLUMNS {
            lines.push(format!("{} {sql}", quote(name)));
        }
    }
    let keys: Vec<String> = mapping.key.iter().map(|c| quote(&c.column)).collect();
    lines.push(format!("PRIMARY KEY ({})", keys.join(", ")));
    let required: Vec<String> = mapping
        .columns
        .iter()
        .filter(|c| c.required)
        .map(|c| format!("{} IS NOT NULL", quote(&c.column)))
        .collect();
    if !required.is_empty() {
        lines.push(format!("CHECK (deleted OR ({}))", required.join(" AND ")));
    }
    if mapping.delete == DeletePolicy::Tombstone && !mapping.columns.is_empty() {
        let all: Vec<String> = mapping.columns.iter().map(|c| quote(&c.column)).collect();
        lines.push(format!(
            "CHECK (NOT deleted OR num_nonnulls({}) = 0)",
            all.join(", ")
        ));
    }
    lines.push(
        "CHECK ((deleted AND deleted_reason IN ('deleted', 'expired')) OR (NOT deleted AND deleted_reason IS NULL))".into(),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    {}\n)",
        lines.join(",\n    ")
    )
}

fn create_history(mapping: &Mapping) -> Vec<String> {
    let history = qualified(&mapping.history);
    let index = quote(&format!("{}_one_row_per_source_change", mapping.history.1));
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {history} (\n    \
             id bigserial PRIMARY KEY,\n    \
             event_id text NOT NULL UNIQUE,\n    \
             key text NOT NULL,\n    \
             generation bigint NOT NULL,\n    \
             version bigint NOT NULL,\n    \
             deleted boolean NOT NULL,\n    \
             event_type text NOT NULL,\n    \
             reason text,\n    \
             schema_version smallint NOT NULL,\n    \
             data jsonb,\n    \
             occurred_at timestamptz NOT NULL,\n    \
             published_at timestamptz NOT NULL,\n    \
             applied_at timestamptz NOT NULL DEFAULT now(),\n    \
             source_sequence_number text,\n    \
             CHECK ((deleted AND reason IN ('deleted', 'expired') AND data IS NULL) OR (NOT deleted AND reason IS NULL AND data IS NOT NULL))\n)"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {history} (key, generation, version, deleted)"
        ),
    ]
}

/// The columns of `table`, or `None` when it does not exist.
///
/// # Errors
/// The query's error.
pub async fn columns(
    pool: &PgPool,
    (schema, table): &(String, String),
) -> sqlx::Result<Option<Columns>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok((!rows.is_empty()).then(|| rows.into_iter().collect()))
}

/// Why the store's tables cannot serve a mapping.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading the store's tables")]
    Read(#[source] sqlx::Error),
    #[error("{0}")]
    Mismatch(String),
    #[error("applying {statement:?}")]
    Apply {
        statement: String,
        #[source]
        source: sqlx::Error,
    },
}

/// The columns of `mapping`'s state and history tables (`None`: missing).
async fn both(
    pool: &PgPool,
    mapping: &Mapping,
) -> Result<(Option<Columns>, Option<Columns>), SchemaError> {
    let state = columns(pool, &mapping.table)
        .await
        .map_err(SchemaError::Read)?;
    let history = columns(pool, &mapping.history)
        .await
        .map_err(SchemaError::Read)?;
    Ok((state, history))
}

/// Creates or extends the tables of `mapping`, in one transaction. Returns the
/// statements run (none when the store already matches).
///
/// # Errors
/// [`SchemaError`]: a column of another type, or the database's error.
pub async fn migrate(pool: &PgPool, mapping: &Mapping) -> Result<Vec<String>, SchemaError> {
    let (state, history) = both(pool, mapping).await?;
    let mut statements =
        plan(mapping, state.as_ref(), history.as_ref()).map_err(SchemaError::Mismatch)?;
    if state.is_some() && history.is_some() {
        statements.retain(|s| !s.starts_with("CREATE SCHEMA"));
    }
    if statements.is_empty() {
        return Ok(statements);
    }
    let mut tx = pool.begin().await.map_err(SchemaError::Read)?;
    for statement in &statements {
        sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .map_err(|source| SchemaError::Apply {
                statement: statement.clone(),
                source,
            })?;
    }
    tx.commit().await.map_err(SchemaError::Read)?;
    Ok(statements)
}

/// Whether the store's tables serve `mapping` as they are: both exist and every mapped
/// column is there with its declared type.
///
/// # Errors
/// One line naming the table or column to fix (`subscriber migrate` adds what is
/// missing), or the database's error.
pub async fn check(pool: &PgPool, mapping: &Mapping) -> Result<(), SchemaError> {
    let (state, history) = both(pool, mapping).await?;
    let name = |t: &(String, String)| format!("{}.{}", t.0, t.1);
    for (columns, table) in [(&state, &mapping.table), (&history, &mapping.history)] {
        if columns.is_none() {
            return Err(SchemaError::Mismatch(format!(
                "{}: the table does not exist: run `subscriber migrate`",
                name(table)
            )));
        }
    }
    let statements =
        plan(mapping, state.as_ref(), history.as_ref()).map_err(SchemaError::Mismatch)?;
    if let Some(add) = statements.iter().find(|s| s.starts_with("ALTER TABLE")) {
        let column = add
            .split("ADD COLUMN ")
            .nth(1)
            .unwrap_or(add)
            .split(' ')
            .next()
            .unwrap_or("");
        return Err(SchemaError::Mismatch(format!(
            "{}: has no column {column}, which the mapping declares: run `subscriber migrate`",
            name(&mapping.table)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod db_tests {
    //! Against a real PostgreSQL, migrated with the SQL migrations (the profile's
    //! tables) as every store is.

    use std::path::Path;

    use contracts::entity::{Contract, Event, Published};
    use serde_json::{Value, json};
    use sqlx::PgPool;

    use super::*;
    use crate::table::Table;

    fn shipped(name: &str) -> Mapping {
        Mapping::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../mappings/subscriber/{name}.toml")),
        )
        .unwrap()
    }

    fn order_event(version: i64, deleted: bool, status: &str) -> Event {
        let fixture: Value = serde_json::from_str(include_str!(
            "../../contracts/fixtures/order/v1/upserted.json"
        ))
        .unwrap();
        let mut data = fixture["data"].clone();
        data["status"] = status.into();
        let at = time::OffsetDateTime::now_utc();
        Event {
            event_id: format!("order/{version}/{deleted}"),
            key: fixture["key"].as_str().unwrap().to_owned(),
            position: contracts::Position {
                generation: 0,
                version,
            },
            deleted: deleted.then_some(contracts::DeleteReason::Deleted),
            event_type: if deleted {
                "order.deleted"
            } else {
                "order.upserted"
            }
            .into(),
            schema: 1,
            data: (!deleted).then_some(data),
            occurred_at: at,
            published_at: at,
            source: contracts::Source {
                table: "orders".into(),
                stream_arn: None,
                sequence_number: None,
            },
        }
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn the_profile_tables_already_match_the_profile_mapping(pool: PgPool) {
        let profile = shipped("profile");
        assert_eq!(
            migrate(&pool, &profile).await.unwrap(),
            Vec::<String>::new()
        );
        check(&pool, &profile).await.unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_order_store_is_created_then_left_alone_and_soft_deletes_keep_the_row(pool: PgPool) {
        let orders = shipped("order");
        assert!(check(&pool, &orders).await.is_err(), "no table yet");
        let ran = migrate(&pool, &orders).await.unwrap();
        assert!(
            ran.iter()
                .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS \"analytics\".\"orders\"")),
            "{ran:?}"
        );
        assert_eq!(
            migrate(&pool, &orders).await.unwrap(),
            Vec::<String>::new(),
            "idempotent"
        );
        check(&pool, &orders).await.unwrap();

        let table = Table::new(&orders);
        let apply = |events: Vec<Event>| {
            let (pool, table) = (pool.clone(), table.clone());
            async move { table.apply_atomically(&pool, &events).await.unwrap() }
        };
        apply(vec![
            order_event(1, false, "placed"),
            order_event(2, false, "paid"),
        ])
        .await;
        apply(vec![order_event(3, true, "")]).await;
        apply(vec![
            order_event(2, false, "paid"),
            order_event(1, false, "placed"),
        ])
        .await;
        let row: (bool, Option<String>, Value, Vec<String>, String, bool) = sqlx::query_as(
            "SELECT deleted, status, items, tags, total::text, deleted_at IS NOT NULL FROM analytics.orders",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(row.0, "deleted");
        assert_eq!(
            row.1.as_deref(),
            Some("paid"),
            "a soft delete keeps the data"
        );
        assert_eq!(
            row.2[1]["unit_price"],
            json!("1234567890123456789012345678901214.58")
        );
        assert_eq!(row.3, ["express", "gift"]);
        assert_eq!(
            row.4, "1234567890123456789012345678901234.56",
            "numeric, exact"
        );
        assert!(row.5, "deleted_at set");
        let history: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.order_changes")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(history, 3, "each change once");
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_soft_deleted_row_ends_with_the_latest_data_whatever_the_order(pool: PgPool) {
        let orders = shipped("order");
        migrate(&pool, &orders).await.unwrap();
        let table = Table::new(&orders);
        let events = [
            order_event(1, false, "placed"),
            order_event(2, false, "paid"),
            order_event(3, false, "shipped"),
            order_event(4, true, ""),
        ];
        // Every order of the four, in batches of one and all at once; with copies.
        let orders_of: Vec<Vec<usize>> = vec![
            vec![0, 1, 2, 3],
            vec![3, 2, 1, 0],
            vec![3, 0, 2, 1],
            vec![1, 3, 0, 2, 2, 3],
        ];
        for (round, order) in orders_of.iter().enumerate() {
            sqlx::query("TRUNCATE analytics.orders, analytics.order_changes")
                .execute(&pool)
                .await
                .unwrap();
            if round % 2 == 0 {
                for &i in order {
                    table
                        .apply_atomically(&pool, &[events[i].clone()])
                        .await
                        .unwrap();
                }
            } else {
                let batch: Vec<Event> = order.iter().map(|&i| events[i].clone()).collect();
                table.apply_atomically(&pool, &batch).await.unwrap();
            }
            let row: (bool, i64, String, i64) = sqlx::query_as(
                "SELECT deleted, version, status, data_version FROM analytics.orders",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(row, (true, 4, "shipped".to_owned(), 3), "order {order:?}");
        }
        // A re-created order (a later version, live) takes the row back.
        table
            .apply_atomically(&pool, &[order_event(5, false, "placed")])
            .await
            .unwrap();
        let row: (bool, String, bool) =
            sqlx::query_as("SELECT deleted, status, deleted_at IS NULL FROM analytics.orders")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(row, (false, "placed".to_owned(), true));
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_optional_field_added_by_declarations_alone_adds_one_column(pool: PgPool) {
        let lock = Published::parse(
            "published.lock",
            include_str!("../../contracts/entities/published.lock"),
        )
        .unwrap();
        let contract_text = format!(
            "{}\n[[version]]\nnumber = 3\n[version.fields]\n{}nickname = {{ type = \"string\", optional = true }}\n[version.fields.consents]\ntype = \"object\"\nfields.marketing_email = {{ type = \"boolean\" }}\nfields.marketing_sms = {{ type = \"boolean\" }}\n",
            include_str!("../../contracts/entities/profile.toml"),
            include_str!("../../contracts/entities/profile.toml")
                .split("[version.fields]\n")
                .nth(2)
                .unwrap()
                .split("\n[version.fields.consents]")
                .next()
                .unwrap()
                .to_owned()
                + "\n",
        );
        let contract = Contract::parse("profile.toml", &contract_text, &lock)
            .unwrap_or_else(|e| panic!("{e}"));
        let mapping_text = include_str!("../../mappings/subscriber/profile.toml")
            .replace("reads = 2", "reads = 3")
            .replace(
                "updated_at = \"updated_at\"",
                "updated_at = \"updated_at\"\nnickname = \"nickname\"",
            );
        let mapping = Mapping::parse("profile.toml", &mapping_text, |_| Ok(contract)).unwrap();
        let err = check(&pool, &mapping).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "analytics.user_profiles: has no column \"nickname\", which the mapping declares: run `subscriber migrate`"
        );
        let ran = migrate(&pool, &mapping).await.unwrap();
        assert_eq!(
            ran,
            ["ALTER TABLE \"analytics\".\"user_profiles\" ADD COLUMN \"nickname\" text"]
        );
        check(&pool, &mapping).await.unwrap();
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn a_column_of_another_type_is_named_and_never_changed(pool: PgPool) {
        sqlx::query("ALTER TABLE analytics.user_profiles ALTER COLUMN email TYPE varchar(3)")
            .execute(&pool)
            .await
            .unwrap();
        let profile = shipped("profile");
        let expected = "analytics.user_profiles: column \"email\" is character varying(3), but the mapping declares text: migrate never changes a column's type; change the column or the mapping";
        assert_eq!(
            check(&pool, &profile).await.unwrap_err().to_string(),
            expected
        );
        assert_eq!(
            migrate(&pool, &profile).await.unwrap_err().to_string(),
            expected
        );
    }
}
