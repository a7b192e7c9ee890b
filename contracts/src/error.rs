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

    pub(crate) fn from_serde(err: serde_json::Error, schema_version: Option<u8>) -> Self {
        use serde_json::error::Category;
        match (err.classify(), schema_version) {
            (Category::Data, Some(schema_version)) => DecodeError::SchemaMismatch {
                schema_version,
                message: err.to_string(),
            },
            _ => DecodeError::Malformed {
                line: err.line(),
                column: err.column(),
                message: err.to_string(),
            },
        }
    }
}
