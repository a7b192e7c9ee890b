//! The profile change-event contract shared by the publisher, the subscriber and any
//! other team that reads `profile-changes`.
//!
//! Everything another team needs to read the contract lives in this crate's folder:
//! the Rust types, one JSON Schema per published version (`schema/`) and golden
//! fixtures per version (`fixtures/vN/`). This crate is pure: no AWS, no SQL, no I/O.
//!
//! # Layout
//! - [`envelope`] — the envelope every version shares, [`ChangeEvent`] (the decoded,
//!   validated, current-version form), [`decode`] and [`ChangeEvent::encode`].
//! - [`v1`], [`v2`] — the payload of each published schema version, and the upcast
//!   from v1 to v2.
//! - [`rank`] — [`Rank`], the ordering rule the store, verify and the bench share.
//! - [`number`] — DynamoDB numbers carried as decimal strings, never through `f64`.
//! - [`error`] — [`DecodeError`], with a stable reason code for parking.
//! - [`schema`] — the JSON Schema of each version, generated from these types and
//!   checked in; a test fails if the files and the code disagree.
//! - [`entity`] — contracts declared in files (`contracts/entities/*.toml`): versions,
//!   fields, upcasts, the lock of published versions. The profile is declared there too;
//!   the coded types above remain the reference until the core reads declarations.
//!
//! # Ordering
//! An event's place in its key's history is its [`Position`]: `(generation, version)`,
//! compared lexicographically, with a delete ranking above an upsert of the same
//! position, and of two copies of one change the richer schema version above the poorer
//! (see [`Rank`]). `generation` is the item's `created_at` in microseconds since the Unix
//! epoch, so a deleted and re-created item (whose version counter restarts) starts a
//! new, higher generation and wins over the tombstone of the old one; `version` is the
//! item's own counter, which the profile service increments on every write.

pub mod entity;
pub mod envelope;
pub mod error;
pub mod number;
pub mod rank;
pub mod schema;
pub mod v1;
pub mod v2;

pub use envelope::{
    Change, ChangeEvent, DeleteReason, EventType, Position, SchemaVersion, Source, decode,
};
pub use error::{DecodeError, InvalidEvent};
pub use number::DdbNumber;
pub use rank::Rank;
pub use v2::{Consents, Profile};

/// The newest schema version this build understands and publishes by default.
pub const CURRENT_SCHEMA_VERSION: SchemaVersion = SchemaVersion::V2;
