//! The subscriber's body decoder on arbitrary bytes: raw or SNS-wrapped JSON → event of
//! the profile, as declared in contracts/entities/profile.toml.
//!
//! Properties beyond "never panics": a refusal always has one of the stable reason
//! codes the DLQ attribute promises, and an accepted event re-encodes to a body that
//! decodes to the same event (what the subscriber applies is what it read).
#![no_main]

use std::sync::OnceLock;

use contracts::entity::{Contract, Published};
use libfuzzer_sys::fuzz_target;

#[path = "../../subscriber/src/envelope.rs"]
#[allow(dead_code)]
mod envelope;

fn profile() -> &'static Contract {
    static PROFILE: OnceLock<Contract> = OnceLock::new();
    PROFILE.get_or_init(|| {
        Contract::parse(
            "profile.toml",
            include_str!("../../contracts/entities/profile.toml"),
            &Published::none(),
        )
        .expect("the profile contract parses")
    })
}

fuzz_target!(|data: &[u8]| {
    // SQS bodies are Unicode text: bytes that are not UTF-8 cannot reach the decoder.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match envelope::decode_body_from(profile(), 2, body, None) {
        Ok(event) => {
            let again = contracts::entity::encode(&event, 2);
            let back = envelope::decode_body_from(
                profile(),
                2,
                std::str::from_utf8(&again).expect("the encoder writes UTF-8"),
                None,
            )
            .expect("a decoded event re-encodes to a body that decodes");
            assert_eq!(back.key, event.key);
            assert_eq!(back.position, event.position);
            assert_eq!(back.deleted, event.deleted);
            assert_eq!(back.data, event.data);
        }
        Err(e) => assert!(
            envelope::BodyError::reason_codes().any(|r| r == e.reason_code()),
            "{e:?}"
        ),
    }
});
