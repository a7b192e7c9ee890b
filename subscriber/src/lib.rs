//! The subscriber: SQS messages → change events → a transactional, version-guarded
//! apply to the PostgreSQL analytics store.
//!
//! Nothing is acknowledged before its effect is durable: a batch is applied and
//! committed in one transaction, and only then deleted from the queue. A message that
//! can never be applied is parked in the dead-letter queue with a reason; a transient
//! failure leaves the batch on the queue for a later, backed-off attempt.
//!
//! # Layout
//! - [`config`] — typed settings from flags and environment variables (`subscriber run`,
//!   `subscriber migrate`), the redacting [`config::DatabaseUrl`].
//! - [`mapping`] — PURE: the consumer's declared mapping (`mappings/subscriber/*.toml`):
//!   the contract version read, table and history table, field → column and SQL type,
//!   the delete policy; checked against the contract at start.
//! - [`table`] — SQL built once from a mapping: one history insert and one rank-guarded
//!   state upsert per batch, data only in typed bound arrays.
//! - [`entity`] — the entity this process applies (`--mapping`, or the built-in
//!   profile), and [`entity::decode_body`].
//! - [`envelope`] — PURE: an SQS body (raw delivery or SNS-wrapped) → a declared
//!   entity's [`contracts::entity::Event`].
//! - [`failure`] — PURE: a failed apply's [`failure::FailureKind`] from its SQLSTATE.
//! - [`apply`] — [`apply::ApplyReport`], [`apply::ApplyError`] and its retry
//!   classification, the store probes; and the hand-written profile apply, kept as the
//!   reference the declared [`table`] is tested against (and for the benches).
//! - [`queue`] — the SQS adapter: receive, batch delete, visibility changes, parking in
//!   the DLQ.
//! - [`parking`] — PURE: the attributes of a parked copy (reason, detail, source message
//!   id), fitted within the DLQ's message size.
//! - [`redrive`] — PURE: a queue's RedrivePolicy (its DLQ, its `maxReceiveCount`).
//! - [`gate`] — the circuit breaker that stops every receive loop while the database
//!   fails, and probes it.
//! - [`retry`] — PURE: the visibility delay of a message that failed transiently, a
//!   worker's pause, and when to park rather than let the redrive policy move a message.
//! - [`isolation`] — PURE: when a batch applied event by event extends its messages'
//!   visibility, or gives them back.
//! - [`batch`] — the batch core both modes share: decode, one transaction, what became
//!   of each message ([`batch::process_batch`]).
//! - [`worker`] — the container's receive loops, settling each batch on the queue, and
//!   graceful shutdown.
//! - [`metrics`] — the process's Prometheus metrics (served by `subscriber run`).
//! - [`readiness`] — `/readyz`'s checks, on a one-connection pool of their own.
//! - [`secret`] — the database URL from Secrets Manager (`subscriber-lambda`), re-read
//!   when PostgreSQL refuses the credentials.
//! - [`status`] — what `replay status` shows: is the analytics store in sync, what is
//!   parked and why.
//! - [`lambda`] — the `subscriber-lambda` handler: SQS event → [`batch::process_batch`]
//!   → partial batch response, with its own lenient event types and a lazily created
//!   pool per execution environment.
//! - [`MIGRATOR`] — the analytics store's migrations (`migrations/` at the workspace root).

pub mod apply;
pub mod batch;
pub mod config;
pub mod entity;
pub mod envelope;
pub mod failure;
pub mod gate;
pub mod isolation;
pub mod lambda;
pub mod mapping;
pub mod metrics;
pub mod pace;
pub mod parking;
pub mod queue;
pub mod readiness;
pub mod redrive;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod status;
pub mod table;
pub mod worker;

/// The analytics store's schema migrations, embedded at compile time.
///
/// Forward-only; applied by `subscriber migrate`, or on start with
/// `SUBSCRIBER_MIGRATE_ON_START=true`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
