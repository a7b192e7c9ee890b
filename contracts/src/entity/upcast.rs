//! How version `n - 1` becomes version `n`: the declared steps, the check that they
//! cover every difference, and their application to an event's data.
//!
//! The steps run in order on the older version's data:
//! - `{ rename = "a", to = "b.c" }` moves a field, into an object too;
//! - `{ default = "b.d", value = false }` sets a field the older version lacks;
//! - `{ drop = "e" }` removes a field the newer version no longer has.
//!
//! An optional field the newer version adds needs no step: it upcasts to null.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use toml::Spanned;

use super::data;
use super::error::{DeclarationError, Source};
use super::model::{Field, FieldType, Version};

/// One declared upcast step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Rename { from: String, to: String },
    Default { path: String, value: Value },
    Drop { path: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    rename: Option<String>,
    to: Option<String>,
    default: Option<String>,
    value: Option<Value>,
    drop: Option<String>,
}

pub(crate) fn step(
    src: &Source<'_>,
    key: &str,
    raw: &Spanned<RawStep>,
) -> Result<Step, DeclarationError> {
    let at = raw.span().start;
    let r = raw.get_ref();
    let shape = "is not a step: write { rename = \"a\", to = \"b\" }, { default = \"a\", value = … } or { drop = \"a\" }";
    let step = match (&r.rename, &r.to, &r.default, &r.value, &r.drop) {
        (Some(from), Some(to), None, None, None) => Step::Rename {
            from: from.clone(),
            to: to.clone(),
        },
        (None, None, Some(path), Some(value), None) => Step::Default {
            path: path.clone(),
            value: value.clone(),
        },
        (None, None, None, None, Some(path)) => Step::Drop { path: path.clone() },
        _ => return Err(src.refuse(at, key, shape)),
    };
    Ok(step)
}

/// Why a version does not upcast from the one before: the key and which step, if one.
pub(crate) struct Problem {
    pub key: String,
    pub step: Option<usize>,
    pub message: String,
}

/// A leaf of a version's data: a field that is not an object with declared fields.
#[derive(Clone)]
struct Leaf {
    field: Field,
    /// Required here and in every enclosing object.
    required: bool,
}

fn leaves(version: &Version) -> BTreeMap<String, Leaf> {
    version
        .leaves()
        .into_iter()
        .map(|(path, field, required)| {
            (
                path,
                Leaf {
                    field: field.clone(),
                    required,
                },
            )
        })
        .collect()
}

fn under<'a>(map: &'a BTreeMap<String, Leaf>, path: &str) -> Vec<&'a String> {
    let prefix = format!("{path}.");
    map.keys()
        .filter(|k| *k == path || k.starts_with(&prefix))
        .collect()
}

/// Checks that `next`'s steps turn every `previous` data into valid `next` data.
pub(crate) fn check(previous: &Version, next: &Version) -> Result<(), Problem> {
    let n = next.number;
    let p = previous.number;
    let mut have = leaves(previous);
    let want = leaves(next);
    let key = |path: &str| format!("version[{n}].fields.{path}");
    for (i, step) in next.upcast.iter().enumerate() {
        let at = |message: String| Problem {
            key: format!("version[{n}].upcast[{}]", i + 1),
            step: Some(i),
            message,
        };
        match step {
            Step::Rename { from, to } => {
                let moved = under(&have, from);
                if moved.is_empty() {
                    return Err(at(format!(
                        "renames {from:?}, which version {p} does not have here"
                    )));
                }
                if !under(&have, to).is_empty() {
                    return Err(at(format!("renames to {to:?}, which is already there")));
                }
                let moved: Vec<String> = moved.into_iter().cloned().collect();
                for old in moved {
                    let leaf = have.remove(&old).expect("listed above");
                    have.insert(format!("{to}{}", &old[from.len()..]), leaf);
                }
            }
            Step::Drop { path } => {
                let gone: Vec<String> = under(&have, path).into_iter().cloned().collect();
                if gone.is_empty() {
                    return Err(at(format!(
                        "drops {path:?}, which version {p} does not have here"
                    )));
                }
                for g in gone {
                    have.remove(&g);
                }
            }
            Step::Default { path, value } => {
                let Some(target) = want.get(path) else {
                    return Err(at(format!(
                        "sets {path:?}, which version {n} does not declare (a default is for a single field)"
                    )));
                };
                if have.contains_key(path) {
                    return Err(at(format!(
                        "sets {path:?}, which version {p} already has: a default is for a new field"
                    )));
                }
                if let Err(problem) = data::fits(&target.field, value) {
                    return Err(at(format!("value does not fit {path:?}: {problem}")));
                }
                have.insert(
                    path.clone(),
                    Leaf {
                        field: target.field.clone(),
                        required: true,
                    },
                );
            }
        }
    }
    for (path, w) in &want {
        match have.get(path) {
            Some(h) if !same_type(&h.field.ty, &w.field.ty) => {
                return Err(Problem {
                    key: key(path),
                    step: None,
                    message: format!(
                        "is a {} in version {p} and a {} in version {n}: a field cannot change type; add a new field instead",
                        h.field.ty.name(),
                        w.field.ty.name()
                    ),
                });
            }
            Some(h) if w.required && !h.required => {
                return Err(Problem {
                    key: key(path),
                    step: None,
                    message: format!(
                        "is optional in version {p} but required in version {n}: make it optional, or give it a default"
                    ),
                });
            }
            Some(_) => {}
            None if w.required => {
                return Err(Problem {
                    key: key(path),
                    step: None,
                    message: format!(
                        "is required and new in version {n}, so version {p} cannot upcast: make it optional, or add {{ default = {path:?}, value = … }} to upcast"
                    ),
                });
            }
            None => {}
        }
    }
    if let Some(path) = have.keys().find(|k| !want.contains_key(*k)) {
        return Err(Problem {
            key: format!("version[{n}].fields"),
            step: None,
            message: format!(
                "version {p}'s field {path:?} is missing: declare it, or add {{ rename = {path:?}, to = \"…\" }} or {{ drop = {path:?} }} to upcast"
            ),
        });
    }
    Ok(())
}

/// Types compare without their documentation.
fn same_type(a: &FieldType, b: &FieldType) -> bool {
    match (a, b) {
        (FieldType::Object(Some(x)), FieldType::Object(Some(y))) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|((kx, fx), (ky, fy))| {
                    kx == ky && fx.optional == fy.optional && same_type(&fx.ty, &fy.ty)
                })
        }
        (FieldType::List(Some(x)), FieldType::List(Some(y))) => {
            x.optional == y.optional && same_type(&x.ty, &y.ty)
        }
        _ => {
            std::mem::discriminant(a) == std::mem::discriminant(b)
                && !matches!((a, b), (FieldType::Object(x), FieldType::Object(y)) if x.is_some() != y.is_some())
                && !matches!((a, b), (FieldType::List(x), FieldType::List(y)) if x.is_some() != y.is_some())
        }
    }
}

/// Applies `next`'s steps to data of the version before it, then writes null for each
/// optional field still absent, so every version's data has one canonical form.
pub(crate) fn apply(next: &Version, data: Value) -> Value {
    let Value::Object(mut map) = data else {
        return data;
    };
    for step in &next.upcast {
        match step {
            Step::Rename { from, to } => {
                if let Some(v) = take(&mut map, from) {
                    put(&mut map, to, v);
                }
            }
            Step::Default { path, value } => {
                if get(&map, path).is_none_or(Value::is_null) {
                    put(&mut map, path, value.clone());
                }
            }
            Step::Drop { path } => {
                take(&mut map, path);
            }
        }
    }
    fill_nulls(&next.fields, &mut map);
    Value::Object(map)
}

fn fill_nulls(fields: &BTreeMap<String, Field>, map: &mut Map<String, Value>) {
    for (name, field) in fields {
        match map.get_mut(name) {
            None => {
                if field.optional {
                    map.insert(name.clone(), Value::Null);
                }
            }
            Some(Value::Object(inner)) => {
                if let FieldType::Object(Some(children)) = &field.ty {
                    fill_nulls(children, inner);
                }
            }
            Some(_) => {}
        }
    }
}

fn get<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut here = map.get(parts.next()?)?;
    for part in parts {
        here = here.as_object()?.get(part)?;
    }
    Some(here)
}

fn take(map: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => map.remove(path),
        Some((head, rest)) => take(map.get_mut(head)?.as_object_mut()?, rest),
    }
}

/// Sets the dotted `path` in `map` to `value`, creating (or replacing with) objects
/// on the way.
pub fn put(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let slot = map
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            put(slot.as_object_mut().expect("made an object"), rest, value);
        }
    }
}
