//! The publisher: DynamoDB stream records → versioned change events → SNS.
//!
//! # Layout
//! - [`config`] — typed settings of the `publisher` binary (flags mirrored by env vars).
//! - [`record`] — PURE stream record → [`contracts::ChangeEvent`]; the one
//!   [`record::StreamRecord`] type both the SDK and the Lambda event convert into.
//! - [`stream`] — shards, lineage (parents before children), iterators, `GetRecords`.
//! - [`checkpoint`] — the lease and per-shard checkpoints in a DynamoDB table.
//! - [`sink`] — SNS `PublishBatch`, retrying only the entries that failed.
//! - [`park`] — the failure queue for records that can never be published.
//! - [`batch`] — the batch step both modes share: decode, publish, park.
//! - [`pipeline`] — the container-mode loop tying them together.
//! - [`lambda`] — the `publisher-lambda` handler: stream event → batch step → partial
//!   batch response, with its own lenient event types.
//! - [`bootstrap`] — creates every AWS resource the pipeline needs, idempotently.
//! - [`demo`] — a stand-in profile service writing realistic traffic.
//! - [`metrics`] — the process's Prometheus metrics (served by `publisher`).
//! - [`telemetry`] — log setup and the shutdown signal for the binaries.
//!
//! Binaries: `publisher` (run the pipeline), `publisher-lambda`, `bootstrap`, `demo-writer`.

pub mod batch;
pub mod bootstrap;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod lambda;
pub mod metrics;
pub mod park;
pub mod pipeline;
pub mod record;
pub mod sink;
pub mod stream;
pub mod telemetry;

/// The AWS SDK configuration with the default retries and timeouts of
/// [`ops::aws::sdk_config`], for tools without the `--aws-*-timeout-ms` flags (tests,
/// benchmarks). The binaries call [`ops::aws::sdk_config`] with their flags.
pub async fn aws_config() -> aws_config::SdkConfig {
    ops::aws::sdk_config(&ops::aws::AwsArgs::default()).await
}

/// One line for an AWS SDK error: the service's code and message when the service
/// answered, the full error chain otherwise (timeouts, connection failures).
pub fn describe_sdk_error<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        // The parse error of an unreadable answer quotes the answer, and a GetRecords or
        // Scan answer is item images: personal data must not reach the logs.
        _ if matches!(err, SdkError::ResponseError(_)) => {
            "the service's answer could not be parsed (its body, item data, is not logged)"
                .to_owned()
        }
        _ => aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparseable_answer_is_described_without_its_body() {
        let raw = "{\"Records\":[{\"email\":\"ada@example.com\"}]}";
        let err: aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::scan::ScanError,
            String,
        > = aws_sdk_dynamodb::error::SdkError::response_error(
            std::io::Error::other(format!("Union did not contain a valid variant: {raw}")),
            raw.to_owned(),
        );
        let text = describe_sdk_error(&err);
        assert!(!text.contains("ada@example.com"), "{text}");
        assert!(text.contains("could not be parsed"), "{text}");
    }
}
