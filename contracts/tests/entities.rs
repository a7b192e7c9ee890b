//! The declared contracts under `contracts/entities/` agree with everything else the
//! contract is: the lock of published versions, the checked-in JSON Schemas, the golden
//! fixtures, and (for the profile, while its Rust types exist) the coded upcast.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

use contracts::entity::{self, Contract, Published};
use serde_json::Value;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn lock() -> Published {
    let path = crate_dir().join("entities/published.lock");
    let text = std::fs::read_to_string(&path).unwrap();
    Published::parse("contracts/entities/published.lock", &text).unwrap()
}

fn contracts() -> Vec<Contract> {
    let lock = lock();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("entities"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 2,
        "the profile and order contracts are declared"
    );
    paths
        .iter()
        .map(|p| {
            let name = format!(
                "contracts/entities/{}",
                p.file_name().unwrap().to_string_lossy()
            );
            Contract::parse(&name, &std::fs::read_to_string(p).unwrap(), &lock)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn contract(entity: &str) -> Contract {
    contracts()
        .into_iter()
        .find(|c| c.entity == entity)
        .unwrap()
}

fn schema_path(entity: &str, version: u32) -> PathBuf {
    crate_dir().join(format!(
        "schema/{entity}-change-event.v{version}.schema.json"
    ))
}

fn fixtures(entity: &str, version: u32) -> Vec<Value> {
    let dir = crate_dir().join(format!("fixtures/{entity}/v{version}"));
    let dir = if entity == "profile" {
        crate_dir().join(format!("fixtures/v{version}"))
    } else {
        dir
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn every_declared_version_is_published() {
    let lock = lock();
    for c in contracts() {
        for v in &c.versions {
            assert!(
                lock.contains(&c.entity, v.number),
                "{} version {} is declared but not published: once it is final, add this line \
                 to contracts/entities/published.lock:\n{}",
                c.entity,
                v.number,
                Published::line(&c.entity, v)
            );
        }
    }
}

#[test]
fn each_checked_in_schema_has_the_shape_its_declaration_gives() {
    for c in contracts() {
        for v in &c.versions {
            let path = schema_path(&c.entity, v.number);
            let generated = entity::render_schema(&c, v);
            if std::env::var_os("UPDATE_SCHEMAS").is_some() && !path.exists() {
                std::fs::write(&path, &generated).unwrap();
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SCHEMAS=1 writes it)", path.display()));
            let schema: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                entity::shape_of_schema(&schema).unwrap(),
                entity::shape_of_version(v),
                "{} and the declaration of {} version {} disagree",
                path.display(),
                c.entity,
                v.number
            );
            // A file generated from its declaration stays exactly that; the profile's two
            // were generated from its Rust types before declarations existed, and only
            // their shape is compared.
            if schema.get("$comment").is_some() {
                assert!(
                    text == generated,
                    "{} differs from its declaration's rendering",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_rendered_schema_accepts_the_fixtures_and_refuses_what_validate_refuses() {
    for c in contracts() {
        for v in &c.versions {
            let schema: Value = serde_json::from_str(&entity::render_schema(&c, v)).unwrap();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let fixtures = fixtures(&c.entity, v.number);
            assert!(
                fixtures.len() >= 3,
                "{} v{} has fixtures",
                c.entity,
                v.number
            );
            for f in &fixtures {
                assert!(
                    validator.is_valid(f),
                    "{} v{}: schema refuses {f}",
                    c.entity,
                    v.number
                );
                if !f["data"].is_null() {
                    entity::validate(v, &f["data"]).unwrap_or_else(|e| panic!("{e}: {f}"));
                }
            }
            let good = fixtures.iter().find(|f| f["data"].is_object()).unwrap();
            let first_required = v.fields.iter().find(|(_, f)| !f.optional).unwrap().0;
            let mut missing = good.clone();
            missing["data"]
                .as_object_mut()
                .unwrap()
                .remove(first_required);
            let mut unknown = good.clone();
            unknown["data"]["surprise"] = true.into();
            for broken in [missing, unknown] {
                assert!(!validator.is_valid(&broken), "schema accepts {broken}");
                assert!(
                    entity::validate(v, &broken["data"]).is_err(),
                    "validate accepts {broken}"
                );
            }
        }
    }
}

#[test]
fn declared_upcasts_turn_each_fixture_into_the_next_versions_fixture() {
    for c in contracts() {
        for v in c.versions.iter().skip(1) {
            let older = fixtures(&c.entity, v.number - 1);
            let newer = fixtures(&c.entity, v.number);
            assert_eq!(older.len(), newer.len());
            for (o, n) in older.iter().zip(&newer) {
                let upcast = c.upcast(v.number - 1, o["data"].clone());
                assert_eq!(
                    upcast,
                    n["data"],
                    "{} v{} → v{}",
                    c.entity,
                    v.number - 1,
                    v.number
                );
                if !upcast.is_null() {
                    entity::validate(c.current(), &upcast).unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }
}

#[test]
fn the_profile_declaration_upcasts_like_the_coded_profile() {
    // While the profile's Rust types exist they are the reference: every v1 body the
    // coded upcast accepts gives the same v2 data through the declaration.
    let c = contract("profile");
    let mut v1 = fixtures("profile", 1)
        .into_iter()
        .find(|f| f["data"].is_object())
        .unwrap()["data"]
        .clone();
    for (opt_in, country) in [(true, Value::Null), (false, "FR".into())] {
        v1["marketing_opt_in"] = opt_in.into();
        v1["country"] = country;
        let coded: contracts::v1::ProfileV1 = serde_json::from_value(v1.clone()).unwrap();
        let coded = serde_json::to_value(coded.upcast()).unwrap();
        assert_eq!(c.upcast(1, v1.clone()), coded);
    }
}

#[test]
fn the_declared_profile_decodes_every_body_as_the_coded_decode_does() {
    // Every good fixture and every body of the subscriber's bad-input corpus (by
    // expected reason): the same event, or the same reason code.
    let c = contract("profile");
    let corpus = crate_dir().join("../tests/corpus/subscriber");
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for v in [1, 2] {
        for f in fixtures("profile", v) {
            bodies.push((format!("fixture v{v}"), serde_json::to_vec(&f).unwrap()));
        }
    }
    for reason in [
        "apply_rejected",
        "invalid_event",
        "malformed_json",
        "missing_schema_version",
        "schema_mismatch",
        "unsupported_schema_version",
    ] {
        for entry in std::fs::read_dir(corpus.join(reason)).unwrap() {
            let path = entry.unwrap().path();
            bodies.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(bodies.len() > 60, "the corpus is there");
    for (what, body) in &bodies {
        match (contracts::decode(body), entity::decode(&c, 2, body)) {
            (Ok(coded), Ok(declared)) => {
                assert_eq!(entity::Event::from(&coded), declared, "{what}");
            }
            (Err(coded), Err(declared)) => {
                assert_eq!(
                    coded.reason_code(),
                    declared.reason_code(),
                    "{what}: {coded} / {declared}"
                );
            }
            (coded, declared) => panic!("{what}: coded {coded:?}, declared {declared:?}"),
        }
    }
}

#[test]
fn a_reader_of_an_older_version_parks_a_newer_one() {
    let c = contract("profile");
    let v2 = fixtures("profile", 2)
        .into_iter()
        .find(|f| f["data"].is_object())
        .unwrap();
    let e = entity::decode(&c, 1, &serde_json::to_vec(&v2).unwrap()).unwrap_err();
    assert_eq!(e.reason_code(), "unsupported_schema_version");
    assert_eq!(
        e.to_string(),
        "schema_version 2 is newer than 1, the newest this build knows"
    );
    let v1 = fixtures("profile", 1)
        .into_iter()
        .find(|f| f["data"].is_object())
        .unwrap();
    let read = entity::decode(&c, 1, &serde_json::to_vec(&v1).unwrap()).unwrap();
    assert_eq!(
        read.data.as_ref(),
        Some(&v1["data"]),
        "version 1 read as version 1"
    );
}

#[test]
fn an_order_decodes_with_its_composite_key() {
    let c = contract("order");
    for f in fixtures("order", 1) {
        let e = entity::decode(&c, 1, &serde_json::to_vec(&f).unwrap())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.key, r#"["c-0001","o-0042"]"#);
    }
    let mut wrong_key = fixtures("order", 1)
        .into_iter()
        .find(|f| f["data"].is_object())
        .unwrap();
    wrong_key["key"] = "c-0001".into();
    let e = entity::decode(&c, 1, &serde_json::to_vec(&wrong_key).unwrap()).unwrap_err();
    assert_eq!(e.reason_code(), "invalid_event");
    let mut profile_type = fixtures("order", 1).into_iter().next().unwrap();
    profile_type["event_type"] = "profile.deleted".into();
    let e = entity::decode(&c, 1, &serde_json::to_vec(&profile_type).unwrap()).unwrap_err();
    assert_eq!(e.reason_code(), "schema_mismatch");
}

#[test]
fn a_decoded_event_re_encodes_to_a_body_that_decodes_to_it() {
    for (entity, reads) in [("profile", 2), ("order", 1)] {
        let c = contract(entity);
        for v in 1..=reads {
            for f in fixtures(entity, v) {
                let e = entity::decode(&c, reads, &serde_json::to_vec(&f).unwrap()).unwrap();
                let back = entity::decode(&c, reads, &entity::encode(&e, reads)).unwrap();
                assert_eq!(
                    back,
                    entity::Event {
                        schema: reads as u16,
                        ..e.clone()
                    }
                );
            }
        }
    }
}
