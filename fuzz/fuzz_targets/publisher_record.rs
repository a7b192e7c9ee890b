//! The publisher's record decoder on arbitrary stream records (JSON in the shape the
//! failure queue stores them): record → event.
//!
//! Properties beyond "never panics": a refusal has one of the stable reason codes the
//! failure queue promises, and every event the publisher would publish decodes in the
//! subscriber to the same change, in both schema versions it can emit.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../publisher/src/record.rs"]
#[allow(dead_code)]
mod record;
use record::{Origin, StreamRecord, to_event};

const REASONS: &[&str] = &[
    "missing_image",
    "missing_attribute",
    "wrong_attribute_type",
    "bad_attribute_value",
    "key_mismatch",
    "unsupported_event_name",
];

fuzz_target!(|data: &[u8]| {
    let Ok(record) = serde_json::from_slice::<StreamRecord>(data) else {
        return;
    };
    let origin = Origin {
        table: "profiles".into(),
        stream_arn: "arn:aws:dynamodb:us-east-1:000000000000:table/profiles/stream/x".into(),
    };
    let now = time::OffsetDateTime::UNIX_EPOCH;
    match to_event(&record, &origin, now) {
        Ok(None) => {}
        Ok(Some(event)) => {
            let body = event.encode(contracts::CURRENT_SCHEMA_VERSION);
            let back = contracts::decode(&body).expect("a published v2 event decodes");
            assert_eq!(back.key, event.key);
            assert_eq!(back.position, event.position);
            assert_eq!(back.change, event.change);
            let v1 = event.encode(contracts::SchemaVersion::V1);
            contracts::decode(&v1).expect("a published v1 event decodes");
        }
        Err(e) => assert!(REASONS.contains(&e.reason_code()), "{e:?}"),
    }
});
