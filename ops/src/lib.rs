//! The operator's view shared by the long-running binaries (`publisher`,
//! `subscriber run`): metrics in the Prometheus text format, and the liveness and
//! readiness endpoints a container orchestrator polls.
//!
//! Hand-written on purpose: three endpoints and a handful of metric families do not
//! justify an HTTP framework and a metrics stack in every image.
//!
//! # Layout
//! - [`metrics`] — PURE: counters, gauges and histograms, labelled with low-cardinality
//!   labels, rendered in the Prometheus text exposition format.
//! - [`server`] — the HTTP listener: `GET /metrics`, `/healthz`, `/readyz`.
//! - [`shutdown`] — the one shutdown semantics: drain on the first SIGTERM/SIGINT, exit
//!   130 on the second.
//! - [`aws`] — the AWS SDK configuration every binary builds its clients from:
//!   retries and the connect, attempt and operation timeouts (`--aws-*-timeout-ms`).
//! - [`sqs_text`] — PURE: JSON bodies and attribute text kept to the characters SQS
//!   accepts (every sender to SNS or SQS uses it).
//! - [`OpsArgs`] — the listen address setting (`--metrics-addr`, `TRIBUTARY_METRICS_ADDR`).
//! - [`BatchResponse`], [`invocation_deadline`] — what both Lambda handlers share.

pub mod aws;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod sqs_text;

use std::net::SocketAddr;

/// The settings of the operator endpoints, flattened into each binary's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Address (`HOST:PORT`) to serve `/metrics` (Prometheus text), `/healthz` (the
    /// process runs) and `/readyz` (its database and queue answer) on. In a container
    /// use `0.0.0.0:9464`. Default: not served.
    #[arg(long, env = "TRIBUTARY_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}

/// A Lambda handler's partial batch response (`FunctionResponseTypes:
/// [ReportBatchItemFailures]`), the same for a stream and a queue event source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One failed item: a stream record's sequence number, or an SQS message id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchItemFailure {
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// A Lambda invocation's deadline from the runtime API's `Lambda-Runtime-Deadline-Ms`
/// header, which AWS defines as milliseconds since the Unix epoch.
///
/// cargo-lambda's runtime emulator (1.9.2) sends the function's timeout there instead
/// (`600000`: a duration), which read as an epoch time is in 1970, so every handler
/// would think its deadline long past. A value before 2001 cannot be a real deadline;
/// it is read as a duration from `now`.
pub fn invocation_deadline(deadline_ms: u64, now: std::time::SystemTime) -> std::time::SystemTime {
    /// 2001-01-01T00:00:00Z in milliseconds since the epoch.
    const PLAUSIBLE_EPOCH_MS: u64 = 978_307_200_000;
    let ms = std::time::Duration::from_millis(deadline_ms);
    if deadline_ms < PLAUSIBLE_EPOCH_MS {
        now + ms
    } else {
        std::time::UNIX_EPOCH + ms
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn an_epoch_deadline_is_taken_as_it_is_and_a_duration_is_counted_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_586_566);
        let real = 1_795_586_596_000;
        assert_eq!(
            invocation_deadline(real, now),
            UNIX_EPOCH + Duration::from_millis(real)
        );
        assert_eq!(
            invocation_deadline(600_000, now),
            now + Duration::from_secs(600)
        );
    }
}
