//! A change event of a declared entity, and its decode: the envelope as every entity
//! shares it, the data checked against the version it was published as, then upcast to
//! the version the reader reads. The same [`DecodeError`]s (and reason codes) as the
//! coded profile's [`crate::decode`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::model::Contract;
use crate::envelope::{MAX_EVENT_ID_BYTES, MAX_KEY_BYTES, Position, Source};
use crate::error::{DecodeError, InvalidEvent};
use crate::{DeleteReason, Rank};

/// A decoded change event of a declared entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub key: String,
    pub position: Position,
    /// `Some` for a delete.
    pub deleted: Option<DeleteReason>,
    /// The wire name, e.g. `order.snapshot`.
    pub event_type: String,
    /// The schema version the event was published as.
    pub schema: u16,
    /// The entity's data in the version read; `None` for a delete.
    pub data: Option<Value>,
    pub occurred_at: OffsetDateTime,
    pub published_at: OffsetDateTime,
    pub source: Source,
}

impl Event {
    /// Where the event ranks among its key's events.
    pub fn rank(&self) -> Rank {
        Rank {
            position: self.position,
            deleted: self.deleted.is_some(),
            schema: self.schema,
        }
    }
}

impl From<&crate::ChangeEvent> for Event {
    /// The coded profile event as a declared one (data in the current version).
    fn from(e: &crate::ChangeEvent) -> Event {
        Event {
            event_id: e.event_id.clone(),
            key: e.key.clone(),
            position: e.position,
            deleted: match e.change {
                crate::Change::Deleted(reason) => Some(reason),
                _ => None,
            },
            event_type: e.change.event_type().as_str().to_owned(),
            schema: e.published_schema.number().into(),
            data: e
                .change
                .profile()
                .map(|p| serde_json::to_value(p).expect("a profile serialises")),
            occurred_at: e.occurred_at,
            published_at: e.published_at,
            source: e.source.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    event_id: String,
    event_type: String,
    #[allow(dead_code)] // read by the probe; present in every version
    schema_version: u8,
    key: String,
    generation: i64,
    version: i64,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    published_at: OffsetDateTime,
    source: Source,
    #[serde(default)]
    reason: Option<DeleteReason>,
    data: Option<Value>,
}

/// Decodes a body of `contract`'s events for a reader of version `reads`.
///
/// # Errors
/// The [`DecodeError`] [`crate::decode`] would give: malformed JSON, no schema version,
/// a version newer than `reads`, a body that does not match its version, or an event
/// that breaks a rule beyond the schema.
pub fn decode(contract: &Contract, reads: u32, body: &[u8]) -> Result<Event, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<Value>,
    }
    let probe: Probe = from_json(body).map_err(|e| DecodeError::from_serde(e, None))?;
    let found = probe
        .schema_version
        .and_then(|v| v.as_u64())
        .ok_or(DecodeError::MissingSchemaVersion)?;
    let newest = u8::try_from(reads).unwrap_or(u8::MAX);
    let version = match u32::try_from(found) {
        Ok(n) if n >= 1 && n <= reads => contract.version(found),
        _ => None,
    }
    .ok_or(DecodeError::UnsupportedSchemaVersion { found, newest })?;
    let number = u8::try_from(version.number).unwrap_or(u8::MAX);
    let wire: Wire = from_json(body).map_err(|(path, e)| {
        // Data nested deeper than serde_json's limit (128) parses as no typed field
        // could: a schema mismatch, as the coded decode reports it, not malformed JSON.
        if e.to_string().starts_with("recursion limit exceeded") {
            return DecodeError::SchemaMismatch {
                schema_version: number,
                message: format!("at {path}: nested more than 128 levels deep"),
            };
        }
        DecodeError::from_serde((path, e), Some(number))
    })?;
    let mismatch = |message: String| DecodeError::SchemaMismatch {
        schema_version: number,
        message,
    };
    let kind = ["upserted", "snapshot", "deleted"]
        .into_iter()
        .find(|k| wire.event_type == contract.event_type(k))
        .ok_or_else(|| {
            mismatch(format!(
                "at event_type: not an event type of {}: expected {}, {} or {}",
                contract.entity,
                contract.event_type("upserted"),
                contract.event_type("deleted"),
                contract.event_type("snapshot")
            ))
        })?;
    if let Some(data) = &wire.data {
        super::validate(version, data).map_err(|e| {
            let at = if e.path.is_empty() {
                "data".to_owned()
            } else {
                format!("data.{}", e.path)
            };
            mismatch(format!("at {at}: {}", e.problem))
        })?;
    }
    let invalid = |problem| DecodeError::Invalid {
        event_id: wire.event_id.chars().take(MAX_EVENT_ID_BYTES).collect(),
        problem,
    };
    if wire.event_id.is_empty() || wire.event_id.len() > MAX_EVENT_ID_BYTES {
        return Err(invalid(InvalidEvent::BadEventId));
    }
    if wire.key.is_empty() || wire.key.len() > MAX_KEY_BYTES {
        return Err(invalid(InvalidEvent::BadKey));
    }
    if wire.version < 0 {
        return Err(invalid(InvalidEvent::NegativeVersion));
    }
    let deleted = match (kind, wire.reason, &wire.data) {
        ("deleted", Some(reason), None) => Some(reason),
        ("deleted", None, _) => return Err(invalid(InvalidEvent::MissingReason)),
        ("deleted", Some(_), Some(_)) => return Err(invalid(InvalidEvent::UnexpectedData)),
        (_, Some(_), _) => return Err(invalid(InvalidEvent::UnexpectedReason)),
        (_, None, None) => return Err(invalid(InvalidEvent::MissingData)),
        (_, None, Some(_)) => None,
    };
    let data = match wire.data {
        None => None,
        Some(data) => {
            if key_in(contract, &data).as_deref() != Some(wire.key.as_str()) {
                return Err(invalid(InvalidEvent::KeyMismatch));
            }
            Some(contract.upcast_to(version.number, reads, data))
        }
    };
    Ok(Event {
        event_id: wire.event_id,
        key: wire.key,
        position: Position {
            generation: wire.generation,
            version: wire.version,
        },
        deleted,
        event_type: wire.event_type,
        schema: version.number.try_into().unwrap_or(u16::MAX),
        data,
        occurred_at: wire.occurred_at,
        published_at: wire.published_at,
        source: wire.source,
    })
}

/// The body of `event` as the wire carries it, labelled schema version `as_version`,
/// which must be the version its data is in (a decoded event's data is in the version
/// its reader reads).
pub fn encode(event: &Event, as_version: u32) -> Vec<u8> {
    #[derive(Serialize)]
    struct Out<'a> {
        event_id: &'a str,
        event_type: &'a str,
        schema_version: u32,
        key: &'a str,
        generation: i64,
        version: i64,
        #[serde(with = "time::serde::rfc3339")]
        occurred_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        published_at: OffsetDateTime,
        source: &'a Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<DeleteReason>,
        data: Option<&'a Value>,
    }
    serde_json::to_vec(&Out {
        event_id: &event.event_id,
        event_type: &event.event_type,
        schema_version: as_version,
        key: &event.key,
        generation: event.position.generation,
        version: event.position.version,
        occurred_at: event.occurred_at,
        published_at: event.published_at,
        source: &event.source,
        reason: event.deleted,
        data: event.data.as_ref(),
    })
    .expect("an event serialises")
}

/// The envelope key `data` names: its key field, or the JSON array of its key fields.
pub fn key_in(contract: &Contract, data: &Value) -> Option<String> {
    let values: Option<Vec<Value>> = contract
        .key
        .iter()
        .map(|f| data.get(f).filter(|v| v.is_string()).cloned())
        .collect();
    match values?.as_slice() {
        [Value::String(one)] => Some(one.clone()),
        many => Some(Value::Array(many.to_vec()).to_string()),
    }
}

fn from_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, (String, serde_json::Error)> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| (String::new(), e))?;
    Ok(value)
}
