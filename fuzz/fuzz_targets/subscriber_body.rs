//! The subscriber's body decoder on arbitrary bytes: raw or SNS-wrapped JSON → event.
//!
//! Properties beyond "never panics": a refusal always has one of the stable reason
//! codes the DLQ attribute promises, and an accepted event re-encodes to a body that
//! decodes to the same event (what the subscriber applies is what it read).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../subscriber/src/envelope.rs"]
#[allow(dead_code)]
mod envelope;

fuzz_target!(|data: &[u8]| {
    // SQS bodies are Unicode text: bytes that are not UTF-8 cannot reach the decoder.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match envelope::decode_body(body) {
        Ok(event) => {
            let again = event.encode(contracts::CURRENT_SCHEMA_VERSION);
            let back = envelope::decode_body(
                std::str::from_utf8(&again).expect("the encoder writes UTF-8"),
            )
            .expect("a decoded event re-encodes to a body that decodes");
            assert_eq!(back.key, event.key);
            assert_eq!(back.position, event.position);
            assert_eq!(back.change, event.change);
        }
        Err(e) => assert!(
            envelope::BodyError::reason_codes().any(|r| r == e.reason_code()),
            "{e:?}"
        ),
    }
});
