//! DynamoDB table items (from `Scan` / `BatchGetItem`) → the publisher's item type, and
//! the snapshot events they project to.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue as Ddb;
use contracts::{Change, ChangeEvent, SchemaVersion, Source};
use publisher::record::{self, AttributeValue, Item, RecordError};
use publisher::sink::Encoded;
use time::OffsetDateTime;

/// SDK item → the publisher's item type (numbers stay decimal strings).
pub fn from_sdk(item: HashMap<String, Ddb>) -> Item {
    item.into_iter().map(|(k, v)| (k, value(v))).collect()
}

fn value(v: Ddb) -> AttributeValue {
    match v {
        Ddb::S(s) => AttributeValue::S(s),
        Ddb::N(n) => AttributeValue::N(n),
        Ddb::B(b) => AttributeValue::B(b.into_inner()),
        Ddb::Bool(b) => AttributeValue::Bool(b),
        Ddb::Null(_) => AttributeValue::Null,
        Ddb::M(m) => AttributeValue::M(from_sdk(m)),
        Ddb::L(l) => AttributeValue::L(l.into_iter().map(value).collect()),
        Ddb::Ss(v) => AttributeValue::Ss(v),
        Ddb::Ns(v) => AttributeValue::Ns(v),
        Ddb::Bs(v) => AttributeValue::Bs(v.into_iter().map(|b| b.into_inner()).collect()),
        _ => AttributeValue::Unsupported,
    }
}

/// The publisher's item type → SDK item (for `ExclusiveStartKey` and key lookups).
pub(crate) fn to_sdk(item: &Item) -> HashMap<String, Ddb> {
    item.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()
}

fn to_value(v: &AttributeValue) -> Ddb {
    use aws_sdk_dynamodb::primitives::Blob;
    match v {
        AttributeValue::S(s) => Ddb::S(s.clone()),
        AttributeValue::N(n) => Ddb::N(n.clone()),
        AttributeValue::B(b) => Ddb::B(Blob::new(b.clone())),
        AttributeValue::Bool(b) => Ddb::Bool(*b),
        AttributeValue::Null | AttributeValue::Unsupported => Ddb::Null(true),
        AttributeValue::M(m) => Ddb::M(to_sdk(m)),
        AttributeValue::L(l) => Ddb::L(l.iter().map(to_value).collect()),
        AttributeValue::Ss(v) => Ddb::Ss(v.clone()),
        AttributeValue::Ns(v) => Ddb::Ns(v.clone()),
        AttributeValue::Bs(v) => Ddb::Bs(v.iter().map(|b| Blob::new(b.clone())).collect()),
    }
}

/// The key attribute's value of an item, for reports (`?` when it has none).
pub(crate) fn key_of(item: &Item) -> String {
    match item.get(record::attr::USER_ID) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => "?".to_owned(),
    }
}

/// The `profile.snapshot` event of a table item as read now: it carries the item's
/// position, so it can never overwrite a newer change or a tombstone of this version.
/// Its id is derived from key and position, so re-sending it after a crash is
/// recognisably the same event.
///
/// # Errors
/// [`RecordError`] when the item does not project to a valid profile.
pub fn snapshot_event(
    item: &Item,
    table: &str,
    now: OffsetDateTime,
) -> Result<ChangeEvent, RecordError> {
    let label = format!("item {}", key_of(item));
    let (position, profile) = record::project(item, &label)?;
    let key = profile.user_id.clone();
    let occurred_at = profile.updated_at;
    let change = Change::Snapshot(profile);
    Ok(replayed_event(
        key,
        position,
        change,
        table,
        occurred_at,
        now,
    ))
}

/// An event `replay` sends on its own (a snapshot, a repair's tombstone): not read from
/// a stream, so its source names only the table, and its id is derived from key,
/// position and change ([`record::derived_event_id`]), so sending it again is
/// recognisably the same event.
pub fn replayed_event(
    key: String,
    position: contracts::Position,
    change: Change,
    table: &str,
    occurred_at: OffsetDateTime,
    now: OffsetDateTime,
) -> ChangeEvent {
    ChangeEvent {
        event_id: record::derived_event_id(&key, position, &change),
        key,
        position,
        occurred_at,
        published_at: now,
        source: Source {
            table: table.to_owned(),
            stream_arn: None,
            sequence_number: None,
        },
        published_schema: contracts::CURRENT_SCHEMA_VERSION,
        change,
    }
}

/// Encodes events for sending, tagged by their index.
pub(crate) fn encode_all(events: &[ChangeEvent], as_version: SchemaVersion) -> Vec<Encoded> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Encoded::new(i, e, as_version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_items_round_trip_without_touching_numbers() {
        let mut item = HashMap::new();
        item.insert("user_id".to_owned(), Ddb::S("u-1".into()));
        item.insert(
            "big".to_owned(),
            Ddb::N("12345678901234567890123456789012345678".into()),
        );
        item.insert(
            "m".to_owned(),
            Ddb::M(HashMap::from([(
                "x".to_owned(),
                Ddb::Ns(vec!["1.50".into()]),
            )])),
        );
        let ours = from_sdk(item.clone());
        assert_eq!(
            ours.get("big"),
            Some(&AttributeValue::N(
                "12345678901234567890123456789012345678".into()
            ))
        );
        assert_eq!(to_sdk(&ours), item);
        assert_eq!(key_of(&ours), "u-1");
    }
}
