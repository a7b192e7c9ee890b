//! An item → the contract's data, its position and its key, by the publisher's
//! [`Mapping`]: the generic projection. Pure: no AWS calls, no clock reads.
//!
//! Each DynamoDB type becomes the contract type its field declares, and nothing passes
//! through `f64`: `N` stays a decimal string, `B` becomes base64, sets are sorted (so
//! the same item always projects to the same data). An attribute of another type is a
//! refusal ([`RecordError::WrongType`]), never a silent null.

use base64::Engine as _;
use contracts::entity::{Field, FieldType};
use contracts::{DdbNumber, Position};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::mapping::{Generation, Mapping};
use crate::record::{AttributeValue, Item, RecordError};

impl Mapping {
    /// The position and the contract data `item` projects to.
    ///
    /// # Errors
    /// [`RecordError`] naming the first attribute that is missing or malformed.
    pub fn project(&self, item: &Item, label: &str) -> Result<(Position, Value), RecordError> {
        let position = self.position_of(item, label)?;
        let mut data = Map::new();
        for source in &self.fields {
            let found = lookup(item, &source.attribute);
            let attribute = source.attribute.join(".");
            let value = match found {
                None | Some(AttributeValue::Null) => match &source.default {
                    Some(default) => default.clone(),
                    None if source.required => {
                        return Err(RecordError::MissingAttribute {
                            record: label.to_owned(),
                            attribute,
                        });
                    }
                    None => Value::Null,
                },
                Some(v) => typed(&source.ty, v, label, &attribute)?,
            };
            contracts::entity::put_path(&mut data, &source.field, value);
        }
        Ok((position, Value::Object(data)))
    }

    /// `(generation, version)` of an item.
    ///
    /// # Errors
    /// [`RecordError`] when a position attribute is missing or malformed.
    pub fn position_of(&self, item: &Item, label: &str) -> Result<Position, RecordError> {
        let generation = match &self.generation {
            Generation::Constant => 0,
            Generation::TimestampMicros(name) => {
                let at = timestamp(item, name, label)?;
                i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| {
                    RecordError::BadValue {
                        record: label.to_owned(),
                        attribute: name.clone(),
                        problem: "outside the representable range".into(),
                    }
                })?
            }
            Generation::Number(name) => counter(item, name, label)?,
        };
        let version = counter(item, &self.version_attribute, label)?;
        Ok(Position {
            generation,
            version,
        })
    }

    /// The envelope's `key` for a record's keys: the partition key's value, or the JSON
    /// array of partition and sort key values, as text.
    ///
    /// # Errors
    /// [`RecordError`] when a key attribute is missing or not `S`, `N` or `B`.
    pub fn key_of(&self, keys: &Item, label: &str) -> Result<String, RecordError> {
        let one = |name: &str| -> Result<String, RecordError> {
            match keys.get(name) {
                Some(AttributeValue::S(s)) => Ok(s.clone()),
                Some(AttributeValue::N(n)) => Ok(n.clone()),
                Some(AttributeValue::B(b)) => {
                    Ok(base64::engine::general_purpose::STANDARD.encode(b))
                }
                None | Some(AttributeValue::Null) => Err(RecordError::MissingAttribute {
                    record: label.to_owned(),
                    attribute: name.to_owned(),
                }),
                Some(other) => Err(RecordError::WrongType {
                    record: label.to_owned(),
                    attribute: name.to_owned(),
                    expected: "S, N or B",
                    found: other.type_name(),
                }),
            }
        };
        let partition = one(&self.partition_key)?;
        match &self.sort_key {
            None => Ok(partition),
            Some(sort) => Ok(Value::Array(vec![partition.into(), one(sort)?.into()]).to_string()),
        }
    }
}

fn lookup<'a>(item: &'a Item, path: &[String]) -> Option<&'a AttributeValue> {
    let (first, rest) = path.split_first()?;
    let mut here = item.get(first)?;
    for name in rest {
        match here {
            AttributeValue::M(m) => here = m.get(name)?,
            _ => return None,
        }
    }
    Some(here)
}

fn counter(item: &Item, name: &str, label: &str) -> Result<i64, RecordError> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => {
            n.parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| RecordError::BadValue {
                    record: label.to_owned(),
                    attribute: name.to_owned(),
                    problem: "not an integer in 0..=2^63-1".into(),
                })
        }
        Some(other) => Err(RecordError::WrongType {
            record: label.to_owned(),
            attribute: name.to_owned(),
            expected: "N",
            found: other.type_name(),
        }),
        None => Err(RecordError::MissingAttribute {
            record: label.to_owned(),
            attribute: name.to_owned(),
        }),
    }
}

fn timestamp(item: &Item, name: &str, label: &str) -> Result<OffsetDateTime, RecordError> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => parse_time(s, label, name),
        None | Some(AttributeValue::Null) => Err(RecordError::MissingAttribute {
            record: label.to_owned(),
            attribute: name.to_owned(),
        }),
        Some(other) => Err(RecordError::WrongType {
            record: label.to_owned(),
            attribute: name.to_owned(),
            expected: "S",
            found: other.type_name(),
        }),
    }
}

fn parse_time(s: &str, label: &str, attribute: &str) -> Result<OffsetDateTime, RecordError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| RecordError::BadValue {
        record: label.to_owned(),
        attribute: attribute.to_owned(),
        problem: format!("not an RFC 3339 timestamp: {e}"),
    })
}

/// The DynamoDB type a contract type is read from.
fn expected(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::String | FieldType::Timestamp => "S",
        FieldType::Decimal => "N",
        FieldType::Boolean => "BOOL",
        FieldType::Bytes => "B",
        FieldType::Object(_) => "M",
        FieldType::List(_) => "L",
        FieldType::StringSet => "SS",
        FieldType::NumberSet => "NS",
        FieldType::BytesSet => "BS",
    }
}

fn typed(
    ty: &FieldType,
    v: &AttributeValue,
    label: &str,
    attribute: &str,
) -> Result<Value, RecordError> {
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    let bad = |problem: String| RecordError::BadValue {
        record: label.to_owned(),
        attribute: attribute.to_owned(),
        problem,
    };
    Ok(match (ty, v) {
        (FieldType::String, AttributeValue::S(s)) => Value::String(s.clone()),
        (FieldType::Timestamp, AttributeValue::S(s)) => {
            // The canonical RFC 3339 form, as a consumer compares it.
            let at = parse_time(s, label, attribute)?;
            Value::String(at.format(&Rfc3339).map_err(|e| bad(e.to_string()))?)
        }
        (FieldType::Decimal, AttributeValue::N(n)) => Value::String(decimal(n).map_err(bad)?),
        (FieldType::Boolean, AttributeValue::Bool(b)) => Value::Bool(*b),
        (FieldType::Bytes, AttributeValue::B(b)) => b64(b),
        (FieldType::Object(None), AttributeValue::M(_))
        | (FieldType::List(None), AttributeValue::L(_)) => free(v, label, attribute)?,
        (FieldType::Object(Some(fields)), AttributeValue::M(m)) => {
            let mut out = Map::new();
            if let Some(unknown) = m.keys().find(|k| !fields.contains_key(*k)) {
                return Err(bad(format!(
                    "has the key {unknown:?}, which the contract does not declare"
                )));
            }
            for (name, field) in fields {
                let here = format!("{attribute}.{name}");
                out.insert(name.clone(), member(field, m.get(name), label, &here)?);
            }
            Value::Object(out)
        }
        (FieldType::List(Some(item)), AttributeValue::L(items)) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| member(item, Some(v), label, &format!("{attribute}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        // A set of its own type converts as in a free-form value: sorted, exact.
        (FieldType::StringSet, AttributeValue::Ss(_))
        | (FieldType::NumberSet, AttributeValue::Ns(_))
        | (FieldType::BytesSet, AttributeValue::Bs(_)) => free(v, label, attribute)?,
        (ty, other) => {
            return Err(RecordError::WrongType {
                record: label.to_owned(),
                attribute: attribute.to_owned(),
                expected: expected(ty),
                found: other.type_name(),
            });
        }
    })
}

/// A field inside an object or list: absent or NULL is null when the field is optional.
fn member(
    field: &Field,
    v: Option<&AttributeValue>,
    label: &str,
    attribute: &str,
) -> Result<Value, RecordError> {
    match v {
        None | Some(AttributeValue::Null) if field.optional => Ok(Value::Null),
        None | Some(AttributeValue::Null) => Err(RecordError::MissingAttribute {
            record: label.to_owned(),
            attribute: attribute.to_owned(),
        }),
        Some(v) => typed(&field.ty, v, label, attribute),
    }
}

/// A value of a free-form object or list: numbers stay decimal strings.
fn free(v: &AttributeValue, label: &str, attribute: &str) -> Result<Value, RecordError> {
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    let bad = |problem: String| RecordError::BadValue {
        record: label.to_owned(),
        attribute: attribute.to_owned(),
        problem,
    };
    Ok(match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => Value::String(decimal(n).map_err(bad)?),
        AttributeValue::B(b) => b64(b),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null => Value::Null,
        AttributeValue::M(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), free(v, label, &format!("{attribute}.{k}"))?)))
                .collect::<Result<_, RecordError>>()?,
        ),
        AttributeValue::L(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| free(v, label, &format!("{attribute}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::Ss(items) => sorted(items.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(items) => sorted(
            items
                .iter()
                .map(|n| decimal(n).map(Value::String))
                .collect::<Result<_, _>>()
                .map_err(bad)?,
        ),
        AttributeValue::Bs(items) => sorted(items.iter().map(|b| b64(b)).collect()),
        AttributeValue::Unsupported => {
            return Err(RecordError::WrongType {
                record: label.to_owned(),
                attribute: attribute.to_owned(),
                expected: "a DynamoDB type",
                found: v.type_name(),
            });
        }
    })
}

fn decimal(n: &str) -> Result<String, String> {
    n.parse::<DdbNumber>()
        .map(|d| d.as_str().to_owned())
        .map_err(|e| e.to_string())
}

fn sorted(mut items: Vec<Value>) -> Value {
    items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    Value::Array(items)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::record::tests::{item, s};
    use crate::record::{self as coded};

    fn mapping(entity: &str) -> Mapping {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../mappings/publisher/{entity}.toml"));
        Mapping::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    /// The items the coded profile projection and the declared one must agree on:
    /// good ones of every optional shape, and one fault at a time.
    fn profile_items() -> Vec<(String, Item)> {
        let mut out = vec![("base".to_owned(), item(3))];
        let mut with = |what: &str, f: &dyn Fn(&mut Item)| {
            let mut i = item(3);
            f(&mut i);
            out.push((what.to_owned(), i));
        };
        with("every optional attribute", &|i| {
            i.insert("country".into(), s("GB"));
            i.insert("locale".into(), s("en-GB"));
            i.insert("time_zone".into(), s("Europe/London"));
            i.insert(
                "lifetime_value_cents".into(),
                n("98765432109876543210987654321098765432"),
            );
            i.insert("marketing_sms".into(), AttributeValue::Bool(true));
        });
        with("NULL optionals", &|i| {
            for a in [
                "country",
                "locale",
                "time_zone",
                "lifetime_value_cents",
                "marketing_email",
            ] {
                i.insert(a.into(), AttributeValue::Null);
            }
        });
        with("offset and fraction", &|i| {
            i.insert("updated_at".into(), s("2026-11-25T02:00:00.500+02:00"));
            i.insert("created_at".into(), s("2026-11-20T09:30:00Z"));
        });
        with("negative number with exponent", &|i| {
            i.insert("lifetime_value_cents".into(), n("-1.5E+3"));
        });
        for required in [
            "user_id",
            "email",
            "display_name",
            "plan",
            "created_at",
            "updated_at",
            "version",
        ] {
            with(&format!("no {required}"), &|i| {
                i.remove(required);
            });
            with(&format!("{required} of the wrong type"), &|i| {
                let wrong = if required == "version" {
                    s("1")
                } else {
                    AttributeValue::Bool(true)
                };
                i.insert(required.into(), wrong);
            });
        }
        with("bad number", &|i| {
            i.insert("lifetime_value_cents".into(), n("12abc"));
        });
        with("number out of range", &|i| {
            i.insert("lifetime_value_cents".into(), n("1E+200"));
        });
        with("bad timestamp", &|i| {
            i.insert("updated_at".into(), s("yesterday"));
        });
        with("negative version", &|i| {
            i.insert("version".into(), n("-1"));
        });
        with("fractional version", &|i| {
            i.insert("version".into(), n("1.5"));
        });
        with("consent of the wrong type", &|i| {
            i.insert("marketing_sms".into(), s("yes"));
        });
        with("an optional of the wrong type", &|i| {
            i.insert("country".into(), n("44"));
        });
        out
    }

    #[test]
    fn the_declared_profile_projects_exactly_as_the_coded_one() {
        let m = mapping("profile");
        for (what, item) in profile_items() {
            let coded = coded::project(&item, "r");
            let declared = m.project(&item, "r");
            match (coded, declared) {
                (Ok((cp, profile)), Ok((dp, data))) => {
                    assert_eq!(cp, dp, "{what}: position");
                    assert_eq!(
                        serde_json::to_value(&profile).unwrap(),
                        data,
                        "{what}: data"
                    );
                }
                (Err(c), Err(d)) => {
                    assert_eq!(c.reason_code(), d.reason_code(), "{what}: {c} / {d}");
                    assert_eq!(c, d, "{what}");
                }
                (c, d) => panic!("{what}: coded {c:?}, declared {d:?}"),
            }
        }
    }

    #[test]
    fn the_profile_key_is_the_user_id_and_matches_the_data() {
        let m = mapping("profile");
        let keys = Item::from([("user_id".to_string(), s("u-1"))]);
        assert_eq!(m.key_of(&keys, "r").unwrap(), "u-1");
        let (_, data) = m.project(&item(1), "r").unwrap();
        assert_eq!(
            contracts::entity::key_in(&m.contract, &data).as_deref(),
            Some("u-1")
        );
        assert_eq!(
            m.key_of(&Item::new(), "r").unwrap_err().reason_code(),
            "missing_attribute"
        );
        assert!(!m.fields.iter().any(|f| f.attribute[0] == "password_hash"));
    }

    fn order_item() -> Item {
        let line = |sku: &str, q: &str, p: &str| {
            AttributeValue::M(BTreeMap::from([
                ("sku".to_string(), s(sku)),
                ("quantity".to_string(), n(q)),
                ("unit_price".to_string(), n(p)),
            ]))
        };
        Item::from([
            ("customer_id".to_string(), s("c-0001")),
            ("order_id".to_string(), s("o-0042")),
            ("status".to_string(), s("paid")),
            (
                "total".to_string(),
                n("1234567890123456789012345678901234.56"),
            ),
            ("currency".to_string(), s("EUR")),
            (
                "items".to_string(),
                AttributeValue::L(vec![
                    line("SKU-RED-1", "2", "9.99"),
                    line("SKU-BLU-7", "1", "1234567890123456789012345678901214.58"),
                ]),
            ),
            (
                "tags".to_string(),
                AttributeValue::Ss(vec!["gift".into(), "express".into()]),
            ),
            ("placed_at".to_string(), s("2026-11-24T18:45:00.500Z")),
            ("updated_at".to_string(), s("2026-11-25T01:02:03.5Z")),
            ("version".to_string(), n("3")),
            ("payment_token".to_string(), AttributeValue::B(vec![7; 16])),
            ("expires_at".to_string(), n("1796000000")),
        ])
    }

    #[test]
    fn an_order_projects_to_its_golden_fixture_with_a_composite_key() {
        let m = mapping("order");
        let (position, data) = m.project(&order_item(), "r").unwrap();
        assert_eq!(
            position,
            Position {
                generation: 0,
                version: 3
            }
        );
        let fixture: Value = serde_json::from_str(include_str!(
            "../../contracts/fixtures/order/v1/upserted.json"
        ))
        .unwrap();
        assert_eq!(
            data, fixture["data"],
            "sets sorted, numbers exact, time canonical"
        );
        contracts::entity::validate(m.contract.current(), &data).unwrap();
        let keys = Item::from([
            ("customer_id".to_string(), s("c-0001")),
            ("order_id".to_string(), s("o-0042")),
        ]);
        assert_eq!(
            m.key_of(&keys, "r").unwrap(),
            fixture["key"].as_str().unwrap()
        );
        assert_eq!(
            contracts::entity::key_in(&m.contract, &data).as_deref(),
            fixture["key"].as_str()
        );
    }

    #[test]
    fn an_attribute_of_the_wrong_type_is_refused_never_nulled() {
        let m = mapping("order");
        let mut wrong_line = order_item();
        if let Some(AttributeValue::L(items)) = wrong_line.get_mut("items")
            && let AttributeValue::M(line) = &mut items[1]
        {
            line.insert("quantity".into(), s("one"));
        }
        assert_eq!(
            m.project(&wrong_line, "r").unwrap_err().to_string(),
            "record \"r\": attribute \"items[1].quantity\" is S, expected N"
        );
        let mut tags = order_item();
        tags.insert("tags".into(), AttributeValue::L(vec![]));
        assert_eq!(
            m.project(&tags, "r").unwrap_err().to_string(),
            "record \"r\": attribute \"tags\" is L, expected SS"
        );
        let mut extra = order_item();
        if let Some(AttributeValue::L(items)) = extra.get_mut("items")
            && let AttributeValue::M(line) = &mut items[0]
        {
            line.insert("colour".into(), s("red"));
        }
        assert_eq!(
            m.project(&extra, "r").unwrap_err().reason_code(),
            "bad_attribute_value"
        );
    }
}
