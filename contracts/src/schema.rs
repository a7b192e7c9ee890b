//! The JSON Schema of each published version, generated from the types in this crate.
//!
//! The files under `contracts/schema/` are these schemas, checked in so that teams in
//! other languages can read the contract without Rust. A test regenerates them and
//! fails if they differ (`UPDATE_SCHEMAS=1 cargo test -p tributary-contracts` rewrites
//! them after an intended change — which must be a new version, never an edit of a
//! published one).

use serde_json::{Value, json};

use crate::envelope::{SchemaVersion, WireEvent};
use crate::v1::ProfileV1;
use crate::v2::Profile;

/// The file name of a version's schema under `contracts/schema/`.
pub fn file_name(version: SchemaVersion) -> String {
    format!("profile-change-event.v{}.schema.json", version.number())
}

/// The JSON Schema (draft 2020-12) of schema version `version`, pretty-printed with a
/// trailing newline, as checked in.
pub fn render(version: SchemaVersion) -> String {
    let mut schema = match version {
        SchemaVersion::V1 => schemars::schema_for!(WireEvent<ProfileV1>),
        SchemaVersion::V2 => schemars::schema_for!(WireEvent<Profile>),
    }
    .to_value();
    let n = version.number();
    let root = schema
        .as_object_mut()
        .expect("a derived schema is an object");
    root.insert(
        "$id".into(),
        json!(format!(
            "https://tributary.example/contracts/{}",
            file_name(version)
        )),
    );
    root.insert(
        "title".into(),
        json!(format!("Profile change event, schema version {n}")),
    );
    root["properties"]["schema_version"] = json!({ "const": n });
    // What serde's Option cannot say: data and reason depend on the event type.
    root.insert(
        "allOf".into(),
        json!([{
            "if": { "properties": { "event_type": { "const": "profile.deleted" } } },
            "then": { "required": ["reason"], "properties": { "data": { "type": "null" } } },
            "else": {
                "properties": { "data": { "type": "object" }, "reason": false }
            }
        }]),
    );
    let mut text =
        serde_json::to_string_pretty(&Value::Object(root.clone())).expect("a schema serialises");
    text.push('\n');
    text
}
