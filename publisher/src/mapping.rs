//! The publisher's mapping: which table an entity is published from, which attributes
//! are its key and position, and which attribute (or path into a map) each contract
//! field comes from. Declared in TOML (`mappings/publisher/<entity>.toml`), owned by the
//! producing service, checked against the contract at start. Pure, but for
//! [`Mapping::load`], which reads the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use contracts::entity::{
    Contract, DeclarationError, FieldType, field_entries, fits, load_mapping, mapping_contract,
};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// How an item's generation (its incarnation) is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generation {
    /// An RFC 3339 `S` attribute (typically the creation time), in microseconds since
    /// the Unix epoch: a re-created item gets a new one.
    TimestampMicros(String),
    /// An `N` attribute holding the generation as an integer.
    Number(String),
    /// Always 0: for tables whose keys are never reused after a delete.
    Constant,
}

/// One contract field and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSource {
    /// The contract field's dotted path, e.g. `consents.marketing_email`.
    pub field: String,
    /// The attribute's path: its name, then names inside maps.
    pub attribute: Vec<String>,
    /// The value when the attribute is absent or NULL.
    pub default: Option<Value>,
    pub ty: FieldType,
    /// Whether the contract requires the field (here and in every enclosing object).
    pub required: bool,
}

/// A checked publisher mapping, with the contract it publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub entity: String,
    pub table: String,
    pub topic: String,
    /// The contract version published.
    pub schema_version: u32,
    pub partition_key: String,
    pub sort_key: Option<String>,
    pub version_attribute: String,
    pub generation: Generation,
    /// The attribute that says when an upsert happened, if the table has one.
    pub occurred_at: Option<String>,
    pub ttl: Option<String>,
    /// Attributes never published nor parked.
    pub private: BTreeSet<String>,
    pub fields: Vec<FieldSource>,
    pub contract: Contract,
}

impl Mapping {
    /// Reads the mapping at `path`, the contract it names (relative to it) and that
    /// contract's `published.lock` (beside the contract, when there is one).
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
        let schema_version = match &raw.schema_version {
            None => contract.current().number,
            Some(v) => {
                if contract.version(u64::from(*v.get_ref())).is_none() {
                    return Err(refuse(
                        v.span().start,
                        "schema_version",
                        format!(
                            "is {}, but the contract declares versions 1 to {}",
                            v.get_ref(),
                            contract.current().number
                        ),
                    ));
                }
                *v.get_ref()
            }
        };
        let version = contract
            .version(u64::from(schema_version))
            .expect("checked above");
        let private: BTreeSet<String> = raw.private.iter().map(|p| p.get_ref().clone()).collect();

        // Every leaf of the contract version is mapped, and nothing else.
        let leaves = version.leaves();
        let declared = field_entries(raw.fields.get_ref(), text, "attribute");
        let mut fields = Vec::new();
        for entry in &declared {
            let at = entry.offset;
            let key = format!("fields.{}", entry.path);
            let Some((_, field, required)) = leaves.iter().find(|(p, _, _)| *p == entry.path)
            else {
                return Err(refuse(
                    at,
                    &key,
                    format!(
                        "the contract's version {schema_version} has no field {:?}",
                        entry.path
                    ),
                ));
            };
            let (attribute, default) = match &entry.value {
                toml::Value::String(a) => (a.clone(), None),
                toml::Value::Table(t) => {
                    let attribute = match t.get("attribute") {
                        Some(toml::Value::String(a)) => a.clone(),
                        _ => {
                            return Err(refuse(
                                at,
                                &key,
                                "is not an attribute name or { attribute = \"…\", default = … }"
                                    .into(),
                            ));
                        }
                    };
                    if let Some(extra) = t.keys().find(|k| *k != "attribute" && *k != "default") {
                        return Err(refuse(
                            at,
                            &key,
                            format!("has unknown key {extra:?}: expected attribute, default"),
                        ));
                    }
                    let default = match t.get("default") {
                        None => None,
                        Some(v) => {
                            let json = serde_json::to_value(v)
                                .map_err(|e| refuse(at, &key, e.to_string()))?;
                            fits(field, &json).map_err(|problem| {
                                refuse(
                                    at,
                                    &key,
                                    format!("default does not fit the field: {problem}"),
                                )
                            })?;
                            Some(json)
                        }
                    };
                    (attribute, default)
                }
                _ => {
                    return Err(refuse(
                        at,
                        &key,
                        "is not an attribute name or { attribute = \"…\", default = … }".into(),
                    ));
                }
            };
            let path: Vec<String> = attribute.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(refuse(
                    at,
                    &key,
                    format!("attribute {attribute:?} has an empty name in its path"),
                ));
            }
            if private.contains(&path[0]) {
                return Err(refuse(
                    at,
                    &key,
                    format!(
                        "maps the private attribute {:?}: a private attribute is never published",
                        path[0]
                    ),
                ));
            }
            fields.push(FieldSource {
                field: entry.path.clone(),
                attribute: path,
                default,
                ty: field.ty.clone(),
                required: *required,
            });
        }
        if let Some((path, _, _)) = leaves
            .iter()
            .find(|(p, _, _)| !fields.iter().any(|f| f.field == *p))
        {
            return Err(refuse(
                raw.fields_span(),
                "fields",
                format!(
                    "the contract's field {path:?} (version {schema_version}) is not mapped: add {path} = \"<attribute>\""
                ),
            ));
        }

        // The key attributes carry the contract's key fields.
        let key_at = raw.key.span().start;
        let key = raw.key.get_ref();
        let key_attrs: Vec<&String> = std::iter::once(&key.partition)
            .chain(key.sort.as_ref())
            .collect();
        if key_attrs.len() != contract.key.len() {
            return Err(refuse(
                key_at,
                "key",
                format!(
                    "names {} attribute(s), but the contract's key is {:?}: {}",
                    key_attrs.len(),
                    contract.key,
                    if contract.key.len() == 2 {
                        "add sort = \"<attribute>\""
                    } else {
                        "remove sort"
                    }
                ),
            ));
        }
        for (attr, field) in key_attrs.iter().zip(&contract.key) {
            let mapped = fields
                .iter()
                .find(|f| f.field == *field)
                .expect("every leaf is mapped");
            if mapped.attribute != [(*attr).clone()] {
                return Err(refuse(
                    key_at,
                    "key",
                    format!(
                        "attribute {attr:?} is the table's key, but the contract's key field {field:?} is mapped from {:?}: they must be the same attribute",
                        mapped.attribute.join(".")
                    ),
                ));
            }
        }

        let position = &raw.position;
        let generation = match position.generation.get_ref() {
            RawGeneration::Constant(c) if c == "constant" => Generation::Constant,
            RawGeneration::Constant(other) => {
                return Err(refuse(
                    position.generation.span().start,
                    "position.generation",
                    format!(
                        "is {other:?}: write \"constant\", {{ timestamp_micros = \"<attribute>\" }} or {{ number = \"<attribute>\" }}"
                    ),
                ));
            }
            RawGeneration::Attribute {
                timestamp_micros: Some(a),
                number: None,
            } => Generation::TimestampMicros(a.clone()),
            RawGeneration::Attribute {
                timestamp_micros: None,
                number: Some(a),
            } => Generation::Number(a.clone()),
            RawGeneration::Attribute { .. } => {
                return Err(refuse(
                    position.generation.span().start,
                    "position.generation",
                    "names one of timestamp_micros or number".into(),
                ));
            }
        };
        let mut used: Vec<(&str, String)> =
            vec![("position.version", position.version.get_ref().clone())];
        match &generation {
            Generation::TimestampMicros(a) | Generation::Number(a) => {
                used.push(("position.generation", a.clone()))
            }
            Generation::Constant => {}
        }
        if let Some(o) = &position.occurred_at {
            used.push(("position.occurred_at", o.get_ref().clone()));
        }
        for attr in &key_attrs {
            used.push(("key", (*attr).clone()));
        }
        for (key, attr) in &used {
            if private.contains(attr) {
                return Err(refuse(
                    0,
                    key,
                    format!("uses the private attribute {attr:?}"),
                ));
            }
        }
        Ok(Mapping {
            entity: contract.entity.clone(),
            table: raw.table.into_inner(),
            topic: raw.topic.into_inner(),
            schema_version,
            partition_key: key.partition.clone(),
            sort_key: key.sort.clone(),
            version_attribute: position.version.get_ref().clone(),
            generation,
            occurred_at: position.occurred_at.as_ref().map(|o| o.get_ref().clone()),
            ttl: raw.ttl.map(Spanned::into_inner),
            private,
            fields,
            contract,
        })
    }
}

pub use contracts::entity::MappingError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    entity: Spanned<String>,
    contract: Spanned<String>,
    table: Spanned<String>,
    topic: Spanned<String>,
    #[serde(default)]
    schema_version: Option<Spanned<u32>>,
    key: Spanned<RawKey>,
    position: RawPosition,
    #[serde(default)]
    ttl: Option<Spanned<String>>,
    #[serde(default)]
    private: Vec<Spanned<String>>,
    fields: Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
}

impl RawMapping {
    fn fields_span(&self) -> usize {
        self.fields.span().start
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    partition: String,
    #[serde(default)]
    sort: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosition {
    version: Spanned<String>,
    generation: Spanned<RawGeneration>,
    #[serde(default)]
    occurred_at: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGeneration {
    Constant(String),
    Attribute {
        timestamp_micros: Option<String>,
        number: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use contracts::entity::Published;

    use super::*;

    const FILE: &str = "mappings/publisher/order.toml";
    const GOOD: &str = include_str!("../../mappings/publisher/order.toml");

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
    fn the_shipped_order_mapping_is_accepted() {
        let m = Mapping::parse(FILE, GOOD, order_contract).unwrap();
        assert_eq!(m.table, "orders");
        assert_eq!(m.sort_key.as_deref(), Some("order_id"));
        assert_eq!(m.generation, Generation::Constant);
        assert_eq!(m.schema_version, 1);
        assert_eq!(m.fields.len(), 8);
    }

    #[test]
    fn a_missing_sort_key_attribute_is_refused() {
        let text = GOOD.replace("sort = \"order_id\"\n", "");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: key: names 1 attribute(s), but the contract's key is [\"customer_id\", \"order_id\"]: add sort = \"<attribute>\"",
                line_of("[key]")
            )
        );
    }

    #[test]
    fn a_key_attribute_that_is_not_the_key_fields_attribute_is_refused() {
        let text = GOOD.replace("partition = \"customer_id\"", "partition = \"status\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: key: attribute \"status\" is the table's key, but the contract's key field \"customer_id\" is mapped from \"customer_id\": they must be the same attribute",
                line_of("[key]")
            )
        );
    }

    #[test]
    fn an_unmapped_contract_field_is_refused() {
        let text = GOOD.replace("tags = \"tags\"\n", "");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: fields: the contract's field \"tags\" (version 1) is not mapped: add tags = \"<attribute>\"",
                line_of("[fields]")
            )
        );
    }

    #[test]
    fn a_field_the_contract_does_not_have_is_refused_on_its_line() {
        let text = GOOD.replace("tags = \"tags\"", "tags = \"tags\"\nnote = \"note\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: fields.note: the contract's version 1 has no field \"note\"",
                line_of("tags =") + 1
            )
        );
    }

    #[test]
    fn publishing_a_private_attribute_is_refused() {
        let text = GOOD.replace("status = \"status\"", "status = \"payment_token\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: fields.status: maps the private attribute \"payment_token\": a private attribute is never published",
                line_of("status =")
            )
        );
    }

    #[test]
    fn a_default_that_does_not_fit_its_field_is_refused() {
        let text = GOOD.replace(
            "tags = \"tags\"",
            "tags = { attribute = \"tags\", default = \"gift\" }",
        );
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: fields.tags: default does not fit the field: is a string, expected a string_set",
                line_of("tags =")
            )
        );
    }

    #[test]
    fn a_misspelt_generation_and_a_wrong_entity_are_refused() {
        let text = GOOD.replace("generation = \"constant\"", "generation = \"const\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: position.generation: is \"const\": write \"constant\", {{ timestamp_micros = \"<attribute>\" }} or {{ number = \"<attribute>\" }}",
                line_of("generation =")
            )
        );
        let text = GOOD.replace("entity = \"order\"", "entity = \"orders\"");
        assert_eq!(
            refusal(&text),
            format!(
                "{FILE}:{}: entity: is \"orders\", but ../../contracts/entities/order.toml declares \"order\"",
                line_of("entity =")
            )
        );
    }

    #[test]
    fn a_contract_that_cannot_be_read_is_named() {
        let e = Mapping::parse(FILE, GOOD, |path| {
            Err(format!("{path}: No such file or directory"))
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "../../contracts/entities/order.toml: No such file or directory"
        );
    }
}
