//! `replay`: the operator's tool for backfills and repairs.
//!
//! - [`snapshot`] reads the source table with a parallel `Scan` and emits each item as a
//!   `profile.snapshot` event, to the topic (every subscriber) or to one subscriber's
//!   queue, at a bounded rate, resumable from a state file.
//! - [`dlq`] returns parked messages to the main queue, optionally filtered by reason.
//! - [`republish`] sends again what the publisher parked or the Lambda stream mapping
//!   gave up on (its failure queue, S3 invocation records), re-reading items as needed.
//! - [`verify`] compares the source table with the analytics store in bounded memory,
//!   reports drift and, with `--repair`, re-emits events for exactly the drifted keys;
//!   [`drift`] is its PURE part (how a stored row compares with its source item, and
//!   the event that repairs it).
//!
//! Every event replay emits goes through the same contract and the same version guard
//! as live traffic, so a backfill running beside live writes can never overwrite a
//! newer change or resurrect a deleted item (invariant 4): a snapshot carries the
//! position of the item version it read.

pub mod cli;
pub mod dest;
pub mod dlq;
pub mod drift;
pub mod items;
pub mod limiter;
pub mod progress;
pub mod republish;
pub mod snapshot;
pub mod state;
pub mod verify;
