//! Errors as one log or terminal line. An operator reads one line per failure, so an
//! error and its causes are joined, and an AWS error keeps the service's own code and
//! message, never an answer body (which may be item data).

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// An error and its sources, joined by `: `: the whole story on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors (the SDK's) repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One line for an AWS SDK error: the service's code and message when the service
/// answered, the full error chain otherwise (timeouts, connection failures). An answer
/// that could not be parsed is not quoted: a `GetRecords` or `Scan` answer is item
/// images, and personal data must not reach the logs.
pub fn describe_sdk_error<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ if matches!(err, SdkError::ResponseError(_)) => {
            "the service's answer could not be parsed (its body, item data, is not logged)"
                .to_owned()
        }
        _ => aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper: inner")]
    struct Repeats(#[source] Inner);

    #[test]
    fn the_chain_joins_each_source_once() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
        assert_eq!(error_chain(&Repeats(Inner)), "wrapper: inner");
    }

    #[test]
    fn an_unparseable_answer_is_described_without_its_body() {
        let raw = "{\"Records\":[{\"email\":\"ada@example.com\"}]}";
        let err: SdkError<aws_sdk_sqs::operation::receive_message::ReceiveMessageError, String> =
            SdkError::response_error(
                std::io::Error::other(format!("Union did not contain a valid variant: {raw}")),
                raw.to_owned(),
            );
        let text = describe_sdk_error(&err);
        assert!(!text.contains("ada@example.com"), "{text}");
        assert!(text.contains("could not be parsed"), "{text}");
    }
}
