//! Why a message is not a valid change event.

/// Why a body could not be decoded into a [`crate::ChangeEvent`].
///
/// Every variant is permanent for this build: the same bytes will never decode, so the
/// message belongs in the dead-letter queue with [`DecodeError::reason_code`] attached.
/// ([`DecodeError::UnsupportedSchemaVersion`] decodes after an upgrade: redrive it then.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all, or cut off.
    #[error("malformed json at line {line} column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON without a `schema_version`, so no version's rules can be applied.
    #[error("no integer schema_version field")]
    MissingSchemaVersion,
    /// Published by a newer publisher than this subscriber knows.
    #[error("schema_version {found} is newer than {newest}, the newest this build knows")]
    UnsupportedSchemaVersion { found: u64, newest: u8 },
    /// JSON that does not match the schema of the version it names: a missing or
    /// unknown field, a wrong type, a bad number or timestamp.
    #[error("does not match schema version {schema_version}: {message}")]
    SchemaMismatch { schema_version: u8, message: String },
    /// Matches the schema but breaks a rule the schema cannot express.
    #[error("event {event_id:?} is invalid: {problem}")]
    Invalid {
        event_id: String,
        problem: InvalidEvent,
    },
}

/// The rules beyond the JSON Schema that an event must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("event_id is empty or longer than 512 bytes")]
    BadEventId,
    #[error("key is empty or longer than 2048 bytes")]
    BadKey,
    #[error("data.user_id differs from key")]
    KeyMismatch,
    #[error("version is negative")]
    NegativeVersion,
    #[error("an upsert or snapshot has no data")]
    MissingData,
    #[error("a delete carries data")]
    UnexpectedData,
    #[error("a delete has no reason")]
    MissingReason,
    #[error("only a delete has a reason")]
    UnexpectedReason,
}

impl DecodeError {
    /// Every value [`DecodeError::reason_code`] gives, for a metric's label values.
    pub const REASON_CODES: [&'static str; 5] = [
        "malformed_json",
        "missing_schema_version",
        "unsupported_schema_version",
        "schema_mismatch",
        "invalid_event",
    ];

    /// A short, stable, low-cardinality name for the failure: the `reason` attribute on
    /// a parked message and the label on the parked-messages metric.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DecodeError::Malformed { .. } => "malformed_json",
            DecodeError::MissingSchemaVersion => "missing_schema_version",
            DecodeError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            DecodeError::SchemaMismatch { .. } => "schema_mismatch",
            DecodeError::Invalid { .. } => "invalid_event",
        }
    }

    /// The error of a failed `serde` decode, located by its JSON path.
    ///
    /// serde's own text quotes the offending value (`invalid type: string "…"`), and a
    /// value may be private: the message keeps the path, what was found (its kind) and
    /// what was expected, never the value itself. It lands in ERROR logs and in the
    /// DLQ's `tributary-detail` attribute.
    pub(crate) fn from_serde(
        (path, inner): (String, serde_json::Error),
        schema_version: Option<u8>,
    ) -> Self {
        use serde_json::error::Category;
        let located = |text: String| {
            if path.is_empty() || path == "." {
                text
            } else {
                format!("at {path}: {text}")
            }
        };
        match (inner.classify(), schema_version) {
            (Category::Data, Some(schema_version)) => DecodeError::SchemaMismatch {
                schema_version,
                message: located(without_values(&inner.to_string())),
            },
            (Category::Data, None) => DecodeError::Malformed {
                line: inner.line(),
                column: inner.column(),
                message: located(without_values(&inner.to_string())),
            },
            // Syntax and end-of-input errors name a position and a token class, never
            // a value.
            _ => DecodeError::Malformed {
                line: inner.line(),
                column: inner.column(),
                message: inner.to_string(),
            },
        }
    }
}

/// A serde data error's text with every quoted value left out.
///
/// serde writes the unexpected value before `, expected …` (`invalid type: integer
/// `5`, expected a string`, `unknown variant `x`, expected one of …`); what follows
/// `expected` comes from the schema and is kept. Both `"…"` (with escapes) and `` `…` ``
/// segments before it are dropped.
pub fn without_values(message: &str) -> String {
    // A field's name is the schema's (or the sender's key), not a value.
    if ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| message.starts_with(p))
    {
        return message.to_owned();
    }
    let (head, tail) = match message.find(", expected") {
        Some(i) => message.split_at(i),
        None => (message, ""),
    };
    let mut out = String::with_capacity(message.len());
    let mut chars = head.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    let mut out = out.trim_end().to_owned();
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reason_code_is_listed() {
        let every = [
            DecodeError::Malformed {
                line: 1,
                column: 1,
                message: String::new(),
            },
            DecodeError::MissingSchemaVersion,
            DecodeError::UnsupportedSchemaVersion {
                found: 9,
                newest: 2,
            },
            DecodeError::SchemaMismatch {
                schema_version: 2,
                message: String::new(),
            },
            DecodeError::Invalid {
                event_id: String::new(),
                problem: InvalidEvent::BadEventId,
            },
        ];
        for e in &every {
            // A new variant must be added above (this match then stops compiling).
            match e {
                DecodeError::Malformed { .. }
                | DecodeError::MissingSchemaVersion
                | DecodeError::UnsupportedSchemaVersion { .. }
                | DecodeError::SchemaMismatch { .. }
                | DecodeError::Invalid { .. } => {}
            }
            assert!(
                DecodeError::REASON_CODES.contains(&e.reason_code()),
                "{e:?}"
            );
        }
        assert_eq!(every.len(), DecodeError::REASON_CODES.len());
    }

    use super::*;

    #[test]
    fn quoted_values_are_left_out_and_the_expectation_kept() {
        assert_eq!(
            without_values(r#"invalid type: string "hunter\"2", expected i64 at line 1 column 9"#),
            "invalid type: string, expected i64 at line 1 column 9"
        );
        assert_eq!(
            without_values("invalid value: integer `-5`, expected u64"),
            "invalid value: integer, expected u64"
        );
        assert_eq!(
            without_values("unknown variant `secret`, expected one of `deleted`, `expired`"),
            "unknown variant, expected one of `deleted`, `expired`"
        );
        assert_eq!(
            without_values("missing field `email`"),
            "missing field `email`"
        );
    }
}

#[cfg(test)]
mod decode_tests {
    const V2_UPSERTED: &str = include_str!("../fixtures/v2/upserted.json");

    fn decode_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut json: serde_json::Value = serde_json::from_str(V2_UPSERTED).unwrap();
        edit(&mut json);
        let err = crate::decode(json.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason_code(), "schema_mismatch", "{err}");
        err.to_string()
    }

    #[test]
    fn a_wrong_type_is_named_by_path_and_expected_type_without_its_value() {
        let text = decode_with(|j| {
            j["data"]["display_name"] = serde_json::json!(987_654_321);
            j["data"]["password_hash"] = serde_json::json!("s3cr3t-hash");
        });
        assert!(text.contains("data.display_name"), "{text}");
        assert!(text.contains("expected"), "{text}");
        assert!(!text.contains("987654321"), "{text}");
        assert!(!text.contains("s3cr3t-hash"), "{text}");
        let text = decode_with(|j| j["data"]["email"] = serde_json::json!(["private@example.com"]));
        assert!(
            text.contains("data.email") && text.contains("expected"),
            "{text}"
        );
        assert!(!text.contains("private@example.com"), "{text}");
    }

    #[test]
    fn an_unknown_private_field_is_named_without_its_value() {
        let text = decode_with(|j| j["data"]["password_hash"] = serde_json::json!("s3cr3t-hash"));
        assert!(text.contains("password_hash"), "{text}");
        assert!(!text.contains("s3cr3t-hash"), "{text}");
    }
}
