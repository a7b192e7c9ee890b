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
//! - [`OpsArgs`] — the listen address setting (`--metrics-addr`, `TRIBUTARY_METRICS_ADDR`).

pub mod metrics;
pub mod server;

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
