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
//! - [`reading`] — PURE: what a shard reader does after each answer (retry, renew the
//!   iterator, restart at the trim horizon, wait, idle, finish).
//! - [`pipeline`] — the container-mode loop tying them together.
//! - [`lambda`] — the `publisher-lambda` handler: stream event → batch step → partial
//!   batch response, with its own lenient event types.
//! - [`metrics`] — the process's Prometheus metrics (served by `publisher`).
//!
//! Binaries: `publisher` (run the pipeline), `publisher-lambda`. The deployment and demo
//! tools (`bootstrap`, `demo-writer`) are the `stack` crate's.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod lambda;
pub mod mapping;
pub mod metrics;
pub mod park;
pub mod pipeline;
pub mod project;
pub mod reading;
pub mod record;
pub mod sink;
pub mod stream;
