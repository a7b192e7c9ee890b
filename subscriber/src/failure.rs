//! PURE: what a failed apply means for the message, from the error's kind and its
//! SQLSTATE, never its text: retry later, retry and call an operator, or park the event.
//! The worker, the store gate and the Lambda handler all decide from this.

/// How a failed apply should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The database or the network is briefly unavailable (connection loss, failover,
    /// deadlock, serialization failure, resource exhaustion): retry the same batch later.
    Transient,
    /// The database refuses every batch alike (missing table or column, permissions,
    /// authentication, TLS, an internal error) or the schema drifted under us (a
    /// constraint violation: a new NOT NULL column, foreign key or unique index):
    /// retrying cannot succeed until an operator acts (runs the migrations, fixes
    /// grants or the constraint), but parking would dead-letter every good message in
    /// the meantime. So it is retried, and logged at ERROR. The worker does not take the
    /// code's word for whom to blame: before it retries or parks, it asks the store to
    /// accept a known-good event ([`crate::apply::probe_with_good_event`]).
    NeedsOperator,
    /// Something in this batch's data is refused (a data exception, a program limit):
    /// the same batch fails forever. Isolate the offending event and park it.
    Permanent,
}

/// Classifies a sqlx error by its kind and SQLSTATE; never by message text.
///
/// An error this function does not know is [`FailureKind::NeedsOperator`]: retried (a good
/// message is never parked because of a server problem we did not foresee) and logged
/// at ERROR. The queue's redrive policy still bounds the retries of a truly poisonous
/// message.
pub fn classify(err: &sqlx::Error) -> FailureKind {
    match err {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => FailureKind::Transient,
        // A value of this batch could not be encoded for the wire.
        sqlx::Error::Encode(_) => FailureKind::Permanent,
        // TLS (a certificate or trust-store problem), decoding, configuration, type
        // lookups: a setup problem, a bug or a schema drift, not this data.
        _ => FailureKind::NeedsOperator,
    }
}

/// Classifies a PostgreSQL SQLSTATE.
///
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
pub(crate) fn classify_sqlstate(code: &str) -> FailureKind {
    match code {
        // lock_not_available, query_canceled (statement timeout),
        // idle_in_transaction_session_timeout: the next attempt may well pass.
        "55P03" | "57014" | "25P03" => return FailureKind::Transient,
        _ => {}
    }
    match code.get(..2).unwrap_or("") {
        // connection exception; transaction rollback (serialization failure 40001,
        // deadlock 40P01); insufficient resources; operator intervention (admin or crash
        // shutdown, cannot connect now: a failover or restart); system (I/O) error.
        "08" | "40" | "53" | "57" | "58" => FailureKind::Transient,
        // data exception (bad text, out-of-range value); program limit exceeded (a value
        // too large to index): this event's data, whatever the schema.
        "22" | "54" => FailureKind::Permanent,
        // Integrity constraint violation (23502 NOT NULL, 23503 foreign key, 23505
        // unique, 23514 check, 23P01 exclusion): our events always carry every column
        // the migrations require, so this is a constraint added behind our back, and
        // it refuses good messages too. Parking would dead-letter all of them.
        // Syntax error or access rule violation (42P01 undefined table, 42703 undefined
        // column, 42501 insufficient privilege), invalid schema, invalid authorization,
        // internal error and anything else: the store, not the batch, needs fixing.
        _ => FailureKind::NeedsOperator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_class_and_code() {
        for transient in [
            "40001", "40P01", "57P01", "57P03", "08006", "53300", "55P03", "57014",
        ] {
            assert_eq!(
                classify_sqlstate(transient),
                FailureKind::Transient,
                "{transient}"
            );
        }
        for permanent in ["22P02", "22021", "22003", "54000"] {
            assert_eq!(
                classify_sqlstate(permanent),
                FailureKind::Permanent,
                "{permanent}"
            );
        }
        for operator in [
            "42P01", "42703", "42501", "3F000", "28P01", "XX000", "", "23502", "23503", "23505",
            "23514", "23P01",
        ] {
            assert_eq!(
                classify_sqlstate(operator),
                FailureKind::NeedsOperator,
                "{operator}"
            );
        }
    }

    #[test]
    fn lost_connections_and_pool_timeouts_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), FailureKind::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), FailureKind::Transient);
        assert!(crate::apply::ApplyError::Begin(sqlx::Error::PoolTimedOut).is_retryable());
    }

    #[test]
    fn a_tls_failure_needs_an_operator() {
        let tls = sqlx::Error::Tls("invalid peer certificate: UnknownIssuer".into());
        assert_eq!(classify(&tls), FailureKind::NeedsOperator);
        assert!(crate::apply::ApplyError::Begin(tls).is_retryable());
    }
}
