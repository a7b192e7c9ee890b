//! `/readyz` of `subscriber run`: is the analytics store there, does the queue answer.
//!
//! The endpoint is unauthenticated, so its database check runs on a pool of its own
//! ([`probe_pool`]: one connection, named [`READINESS_APPLICATION_NAME`] in
//! `pg_stat_activity`), never on the workers': a flood of requests cannot take the
//! connections the workers apply with (which would fail their batches and open the
//! store gate). The server ([`runtime::server`]) also caches the verdict, so a flood runs
//! the checks at most once per [`runtime::server::READINESS_CACHE_TTL`].

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// `application_name` of the readiness probe's connection.
pub const READINESS_APPLICATION_NAME: &str = "tributary-subscriber-readyz";

/// The readiness probe's own pool: one connection, opened when first needed, waited for
/// no longer than a check may take.
pub fn probe_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(runtime::server::CHECK_TIMEOUT)
        .connect_lazy_with(options.application_name(READINESS_APPLICATION_NAME))
}

/// The operator endpoints: `/readyz` answers 200 only when PostgreSQL (the analytics
/// tables, through `probe_pool`) and the queue answer.
pub fn endpoints(
    probe_pool: PgPool,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> runtime::server::Endpoints {
    let sqs = sqs.clone();
    let queue_url = queue_url.to_owned();
    runtime::server::Endpoints {
        registry: Arc::clone(&crate::metrics::metrics().registry),
        checks: vec![
            runtime::server::Check::new("database", move || {
                let pool = probe_pool.clone();
                Box::pin(async move {
                    crate::apply::probe(&pool)
                        .await
                        .map_err(|e| runtime::report::error_chain(&e))
                })
            }),
            runtime::server::Check::new("queue", move || {
                let sqs = sqs.clone();
                let queue_url = queue_url.clone();
                Box::pin(async move {
                    sqs.get_queue_attributes()
                        .queue_url(queue_url)
                        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| runtime::report::error_chain(&e))
                })
            }),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_pool_is_one_named_connection_of_its_own() {
        let options: PgConnectOptions = "postgres://u@127.0.0.1:9/db".parse().unwrap();
        let pool = probe_pool(options);
        assert_eq!(pool.options().get_max_connections(), 1);
        assert_eq!(
            pool.connect_options().get_application_name(),
            Some(READINESS_APPLICATION_NAME)
        );
    }
}
