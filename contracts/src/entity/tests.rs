//! Every refusal of a contract declaration, with its one-line message.

use serde_json::json;

use super::*;

const FILE: &str = "contracts/entities/thing.toml";

const GOOD: &str = r#"entity = "thing"
key = ["id"]

[[version]]
number = 1
[version.fields]
id = { type = "string" }
flag = { type = "boolean" }
note = { type = "string", optional = true }

[[version]]
number = 2
upcast = [
    { rename = "flag", to = "flags.first" },
    { default = "flags.second", value = false },
]
[version.fields]
id = { type = "string" }
note = { type = "string", optional = true }
added = { type = "decimal", optional = true }
flags = { type = "object", fields = { first = { type = "boolean" }, second = { type = "boolean" } } }
"#;

fn parse(text: &str) -> Result<Contract, DeclarationError> {
    Contract::parse(FILE, text, &Published::none())
}

fn refusal(text: &str) -> String {
    parse(text)
        .expect_err("the declaration is refused")
        .to_string()
}

#[test]
fn a_good_declaration_parses_and_upcasts() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.entity, "thing");
    assert_eq!(c.key, ["id"]);
    assert_eq!(c.versions.len(), 2);
    assert_eq!(c.event_type("deleted"), "thing.deleted");
    let up = c.upcast(1, json!({ "id": "a", "flag": true, "note": null }));
    assert_eq!(
        up,
        json!({ "id": "a", "note": null, "added": null, "flags": { "first": true, "second": false } })
    );
    validate(c.current(), &up).unwrap();
}

#[test]
fn an_unknown_type_names_the_line_the_key_and_the_known_types() {
    let text = GOOD.replace(
        r#"flag = { type = "boolean" }"#,
        r#"flag = { type = "bool" }"#,
    );
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:8: version[1].fields.flag: unknown type \"bool\": use one of \
         string, decimal, boolean, timestamp, bytes, object, list, string_set, number_set, bytes_set"
    );
}

#[test]
fn a_misspelt_key_is_refused_on_its_line() {
    let text = GOOD.replace(
        r#"note = { type = "string", optional = true }"#,
        r#"note = { type = "string", optinal = true }"#,
    );
    let e = refusal(&text);
    assert!(
        e.starts_with("contracts/entities/thing.toml:9: unknown field `optinal`"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_key_field_the_version_does_not_declare_is_refused() {
    let text = GOOD.replace(r#"key = ["id"]"#, r#"key = ["thing_id"]"#);
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:2: key: names \"thing_id\", which version 1 does not declare: \
         a key field must be in every version"
    );
}

#[test]
fn an_optional_or_structured_key_field_is_refused() {
    let text = GOOD.replace(r#"key = ["id"]"#, r#"key = ["note"]"#);
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:2: key: names \"note\", which version 1 declares optional: \
         a key field is required"
    );
    let text = GOOD.replace(r#"key = ["id"]"#, r#"key = ["id", "x", "y"]"#);
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:2: key: names one field (the partition key) or two \
         (partition and sort key)"
    );
}

#[test]
fn versions_out_of_order_are_refused() {
    let text = GOOD.replace("number = 2", "number = 3");
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:12: version[2].number: is 3, expected 2: versions are \
         numbered 1, 2, 3, … in order"
    );
}

#[test]
fn a_new_required_field_without_a_default_does_not_upcast() {
    let text = GOOD.replace("    { default = \"flags.second\", value = false },\n", "");
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:12: version[2].fields.flags.second: is required and new in \
         version 2, so version 1 cannot upcast: make it optional, or add \
         { default = \"flags.second\", value = … } to upcast"
    );
}

#[test]
fn a_field_that_disappears_without_a_step_does_not_upcast() {
    let text = GOOD.replace(
        "    { rename = \"flag\", to = \"flags.first\" },\n",
        "    { default = \"flags.first\", value = true },\n",
    );
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:12: version[2].fields: version 1's field \"flag\" is \
         missing: declare it, or add { rename = \"flag\", to = \"…\" } or { drop = \"flag\" } to upcast"
    );
}

#[test]
fn a_field_that_changes_type_does_not_upcast() {
    let text = GOOD
        .replace(
            r#"added = { type = "decimal", optional = true }"#,
            r#"added = { type = "decimal", optional = true }
note = { type = "timestamp", optional = true }"#,
        )
        .replacen(
            "note = { type = \"string\", optional = true }\nadded",
            "added",
            1,
        );
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:12: version[2].fields.note: is a string in version 1 and a \
         timestamp in version 2: a field cannot change type; add a new field instead"
    );
}

#[test]
fn a_default_of_the_wrong_type_is_refused_on_its_step() {
    let text = GOOD.replace("value = false", "value = \"no\"");
    assert_eq!(
        refusal(&text),
        "contracts/entities/thing.toml:15: version[2].upcast[2]: value does not fit \
         \"flags.second\": is a string, expected a boolean"
    );
}

#[test]
fn an_edited_published_version_is_refused() {
    let published = parse(GOOD).unwrap();
    let lock_text = format!(
        "# published versions\n{}\n{}\n",
        Published::line("thing", &published.versions[0]),
        Published::line("thing", &published.versions[1]),
    );
    let lock = Published::parse("published.lock", &lock_text).unwrap();
    Contract::parse(FILE, GOOD, &lock).expect("the published text itself is accepted");
    // Documentation may improve; the fields may not.
    let documented = GOOD.replace(
        r#"id = { type = "string" }"#,
        r#"id = { type = "string", doc = "The id." }"#,
    );
    Contract::parse(FILE, &documented, &lock).expect("a doc change is not an edit");
    let edited = GOOD.replacen(
        r#"note = { type = "string", optional = true }"#,
        r#"note = { type = "string" }"#,
        1,
    );
    assert_eq!(
        Contract::parse(FILE, &edited, &lock)
            .unwrap_err()
            .to_string(),
        "contracts/entities/thing.toml:5: version[1]: version 1 of thing is published \
         (published.lock) and its declaration changed: a published version cannot be edited; \
         undo the change and declare version 2 instead"
    );
    let removed = GOOD.split("[[version]]\nnumber = 2").next().unwrap();
    assert_eq!(
        Contract::parse(FILE, removed, &lock)
            .unwrap_err()
            .to_string(),
        "contracts/entities/thing.toml:1: version: version 2 of thing is published \
         (published.lock) but not declared: a published version cannot be removed"
    );
}

#[test]
fn a_malformed_lock_line_is_refused() {
    assert_eq!(
        Published::parse("published.lock", "thing 1 abc\n")
            .unwrap_err()
            .to_string(),
        "published.lock:1: is not `<entity> <version> sha256:<fingerprint>`"
    );
}

#[test]
fn data_is_checked_field_by_field() {
    let c = parse(GOOD).unwrap();
    let v2 = c.current();
    let good = json!({ "id": "a", "note": null, "added": "12.50", "flags": { "first": true, "second": false } });
    validate(v2, &good).unwrap();
    let cases = [
        (
            json!({ "id": "a", "flags": { "first": true, "second": false }, "added": 12.5 }),
            "data.added is a JSON number, expected a decimal in a string",
        ),
        (
            json!({ "id": "a", "flags": { "first": true } }),
            "data.flags.second is required",
        ),
        (
            json!({ "id": "a", "flags": { "first": true, "second": false }, "x": 1 }),
            "data.x is not a field of this version",
        ),
        (
            json!({ "id": "a", "flags": { "first": true, "second": false }, "added": "1e999" }),
            "data.added is not a DynamoDB number: magnitude outside 1E-130 ..= 9.99E+125",
        ),
        (json!([1]), "data is an array, expected an object"),
    ];
    for (data, message) in cases {
        assert_eq!(validate(v2, &data).unwrap_err().to_string(), message);
    }
}
