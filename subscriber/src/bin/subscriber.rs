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
            let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let options = config
                .database
                .database_url
                .consumer_connect_options()
                .context("reading DATABASE_URL")?;
            // Lazy: a database that is down at start is retried behind the store gate.
            let pool = PgPoolOptions::new()
                .max_connections(config.db_max_connections())
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options);
            let shutdown =
                subscriber::worker::shutdown_on_signals().context("installing signal handlers")?;
            let sqs = aws_sdk_sqs::Client::new(&aws);
            subscriber::worker::run(&config, sqs, pool, shutdown).await?;
            info!("Subscriber stopped.");
        }
    }
    Ok(())
}
