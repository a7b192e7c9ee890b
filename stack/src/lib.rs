//! The tools around a tributary stack, not part of either service: what a deployment or
//! a demo needs before and beside the publisher and the subscriber.
//!
//! # Layout
//! - [`bootstrap`] — creates (or finds) every AWS resource of the pipeline, for both
//!   sides: the profile table with its stream, the checkpoint table, the topic, the
//!   subscriber's queue with its DLQ and redrive policy, the subscription, the
//!   publisher's failure queue. Idempotent.
//! - [`demo`] — a stand-in User Profile service writing realistic traffic.
//!
//! Binaries: `bootstrap`, `demo-writer`.

pub mod bootstrap;
pub mod demo;
