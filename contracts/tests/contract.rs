//! The contract's files agree with its code: schemas regenerate identically, every
//! fixture of every published version validates against its schema and decodes.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use contracts::{Change, DecodeError, SchemaVersion, decode, schema};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(version: SchemaVersion) -> Vec<(PathBuf, String)> {
    let dir = crate_dir().join(format!("fixtures/v{}", version.number()));
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    out.sort();
    out
}

fn validator(version: SchemaVersion) -> jsonschema::Validator {
    let path = crate_dir().join("schema").join(schema::file_name(version));
    let text = std::fs::read_to_string(&path).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn checked_in_schemas_match_the_code() {
    for version in SchemaVersion::ALL {
        let path = crate_dir().join("schema").join(schema::file_name(version));
        let generated = schema::render(version);
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} differs from the schema the code generates; if the change is intended it \
             needs a new schema version (UPDATE_SCHEMAS=1 rewrites the files)",
            path.display()
        );
    }
}

#[test]
fn every_fixture_validates_against_its_schema_and_decodes() {
    for version in SchemaVersion::ALL {
        let validator = validator(version);
        let fixtures = fixtures(version);
        assert!(
            fixtures.len() >= 3,
            "v{version} needs upserted, deleted and snapshot fixtures"
        );
        for (path, text) in fixtures {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            let event = decode(text.as_bytes())
                .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
            assert_eq!(event.published_schema, version, "{}", path.display());
        }
    }
}

#[test]
fn current_fixtures_round_trip_byte_for_byte_in_meaning() {
    for (path, text) in fixtures(contracts::CURRENT_SCHEMA_VERSION) {
        let event = decode(text.as_bytes()).unwrap();
        let encoded = event.encode(contracts::CURRENT_SCHEMA_VERSION);
        let a: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(a, b, "{} changes on re-encoding", path.display());
    }
}

#[test]
fn v1_fixtures_upcast_to_the_matching_v2_fixtures() {
    // Each v1 fixture has a v2 twin of the same name describing the same change.
    for (path, v1_text) in fixtures(SchemaVersion::V1) {
        let twin = crate_dir()
            .join("fixtures/v2")
            .join(path.file_name().unwrap());
        let v2_text = std::fs::read_to_string(&twin).unwrap();
        let from_v1 = decode(v1_text.as_bytes()).unwrap();
        let from_v2 = decode(v2_text.as_bytes()).unwrap();
        assert_eq!(from_v1.change, from_v2.change, "{}", path.display());
        assert_eq!(from_v1.position, from_v2.position);
        assert_eq!(from_v1.event_id, from_v2.event_id);
    }
}

#[test]
fn the_schema_rejects_what_decode_rejects() {
    // A few hand-made breakages of a valid v2 event: both the schema and the code refuse.
    let (_, good) = fixtures(SchemaVersion::V2)
        .into_iter()
        .find(|(p, _)| p.ends_with("upserted.json"))
        .unwrap();
    let good: serde_json::Value = serde_json::from_str(&good).unwrap();
    let validator = validator(SchemaVersion::V2);
    let mut cases: Vec<(&str, serde_json::Value)> = Vec::new();
    let mut extra = good.clone();
    extra["surprise"] = true.into();
    cases.push(("unknown field", extra));
    let mut number = good.clone();
    number["data"]["lifetime_value_cents"] = serde_json::json!(12.5);
    cases.push(("number as a JSON number", number));
    let mut missing = good.clone();
    missing["data"].as_object_mut().unwrap().remove("email");
    cases.push(("missing email", missing));
    let mut delete_with_data = good.clone();
    delete_with_data["event_type"] = "profile.deleted".into();
    delete_with_data["reason"] = "deleted".into();
    cases.push(("delete with data", delete_with_data));
    let mut wrong_version = good.clone();
    wrong_version["schema_version"] = 1.into();
    cases.push(("v2 body labelled v1", wrong_version));
    for (what, json) in cases {
        assert!(!validator.is_valid(&json), "schema accepts {what}");
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(decode(&bytes).is_err(), "decode accepts {what}");
    }
}

#[test]
fn a_newer_schema_version_is_refused_with_a_typed_error() {
    let (_, text) = fixtures(SchemaVersion::V2).into_iter().next().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["schema_version"] = 3.into();
    let err = decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedSchemaVersion {
            found: 3,
            newest: 2
        }
    );
    assert_eq!(err.reason_code(), "unsupported_schema_version");
}

#[test]
fn big_numbers_survive_decoding() {
    let (_, text) = fixtures(SchemaVersion::V2)
        .into_iter()
        .find(|(p, _)| p.ends_with("upserted.json"))
        .unwrap();
    let event = decode(text.as_bytes()).unwrap();
    let Change::Upserted(profile) = event.change else {
        panic!("not an upsert")
    };
    assert_eq!(
        profile.lifetime_value_cents.unwrap().as_str(),
        "98765432109876543210987654321098765432"
    );
}
