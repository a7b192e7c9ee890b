//! PURE: an SQS message body → a declared entity's [`Event`].
//!
//! The queue can be subscribed to the topic with raw message delivery (the body is the
//! event JSON itself) or without it (the body is SNS's JSON notification, with the event
//! JSON as a string in `Message`). Both are accepted, so flipping the subscription's
//! `RawMessageDelivery` attribute never strands messages already in the queue.
//!
//! An SNS-wrapped body names the topic it came from (`TopicArn`). When the expected
//! topic is set ([`TopicCheck`], `SUBSCRIBER_TOPIC_ARN`), a wrapped body from any other
//! topic is refused as [`BodyError::ForeignTopic`] and parked with its own reason. A raw
//! body carries no topic: for it, as for every body while the setting is unset, the
//! guard is the queue policy, which admits only the topic (and the replay role).

use std::sync::OnceLock;

use contracts::DecodeError;
use contracts::entity::{Contract, Event};
use serde::Deserialize;
use serde_json::Value;

/// The topic SNS-wrapped bodies must come from, a setting of both subscriber binaries.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopicCheck {
    /// ARN of the SNS topic the queue is subscribed to. An SNS-wrapped body from another
    /// topic is parked with reason `foreign_topic`. Default: unset, no check (raw
    /// bodies carry no topic either way; the queue policy admitting only the topic is
    /// then the only guard, and a warning says so at start).
    #[arg(long = "topic-arn", env = "SUBSCRIBER_TOPIC_ARN", value_name = "ARN", value_parser = parse_topic_arn)]
    pub topic_arn: Option<String>,
}

impl TopicCheck {
    /// Makes `entity::decode_body` check SNS-wrapped bodies against this topic, for the rest
    /// of the process; logs a warning when there is none. Called once by each binary's
    /// main: a process-wide setting, as the metrics registry is, so the batch code that
    /// decodes does not carry it in every signature.
    pub fn install(&self) {
        if self.topic_arn.is_none() {
            tracing::warn!(
                "SUBSCRIBER_TOPIC_ARN is not set: SNS-wrapped bodies from any topic are accepted; only the queue policy guards who may send."
            );
        }
        let _ = EXPECTED_TOPIC.set(self.topic_arn.clone());
    }
}

static EXPECTED_TOPIC: OnceLock<Option<String>> = OnceLock::new();

/// An SNS topic ARN: `arn:PARTITION:sns:REGION:ACCOUNT:NAME`.
///
/// # Errors
/// A sentence saying what shape was expected.
pub(crate) fn parse_topic_arn(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "sns"
        && !parts[3].is_empty()
        && !parts[4].is_empty()
        && !parts[5].is_empty();
    if ok {
        Ok(value.to_owned())
    } else {
        Err("expected an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)".to_owned())
    }
}

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
    /// An SNS notification from a topic other than the expected one (or naming none).
    #[error("sns envelope from another topic than the expected one")]
    ForeignTopic,
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

/// The reason a wrapped body from another topic is parked with.
pub(crate) const FOREIGN_TOPIC: &str = "foreign_topic";
/// `tributary-reason` of a body that is SNS-wrapped but not as SNS wraps.
pub(crate) const BAD_SNS_ENVELOPE: &str = "bad_sns_envelope";

impl BodyError {
    /// Every value [`BodyError::reason_code`] gives, from the codes' own definitions.
    pub fn reason_codes() -> impl Iterator<Item = &'static str> {
        contracts::DecodeError::REASON_CODES
            .into_iter()
            .chain([BAD_SNS_ENVELOPE, FOREIGN_TOPIC])
    }

    /// A short, stable, low-cardinality name for the failure: the `tributary-reason`
    /// attribute on the parked message.
    pub fn reason_code(&self) -> &'static str {
        match self {
            BodyError::BadSnsEnvelope(_) => BAD_SNS_ENVELOPE,
            BodyError::ForeignTopic => FOREIGN_TOPIC,
            BodyError::Event(e) => e.reason_code(),
        }
    }

    /// Always `false`: the same bytes never decode. (An unsupported schema version
    /// decodes after an upgrade; that is a DLQ redrive, not a retry.)
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The topic [`TopicCheck::install`] set, if any.
pub fn expected_topic() -> Option<&'static str> {
    EXPECTED_TOPIC.get().and_then(Option::as_deref)
}

/// Decodes an SQS message body, raw or SNS-wrapped, into an event of `contract` for a
/// reader of version `reads`; a wrapped one must name `expected_topic` as its
/// `TopicArn` when that is given.
///
/// # Errors
/// [`BodyError::BadSnsEnvelope`] for an object carrying SNS notification fields
/// (`Type`, `Message`, `TopicArn`, `MessageId`) that is not a valid notification;
/// [`BodyError::ForeignTopic`] for a notification from another topic; the contract's
/// [`DecodeError`] (as [`BodyError::Event`]) for everything else.
pub fn decode_body_from(
    contract: &Contract,
    reads: u32,
    body: &str,
    expected_topic: Option<&str>,
) -> Result<Event, BodyError> {
    let event_json = match sns_message(body)? {
        Some((message, topic)) => {
            if let Some(expected) = expected_topic
                && topic.as_deref() != Some(expected)
            {
                return Err(BodyError::ForeignTopic);
            }
            message
        }
        None => body.to_owned(),
    };
    contracts::entity::decode(contract, reads, event_json.as_bytes()).map_err(BodyError::Event)
}

/// The `Message` of an SNS notification and its `TopicArn` (when a string), `None` if
/// the body is not SNS-shaped.
///
/// The contract's envelope denies unknown fields and names none of SNS's capitalised
/// ones, so an object carrying any of them can only be an SNS envelope: if it is a
/// broken one, saying so is clearer than a schema mismatch.
fn sns_message(body: &str) -> Result<Option<(String, Option<String>)>, BodyError> {
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
    let topic = match probe.topic_arn {
        Some(Value::String(topic)) => Some(topic),
        _ => None,
    };
    match probe.message {
        Some(Value::String(message)) => Ok(Some((message, topic))),
        None => bad(SnsProblem::MissingMessage),
        Some(_) => bad(SnsProblem::MessageNotString),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_UPSERTED: &str = include_str!("../../contracts/fixtures/v2/upserted.json");
    const V2_DELETED: &str = include_str!("../../contracts/fixtures/v2/deleted.json");
    const V1_UPSERTED: &str = include_str!("../../contracts/fixtures/v1/upserted.json");

    /// The profile, as the built-in declarations declare it.
    fn profile() -> &'static Contract {
        crate::entity::Entity::current().contract()
    }

    fn decode_body(body: &str) -> Result<Event, BodyError> {
        decode_body_from(profile(), 2, body, None)
    }

    fn from_topic(body: &str, topic: Option<&str>) -> Result<Event, BodyError> {
        decode_body_from(profile(), 2, body, topic)
    }

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
            let detail = runtime::report::error_chain(&err);
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
        assert_eq!(event.event_type, "profile.upserted");
        assert!(event.deleted.is_none() && event.data.is_some());
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
        assert_eq!(event.schema, 1);
        assert_eq!(
            event.data.as_ref().unwrap()["consents"]["marketing_sms"],
            false
        );
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

    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:profile-changes";

    #[test]
    fn sns_wrapped_body_from_the_expected_topic_decodes() {
        let event = from_topic(&sns_wrap(V2_UPSERTED), Some(TOPIC)).unwrap();
        assert_eq!(event, decode_body(V2_UPSERTED).unwrap());
    }

    #[test]
    fn sns_wrapped_body_from_another_topic_is_refused_with_its_own_reason() {
        let body = sns_wrap(V2_UPSERTED).replace(":profile-changes", ":someone-elses");
        let err = from_topic(&body, Some(TOPIC)).unwrap_err();
        assert_eq!(err, BodyError::ForeignTopic);
        assert_eq!(err.reason_code(), "foreign_topic");
        assert!(!err.is_retryable());
        // Without an expected topic the same body decodes.
        assert!(from_topic(&body, None).is_ok());
    }

    #[test]
    fn sns_wrapped_body_naming_no_topic_is_refused_when_one_is_expected() {
        let body = serde_json::json!({"Type": "Notification", "Message": V2_UPSERTED}).to_string();
        assert_eq!(
            from_topic(&body, Some(TOPIC)).unwrap_err(),
            BodyError::ForeignTopic
        );
        let numeric =
            serde_json::json!({"Type": "Notification", "Message": V2_UPSERTED, "TopicArn": 7})
                .to_string();
        assert_eq!(
            from_topic(&numeric, Some(TOPIC)).unwrap_err(),
            BodyError::ForeignTopic
        );
    }

    #[test]
    fn raw_body_has_no_topic_to_check_and_decodes_whatever_is_expected() {
        assert!(from_topic(V2_UPSERTED, Some(TOPIC)).is_ok());
    }

    #[test]
    fn topic_arn_setting_accepts_only_an_sns_topic_arn() {
        assert_eq!(parse_topic_arn(TOPIC).unwrap(), TOPIC);
        assert!(parse_topic_arn("arn:aws-cn:sns:cn-north-1:1:t").is_ok());
        for bad in [
            "",
            "profile-changes",
            "arn:aws:sqs:us-east-1:123456789012:q",
            "arn:aws:sns:us-east-1:123456789012:",
            "arn:aws:sns:us-east-1:123456789012:t:sub-id",
        ] {
            assert!(parse_topic_arn(bad).is_err(), "{bad}");
        }
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
