//! The subscriber's mapping: which contract version a consumer reads, and where each
//! field lands in its PostgreSQL store (table, history table, column and SQL type, the
//! delete policy). Declared in TOML (`mappings/subscriber/<entity>.toml`), owned by the
//! consuming service, checked against the contract at start. Pure, but for
//! [`Mapping::load`], which reads the files.

use std::collections::BTreeMap;
use std::path::Path;

use contracts::entity::{
    Contract, DeclarationError, FieldType, field_entries, load_mapping, mapping_contract,
};
use serde::Deserialize;
use toml::Spanned;

/// The PostgreSQL type of a mapped column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    Numeric,
    SmallInt,
    Integer,
    BigInt,
    Boolean,
    TimestampTz,
    Bytea,
    Jsonb,
    TextArray,
    NumericArray,
    ByteaArray,
}

impl SqlType {
    /// The type as SQL spells it.
    pub fn sql(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Numeric => "numeric",
            SqlType::SmallInt => "smallint",
            SqlType::Integer => "integer",
            SqlType::BigInt => "bigint",
            SqlType::Boolean => "boolean",
            SqlType::TimestampTz => "timestamptz",
            SqlType::Bytea => "bytea",
            SqlType::Jsonb => "jsonb",
            SqlType::TextArray => "text[]",
            SqlType::NumericArray => "numeric[]",
            SqlType::ByteaArray => "bytea[]",
        }
    }

    fn parse(name: &str) -> Option<SqlType> {
        Some(match name {
            "text" => SqlType::Text,
            "numeric" => SqlType::Numeric,
            "smallint" => SqlType::SmallInt,
            "integer" => SqlType::Integer,
            "bigint" => SqlType::BigInt,
            "boolean" => SqlType::Boolean,
            "timestamptz" => SqlType::TimestampTz,
            "bytea" => SqlType::Bytea,
            "jsonb" => SqlType::Jsonb,
            "text[]" => SqlType::TextArray,
            "numeric[]" => SqlType::NumericArray,
            "bytea[]" => SqlType::ByteaArray,
            _ => return None,
        })
    }

    /// The SQL types a field of `ty` may land in; the first is the default.
    pub fn allowed_for(ty: &FieldType) -> &'static [SqlType] {
        match ty {
            FieldType::String => &[SqlType::Text],
            FieldType::Decimal => &[
                SqlType::Numeric,
                SqlType::BigInt,
                SqlType::Integer,
                SqlType::SmallInt,
            ],
            FieldType::Boolean => &[SqlType::Boolean],
            FieldType::Timestamp => &[SqlType::TimestampTz, SqlType::Text],
            FieldType::Bytes => &[SqlType::Bytea],
            FieldType::Object(_) | FieldType::List(_) => &[SqlType::Jsonb],
            FieldType::StringSet => &[SqlType::TextArray, SqlType::Jsonb],
            FieldType::NumberSet => &[SqlType::NumericArray, SqlType::Jsonb],
            FieldType::BytesSet => &[SqlType::ByteaArray, SqlType::Jsonb],
        }
    }
}

/// What a delete does to the state row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletePolicy {
    /// The row keeps its key and position; every mapped column is cleared.
    Tombstone,
    /// The row keeps its columns; `deleted` and `deleted_at` are set.
    Soft,
}

/// One contract field and the column it lands in.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The contract field's dotted path.
    pub field: String,
    pub column: String,
    pub sql: SqlType,
    pub field_type: FieldType,
    /// Whether the contract requires the field (so a live row always has a value).
    pub required: bool,
}

/// A checked subscriber mapping, with the contract it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub entity: String,
    /// The contract version read: older ones are upcast to it, newer ones parked.
    pub reads: u32,
    /// `(schema, table)` of the state table.
    pub table: (String, String),
    /// `(schema, table)` of the history table.
    pub history: (String, String),
    pub delete: DeletePolicy,
    /// The key columns, in the contract's key order (the state table's primary key).
    pub key: Vec<Column>,
    /// Every other mapped column.
    pub columns: Vec<Column>,
    /// A jsonb column for the fields no column maps, when declared.
    pub catch_all: Option<String>,
    pub contract: Contract,
}

pub use contracts::entity::MappingError;

/// The columns every state table has besides the mapped ones, and their types.
pub const POSITION_COLUMNS: [(&str, &str); 7] = [
    ("deleted", "boolean NOT NULL"),
    ("deleted_reason", "text"),
    ("generation", "bigint NOT NULL"),
    ("version", "bigint NOT NULL"),
    ("schema_version", "smallint NOT NULL DEFAULT 1"),
    ("last_event_id", "text NOT NULL"),
    ("occurred_at", "timestamptz NOT NULL"),
];

impl Mapping {
    /// Reads the mapping at `path` and the contract it names (relative to it).
    ///
    /// # Errors
    /// One line naming the file, line and key of the first problem, or the file that
    /// could not be read.
    pub fn load(path: &Path) -> Result<Mapping, String> {
        load_mapping(path, |file, text, contract| {
            Mapping::parse(file, text, contract)
        })
    }

    /// Checks a mapping's text; `contract` reads the contract file it names.
    ///
    /// # Errors
    /// A [`MappingError`]: the mapping's own refusal, or the contract's.
    pub fn parse(
        file: &str,
        text: &str,
        contract: impl FnOnce(&str) -> Result<Contract, String>,
    ) -> Result<Mapping, MappingError> {
        let refuse = |offset: usize, key: &str, message: String| {
            MappingError::Declaration(DeclarationError::at(file, text, offset, key, message))
        };
        let raw: RawMapping = toml::from_str(text)
            .map_err(|e| MappingError::Declaration(DeclarationError::from_toml(file, text, &e)))?;
        let contract = mapping_contract(file, text, &raw.entity, &raw.contract, contract)?;
        let reads = *raw.reads.get_ref();
        let Some(version) = contract.version(u64::from(reads)) else {
            return Err(refuse(
                raw.reads.span().start,
                "reads",
                format!(
                    "is {reads}, but the contract declares versions 1 to {}",
                    contract.current().number
                ),
            ));
        };
        let table = qualified(raw.table.get_ref()).ok_or_else(|| {
            refuse(
                raw.table.span().start,
                "table",
                "is not <schema>.<table> of lower-case letters, digits and _".into(),
            )
        })?;
        let history = qualified(raw.history.get_ref()).ok_or_else(|| {
            refuse(
                raw.history.span().start,
                "history",
                "is not <schema>.<table> of lower-case letters, digits and _".into(),
            )
        })?;
        if history == table {
            return Err(refuse(
                raw.history.span().start,
                "history",
                "is the state table: the history is a table of its own".into(),
            ));
        }
        let delete = match raw.delete.get_ref().as_str() {
            "tombstone" => DeletePolicy::Tombstone,
            "soft" => DeletePolicy::Soft,
            other => {
                return Err(refuse(
                    raw.delete.span().start,
                    "delete",
                    format!("is {other:?}: write \"tombstone\" or \"soft\""),
                ));
            }
        };
        let leaves = version.leaves();
        let mut mapped: Vec<Column> = Vec::new();
        let reserved = |c: &str| {
            POSITION_COLUMNS.iter().any(|(p, _)| *p == c)
                || matches!(
                    c,
                    "applied_at" | "deleted_at" | "data_generation" | "data_version"
                )
        };
        for entry in field_entries(raw.columns.get_ref(), text, "column") {
            let key = format!("columns.{}", entry.path);
            let at = entry.offset;
            let Some((_, field, required)) = leaves.iter().find(|(p, _, _)| *p == entry.path)
            else {
                return Err(refuse(
                    at,
                    &key,
                    format!(
                        "the contract's version {reads} has no field {:?}",
                        entry.path
                    ),
                ));
            };
            let allowed = SqlType::allowed_for(&field.ty);
            let (column, sql) = match &entry.value {
                toml::Value::String(c) => (c.clone(), allowed[0]),
                toml::Value::Table(t) => {
                    if let Some(extra) = t.keys().find(|k| *k != "column" && *k != "type") {
                        return Err(refuse(
                            at,
                            &key,
                            format!("has unknown key {extra:?}: expected column, type"),
                        ));
                    }
                    let Some(toml::Value::String(c)) = t.get("column") else {
                        return Err(refuse(
                            at,
                            &key,
                            "is not a column name or { column = \"…\", type = \"…\" }".into(),
                        ));
                    };
                    let sql = match t.get("type") {
                        None => allowed[0],
                        Some(toml::Value::String(name)) => {
                            let Some(sql) = SqlType::parse(name) else {
                                return Err(refuse(at, &key, format!("unknown SQL type {name:?}")));
                            };
                            if !allowed.contains(&sql) {
                                let names: Vec<&str> = allowed.iter().map(|t| t.sql()).collect();
                                return Err(refuse(
                                    at,
                                    &key,
                                    format!(
                                        "column {c:?} is {}, but the field is a {}: use {}",
                                        sql.sql(),
                                        field.ty.name(),
                                        names.join(" or ")
                                    ),
                                ));
                            }
                            sql
                        }
                        Some(_) => return Err(refuse(at, &key, "type is not a string".into())),
                    };
                    (c.clone(), sql)
                }
                _ => {
                    return Err(refuse(
                        at,
                        &key,
                        "is not a column name or { column = \"…\", type = \"…\" }".into(),
                    ));
                }
            };
            if !is_identifier(&column) {
                return Err(refuse(
                    at,
                    &key,
                    format!("column {column:?} is not a name of lower-case letters, digits and _"),
                ));
            }
            if reserved(&column) {
                return Err(refuse(
                    at,
                    &key,
                    format!(
                        "column {column:?} is one tributary keeps itself (the position and delete columns)"
                    ),
                ));
            }
            if let Some(other) = mapped.iter().find(|c| c.column == column) {
                return Err(refuse(
                    at,
                    &key,
                    format!(
                        "column {column:?} is already the column of {:?}",
                        other.field
                    ),
                ));
            }
            mapped.push(Column {
                field: entry.path.clone(),
                column,
                sql,
                field_type: field.ty.clone(),
                required: *required,
            });
        }
        let catch_all = raw.catch_all.as_ref().map(|c| c.get_ref().clone());
        if let Some(c) = &raw.catch_all {
            if !is_identifier(c.get_ref())
                || reserved(c.get_ref())
                || mapped.iter().any(|m| m.column == *c.get_ref())
            {
                return Err(refuse(
                    c.span().start,
                    "catch_all",
                    format!("{:?} is not a free column name", c.get_ref()),
                ));
            }
        } else if let Some((path, _, _)) = leaves
            .iter()
            .find(|(p, _, _)| !mapped.iter().any(|c| c.field == *p))
        {
            return Err(refuse(
                raw.columns.span().start,
                "columns",
                format!(
                    "the contract's field {path:?} (version {reads}) has no column: add {path} = \"<column>\", or a catch_all jsonb column"
                ),
            ));
        }
        let mut key = Vec::new();
        for field in &contract.key {
            let i = mapped.iter().position(|c| c.field == *field).ok_or_else(|| {
                refuse(raw.columns.span().start, "columns", format!("the contract's key field {field:?} has no column: the key columns are the table's primary key"))
            })?;
            key.push(mapped.remove(i));
        }
        Ok(Mapping {
            entity: contract.entity.clone(),
            reads,
            table,
            history,
            delete,
            key,
            columns: mapped,
            catch_all,
            contract,
        })
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn qualified(name: &str) -> Option<(String, String)> {
    let (schema, table) = name.split_once('.')?;
    (is_identifier(schema) && is_identifier(table)).then(|| (schema.to_owned(), table.to_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    entity: Spanned<String>,
    contract: Spanned<String>,
    reads: Spanned<u32>,
    table: Spanned<String>,
    history: Spanned<String>,
    delete: Spanned<String>,
    #[serde(default)]
    catch_all: Option<Spanned<String>>,
    columns: Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
}

#[cfg(test)]
mod tests {
    use contracts::entity::Published;

    use super::*;

    const FILE: &str = "mappings/subscriber/order.toml";
    const GOOD: &str = include_str!("../../mappings/subscriber/order.toml");

    fn order_contract(_: &str) -> Result<Contract, String> {
        Contract::parse(
            "contracts/entities/order.toml",
            include_str!("../../contracts/entities/order.toml"),
            &Published::none(),
        )
        .map_err(|e| e.to_string())
    }

    fn refusal(text: &str) -> String {
        Mapping::parse(FILE, text, order_contract)
            .expect_err("the mapping is refused")
            .to_string()
    }

    fn line_of(needle: &str) -> usize {
        GOOD.lines()
            .position(|l| l.starts_with(needle))
            .expect("the line exists")
            + 1
    }

    #[test]
    fn the_shipped_mappings_are_accepted() {
        let m = Mapping::parse(FILE, GOOD, order_contract).unwrap();
        assert_eq!(m.table, ("analytics".to_owned(), "orders".to_owned()));
        assert_eq!(m.delete, DeletePolicy::Soft);
        let key: Vec<&str> = m.key.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(key, ["customer_id", "order_id"]);
        let sql = |field: &str| m.columns.iter().find(|c| c.field == field).unwrap().sql;
        assert_eq!(sql("items"), SqlType::Jsonb);
        assert_eq!(sql("tags"), SqlType::TextArray);
        assert_eq!(sql("total"), SqlType::Numeric);
        let profile = Mapping::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/subscriber/profile.toml"),
        )
        .unwrap();
        assert_eq!(profile.delete, DeletePolicy::Tombstone);
        assert_eq!(profile.columns.len(), 11);
    }

    #[test]
    fn a_column_typed_against_its_field_is_refused() {
        let text = GOOD.replace(
            "status = \"status\"",
            "status = { column = \"status\", type = \"numeric\" }",
        );
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: columns.status: column \"status\" is numeric, but the field is a string: use text",
                line_of("status =")
            )
        );
        let text = GOOD.replace(
            "total = \"total\"",
            "total = { column = \"total\", type = \"boolean\" }",
        );
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: columns.total: column \"total\" is boolean, but the field is a decimal: use numeric or bigint or integer or smallint",
                line_of("total =")
            )
        );
    }

    #[test]
    fn an_unmapped_field_without_a_catch_all_is_refused() {
        let text = GOOD.replace("tags = \"tags\"\n", "");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: columns: the contract's field \"tags\" (version 1) has no column: add tags = \"<column>\", or a catch_all jsonb column",
                line_of("[columns]")
            )
        );
        let with_catch_all = text.replace(
            "delete = \"soft\"",
            "delete = \"soft\"\ncatch_all = \"extra\"",
        );
        let m = Mapping::parse(FILE, &with_catch_all, order_contract).unwrap();
        assert_eq!(m.catch_all.as_deref(), Some("extra"));
    }

    #[test]
    fn a_missing_key_column_a_reserved_name_and_a_newer_version_are_refused() {
        let text = GOOD.replace("order_id = \"order_id\"\n", "").replace(
            "delete = \"soft\"",
            "delete = \"soft\"\ncatch_all = \"extra\"",
        );
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: columns: the contract's key field \"order_id\" has no column: the key columns are the table's primary key",
                line_of("[columns]") + 1
            )
        );
        let text = GOOD.replace("status = \"status\"", "status = \"version\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: columns.status: column \"version\" is one tributary keeps itself (the position and delete columns)",
                line_of("status =")
            )
        );
        let text = GOOD.replace("reads = 1", "reads = 2");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: reads: is 2, but the contract declares versions 1 to 1",
                line_of("reads =")
            )
        );
        let text = GOOD.replace("delete = \"soft\"", "delete = \"hard\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: delete: is \"hard\": write \"tombstone\" or \"soft\"",
                line_of("delete =")
            )
        );
    }
}
