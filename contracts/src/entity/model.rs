//! The declared contract: its raw TOML form, its validated form, and the checks between.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{DeclarationError, Source};
use super::lock::Published;
use super::upcast::{self, RawStep, Step};

/// An entity's contract: its key and every schema version, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// The entity's name, e.g. `profile`; event types are `<entity>.upserted`,
    /// `<entity>.deleted` and `<entity>.snapshot`.
    pub entity: String,
    pub description: Option<String>,
    /// The fields whose values make up the envelope's `key`, partition key first.
    pub key: Vec<String>,
    /// Version `n` is `versions[n - 1]`.
    pub versions: Vec<Version>,
}

/// One schema version: its fields, and how the version before it upcasts to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    pub number: u32,
    #[serde(skip)]
    pub description: Option<String>,
    pub fields: BTreeMap<String, Field>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upcast: Vec<Step>,
}

/// A field of the data: its type and whether it may be absent (or null).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(skip)]
    pub doc: Option<String>,
}

/// The types a contract field can have, and how each travels in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// An exact decimal (a DynamoDB number) as a JSON string, never a JSON number.
    Decimal,
    /// A JSON boolean.
    Boolean,
    /// An RFC 3339 date-time string.
    Timestamp,
    /// Base64 (standard alphabet, padded) in a JSON string.
    Bytes,
    /// A JSON object: with declared fields, or any object when `None`.
    Object(Option<BTreeMap<String, Field>>),
    /// A JSON array: of the declared item type, or of any values when `None`.
    List(Option<Box<Field>>),
    /// A JSON array of distinct strings.
    StringSet,
    /// A JSON array of distinct decimal strings.
    NumberSet,
    /// A JSON array of distinct base64 strings.
    BytesSet,
}

impl FieldType {
    /// The name used in declarations.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Decimal => "decimal",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
            FieldType::Bytes => "bytes",
            FieldType::Object(_) => "object",
            FieldType::List(_) => "list",
            FieldType::StringSet => "string_set",
            FieldType::NumberSet => "number_set",
            FieldType::BytesSet => "bytes_set",
        }
    }

    /// Every type name, for the refusal of an unknown one.
    pub const NAMES: [&'static str; 10] = [
        "string",
        "decimal",
        "boolean",
        "timestamp",
        "bytes",
        "object",
        "list",
        "string_set",
        "number_set",
        "bytes_set",
    ];
}

impl Version {
    /// Every field that is not an object with declared fields, by dotted path
    /// (`consents.marketing_email`), with whether it and every enclosing object are required.
    pub fn leaves(&self) -> Vec<(String, &Field, bool)> {
        fn walk<'a>(
            prefix: &str,
            parent_required: bool,
            fields: &'a BTreeMap<String, Field>,
            out: &mut Vec<(String, &'a Field, bool)>,
        ) {
            for (name, field) in fields {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                let required = parent_required && !field.optional;
                match &field.ty {
                    FieldType::Object(Some(children)) => walk(&path, required, children, out),
                    _ => out.push((path, field, required)),
                }
            }
        }
        let mut out = Vec::new();
        walk("", true, &self.fields, &mut out);
        out
    }
}

impl Contract {
    /// Reads and checks a contract declaration. `file` names it in refusals; `published`
    /// is the lock of published versions (see [`Published`]).
    ///
    /// # Errors
    /// A [`DeclarationError`] naming the file, line and key of the first problem.
    pub fn parse(
        file: &str,
        text: &str,
        published: &Published,
    ) -> Result<Contract, DeclarationError> {
        let src = Source { file, text };
        let raw: RawContract = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let entity = raw.entity.get_ref().clone();
        if !is_identifier(&entity) {
            return Err(src.refuse(
                raw.entity.span().start,
                "entity",
                format!("{entity:?} is not a name of lower-case letters, digits and _"),
            ));
        }
        if raw.version.is_empty() {
            return Err(src.refuse(0, "version", "declares no version: add a [[version]]"));
        }
        let mut versions: Vec<Version> = Vec::with_capacity(raw.version.len());
        for (i, rv) in raw.version.iter().enumerate() {
            let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let number = *rv.number.get_ref();
            let at = rv.number.span().start;
            let key = format!("version[{}]", i + 1);
            if number != expected {
                return Err(src.refuse(
                    at,
                    format!("{key}.number"),
                    format!(
                        "is {number}, expected {expected}: versions are numbered 1, 2, 3, … in order"
                    ),
                ));
            }
            let fields = fields(&src, &format!("version[{number}].fields"), &rv.fields)?;
            let steps = rv
                .upcast
                .iter()
                .map(|s| upcast::step(&src, &format!("version[{number}].upcast"), s))
                .collect::<Result<Vec<_>, _>>()?;
            let version = Version {
                number,
                description: rv.description.clone(),
                fields,
                upcast: steps,
            };
            match versions.last() {
                None if !version.upcast.is_empty() => {
                    return Err(src.refuse(
                        rv.upcast[0].span().start,
                        format!("version[{number}].upcast"),
                        "version 1 has no version before it to upcast from: remove upcast",
                    ));
                }
                None => {}
                Some(previous) => {
                    upcast::check(previous, &version).map_err(|problem| {
                        let at = problem.step.map_or(at, |i| rv.upcast[i].span().start);
                        src.refuse(at, problem.key, problem.message)
                    })?;
                }
            }
            published
                .check(&entity, &version)
                .map_err(|message| src.refuse(at, key.clone(), message))?;
            versions.push(version);
        }
        if let Some(missing) = published.missing(&entity, versions.len()) {
            return Err(src.refuse(
                0,
                "version",
                format!(
                    "version {missing} of {entity} is published ({}) but not declared: a published version cannot be removed",
                    published.file
                ),
            ));
        }
        let key = raw.key.get_ref().clone();
        let key_at = raw.key.span().start;
        if key.is_empty() || key.len() > 2 {
            return Err(src.refuse(
                key_at,
                "key",
                "names one field (the partition key) or two (partition and sort key)",
            ));
        }
        for name in &key {
            for v in &versions {
                match v.fields.get(name) {
                    None => {
                        return Err(src.refuse(
                            key_at,
                            "key",
                            format!(
                                "names {name:?}, which version {} does not declare: a key field must be in every version",
                                v.number
                            ),
                        ));
                    }
                    Some(f) if f.optional => {
                        return Err(src.refuse(
                            key_at,
                            "key",
                            format!(
                                "names {name:?}, which version {} declares optional: a key field is required",
                                v.number
                            ),
                        ));
                    }
                    Some(f)
                        if !matches!(
                            f.ty,
                            FieldType::String | FieldType::Decimal | FieldType::Bytes
                        ) =>
                    {
                        return Err(src.refuse(
                            key_at,
                            "key",
                            format!(
                                "names {name:?}, a {}: a DynamoDB key is a string, decimal or bytes",
                                f.ty.name()
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(Contract {
            entity,
            description: raw.description,
            key,
            versions,
        })
    }

    /// The newest declared version.
    pub fn current(&self) -> &Version {
        self.versions
            .last()
            .expect("parse refuses a contract with no version")
    }

    /// Version `number`, if declared.
    pub fn version(&self, number: u64) -> Option<&Version> {
        let i = usize::try_from(number).ok()?.checked_sub(1)?;
        self.versions.get(i)
    }

    /// The event types of this entity, as the wire and the `event_type` attribute name them.
    pub fn event_type(&self, kind: &str) -> String {
        format!("{}.{kind}", self.entity)
    }

    /// Upcasts `data` of version `from` to the current version.
    ///
    /// # Panics
    /// When `from` is not a declared version.
    pub fn upcast(&self, from: u32, data: serde_json::Value) -> serde_json::Value {
        self.upcast_to(from, self.current().number, data)
    }

    /// Upcasts `data` of version `from` to version `to` (no change when `to <= from`).
    ///
    /// # Panics
    /// When `to` is not a declared version.
    pub fn upcast_to(&self, from: u32, to: u32, mut data: serde_json::Value) -> serde_json::Value {
        for v in &self.versions[from as usize..to as usize] {
            data = upcast::apply(v, data);
        }
        data
    }
}

pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

fn fields(
    src: &Source<'_>,
    key: &str,
    raw: &BTreeMap<Spanned<String>, Spanned<RawField>>,
) -> Result<BTreeMap<String, Field>, DeclarationError> {
    let mut out = BTreeMap::new();
    for (name, field) in raw {
        let path = format!("{key}.{}", name.get_ref());
        if !is_identifier(name.get_ref()) {
            return Err(src.refuse(
                name.span().start,
                path,
                "is not a field name of lower-case letters, digits and _",
            ));
        }
        out.insert(name.get_ref().clone(), self::field(src, &path, field)?);
    }
    Ok(out)
}

fn field(src: &Source<'_>, path: &str, raw: &Spanned<RawField>) -> Result<Field, DeclarationError> {
    let r = raw.get_ref();
    let type_at = r.ty.span().start;
    let name = r.ty.get_ref().as_str();
    if r.fields.is_some() && name != "object" {
        return Err(src.refuse(
            type_at,
            path,
            format!("has fields but is a {name}: only an object has fields"),
        ));
    }
    if r.items.is_some() && name != "list" {
        return Err(src.refuse(
            type_at,
            path,
            format!("has items but is a {name}: only a list has items"),
        ));
    }
    let ty = match name {
        "string" => FieldType::String,
        "decimal" => FieldType::Decimal,
        "boolean" => FieldType::Boolean,
        "timestamp" => FieldType::Timestamp,
        "bytes" => FieldType::Bytes,
        "object" => FieldType::Object(match &r.fields {
            Some(f) => Some(fields(src, &format!("{path}.fields"), f)?),
            None => None,
        }),
        "list" => FieldType::List(match &r.items {
            Some(item) => Some(Box::new(field(src, &format!("{path}.items"), item)?)),
            None => None,
        }),
        "string_set" => FieldType::StringSet,
        "number_set" => FieldType::NumberSet,
        "bytes_set" => FieldType::BytesSet,
        other => {
            return Err(src.refuse(
                type_at,
                path,
                format!(
                    "unknown type {other:?}: use one of {}",
                    FieldType::NAMES.join(", ")
                ),
            ));
        }
    };
    Ok(Field {
        ty,
        optional: r.optional,
        doc: r.doc.clone(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    entity: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    key: Spanned<Vec<String>>,
    #[serde(default)]
    version: Vec<RawVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    number: Spanned<u32>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    upcast: Vec<Spanned<RawStep>>,
    fields: BTreeMap<Spanned<String>, Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    doc: Option<String>,
    #[serde(default)]
    fields: Option<BTreeMap<Spanned<String>, Spanned<RawField>>>,
    #[serde(default)]
    items: Option<Box<Spanned<RawField>>>,
}
