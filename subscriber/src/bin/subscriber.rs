//! `subscriber run` (consume until SIGTERM/SIGINT, drain, exit 0; a second signal exits
//! 130 at once) and `subscriber migrate`. (The replication's status is `replay status`.)

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use runtime::shutdown::ShutdownNotes;
use sqlx::postgres::PgPoolOptions;
use subscriber::config::{Cli, Command};
use tracing::info;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = runtime::cli::parse_or_exit();
    runtime::telemetry::init(cli.log);
    if let Err(line) = check_settings(&cli.command) {
        runtime::cli::exit_bad_setting(&line);
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the error and its causes on one line.
            tracing::error!(error = format!("{e:#}"), "Subscriber failed.");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(config) => {
            let url = &config.database.database_url;
            info!(database_url = %url, "Applying migrations.");
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(url.expose_secret());
            let pool = pool.await.context("connecting to DATABASE_URL")?;
            subscriber::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            config.entity.install();
            let mapping = &subscriber::entity::Entity::current().mapping;
            let ran = subscriber::schema::migrate(&pool, mapping)
                .await
                .context("creating or extending the mapping's tables")?;
            for statement in &ran {
                info!(statement = %statement, "Applied.");
            }
            info!(entity = %mapping.entity, statements = ran.len(), "Migrations applied.");
        }
        Command::Run(config) => {
            config.log_settings();
            config.topic.install();
            config.entity.install();
            let aws = runtime::aws::sdk_config(&config.aws).await;
            let options = config
                .database
                .database_url
                .consumer_connect_options()
                .context("reading DATABASE_URL")?;
            // Lazy: a database that is down at start is retried behind the store gate.
            let pool = PgPoolOptions::new()
                .max_connections(config.db_max_connections())
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options.clone());
            let shutdown = runtime::shutdown::install(ShutdownNotes {
                draining: "Shutdown requested, finishing the batches in flight.",
                forced: "Second shutdown signal, exiting now; messages in flight come back after their visibility timeout.",
            });
            let sqs = aws_sdk_sqs::Client::new(&aws);
            if let Some(addr) = config.ops.metrics_addr {
                let probe = subscriber::readiness::probe_pool(options.clone());
                let endpoints =
                    subscriber::readiness::endpoints(probe, &sqs, config.queues.queue_url.as_str());
                runtime::server::serve(addr, endpoints, shutdown.clone())
                    .await
                    .with_context(|| format!("serving TRIBUTARY_METRICS_ADDR {addr}"))?;
            }
            subscriber::worker::run(&config, sqs, pool, shutdown).await?;
            info!("Subscriber stopped.");
        }
    }
    Ok(())
}

/// The checks clap cannot make: the database TLS policy (every subcommand) and the
/// pool size against the workers (`run`).
fn check_settings(command: &Command) -> Result<(), String> {
    let database = match command {
        Command::Migrate(c) => &c.database,
        Command::Run(c) => &c.database,
    };
    database.check_tls()?;
    if let Command::Run(config) = command {
        config.validate()?;
    }
    Ok(())
}
