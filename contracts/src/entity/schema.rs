//! The JSON Schema of a declared version, and the shape both a declaration and a JSON
//! Schema reduce to, so a checked-in schema file can be compared with its declaration.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{Contract, Field, FieldType, Version};

/// The pattern of a decimal string: a DynamoDB number (range checked by consumers).
const DECIMAL_PATTERN: &str = r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,6})?$";

/// The JSON Schema (draft 2020-12) of `version` of `contract`'s events, pretty-printed
/// with a trailing newline, as `contracts/schema/` holds it.
pub fn render_schema(contract: &Contract, version: &Version) -> String {
    let entity = &contract.entity;
    let n = version.number;
    let file = format!("{entity}-change-event.v{n}.schema.json");
    let deleted = contract.event_type("deleted");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("https://tributary.example/contracts/{file}"),
        "$comment": format!("Generated from contracts/entities/{entity}.toml; do not edit."),
        "title": format!("{} change event, schema version {n}", capitalised(entity)),
        "type": "object",
        "additionalProperties": false,
        "required": ["event_id", "event_type", "schema_version", "key", "generation", "version", "occurred_at", "published_at", "source"],
        "properties": {
            "event_id": { "type": "string", "description": "Deterministic id: the stream record's eventID, or derived from key and position." },
            "event_type": { "enum": [contract.event_type("upserted"), deleted, contract.event_type("snapshot")] },
            "schema_version": { "const": n },
            "key": { "type": "string", "description": key_doc(contract) },
            "generation": { "type": "integer", "format": "int64", "description": "The item's incarnation; with version, the event's position." },
            "version": { "type": "integer", "format": "int64", "description": "The item's write counter within the generation." },
            "occurred_at": { "type": "string", "format": "date-time" },
            "published_at": { "type": "string", "format": "date-time" },
            "source": {
                "type": "object",
                "additionalProperties": false,
                "required": ["table"],
                "properties": {
                    "table": { "type": "string" },
                    "stream_arn": { "type": ["string", "null"] },
                    "sequence_number": { "type": ["string", "null"] }
                }
            },
            "reason": { "enum": ["deleted", "expired", null], "description": format!("Only on {deleted}.") },
            "data": {
                "anyOf": [object_schema(&version.fields), { "type": "null" }],
                "description": format!("The {entity}; null on {deleted}.")
            }
        },
        "allOf": [{
            "if": { "properties": { "event_type": { "const": deleted } } },
            "then": { "required": ["reason"], "properties": { "data": { "type": "null" } } },
            "else": { "properties": { "data": { "type": "object" }, "reason": false } }
        }]
    });
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}

fn key_doc(contract: &Contract) -> String {
    match contract.key.as_slice() {
        [one] => format!("The aggregate id: data.{one}."),
        many => format!(
            "The aggregate id: the JSON array of data.{}, as text.",
            many.join(", data.")
        ),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn object_schema(fields: &BTreeMap<String, Field>) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|(name, f)| (name.clone(), field_schema(f)))
        .collect();
    let required: Vec<&String> = fields
        .iter()
        .filter(|(_, f)| !f.optional)
        .map(|(n, _)| n)
        .collect();
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

fn field_schema(field: &Field) -> Value {
    let mut schema = match &field.ty {
        FieldType::String => json!({ "type": "string" }),
        FieldType::Decimal => json!({ "type": "string", "pattern": DECIMAL_PATTERN }),
        FieldType::Boolean => json!({ "type": "boolean" }),
        FieldType::Timestamp => json!({ "type": "string", "format": "date-time" }),
        FieldType::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        FieldType::Object(Some(fields)) => object_schema(fields),
        FieldType::Object(None) => json!({ "type": "object" }),
        FieldType::List(Some(item)) => json!({ "type": "array", "items": field_schema(item) }),
        FieldType::List(None) => json!({ "type": "array" }),
        FieldType::StringSet => {
            json!({ "type": "array", "uniqueItems": true, "items": { "type": "string" } })
        }
        FieldType::NumberSet => {
            json!({ "type": "array", "uniqueItems": true, "items": { "type": "string", "pattern": DECIMAL_PATTERN } })
        }
        FieldType::BytesSet => {
            json!({ "type": "array", "uniqueItems": true, "items": { "type": "string", "contentEncoding": "base64" } })
        }
    };
    if field.optional {
        let ty = schema["type"]
            .as_str()
            .expect("every field schema has a type")
            .to_owned();
        schema["type"] = json!([ty, "null"]);
    }
    if let Some(doc) = &field.doc {
        schema["description"] = json!(doc);
    }
    schema
}

/// The shape of a version's data: per field its type, whether it is optional, and its
/// nested fields or items. Documentation is left out.
pub fn shape_of_version(version: &Version) -> Value {
    fields_shape(&version.fields)
}

fn fields_shape(fields: &BTreeMap<String, Field>) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(name, f)| (name.clone(), field_shape(f)))
            .collect(),
    )
}

fn field_shape(f: &Field) -> Value {
    let mut shape = json!({ "type": f.ty.name(), "optional": f.optional });
    match &f.ty {
        FieldType::Object(Some(fields)) => shape["fields"] = fields_shape(fields),
        FieldType::List(Some(item)) => shape["items"] = field_shape(item),
        _ => {}
    }
    shape
}

/// The shape of the `data` of a JSON Schema file, in the form [`shape_of_version`]
/// gives, read from either a generated schema or one derived from Rust types.
///
/// # Errors
/// A description of the first construct this reader does not understand.
pub fn shape_of_schema(schema: &Value) -> Result<Value, String> {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let data = &schema["properties"]["data"];
    let (object, _) = resolve(&defs, data)?;
    object_shape(&defs, &object)
}

/// A schema with `$ref`s followed and a `null` alternative removed: (schema, nullable).
fn resolve(defs: &Value, schema: &Value) -> Result<(Value, bool), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .ok_or_else(|| format!("unsupported $ref {r}"))?;
        let target = defs
            .get(name)
            .ok_or_else(|| format!("no $defs entry {name}"))?;
        return resolve(defs, target);
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let non_null: Vec<&Value> = options
            .iter()
            .filter(|o| o.get("type") != Some(&json!("null")))
            .collect();
        if let [only] = non_null.as_slice() {
            let (inner, nullable) = resolve(defs, only)?;
            return Ok((inner, nullable || non_null.len() < options.len()));
        }
        return Err("anyOf with several non-null alternatives".into());
    }
    let mut s = schema.clone();
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let non_null: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        if let [only] = non_null.as_slice() {
            s["type"] = (*only).clone();
            return Ok((s, non_null.len() < types.len()));
        }
        return Err(format!(
            "type {types:?} is not one type or one type and null"
        ));
    }
    Ok((s, false))
}

fn object_shape(defs: &Value, object: &Value) -> Result<Value, String> {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let properties = object
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("an object without properties")?;
    let mut out = Map::new();
    for (name, schema) in properties {
        let (s, nullable) = resolve(defs, schema)?;
        let mut shape = type_shape(defs, &s)?;
        shape["optional"] = json!(nullable || !required.contains(&name.as_str()));
        out.insert(name.clone(), shape);
    }
    Ok(Value::Object(out))
}

fn type_shape(defs: &Value, s: &Value) -> Result<Value, String> {
    let string_kind = |s: &Value| {
        if s.get("format") == Some(&json!("date-time")) {
            "timestamp"
        } else if s.get("pattern").is_some() {
            "decimal"
        } else if s.get("contentEncoding").is_some() {
            "bytes"
        } else {
            "string"
        }
    };
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no type in {s}"))?;
    Ok(match ty {
        "string" => json!({ "type": string_kind(s) }),
        "boolean" => json!({ "type": "boolean" }),
        "object" if s.get("properties").is_some() => {
            json!({ "type": "object", "fields": object_shape(defs, s)? })
        }
        "object" => json!({ "type": "object" }),
        "array" if s.get("uniqueItems") == Some(&json!(true)) => {
            let (item, _) = resolve(defs, &s["items"])?;
            let kind = match string_kind(&item) {
                "decimal" => "number_set",
                "bytes" => "bytes_set",
                _ => "string_set",
            };
            json!({ "type": kind })
        }
        "array" => match s.get("items") {
            Some(items) => {
                let (item, nullable) = resolve(defs, items)?;
                let mut shape = type_shape(defs, &item)?;
                shape["optional"] = json!(nullable);
                json!({ "type": "list", "items": shape })
            }
            None => json!({ "type": "list" }),
        },
        other => return Err(format!("unsupported type {other}")),
    })
}
