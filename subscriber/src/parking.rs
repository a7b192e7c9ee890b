//! PURE: what a message parked in the DLQ carries. The copy keeps the original body and
//! as many of its attributes as fit, plus ours: the stable reason code, the error
//! (truncated), and the message's id in the main queue; body and attributes together
//! are fitted within the DLQ's maximum message size. No I/O: the SQS adapter
//! ([`crate::queue::DeadLetterQueue`]) sends what this builds.

use std::collections::HashMap;

use aws_sdk_sqs::types::MessageAttributeValue;
use runtime::limits::sqs::MAX_MESSAGE_ATTRIBUTES;

use tracing::debug;

use crate::queue::ReceivedMessage;

/// Attribute on a parked message: the stable reason code (`malformed_json`,
/// `apply_rejected`, …).
pub const REASON_ATTRIBUTE: &str = "tributary-reason";

/// Attribute on a parked message: the error, truncated to [`MAX_DETAIL_BYTES`].
pub const DETAIL_ATTRIBUTE: &str = "tributary-detail";

/// Attribute on a parked message: its message id in the main queue.
pub const SOURCE_MESSAGE_ID_ATTRIBUTE: &str = "tributary-source-message-id";

/// Longest [`DETAIL_ATTRIBUTE`] value, in bytes: enough for an error chain, small next
/// to the message.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The message attributes of a parked copy: ours (reason, detail, source message id)
/// and as many of the original's as fit in [`MAX_MESSAGE_ATTRIBUTES`], such that body
/// and attributes together fit `max_message_bytes` (the DLQ's maximum message size).
///
/// When they do not fit, the detail is shrunk first, then original attributes are
/// dropped, largest first, and the room they free goes back to the detail. Only the
/// body and our reason and source message id are never cut; if they alone do not fit,
/// the copy is returned as is and SQS refuses it.
///
/// Binary attributes are not copied: moto (the emulator the tests run against) answers
/// them with a checksum the SDK rejects, and our publisher sets none. Attributes from an
/// earlier parking are replaced, not duplicated.
pub fn dlq_attributes(
    message: &ReceivedMessage,
    reason_code: &str,
    detail: &str,
    max_message_bytes: usize,
) -> HashMap<String, MessageAttributeValue> {
    let reason = non_empty(reason_code.to_owned());
    let source_id = non_empty(message.message_id.clone());
    // What is never cut: the body, the reason, the source id, and the detail's name
    // and type with a value of at least one byte.
    let fixed = message.body.len()
        + attribute_bytes(REASON_ATTRIBUTE, "String", &reason)
        + attribute_bytes(SOURCE_MESSAGE_ID_ATTRIBUTE, "String", &source_id)
        + attribute_bytes(DETAIL_ATTRIBUTE, "String", "-");

    let mut originals: Vec<(&String, &MessageAttributeValue)> = message
        .message_attributes
        .iter()
        .filter(|(name, _)| !name.starts_with("tributary-"))
        .filter(|(_, v)| v.data_type().starts_with("String") || v.data_type().starts_with("Number"))
        .collect();
    originals.sort_by(|a, b| a.0.cmp(b.0));
    if originals.len() > MAX_MESSAGE_ATTRIBUTES - 3 {
        for (name, _) in &originals[MAX_MESSAGE_ATTRIBUTES - 3..] {
            debug!(attribute = %name, "Original attribute not copied to the DLQ: too many attributes.");
        }
        originals.truncate(MAX_MESSAGE_ATTRIBUTES - 3);
    }
    let original_bytes = |(name, value): &(&String, &MessageAttributeValue)| {
        attribute_bytes(name, value.data_type(), value.string_value().unwrap_or(""))
    };
    let mut originals_size: usize = originals.iter().map(original_bytes).sum();
    while fixed + originals_size > max_message_bytes {
        let Some(largest) = (0..originals.len()).max_by_key(|&i| original_bytes(&originals[i]))
        else {
            break;
        };
        let (name, value) = originals.remove(largest);
        debug!(attribute = %name, "Original attribute not copied to the DLQ: no room.");
        originals_size -= original_bytes(&(name, value));
    }

    // The one byte of "-" counted in `fixed` is the detail's floor.
    let room = max_message_bytes.saturating_sub(fixed + originals_size) + 1;
    let detail = non_empty(truncate(&sanitize(detail), room.min(MAX_DETAIL_BYTES)));

    let mut attributes = HashMap::new();
    for (name, value) in [
        (REASON_ATTRIBUTE, reason),
        (DETAIL_ATTRIBUTE, detail),
        (SOURCE_MESSAGE_ID_ATTRIBUTE, source_id),
    ] {
        attributes.insert(name.to_owned(), string_attribute(value));
    }
    for (name, value) in originals {
        // Keep only what SendMessage accepts: a received value may carry list fields.
        let copy = MessageAttributeValue::builder()
            .data_type(value.data_type())
            .set_string_value(value.string_value().map(str::to_owned))
            .build()
            .expect("data type is set");
        attributes.insert(name.clone(), copy);
    }
    attributes
}

/// The attributes of the last-resort parked copy, when the DLQ refused the full one:
/// only the reason.
pub(crate) fn minimal_dlq_attributes(reason_code: &str) -> HashMap<String, MessageAttributeValue> {
    HashMap::from([(
        REASON_ATTRIBUTE.to_owned(),
        string_attribute(non_empty(reason_code.to_owned())),
    )])
}

/// The bytes an attribute counts towards the message size: name, data type and value.
fn attribute_bytes(name: &str, data_type: &str, value: &str) -> usize {
    name.len() + data_type.len() + value.len()
}

/// SQS refuses an empty attribute value.
fn non_empty(value: String) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value
    }
}

fn string_attribute(value: String) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// Replaces the characters SQS refuses in message attributes (controls other than tab,
/// LF, CR; surrogates cannot occur in a Rust string).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::limits::sqs::MAX_MESSAGE_BYTES;

    fn message(attributes: &[(&str, &str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            message_id: "m-1".to_owned(),
            receipt_handle: "rh-1".to_owned(),
            body: "{}".to_owned(),
            receive_count: 1,
            sent_at_ms: None,
            message_attributes: attributes
                .iter()
                .map(|(name, data_type, value)| {
                    let v = MessageAttributeValue::builder()
                        .data_type(*data_type)
                        .string_value(*value)
                        .build()
                        .unwrap();
                    ((*name).to_owned(), v)
                })
                .collect(),
        }
    }

    fn value<'a>(attrs: &'a HashMap<String, MessageAttributeValue>, name: &str) -> Option<&'a str> {
        attrs.get(name).and_then(|v| v.string_value())
    }

    #[test]
    fn parked_copy_carries_the_reason_and_the_original_attributes() {
        let m = message(&[
            ("event_type", "String", "profile.upserted"),
            ("schema_version", "Number", "2"),
        ]);
        let attrs = dlq_attributes(
            &m,
            "malformed_json",
            "malformed json at line 1",
            MAX_MESSAGE_BYTES,
        );
        assert_eq!(value(&attrs, REASON_ATTRIBUTE), Some("malformed_json"));
        assert_eq!(
            value(&attrs, DETAIL_ATTRIBUTE),
            Some("malformed json at line 1")
        );
        assert_eq!(value(&attrs, SOURCE_MESSAGE_ID_ATTRIBUTE), Some("m-1"));
        assert_eq!(value(&attrs, "event_type"), Some("profile.upserted"));
        assert_eq!(attrs["schema_version"].data_type(), "Number");
    }

    #[test]
    fn parked_copy_keeps_within_ten_attributes() {
        let names: Vec<String> = (0..12).map(|i| format!("a{i:02}")).collect();
        let attrs: Vec<(&str, &str, &str)> =
            names.iter().map(|n| (n.as_str(), "String", "v")).collect();
        let out = dlq_attributes(&message(&attrs), "apply_rejected", "x", MAX_MESSAGE_BYTES);
        assert_eq!(out.len(), MAX_MESSAGE_ATTRIBUTES);
        assert!(out.contains_key(REASON_ATTRIBUTE));
    }

    #[test]
    fn parked_copy_replaces_an_earlier_reason_and_skips_binary_attributes() {
        let m = message(&[
            (REASON_ATTRIBUTE, "String", "old_reason"),
            ("blob", "Binary", ""),
        ]);
        let attrs = dlq_attributes(&m, "apply_rejected", "x", MAX_MESSAGE_BYTES);
        assert_eq!(value(&attrs, REASON_ATTRIBUTE), Some("apply_rejected"));
        assert!(!attrs.contains_key("blob"));
    }

    #[test]
    fn detail_is_truncated_to_one_kibibyte_at_a_character_boundary() {
        let detail = "é".repeat(1000);
        let attrs = dlq_attributes(&message(&[]), "malformed_json", &detail, MAX_MESSAGE_BYTES);
        let kept = value(&attrs, DETAIL_ATTRIBUTE).unwrap();
        assert!(kept.len() <= MAX_DETAIL_BYTES && kept.len() >= MAX_DETAIL_BYTES - 1);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn detail_control_characters_are_replaced() {
        let attrs = dlq_attributes(&message(&[]), "r", "a\0b\u{1}c\nd", MAX_MESSAGE_BYTES);
        assert_eq!(
            value(&attrs, DETAIL_ATTRIBUTE),
            Some("a\u{FFFD}b\u{FFFD}c\nd")
        );
    }

    /// What SQS counts: the body and each attribute's name, type and value.
    fn copy_size(body: &str, attrs: &HashMap<String, MessageAttributeValue>) -> usize {
        body.len()
            + attrs
                .iter()
                .map(|(n, v)| attribute_bytes(n, v.data_type(), v.string_value().unwrap_or("")))
                .sum::<usize>()
    }

    #[test]
    fn parked_copy_of_a_large_message_fits_by_shrinking_the_detail_first() {
        let mut m = message(&[("event_type", "String", "profile.upserted")]);
        m.body = "x".repeat(MAX_MESSAGE_BYTES - 200);
        let attrs = dlq_attributes(&m, "apply_rejected", &"d".repeat(900), MAX_MESSAGE_BYTES);
        assert_eq!(copy_size(&m.body, &attrs), MAX_MESSAGE_BYTES);
        assert_eq!(value(&attrs, "event_type"), Some("profile.upserted"));
        let detail = value(&attrs, DETAIL_ATTRIBUTE).unwrap();
        assert!(!detail.is_empty() && detail.len() < 200, "{}", detail.len());
        assert_eq!(value(&attrs, REASON_ATTRIBUTE), Some("apply_rejected"));
        assert_eq!(value(&attrs, SOURCE_MESSAGE_ID_ATTRIBUTE), Some("m-1"));
    }

    #[test]
    fn parked_copy_drops_the_largest_original_attributes_when_the_detail_is_not_enough() {
        let big = "v".repeat(80 * 1024);
        let mut m = message(&[
            ("a-big", "String", &big),
            ("b-small", "String", "s"),
            ("c-big", "String", &big),
        ]);
        m.body = "x".repeat(100 * 1024);
        let attrs = dlq_attributes(&m, "apply_rejected", "refused", MAX_MESSAGE_BYTES);
        assert!(copy_size(&m.body, &attrs) <= MAX_MESSAGE_BYTES);
        assert_eq!(value(&attrs, "b-small"), Some("s"));
        // One of the two big ones had to go, and the detail kept its room.
        assert_eq!(
            usize::from(attrs.contains_key("a-big")) + usize::from(attrs.contains_key("c-big")),
            1
        );
        assert_eq!(value(&attrs, DETAIL_ATTRIBUTE), Some("refused"));
    }

    #[test]
    fn parked_copy_fits_a_dlq_smaller_than_the_default() {
        let m = message(&[("event_type", "String", &"e".repeat(2000))]);
        let attrs = dlq_attributes(&m, "malformed_json", &"d".repeat(5000), 1024);
        assert!(copy_size(&m.body, &attrs) <= 1024);
        assert!(!attrs.contains_key("event_type"));
        assert!(!value(&attrs, DETAIL_ATTRIBUTE).unwrap().is_empty());
    }

    #[test]
    fn the_last_resort_copy_carries_only_the_reason() {
        let attrs = minimal_dlq_attributes("apply_rejected");
        assert_eq!(attrs.len(), 1);
        assert_eq!(value(&attrs, REASON_ATTRIBUTE), Some("apply_rejected"));
    }
}
