//! `subscriber run` (consume until SIGTERM/SIGINT, drain, exit 0; a second signal exits
//! 130 at once) and `subscriber migrate`.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use subscriber::config::{Cli, Command};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_or_exit();
    subscriber::telemetry::init(cli.log_format);
    if let Err(line) = check_settings(&cli.command) {
        eprintln!("{line}");
        std::process::exit(2);
    }
    match cli.command {
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
            info!("Migrations applied.");
        }
        Command::Run(config) => {
            config.log_settings();
            config.topic.install();
            let aws = ops::aws::sdk_config(&config.aws).await;
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
            let shutdown =
                subscriber::worker::shutdown_on_signals().context("installing signal handlers")?;
            let sqs = aws_sdk_sqs::Client::new(&aws);
            if let Some(addr) = config.ops.metrics_addr {
                let probe = subscriber::readiness::probe_pool(options.clone());
                let endpoints =
                    subscriber::readiness::endpoints(probe, &sqs, config.queue_url.as_str());
                ops::server::serve(addr, endpoints, shutdown.clone())
                    .await
                    .with_context(|| format!("serving TRIBUTARY_METRICS_ADDR {addr}"))?;
            }
            subscriber::worker::run(&config, sqs, pool, shutdown).await?;
            info!("Subscriber stopped.");
        }
        Command::Status(config) => {
            let aws = ops::aws::sdk_config(&config.aws).await;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(config.database.database_url.expose_secret())
                .await
                .context("connecting to DATABASE_URL")?;
            let sqs = aws_sdk_sqs::Client::new(&aws);
            let status = tokio::time::timeout(
                subscriber::status::STATUS_TIMEOUT,
                subscriber::status::gather(&config, sqs, &pool),
            )
            .await
            .context("status took too long")?
            .map_err(|e| anyhow::anyhow!(subscriber::error_chain(&e)))?;
            if config.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", subscriber::status::render(&status));
            }
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
        Command::Status(c) => &c.database,
    };
    database.check_tls()?;
    if let Command::Run(config) = command {
        config.validate()?;
    }
    Ok(())
}
