//! PURE: an SQS message body → a [`ChangeEvent`].
//!
//! The queue can be subscribed to the topic with raw message delivery (the body is the
//! event JSON itself) or without it (the body is SNS's JSON notification, with the event
//! JSON as a string in `Message`). Both are accepted, so flipping the subscription's
//! `RawMessageDelivery` attribute never strands messages already in the queue.

use contracts::{ChangeEvent, DecodeError};
use serde::Deserialize;
use serde_json::Value;

/// Why an SQS body is not a change event this build can apply.
///
/// Every variant is permanent for these bytes: the message belongs in the DLQ with
/// [`BodyError::reason_code`] attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A JSON object with SNS notification fields that is not a usable notification.
    #[error("body looks like an sns envelope but {0}")]
    BadSnsEnvelope(SnsProblem),
    /// The event (raw, or unwrapped from SNS) does not decode.
    #[error("event does not decode")]
    Event(#[source] DecodeError),
}

/// What is wrong with an SNS-looking envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnsProblem {
    /// `Type` is missing or null.
    #[error("has no Type")]
    MissingType,
    /// `Type` is not `"Notification"` (e.g. a `SubscriptionConfirmation`).
    #[error("its Type is not Notification")]
    NotNotification,
    /// `Message` is missing or null.
    #[error("has no Message")]
    MissingMessage,
    /// `Message` is not a JSON string.
    #[error("its Message is not a string")]
    MessageNotString,
}

impl BodyError {
    /// A short, stable, low-cardinality name for the failure: the `tributary-reason`
    /// attribute on the parked message.
    pub fn reason_code(&self) -> &'static str {
        match self {
            BodyError::BadSnsEnvelope(_) => "bad_sns_envelope",
            BodyError::Event(e) => e.reason_code(),
        }
    }

    /// Always `false`: the same bytes never decode. (An unsupported schema version
    /// decodes after an upgrade; that is a DLQ redrive, not a retry.)
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Decodes an SQS message body, raw or SNS-wrapped, into the current-version event.
///
/// # Errors
/// [`BodyError::BadSnsEnvelope`] for an object carrying SNS notification fields
/// (`Type`, `Message`, `TopicArn`, `MessageId`) that is not a valid notification; the
/// contract's [`DecodeError`] (as [`BodyError::Event`]) for everything else.
pub fn decode_body(body: &str) -> Result<ChangeEvent, BodyError> {
    let event_json = match sns_message(body)? {
        Some(message) => message,
        None => body.to_owned(),
    };
    contracts::decode(event_json.as_bytes()).map_err(BodyError::Event)
}

/// The `Message` of an SNS notification, `None` if the body is not SNS-shaped.
///
/// The contract's envelope denies unknown fields and names none of SNS's capitalised
/// ones, so an object carrying any of them can only be an SNS envelope: if it is a
/// broken one, saying so is clearer than a schema mismatch.
fn sns_message(body: &str) -> Result<Option<String>, BodyError> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "Type")]
        kind: Option<Value>,
        #[serde(rename = "Message")]
        message: Option<Value>,
        #[serde(rename = "TopicArn")]
        topic_arn: Option<Value>,
        #[serde(rename = "MessageId")]
        message_id: Option<Value>,
    }
    // Not a JSON object at all: the contract's decoder explains that best. (The check
    // also keeps serde from reading a JSON array positionally into the probe.)
    if !body.trim_start().starts_with('{') {
        return Ok(None);
    }
    let Ok(probe) = serde_json::from_str::<Probe>(body) else {
        return Ok(None);
    };
    if probe.kind.is_none()
        && probe.message.is_none()
        && probe.topic_arn.is_none()
        && probe.message_id.is_none()
    {
        return Ok(None);
    }
    let bad = |problem| Err(BodyError::BadSnsEnvelope(problem));
    match probe.kind {
        Some(Value::String(kind)) if kind == "Notification" => {}
        None => return bad(SnsProblem::MissingType),
        Some(_) => return bad(SnsProblem::NotNotification),
    }
    match probe.message {
        Some(Value::String(message)) => Ok(Some(message)),
        None => bad(SnsProblem::MissingMessage),
        Some(_) => bad(SnsProblem::MessageNotString),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{Change, SchemaVersion};

    const V2_UPSERTED: &str = include_str!("../../contracts/fixtures/v2/upserted.json");
    const V2_DELETED: &str = include_str!("../../contracts/fixtures/v2/deleted.json");
    const V1_UPSERTED: &str = include_str!("../../contracts/fixtures/v1/upserted.json");

    fn sns_wrap(message: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "5f1e2d3c-0000-4000-8000-000000000001",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:profile-changes",
            "Message": message,
            "Timestamp": "2026-11-25T01:02:04.000Z",
            "SignatureVersion": "1",
            "MessageAttributes": {
                "event_type": {"Type": "String", "Value": "profile.upserted"}
            }
        })
        .to_string()
    }

    #[test]
    fn a_refused_body_is_described_by_path_and_expected_type_never_by_its_values() {
        let mut json: serde_json::Value = serde_json::from_str(V2_UPSERTED).unwrap();
        json["data"]["email"] = serde_json::json!({"secret": "ada-private@example.com"});
        for body in [json.to_string(), sns_wrap(&json.to_string())] {
            let err = decode_body(&body).unwrap_err();
            // What reaches the ERROR log and the DLQ's tributary-detail attribute.
            let detail = crate::error_chain(&err);
            assert_eq!(err.reason_code(), "schema_mismatch");
            assert!(detail.contains("data.email"), "{detail}");
            assert!(detail.contains("expected a string"), "{detail}");
            assert!(!detail.contains("ada-private"), "{detail}");
        }
    }

    #[test]
    fn raw_delivery_body_decodes() {
        let event = decode_body(V2_UPSERTED).unwrap();
        assert_eq!(event.key, "u-0001");
        assert!(matches!(event.change, Change::Upserted(_)));
    }

    #[test]
    fn sns_wrapped_body_decodes_to_the_same_event_as_raw() {
        for fixture in [V2_UPSERTED, V2_DELETED] {
            let raw = decode_body(fixture).unwrap();
            let wrapped = decode_body(&sns_wrap(fixture)).unwrap();
            assert_eq!(raw, wrapped);
        }
    }

    #[test]
    fn sns_wrapped_v1_event_is_upcast() {
        let event = decode_body(&sns_wrap(V1_UPSERTED)).unwrap();
        assert_eq!(event.published_schema, SchemaVersion::V1);
        assert!(event.change.profile().is_some());
    }

    #[test]
    fn subscription_confirmation_is_a_bad_sns_envelope() {
        let body = serde_json::json!({
            "Type": "SubscriptionConfirmation",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:profile-changes",
            "Message": "You have chosen to subscribe…",
        })
        .to_string();
        let err = decode_body(&body).unwrap_err();
        assert_eq!(err, BodyError::BadSnsEnvelope(SnsProblem::NotNotification));
        assert_eq!(err.reason_code(), "bad_sns_envelope");
    }

    #[test]
    fn sns_envelope_without_message_is_refused() {
        let body = r#"{"Type":"Notification","TopicArn":"arn:aws:sns:us-east-1:1:t"}"#;
        assert_eq!(
            decode_body(body).unwrap_err(),
            BodyError::BadSnsEnvelope(SnsProblem::MissingMessage)
        );
    }

    #[test]
    fn sns_envelope_whose_message_is_an_object_is_refused() {
        let body = format!(r#"{{"Type":"Notification","Message":{V2_UPSERTED}}}"#);
        assert_eq!(
            decode_body(&body).unwrap_err(),
            BodyError::BadSnsEnvelope(SnsProblem::MessageNotString)
        );
    }

    #[test]
    fn sns_envelope_without_type_is_refused() {
        let body = serde_json::json!({"Message": V2_UPSERTED, "MessageId": "m-1"}).to_string();
        assert_eq!(
            decode_body(&body).unwrap_err(),
            BodyError::BadSnsEnvelope(SnsProblem::MissingType)
        );
    }

    #[test]
    fn malformed_body_keeps_the_contract_reason_code() {
        let err = decode_body("{\"event_id\": ").unwrap_err();
        assert_eq!(err.reason_code(), "malformed_json");
        assert!(!err.is_retryable());
    }

    #[test]
    fn malformed_event_inside_a_valid_sns_envelope_keeps_the_contract_reason_code() {
        let err = decode_body(&sns_wrap("not json")).unwrap_err();
        assert_eq!(err.reason_code(), "malformed_json");
    }

    #[test]
    fn newer_schema_version_is_refused_with_its_own_reason() {
        let newer = V2_UPSERTED.replace("\"schema_version\": 2", "\"schema_version\": 99");
        assert_eq!(
            decode_body(&newer).unwrap_err().reason_code(),
            "unsupported_schema_version"
        );
        let wrapped = sns_wrap(&newer);
        assert_eq!(
            decode_body(&wrapped).unwrap_err().reason_code(),
            "unsupported_schema_version"
        );
    }

    #[test]
    fn json_that_is_not_an_object_is_a_contract_error() {
        assert!(matches!(
            decode_body("[\"Notification\", \"x\"]"),
            Err(BodyError::Event(_))
        ));
        assert_eq!(decode_body("").unwrap_err().reason_code(), "malformed_json");
    }
}
