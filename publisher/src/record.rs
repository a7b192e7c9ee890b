//! Stream record → change event. Pure: no AWS calls, no clock reads.
//!
//! [`StreamRecord`] is the one record type both the SDK's `GetRecords` output and the
//! Lambda event convert into, so container and Lambda modes decode identically.

use std::collections::BTreeMap;

use contracts::{
    Change, ChangeEvent, Consents, DdbNumber, DeleteReason, Position, Profile, Source,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A DynamoDB attribute value. Numbers stay decimal strings, binaries stay bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeValue {
    S(String),
    N(String),
    B(Vec<u8>),
    Bool(bool),
    Null,
    M(BTreeMap<String, AttributeValue>),
    L(Vec<AttributeValue>),
    Ss(Vec<String>),
    Ns(Vec<String>),
    Bs(Vec<Vec<u8>>),
    /// A type added to DynamoDB after this build: never read as absent, always refused
    /// where the contract needs the attribute.
    Unsupported,
}

impl AttributeValue {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            AttributeValue::S(_) => "S",
            AttributeValue::N(_) => "N",
            AttributeValue::B(_) => "B",
            AttributeValue::Bool(_) => "BOOL",
            AttributeValue::Null => "NULL",
            AttributeValue::M(_) => "M",
            AttributeValue::L(_) => "L",
            AttributeValue::Ss(_) => "SS",
            AttributeValue::Ns(_) => "NS",
            AttributeValue::Bs(_) => "BS",
            AttributeValue::Unsupported => "an unsupported type",
        }
    }
}

/// An item or key: attribute name → value.
pub type Item = BTreeMap<String, AttributeValue>;

/// The kind of change a stream record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventName {
    Insert,
    Modify,
    Remove,
    /// An event name this build does not know (or none): refused, and parked.
    Unsupported,
}

/// One DynamoDB stream record, whichever way it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The record's `eventID`, unique per record; becomes the event id.
    pub event_id: Option<String>,
    pub event_name: EventName,
    pub keys: Item,
    pub new_image: Option<Item>,
    pub old_image: Option<Item>,
    pub sequence_number: Option<String>,
    /// `ApproximateCreationDateTime`, when the stream carried it.
    pub approximate_creation: Option<OffsetDateTime>,
    /// `userIdentity` as `(type, principalId)`: `("Service", "dynamodb.amazonaws.com")`
    /// marks a removal by time-to-live.
    pub user_identity: Option<(String, String)>,
}

/// The principal DynamoDB's TTL sweeper deletes as.
///
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/time-to-live-ttl-streams.html>
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// Attribute names of the profile service's item. The profile service owns them; the
/// contract names the fields, this table maps one to the other.
pub mod attr {
    pub const USER_ID: &str = "user_id";
    pub const EMAIL: &str = "email";
    pub const DISPLAY_NAME: &str = "display_name";
    pub const COUNTRY: &str = "country";
    pub const PLAN: &str = "plan";
    pub const MARKETING_EMAIL: &str = "marketing_email";
    pub const MARKETING_SMS: &str = "marketing_sms";
    pub const LOCALE: &str = "locale";
    pub const TIME_ZONE: &str = "time_zone";
    pub const LIFETIME_VALUE_CENTS: &str = "lifetime_value_cents";
    pub const CREATED_AT: &str = "created_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const VERSION: &str = "version";
}

/// Why a stream record cannot become an event. Every variant is permanent: the record
/// must be parked, with [`RecordError::reason_code`], not retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record {record:?} has no {which} image; the stream must be NEW_AND_OLD_IMAGES")]
    MissingImage { record: String, which: &'static str },
    #[error("record {record:?} has no attribute {attribute:?}")]
    MissingAttribute { record: String, attribute: String },
    #[error("record {record:?}: attribute {attribute:?} is {found}, expected {expected}")]
    WrongType {
        record: String,
        attribute: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("record {record:?}: attribute {attribute:?} is not a valid value: {problem}")]
    BadValue {
        record: String,
        attribute: String,
        problem: String,
    },
    #[error("record {record:?}: the item's user_id differs from the record's key")]
    KeyMismatch { record: String },
    #[error("record {record:?} has no known eventName (INSERT, MODIFY, REMOVE)")]
    UnsupportedEventName { record: String },
}

impl RecordError {
    /// Short, stable name of the failure, for the parked record and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            RecordError::MissingImage { .. } => "missing_image",
            RecordError::MissingAttribute { .. } => "missing_attribute",
            RecordError::WrongType { .. } => "wrong_attribute_type",
            RecordError::BadValue { .. } => "bad_attribute_value",
            RecordError::KeyMismatch { .. } => "key_mismatch",
            RecordError::UnsupportedEventName { .. } => "unsupported_event_name",
        }
    }
}

/// Where the records come from, stamped on every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub table: String,
    pub stream_arn: String,
}

/// Turns a stream record into the change event to publish.
///
/// Returns `Ok(None)` for a MODIFY that changed nothing the contract carries (neither the
/// projected profile nor its position): publishing it would only cost.
/// `published_at` is stamped by the caller's clock (`now`).
///
/// # Errors
/// [`RecordError`] when the record does not describe a valid profile change.
pub fn to_event(
    record: &StreamRecord,
    origin: &Origin,
    now: OffsetDateTime,
) -> Result<Option<ChangeEvent>, RecordError> {
    let label = record_label(record);
    if record.event_name == EventName::Unsupported {
        return Err(RecordError::UnsupportedEventName { record: label });
    }
    let key = string(&record.keys, attr::USER_ID, &label)?;
    let (position, change) = match record.event_name {
        EventName::Insert | EventName::Modify => {
            let new = record
                .new_image
                .as_ref()
                .ok_or_else(|| RecordError::MissingImage {
                    record: label.clone(),
                    which: "new",
                })?;
            let (position, profile) = project(new, &label)?;
            // An old image that no longer projects (e.g. a fixed bad attribute) is a
            // change, so only an equal projection is skipped.
            if record.event_name == EventName::Modify
                && let Some(old) = &record.old_image
                && project(old, &label).ok().as_ref() == Some(&(position, profile.clone()))
            {
                return Ok(None);
            }
            (position, Change::Upserted(profile))
        }
        EventName::Remove => {
            let old = record
                .old_image
                .as_ref()
                .ok_or_else(|| RecordError::MissingImage {
                    record: label.clone(),
                    which: "old",
                })?;
            let position = position_of(old, &label)?;
            let reason = match &record.user_identity {
                Some((kind, principal)) if kind == "Service" && principal == TTL_PRINCIPAL => {
                    DeleteReason::Expired
                }
                _ => DeleteReason::Deleted,
            };
            (position, Change::Deleted(reason))
        }
        EventName::Unsupported => unreachable!("refused above"),
    };
    if let Some(profile) = change.profile()
        && profile.user_id != key
    {
        return Err(RecordError::KeyMismatch { record: label });
    }
    let event_id = match &record.event_id {
        Some(id) if !id.is_empty() => id.clone(),
        // Some emulated events omit eventID; derive one that is stable across re-reads.
        _ => derived_event_id(&key, position, &change),
    };
    let occurred_at = occurred_at(record, &change, now);
    Ok(Some(ChangeEvent {
        event_id,
        key,
        position,
        occurred_at,
        published_at: now,
        source: Source {
            table: origin.table.clone(),
            stream_arn: Some(origin.stream_arn.clone()),
            sequence_number: record.sequence_number.clone(),
        },
        published_schema: contracts::CURRENT_SCHEMA_VERSION,
        change,
    }))
}

/// When the change happened at the source. An upsert carries the service's own write
/// time (`updated_at`, to the microsecond). A delete has none: the stream's
/// `ApproximateCreationDateTime` (rounded down to the second by AWS, to the minute by
/// DynamoDB Local), but never earlier than the deleted item's last write.
fn occurred_at(record: &StreamRecord, change: &Change, now: OffsetDateTime) -> OffsetDateTime {
    if let Some(profile) = change.profile() {
        return profile.updated_at;
    }
    let last_write = record
        .old_image
        .as_ref()
        .and_then(|old| timestamp(old, attr::UPDATED_AT, "").ok());
    match (record.approximate_creation, last_write) {
        (Some(approx), Some(last)) => approx.max(last),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => now,
    }
}

/// A deterministic event id for a change with no stream `eventID` (and for snapshots):
/// the same change always gets the same id. A key too long to fit the contract's
/// event-id limit is replaced by its SHA-256.
pub fn derived_event_id(key: &str, position: Position, change: &Change) -> String {
    /// Keys up to this length appear verbatim, which keeps ids readable.
    const VERBATIM_KEY_BYTES: usize = 256;
    let kind = match change {
        Change::Upserted(_) => "upserted",
        Change::Snapshot(_) => "snapshot",
        Change::Deleted(_) => "deleted",
    };
    let key = if key.len() <= VERBATIM_KEY_BYTES {
        key.to_owned()
    } else {
        use sha2::Digest;
        format!(
            "sha256-{}",
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        )
    };
    format!("{kind}:{key}:{}:{}", position.generation, position.version)
}

/// The profile and position an item projects to.
///
/// # Errors
/// [`RecordError`] naming the first attribute that is missing or malformed.
pub fn project(item: &Item, label: &str) -> Result<(Position, Profile), RecordError> {
    let position = position_of(item, label)?;
    let profile = Profile {
        user_id: string(item, attr::USER_ID, label)?,
        email: string(item, attr::EMAIL, label)?,
        display_name: string(item, attr::DISPLAY_NAME, label)?,
        country: opt_string(item, attr::COUNTRY, label)?,
        plan: string(item, attr::PLAN, label)?,
        consents: Consents {
            marketing_email: opt_bool(item, attr::MARKETING_EMAIL, label)?.unwrap_or(false),
            marketing_sms: opt_bool(item, attr::MARKETING_SMS, label)?.unwrap_or(false),
        },
        locale: opt_string(item, attr::LOCALE, label)?,
        time_zone: opt_string(item, attr::TIME_ZONE, label)?,
        lifetime_value_cents: opt_number(item, attr::LIFETIME_VALUE_CENTS, label)?,
        created_at: timestamp(item, attr::CREATED_AT, label)?,
        updated_at: timestamp(item, attr::UPDATED_AT, label)?,
    };
    Ok((position, profile))
}

/// `(generation, version)` of an item: its `created_at` in microseconds and its
/// `version` counter.
///
/// # Errors
/// [`RecordError`] when either attribute is missing or malformed.
pub(crate) fn position_of(item: &Item, label: &str) -> Result<Position, RecordError> {
    let created_at = timestamp(item, attr::CREATED_AT, label)?;
    let generation = i64::try_from(created_at.unix_timestamp_nanos() / 1000).map_err(|_| {
        RecordError::BadValue {
            record: label.to_owned(),
            attribute: attr::CREATED_AT.into(),
            problem: "outside the representable range".into(),
        }
    })?;
    let raw = match item.get(attr::VERSION) {
        Some(AttributeValue::N(n)) => n,
        Some(other) => return Err(wrong_type(label, attr::VERSION, "N", other)),
        None => {
            return Err(RecordError::MissingAttribute {
                record: label.to_owned(),
                attribute: attr::VERSION.into(),
            });
        }
    };
    let version =
        raw.parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| RecordError::BadValue {
                record: label.to_owned(),
                attribute: attr::VERSION.into(),
                problem: "not an integer in 0..=2^63-1".into(),
            })?;
    Ok(Position {
        generation,
        version,
    })
}

fn record_label(record: &StreamRecord) -> String {
    record
        .sequence_number
        .clone()
        .or_else(|| record.event_id.clone())
        .unwrap_or_else(|| "<no sequence number>".into())
}

fn wrong_type(
    label: &str,
    attribute: &'static str,
    expected: &'static str,
    found: &AttributeValue,
) -> RecordError {
    RecordError::WrongType {
        record: label.to_owned(),
        attribute: attribute.into(),
        expected,
        found: found.type_name(),
    }
}

fn opt_string(item: &Item, name: &'static str, label: &str) -> Result<Option<String>, RecordError> {
    match item.get(name) {
        None | Some(AttributeValue::Null) => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(label, name, "S", other)),
    }
}

fn string(item: &Item, name: &'static str, label: &str) -> Result<String, RecordError> {
    opt_string(item, name, label)?.ok_or_else(|| RecordError::MissingAttribute {
        record: label.to_owned(),
        attribute: name.into(),
    })
}

fn opt_bool(item: &Item, name: &'static str, label: &str) -> Result<Option<bool>, RecordError> {
    match item.get(name) {
        None | Some(AttributeValue::Null) => Ok(None),
        Some(AttributeValue::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(label, name, "BOOL", other)),
    }
}

fn opt_number(
    item: &Item,
    name: &'static str,
    label: &str,
) -> Result<Option<DdbNumber>, RecordError> {
    match item.get(name) {
        None | Some(AttributeValue::Null) => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse()
                .map(Some)
                .map_err(|e: contracts::number::NumberError| RecordError::BadValue {
                    record: label.to_owned(),
                    attribute: name.into(),
                    problem: e.to_string(),
                })
        }
        Some(other) => Err(wrong_type(label, name, "N", other)),
    }
}

fn timestamp(item: &Item, name: &'static str, label: &str) -> Result<OffsetDateTime, RecordError> {
    let raw = string(item, name, label)?;
    OffsetDateTime::parse(&raw, &Rfc3339).map_err(|e| RecordError::BadValue {
        record: label.to_owned(),
        attribute: name.into(),
        problem: format!("not an RFC 3339 timestamp: {e}"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    pub(crate) fn item(version: i64) -> Item {
        let mut i = Item::new();
        i.insert("user_id".into(), s("u-1"));
        i.insert("email".into(), s("a@example.com"));
        i.insert("display_name".into(), s("A"));
        i.insert("plan".into(), s("free"));
        i.insert("marketing_email".into(), AttributeValue::Bool(true));
        i.insert("created_at".into(), s("2026-11-20T09:30:00.123456Z"));
        i.insert("updated_at".into(), s("2026-11-25T00:00:00Z"));
        i.insert("version".into(), AttributeValue::N(version.to_string()));
        i.insert("password_hash".into(), AttributeValue::B(vec![1, 2, 3]));
        i
    }

    pub(crate) fn keys() -> Item {
        Item::from([("user_id".to_string(), s("u-1"))])
    }

    pub(crate) fn record(
        event_name: EventName,
        old: Option<Item>,
        new: Option<Item>,
    ) -> StreamRecord {
        StreamRecord {
            event_id: Some("e-1".into()),
            event_name,
            keys: keys(),
            new_image: new,
            old_image: old,
            sequence_number: Some("100".into()),
            approximate_creation: None,
            user_identity: None,
        }
    }

    pub(crate) fn origin() -> Origin {
        Origin {
            table: "profiles".into(),
            stream_arn: "arn:stream".into(),
        }
    }

    pub(crate) fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    /// [`to_event`] of an insert of `item`, which must be refused.
    fn refused_insert(item: Item) -> RecordError {
        to_event(
            &record(EventName::Insert, None, Some(item)),
            &origin(),
            now(),
        )
        .unwrap_err()
    }

    #[test]
    fn insert_becomes_an_upsert_at_the_items_position() {
        let event = to_event(
            &record(EventName::Insert, None, Some(item(1))),
            &origin(),
            now(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(event.event_id, "e-1");
        assert_eq!(event.key, "u-1");
        assert_eq!(
            event.position,
            Position {
                generation: 1_795_167_000_123_456,
                version: 1
            }
        );
        let Change::Upserted(p) = &event.change else {
            panic!()
        };
        assert!(p.consents.marketing_email);
        assert!(
            !p.consents.marketing_sms,
            "an absent attribute projects to no consent"
        );
        assert_eq!(event.source.sequence_number.as_deref(), Some("100"));
        // No ApproximateCreationDateTime: the item's updated_at is when it happened.
        assert_eq!(event.occurred_at, p.updated_at);
    }

    #[test]
    fn modify_that_changes_only_unprojected_attributes_is_skipped() {
        let old = item(3);
        let mut new = item(3);
        new.insert("password_hash".into(), AttributeValue::B(vec![9]));
        assert_eq!(
            to_event(
                &record(EventName::Modify, Some(old), Some(new)),
                &origin(),
                now()
            ),
            Ok(None)
        );
    }

    #[test]
    fn modify_that_bumps_the_version_is_published() {
        let event = to_event(
            &record(EventName::Modify, Some(item(3)), Some(item(4))),
            &origin(),
            now(),
        )
        .unwrap();
        assert_eq!(event.unwrap().position.version, 4);
    }

    #[test]
    fn remove_takes_its_position_from_the_old_image() {
        let event = to_event(
            &record(EventName::Remove, Some(item(5)), None),
            &origin(),
            now(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(event.change, Change::Deleted(DeleteReason::Deleted));
        assert_eq!(event.position.version, 5);
    }

    #[test]
    fn a_delete_happened_no_earlier_than_the_items_last_write() {
        let mut r = record(EventName::Remove, Some(item(5)), None);
        // DynamoDB Local rounds ApproximateCreationDateTime down to the minute.
        r.approximate_creation = Some(time::macros::datetime!(2026-11-24 23:59 UTC));
        let event = to_event(&r, &origin(), now()).unwrap().unwrap();
        assert_eq!(
            event.occurred_at,
            time::macros::datetime!(2026-11-25 00:00 UTC)
        );
        r.approximate_creation = Some(time::macros::datetime!(2026-11-25 00:01 UTC));
        let event = to_event(&r, &origin(), now()).unwrap().unwrap();
        assert_eq!(
            event.occurred_at,
            time::macros::datetime!(2026-11-25 00:01 UTC)
        );
    }

    #[test]
    fn remove_by_the_ttl_service_is_flagged_expired() {
        let mut r = record(EventName::Remove, Some(item(5)), None);
        r.user_identity = Some(("Service".into(), TTL_PRINCIPAL.into()));
        let event = to_event(&r, &origin(), now()).unwrap().unwrap();
        assert_eq!(event.change, Change::Deleted(DeleteReason::Expired));
    }

    #[test]
    fn remove_without_old_image_is_refused_not_guessed() {
        let err = to_event(&record(EventName::Remove, None, None), &origin(), now()).unwrap_err();
        assert_eq!(err.reason_code(), "missing_image");
    }

    #[test]
    fn big_numbers_are_carried_as_exact_decimal_strings() {
        let mut i = item(1);
        let big = "12345678901234567890123456789012345678";
        i.insert("lifetime_value_cents".into(), AttributeValue::N(big.into()));
        let event = to_event(&record(EventName::Insert, None, Some(i)), &origin(), now())
            .unwrap()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&event.encode(contracts::SchemaVersion::V2)).unwrap();
        assert_eq!(json["data"]["lifetime_value_cents"], big);
    }

    #[test]
    fn wrong_attribute_types_are_named_in_the_error() {
        let mut i = item(1);
        i.insert("email".into(), AttributeValue::Ss(vec!["a".into()]));
        let err = refused_insert(i);
        assert_eq!(
            err,
            RecordError::WrongType {
                record: "100".into(),
                attribute: "email".into(),
                expected: "S",
                found: "SS"
            }
        );
    }

    #[test]
    fn a_version_that_is_not_an_integer_is_refused() {
        for bad in ["1.5", "-1", "99999999999999999999", "1e3"] {
            let mut i = item(1);
            i.insert("version".into(), AttributeValue::N(bad.into()));
            let err = refused_insert(i);
            assert_eq!(err.reason_code(), "bad_attribute_value", "{bad}");
        }
    }

    #[test]
    fn a_bad_value_is_described_without_being_quoted() {
        let mut i = item(1);
        i.insert(
            "version".into(),
            AttributeValue::N("31415926535897932384626".into()),
        );
        let err = refused_insert(i);
        let text = err.to_string();
        assert!(text.contains("\"version\""), "{text}");
        assert!(!text.contains("31415926535897932384626"), "{text}");
    }

    #[test]
    fn an_item_whose_user_id_differs_from_the_key_is_refused() {
        let mut i = item(1);
        i.insert("user_id".into(), s("u-2"));
        let err = refused_insert(i);
        assert_eq!(err.reason_code(), "key_mismatch");
    }

    #[test]
    fn unknown_event_names_and_attribute_types_are_refused_not_skipped() {
        let mut r = record(EventName::Insert, None, Some(item(1)));
        r.event_name = EventName::Unsupported;
        assert_eq!(
            to_event(&r, &origin(), now()).unwrap_err().reason_code(),
            "unsupported_event_name"
        );
        let mut i = item(1);
        i.insert("country".into(), AttributeValue::Unsupported);
        let err = refused_insert(i);
        assert_eq!(err.reason_code(), "wrong_attribute_type");
    }

    #[test]
    fn a_missing_event_id_is_derived_deterministically() {
        let mut r = record(EventName::Insert, None, Some(item(2)));
        r.event_id = None;
        let a = to_event(&r, &origin(), now()).unwrap().unwrap();
        let b = to_event(&r, &origin(), now()).unwrap().unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(a.event_id, "upserted:u-1:1795167000123456:2");
    }

    #[test]
    fn derived_ids_of_the_longest_keys_fit_the_contract() {
        let key = "k".repeat(contracts::envelope::MAX_KEY_BYTES);
        let position = Position {
            generation: i64::MIN,
            version: i64::MAX,
        };
        let id = derived_event_id(&key, position, &Change::Deleted(DeleteReason::Deleted));
        assert!(
            id.len() <= contracts::envelope::MAX_EVENT_ID_BYTES,
            "{} bytes",
            id.len()
        );
        assert_eq!(
            id,
            derived_event_id(&key, position, &Change::Deleted(DeleteReason::Deleted))
        );
    }

    #[test]
    fn a_recreated_item_gets_a_higher_generation_with_a_restarted_version() {
        let first = position_of(&item(9), "x").unwrap();
        let mut again = item(1);
        again.insert("created_at".into(), s("2026-11-21T00:00:00Z"));
        let second = position_of(&again, "x").unwrap();
        assert!(second > first);
    }
}
