//! The envelope every schema version shares, and the decoded event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{DecodeError, InvalidEvent};
use crate::v1::ProfileV1;
use crate::v2::Profile;

/// Longest `event_id` accepted, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 512;
/// Longest `key` accepted, in bytes: DynamoDB's partition-key limit.
///
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html#limits-partition-sort-keys>
pub const MAX_KEY_BYTES: usize = 2048;

/// A published schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaVersion {
    V1 = 1,
    V2 = 2,
}

impl SchemaVersion {
    /// Every version this build decodes, oldest first.
    pub const ALL: [SchemaVersion; 2] = [SchemaVersion::V1, SchemaVersion::V2];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u64) -> Option<SchemaVersion> {
        match n {
            1 => Some(SchemaVersion::V1),
            2 => Some(SchemaVersion::V2),
            _ => None,
        }
    }
}

impl std::fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// What happened to the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// Created or changed (a stream INSERT or MODIFY).
    #[serde(rename = "profile.upserted")]
    Upserted,
    /// Removed (a stream REMOVE), by the service or by TTL expiry.
    #[serde(rename = "profile.deleted")]
    Deleted,
    /// The item as a backfill scan read it; applied like an upsert.
    #[serde(rename = "profile.snapshot")]
    Snapshot,
}

impl EventType {
    /// The wire name, also the `event_type` message attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Upserted => "profile.upserted",
            EventType::Deleted => "profile.deleted",
            EventType::Snapshot => "profile.snapshot",
        }
    }
}

/// Why a profile was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    /// Deleted by the profile service.
    Deleted,
    /// Removed by DynamoDB's time-to-live sweeper.
    Expired,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Deleted => "deleted",
            DeleteReason::Expired => "expired",
        }
    }
}

/// Where the change came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Source table name.
    pub table: String,
    /// Stream the change was read from; absent for snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_arn: Option<String>,
    /// Stream record sequence number (a decimal string); absent for snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
}

/// An event's place in its key's history. Compared as `(generation, version)`; the store
/// ranks a delete above an upsert of the same position (see the crate docs).
/// (Serialisable for reports; on the wire its fields sit in the envelope.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    /// The item's incarnation: its `created_at` in microseconds since the Unix epoch.
    pub generation: i64,
    /// The item's write counter within the generation.
    pub version: i64,
}

/// The envelope on the wire, generic over the payload of one schema version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireEvent<D> {
    /// Deterministic id: the stream record's `eventID`, or derived from key and
    /// position for a snapshot, so a re-publish is recognisably the same event.
    pub event_id: String,
    pub event_type: EventType,
    pub schema_version: u8,
    /// The aggregate id (the profile's `user_id`).
    pub key: String,
    /// See [`Position::generation`].
    pub generation: i64,
    /// See [`Position::version`].
    pub version: i64,
    /// When the change happened at the source.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: OffsetDateTime,
    /// When the publisher published it.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub published_at: OffsetDateTime,
    pub source: Source,
    /// Only on `profile.deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeleteReason>,
    /// The profile; `null` on `profile.deleted`.
    pub data: Option<D>,
}

/// What the event does to the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upserted(Profile),
    Snapshot(Profile),
    Deleted(DeleteReason),
}

impl Change {
    pub fn event_type(&self) -> EventType {
        match self {
            Change::Upserted(_) => EventType::Upserted,
            Change::Snapshot(_) => EventType::Snapshot,
            Change::Deleted(_) => EventType::Deleted,
        }
    }

    /// The profile after the change, `None` for a delete.
    pub fn profile(&self) -> Option<&Profile> {
        match self {
            Change::Upserted(p) | Change::Snapshot(p) => Some(p),
            Change::Deleted(_) => None,
        }
    }
}

/// A decoded, validated change event in the current schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub event_id: String,
    pub key: String,
    pub position: Position,
    pub occurred_at: OffsetDateTime,
    pub published_at: OffsetDateTime,
    pub source: Source,
    /// The version it was published as (it has been upcast to the current one).
    pub published_schema: SchemaVersion,
    pub change: Change,
}

impl ChangeEvent {
    /// This event's place among its key's events; see [`crate::Rank`].
    pub fn rank(&self) -> crate::Rank {
        crate::Rank {
            position: self.position,
            deleted: matches!(self.change, Change::Deleted(_)),
            schema: self.published_schema.number().into(),
        }
    }

    /// Encodes the event as schema version `as_version`: the current version, or an older
    /// one to act as a publisher that predates it (a rolling deploy), dropping what the
    /// older version cannot carry.
    pub fn encode(&self, as_version: SchemaVersion) -> Vec<u8> {
        match as_version {
            SchemaVersion::V1 => to_json(&self.wire(as_version, ProfileV1::downcast)),
            SchemaVersion::V2 => to_json(&self.wire(as_version, Profile::clone)),
        }
    }

    fn wire<D>(&self, as_version: SchemaVersion, project: impl Fn(&Profile) -> D) -> WireEvent<D> {
        let (reason, data) = match &self.change {
            Change::Upserted(p) | Change::Snapshot(p) => (None, Some(project(p))),
            Change::Deleted(reason) => (Some(*reason), None),
        };
        WireEvent {
            event_id: self.event_id.clone(),
            event_type: self.change.event_type(),
            schema_version: as_version.number(),
            key: self.key.clone(),
            generation: self.position.generation,
            version: self.position.version,
            occurred_at: self.occurred_at,
            published_at: self.published_at,
            source: self.source.clone(),
            reason,
            data,
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("contract types have string map keys and always serialise")
}

/// Decodes a change event of any known schema version and upcasts it to the current one.
///
/// # Errors
/// A [`DecodeError`] saying why the body is not an event this build can apply; every
/// variant is permanent for these bytes.
pub fn decode(body: &[u8]) -> Result<ChangeEvent, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<serde_json::Value>,
    }
    let probe: Probe = from_json(body).map_err(|e| DecodeError::from_serde(e, None))?;
    let found = probe
        .schema_version
        .and_then(|v| v.as_u64())
        .ok_or(DecodeError::MissingSchemaVersion)?;
    let version =
        SchemaVersion::from_number(found).ok_or(DecodeError::UnsupportedSchemaVersion {
            found,
            newest: crate::CURRENT_SCHEMA_VERSION.number(),
        })?;
    let parse_err = |e| DecodeError::from_serde(e, Some(version.number()));
    match version {
        SchemaVersion::V1 => {
            let wire: WireEvent<ProfileV1> = from_json(body).map_err(parse_err)?;
            validate(wire, version, ProfileV1::upcast)
        }
        SchemaVersion::V2 => {
            let wire: WireEvent<Profile> = from_json(body).map_err(parse_err)?;
            validate(wire, version, |p| p)
        }
    }
}

/// `serde_json::from_slice`, keeping the JSON path of an error (empty when the error is
/// not inside a value).
fn from_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, (String, serde_json::Error)> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| (String::new(), e))?;
    Ok(value)
}

fn validate<D>(
    wire: WireEvent<D>,
    version: SchemaVersion,
    upcast: impl FnOnce(D) -> Profile,
) -> Result<ChangeEvent, DecodeError> {
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
    let change = match (wire.event_type, wire.reason, wire.data) {
        (EventType::Deleted, Some(reason), None) => Change::Deleted(reason),
        (EventType::Deleted, None, _) => return Err(invalid(InvalidEvent::MissingReason)),
        (EventType::Deleted, Some(_), Some(_)) => {
            return Err(invalid(InvalidEvent::UnexpectedData));
        }
        (_, Some(_), _) => return Err(invalid(InvalidEvent::UnexpectedReason)),
        (_, None, None) => return Err(invalid(InvalidEvent::MissingData)),
        (event_type, None, Some(data)) => {
            let profile = upcast(data);
            if profile.user_id != wire.key {
                return Err(invalid(InvalidEvent::KeyMismatch));
            }
            if event_type == EventType::Snapshot {
                Change::Snapshot(profile)
            } else {
                Change::Upserted(profile)
            }
        }
    };
    Ok(ChangeEvent {
        event_id: wire.event_id,
        key: wire.key,
        position: Position {
            generation: wire.generation,
            version: wire.version,
        },
        occurred_at: wire.occurred_at,
        published_at: wire.published_at,
        source: wire.source,
        published_schema: version,
        change,
    })
}
