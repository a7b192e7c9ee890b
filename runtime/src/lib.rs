//! The process's runtime, the same in every tributary binary: what each `main` does
//! before and around its own work. Service crates hold only their domain; everything
//! here is shared so that the copies cannot disagree.
//!
//! Every binary's first lines read the same:
//! ```text
//! let cli: Cli = runtime::cli::parse_or_exit();       // one line and exit 2 on a bad setting
//! runtime::telemetry::init(cli.log);                  // structured logs on stderr
//! let shutdown = runtime::shutdown::on_signals(…)?;   // drain on the first signal, 130 on the second
//! let aws = runtime::aws::sdk_config(&cli.aws).await; // retries and timeouts on every call
//! ```
//!
//! # Layout
//! - [`cli`] — parse the command line once; a bad setting is one line naming the flag
//!   and its environment variable, never a secret's value, and exit status 2.
//! - [`telemetry`] — [`telemetry::LogArgs`] (`--log-format`) and the log set-up.
//! - [`shutdown`] — the one shutdown semantics: drain on the first SIGTERM/SIGINT, exit
//!   130 on the second.
//! - [`aws`] — the AWS SDK configuration (retries; connect, attempt and operation
//!   timeouts) and the [`aws::Clients`] built from it.
//! - [`report`] — errors as one line: an error chain, an AWS error without its body.
//! - [`backoff`] — the one exponential back-off with jitter.
//! - [`batch`] — "send a batch, retry only the entries that failed", for every SNS and
//!   SQS batch call.
//! - [`limits`] — the AWS service limits, with the pages that state them.
//! - [`sqs_text`] — PURE: JSON bodies and attribute text kept to the characters SQS
//!   accepts (every sender to SNS or SQS uses it).
//! - [`lambda`] — what both Lambda handlers share: the partial batch response, the
//!   deadline, and [`lambda::serve`], the runtime loop with the shutdown semantics.
//! - [`metrics`] — the metric types (`prometheus-client`), `tributary_build_info`, and
//!   the OpenMetrics rendering.
//! - [`server`] — the HTTP listener: `GET /metrics`, `/healthz`, `/readyz`.
//! - [`OpsArgs`] — the listen address setting (`--metrics-addr`, `TRIBUTARY_METRICS_ADDR`).

pub mod aws;
pub mod backoff;
pub mod batch;
pub mod cli;
pub mod lambda;
pub mod limits;
pub mod metrics;
pub mod report;
pub mod server;
pub mod shutdown;
pub mod sqs_text;
pub mod telemetry;

use std::net::SocketAddr;

/// The settings of the operator endpoints, flattened into each long-running binary's
/// command line.
#[derive(Debug, Clone, clap::Args)]
pub struct OpsArgs {
    /// Address (`HOST:PORT`) to serve `/metrics` (Prometheus text), `/healthz` (the
    /// process runs) and `/readyz` (its database and queue answer) on. In a container
    /// use `0.0.0.0:9464`. Default: not served.
    #[arg(long, env = "TRIBUTARY_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
}
