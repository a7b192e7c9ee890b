//! An event's data checked against a declared version: the same rules as the version's
//! JSON Schema, plus what a schema cannot say (a decimal's range, a set's distinct
//! members), so a subscriber can refuse with the exact field and reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::model::{Field, FieldType, Version};
use crate::number::DdbNumber;

/// Why data does not match its version: the field's path and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    /// Dotted path from `data`, e.g. `items[2].quantity`; empty for `data` itself.
    pub path: String,
    pub problem: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "data {}", self.problem)
        } else {
            write!(f, "data.{} {}", self.path, self.problem)
        }
    }
}

impl std::error::Error for DataError {}

/// Checks `data` against `version`: every required field present and not null, every
/// present field of its declared type, no field the version does not declare.
///
/// # Errors
/// The first [`DataError`] found.
pub fn validate(version: &Version, data: &Value) -> Result<(), DataError> {
    object(&version.fields, data, "")
}

fn object(fields: &BTreeMap<String, Field>, value: &Value, path: &str) -> Result<(), DataError> {
    let Value::Object(map) = value else {
        return Err(DataError {
            path: path.to_owned(),
            problem: format!("is {}, expected an object", kind(value)),
        });
    };
    if let Some(unknown) = map.keys().find(|k| !fields.contains_key(*k)) {
        return Err(DataError {
            path: join(path, unknown),
            problem: "is not a field of this version".into(),
        });
    }
    for (name, field) in fields {
        let here = join(path, name);
        match map.get(name) {
            None | Some(Value::Null) if field.optional => {}
            None | Some(Value::Null) => {
                return Err(DataError {
                    path: here,
                    problem: "is required".into(),
                });
            }
            Some(v) => typed(field, v, &here)?,
        }
    }
    Ok(())
}

fn typed(field: &Field, value: &Value, path: &str) -> Result<(), DataError> {
    let fail = |problem: String| DataError {
        path: path.to_owned(),
        problem,
    };
    let expected = |what: &str| fail(format!("is {}, expected {what}", kind(value)));
    match (&field.ty, value) {
        (FieldType::String, Value::String(_)) => Ok(()),
        (FieldType::Decimal, Value::String(s)) => decimal(s).map_err(fail),
        (FieldType::Boolean, Value::Bool(_)) => Ok(()),
        (FieldType::Timestamp, Value::String(s)) => timestamp(s).map_err(fail),
        (FieldType::Bytes, Value::String(s)) => bytes(s).map_err(fail),
        (FieldType::Object(Some(fields)), _) => object(fields, value, path),
        (FieldType::Object(None), Value::Object(_)) => Ok(()),
        (FieldType::List(None), Value::Array(_)) => Ok(()),
        (FieldType::List(Some(item)), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let here = format!("{path}[{i}]");
                match v {
                    Value::Null if item.optional => {}
                    Value::Null => {
                        return Err(DataError {
                            path: here,
                            problem: "is null, but the list's items are required".into(),
                        });
                    }
                    _ => typed(item, v, &here)?,
                }
            }
            Ok(())
        }
        (FieldType::StringSet, Value::Array(items)) => set(items, path, "strings", |_| Ok(())),
        (FieldType::NumberSet, Value::Array(items)) => set(items, path, "decimal strings", decimal),
        (FieldType::BytesSet, Value::Array(items)) => set(items, path, "base64 strings", bytes),
        (FieldType::Decimal, _) => Err(expected("a decimal in a string")),
        (FieldType::Timestamp, _) => Err(expected("an RFC 3339 timestamp string")),
        (FieldType::Bytes, _) => Err(expected("a base64 string")),
        (ty, _) => Err(expected(&format!("a {}", ty.name()))),
    }
}

fn set(
    items: &[Value],
    path: &str,
    what: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), DataError> {
    let mut seen = BTreeSet::new();
    for (i, v) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let Value::String(s) = v else {
            return Err(DataError {
                path: here,
                problem: format!("is {}, but a set holds {what}", kind(v)),
            });
        };
        check(s).map_err(|problem| DataError {
            path: here.clone(),
            problem,
        })?;
        if !seen.insert(s.as_str()) {
            return Err(DataError {
                path: here,
                problem: "repeats a member: a set's members are distinct".into(),
            });
        }
    }
    Ok(())
}

fn decimal(s: &str) -> Result<(), String> {
    s.parse::<DdbNumber>()
        .map(|_| ())
        .map_err(|e| format!("is not a DynamoDB number: {e}"))
}

fn timestamp(s: &str) -> Result<(), String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|_| ())
        .map_err(|e| format!("is not an RFC 3339 timestamp: {e}"))
}

fn bytes(s: &str) -> Result<(), String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|_| ())
        .map_err(|e| format!("is not base64: {e}"))
}

/// Checks one value (a declared default) against a field.
///
/// # Errors
/// What is wrong with the value, e.g. `is a string, expected a boolean`.
pub fn fits(field: &Field, value: &Value) -> Result<(), String> {
    match value {
        Value::Null if field.optional => Ok(()),
        Value::Null => Err("null, but the field is required".into()),
        v => typed(field, v, "").map_err(|e| e.problem),
    }
}

/// What kind of JSON value `v` is (`a string`, `an object`, …): a refusal names the
/// kind, never the value, which may be personal data.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a JSON number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}
