//! The entity this subscriber applies: its declared mapping (and the contract it
//! names) and the statements built from it, chosen once at start.
//!
//! `--mapping` / `SUBSCRIBER_MAPPING` names a mapping file; without one the subscriber
//! applies the profile, from the declarations built into the binary
//! (`mappings/subscriber/profile.toml` and the contract it names), so a deployment that
//! predates declarations upgrades with nothing to add.

use std::path::Path;
use std::sync::OnceLock;

use contracts::entity::{Contract, Event, FieldType, Published};
use contracts::{Position, Source};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::mapping::Mapping;
use crate::table::Table;

/// Which entity a subscriber binary applies, a setting of both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EntityArgs {
    /// The subscriber mapping to apply (a TOML file; the contract it names is read
    /// relative to it). Checked at start: a bad mapping or contract stops the program
    /// with the file, line and key to fix. Default: the profile, from the declarations
    /// built into this binary (mappings/subscriber/profile.toml).
    #[arg(long = "mapping", env = "SUBSCRIBER_MAPPING", value_name = "PATH", value_parser = parse_mapping)]
    pub mapping: Option<Entity>,
}

impl EntityArgs {
    /// Makes the chosen entity the one this process decodes and applies
    /// ([`Entity::current`]). Called once by each binary's main.
    pub fn install(&self) {
        let entity = self.mapping.clone().unwrap_or_else(Entity::builtin_profile);
        tracing::info!(entity = %entity.mapping.entity, reads = entity.mapping.reads, table = %format!("{}.{}", entity.mapping.table.0, entity.mapping.table.1), "Applying this entity.");
        let _ = Entity::install(entity);
    }
}

fn parse_mapping(path: &str) -> Result<Entity, String> {
    Entity::load(Path::new(path))
}

/// A declared entity, ready to decode and apply.
#[derive(Debug, Clone)]
pub struct Entity {
    pub mapping: Mapping,
    pub table: Table,
}

static INSTALLED: OnceLock<Entity> = OnceLock::new();

impl Entity {
    /// The entity of `mapping`.
    pub fn new(mapping: Mapping) -> Entity {
        let table = Table::new(&mapping);
        Entity { mapping, table }
    }

    /// Reads the mapping at `path` and the contract it names.
    ///
    /// # Errors
    /// One line naming the file, line and key of the first problem.
    pub fn load(path: &Path) -> Result<Entity, String> {
        Mapping::load(path).map(Entity::new)
    }

    /// The profile, from the declarations built into this binary.
    pub fn builtin_profile() -> Entity {
        const CONTRACT: &str = include_str!("../../contracts/entities/profile.toml");
        const LOCK: &str = include_str!("../../contracts/entities/published.lock");
        const MAPPING: &str = include_str!("../../mappings/subscriber/profile.toml");
        let mapping = Mapping::parse("mappings/subscriber/profile.toml", MAPPING, |_| {
            let lock = Published::parse("contracts/entities/published.lock", LOCK)
                .map_err(|e| e.to_string())?;
            Contract::parse("contracts/entities/profile.toml", CONTRACT, &lock)
                .map_err(|e| e.to_string())
        })
        .expect("the built-in profile declarations are checked by the tests");
        Entity::new(mapping)
    }

    /// Makes `entity` the one this process applies. Only the first call takes effect
    /// (returns `false` after it).
    pub fn install(entity: Entity) -> bool {
        INSTALLED.set(entity).is_ok()
    }

    /// The installed entity, or the built-in profile when none was installed.
    pub fn current() -> &'static Entity {
        INSTALLED.get_or_init(Entity::builtin_profile)
    }

    /// The contract read.
    pub fn contract(&self) -> &Contract {
        &self.mapping.contract
    }

    /// A complete, ordinary upsert of the version read, under a key no source item has
    /// (each its own, so concurrent probes never wait on each other's row lock): the
    /// store must accept it unless the store itself is broken.
    pub fn probe_event(&self) -> Event {
        use std::sync::atomic::{AtomicU64, Ordering};
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let probe_key = format!("tributary-probe-{}-{n}", std::process::id());
        let contract = self.contract();
        let version = contract
            .version(u64::from(self.mapping.reads))
            .expect("the mapping's version is declared");
        let at = OffsetDateTime::now_utc();
        let mut data = Map::new();
        for (name, field) in &version.fields {
            let value = if contract.key.contains(name) {
                Value::String(probe_key.clone())
            } else {
                minimal(field)
            };
            data.insert(name.clone(), value);
        }
        let data = Value::Object(data);
        let key = contracts::entity::key_in(contract, &data).unwrap_or(probe_key.clone());
        Event {
            event_id: format!("{probe_key}/probe"),
            key,
            position: Position {
                generation: 1,
                version: 1,
            },
            deleted: None,
            event_type: contract.event_type("upserted"),
            schema: u16::try_from(self.mapping.reads).unwrap_or(u16::MAX),
            data: Some(data),
            occurred_at: at,
            published_at: at,
            source: Source {
                table: "tributary-probe".to_owned(),
                stream_arn: None,
                sequence_number: Some("1".to_owned()),
            },
        }
    }
}

/// Decodes an SQS message body, raw or SNS-wrapped, into an event of the installed
/// entity ([`Entity::current`]), checking a wrapped body's topic against the one
/// [`crate::envelope::TopicCheck::install`] set.
///
/// # Errors
/// As [`crate::envelope::decode_body_from`].
pub fn decode_body(body: &str) -> Result<Event, crate::envelope::BodyError> {
    let entity = Entity::current();
    crate::envelope::decode_body_from(
        entity.contract(),
        entity.mapping.reads,
        body,
        crate::envelope::expected_topic(),
    )
}

/// An ordinary valid value of a field, null when optional. A string is a word of
/// fifteen letters, not an empty one: a mapped string column is `text`, so a column
/// narrowed under us (drift from the mapping) refuses the probe as it refuses real
/// events, and the store is seen as broken instead of each event being parked.
fn minimal(field: &contracts::entity::Field) -> Value {
    if field.optional {
        return Value::Null;
    }
    match &field.ty {
        FieldType::String => Value::String("tributary-probe".into()),
        FieldType::Bytes => Value::String(String::new()),
        FieldType::Decimal => Value::String("0".into()),
        FieldType::Boolean => Value::Bool(false),
        FieldType::Timestamp => Value::String("1970-01-01T00:00:00Z".into()),
        FieldType::Object(Some(fields)) => Value::Object(
            fields
                .iter()
                .map(|(name, f)| (name.clone(), minimal(f)))
                .collect(),
        ),
        FieldType::Object(None) => Value::Object(Map::new()),
        FieldType::List(_) | FieldType::StringSet | FieldType::NumberSet | FieldType::BytesSet => {
            Value::Array(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_profile_is_the_shipped_mapping() {
        let builtin = Entity::builtin_profile();
        let shipped = Entity::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/subscriber/profile.toml"),
        )
        .unwrap();
        assert_eq!(builtin.mapping.columns, shipped.mapping.columns);
        assert_eq!(
            builtin.mapping.contract.versions,
            shipped.mapping.contract.versions
        );
    }

    #[test]
    fn a_probe_event_is_valid_to_its_contract() {
        let entity = Entity::builtin_profile();
        let probe = entity.probe_event();
        let version = entity.contract().current();
        contracts::entity::validate(version, probe.data.as_ref().unwrap()).unwrap();
        assert!(probe.key.starts_with("tributary-probe-"));
        assert_ne!(
            probe.key,
            entity.probe_event().key,
            "each probe its own key"
        );
    }
}
