//! PURE: keeping message bodies inside the characters SQS accepts.
//!
//! SQS refuses a message whose body holds a character outside `#x9 | #xA | #xD | #x20 to
//! #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF` (`InvalidMessageContents`). SNS
//! accepts such a body and then fails to deliver it to an SQS subscription: the event
//! is lost after the publisher has checkpointed past it. DynamoDB stores U+FFFE and
//! U+FFFF in a string happily, so a profile can carry them.
//!
//! Every JSON body sent to SNS or SQS goes through [`escape_json`]: each such character
//! becomes a JSON `\u` escape, which decodes to the same string, so the event's value is
//! unchanged and its bytes are ones SQS takes. The Unicode non-characters that SQS's
//! range lets through (U+FDD0–U+FDEF and U+nFFFE / U+nFFFF of planes 1–16) are escaped
//! too: they are the code points other systems refuse next, and escaping costs nothing.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The characters an SQS message (body or attribute value) may hold.
///
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html>
pub fn sqs_accepts(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// A Unicode non-character: U+FDD0–U+FDEF, or the last two code points of any plane.
pub fn is_noncharacter(c: char) -> bool {
    let cp = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE
}

/// Whether [`escape_json`] rewrites `c`.
pub fn needs_escape(c: char) -> bool {
    !sqs_accepts(c) || is_noncharacter(c)
}

/// `json` with every character SQS refuses, and every non-character, written as a JSON
/// `\uXXXX` escape (a surrogate pair above U+FFFF). Borrowed when nothing needed it.
///
/// Sound for any JSON text: outside strings JSON holds only ASCII structure and
/// whitespace, so each rewritten character sits inside a string literal, where the
/// escape decodes to exactly that character. (serde_json already escapes the control
/// characters below U+0020; they are handled here too for text from elsewhere.)
pub fn escape_json(json: &str) -> Cow<'_, str> {
    let Some(first) = json.find(needs_escape) else {
        return Cow::Borrowed(json);
    };
    let mut out = String::with_capacity(json.len() + 16);
    out.push_str(&json[..first]);
    for c in json[first..].chars() {
        if needs_escape(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(out, "\\u{unit:04X}").expect("writing to a String cannot fail");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Free text (a message attribute value, not JSON) with every character SQS refuses
/// replaced by U+FFFD, so a diagnostic never makes SQS refuse the message it labels.
pub fn sanitize_text(text: &str) -> Cow<'_, str> {
    if text.chars().all(sqs_accepts) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if sqs_accepts(c) { c } else { '\u{FFFD}' })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_refuses_exactly_the_characters_outside_its_documented_ranges() {
        for c in ['\u{0}', '\u{8}', '\u{B}', '\u{1F}', '\u{FFFE}', '\u{FFFF}'] {
            assert!(!sqs_accepts(c), "{:04X}", u32::from(c));
        }
        for c in [
            '\t', '\n', '\r', ' ', 'é', '\u{D7FF}', '\u{E000}', '\u{FFFD}', '😀',
        ] {
            assert!(sqs_accepts(c), "{:04X}", u32::from(c));
        }
        assert!(sqs_accepts('\u{10FFFF}'));
    }

    #[test]
    fn noncharacters_are_the_fdd0_block_and_the_last_two_of_every_plane() {
        for c in [
            '\u{FDD0}',
            '\u{FDEF}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{1FFFE}',
            '\u{10FFFF}',
        ] {
            assert!(is_noncharacter(c), "{:04X}", u32::from(c));
        }
        for c in [
            '\u{FDCF}',
            '\u{FDF0}',
            '\u{FFFD}',
            '\u{1FFFD}',
            '\u{20000}',
            'a',
        ] {
            assert!(!is_noncharacter(c), "{:04X}", u32::from(c));
        }
    }

    #[test]
    fn a_body_sqs_accepts_is_returned_borrowed_and_unchanged() {
        let body = r#"{"name":"Zoë 😀","tab":"\t"}"#;
        assert!(matches!(escape_json(body), Cow::Borrowed(b) if b == body));
    }

    #[test]
    fn refused_characters_become_escapes_that_decode_to_the_same_value() {
        let value = "a\u{FFFE}b\u{FFFF}c\u{FDD0}d\u{1FFFE}e\u{10FFFF}f\u{1}g😀";
        let json = serde_json::to_string(&serde_json::json!({ "v": value })).unwrap();
        let escaped = escape_json(&json);
        assert!(escaped.chars().all(|c| !needs_escape(c)), "{escaped}");
        assert!(escaped.contains(r"\uFFFE") && escaped.contains(r"\uFFFF"));
        assert!(escaped.contains(r"\uD83F\uDFFE"), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["v"], value);
    }

    #[test]
    fn escaping_is_idempotent() {
        let json = serde_json::to_string(&serde_json::json!(["\u{FFFF}x"])).unwrap();
        let once = escape_json(&json).into_owned();
        assert_eq!(escape_json(&once), once);
    }

    #[test]
    fn free_text_loses_only_the_characters_sqs_refuses() {
        assert_eq!(sanitize_text("ok\u{FFFE}\u{0}😀"), "ok\u{FFFD}\u{FFFD}😀");
        assert!(matches!(sanitize_text("plain"), Cow::Borrowed("plain")));
    }
}
