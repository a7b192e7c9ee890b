//! Typed settings, read once at start from flags or their environment variables.
//!
//! Every flag is mirrored by an environment variable (`env = "…"`), so the same binary
//! is configured by flags on a laptop and by the environment in a container or Lambda.
//! A bad value stops the process at start with one line naming the setting.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use url::Url;

/// Command line of the `subscriber` binary.
#[derive(Debug, Parser)]
#[command(
    name = "subscriber",
    version,
    about = "Applies profile change events from SQS to the PostgreSQL analytics store.",
    after_help = "Logging: RUST_LOG sets the level filter (tracing EnvFilter syntax, \
                  e.g. `info,subscriber=debug`; default: info).\n\
                  Is the analytics store in sync, what is parked: `replay status`."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: runtime::telemetry::LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What the binary does.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start and matched at once; boxing `Run` would save nothing"
)]
pub enum Command {
    /// Receive from the queue and apply to the analytics store until SIGTERM or SIGINT,
    /// then finish the batches in flight and exit 0.
    Run(RunConfig),
    /// Apply the analytics store's pending migrations and exit.
    Migrate(MigrateConfig),
}

/// The database connection setting shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL (`postgres://user:password@host:5432/db`). Required.
    /// A secret: its password is never logged or shown.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: DatabaseUrl,

    /// Connect to a PostgreSQL host that is not loopback without verifying its
    /// certificate, i.e. with any `sslmode` but `verify-full` or `verify-ca` (sqlx's
    /// default, `prefer`, checks nothing and falls back to plain text): anyone on the
    /// path can read or alter the traffic. Without it the program refuses to start.
    /// Logged at WARN on every start. Default: false.
    #[arg(long, env = ALLOW_INSECURE_DB_TLS_ENV, value_name = "BOOL", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_database_tls: bool,
}

/// The queue the subscriber consumes and its DLQ: `subscriber run`'s settings, which
/// `replay status` reads under the same names.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// URL of the SQS queue the subscriber consumes. Required.
    #[arg(long, env = "SUBSCRIBER_QUEUE_URL", value_name = "URL", value_parser = runtime::cli::parse_http_url)]
    pub queue_url: Url,

    /// URL of the dead-letter queue that undecodable or refused messages are parked in.
    /// Default: the queue's RedrivePolicy target; the subscriber refuses to start if
    /// there is neither.
    #[arg(long, env = "SUBSCRIBER_DLQ_URL", value_name = "URL", value_parser = runtime::cli::parse_http_url)]
    pub dlq_url: Option<Url>,
}

/// The database settings of `subscriber-lambda`: the URL itself, or (deployed) the ARN
/// of the Secrets Manager secret that holds it, so that no password sits in the
/// function's environment.
#[derive(Debug, Clone, Args)]
pub struct LambdaDatabaseArgs {
    /// PostgreSQL connection URL (`postgres://user:password@host:5432/db`). Required
    /// unless SUBSCRIBER_DATABASE_SECRET_ARN is set. A secret: never logged or shown.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        required_unless_present = "database_secret_arn"
    )]
    pub database_url: Option<DatabaseUrl>,

    /// ARN of the Secrets Manager secret holding the connection URL (its SecretString
    /// is the URL, or JSON with the URL under `url`). Read at cold start, and again
    /// when PostgreSQL refuses the credentials (a rotation needs no redeploy).
    #[arg(long, env = "SUBSCRIBER_DATABASE_SECRET_ARN", value_name = "ARN",
          value_parser = parse_secret_arn)]
    pub database_secret_arn: Option<String>,

    /// As `subscriber run --allow-insecure-database-tls`. Default: false.
    #[arg(long, env = ALLOW_INSECURE_DB_TLS_ENV, value_name = "BOOL", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_database_tls: bool,
}

impl LambdaDatabaseArgs {
    /// Refuses both a URL and a secret: which one is meant would be a guess.
    ///
    /// # Errors
    /// The one line to print before exiting with status 2.
    pub fn validate(&self) -> Result<(), String> {
        if self.database_url.is_some() && self.database_secret_arn.is_some() {
            return Err("error: both DATABASE_URL (--database-url) and \
                        SUBSCRIBER_DATABASE_SECRET_ARN (--database-secret-arn) are set: keep one"
                .to_owned());
        }
        Ok(())
    }
}

fn parse_secret_arn(s: &str) -> Result<String, String> {
    let mut parts = s.splitn(7, ':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.nth(2),
        parts.next(),
    ) {
        (Some("arn"), Some(_), Some("secretsmanager"), Some("secret"), Some(name))
            if !name.is_empty() =>
        {
            Ok(s.to_owned())
        }
        _ => Err(
            "not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
                .to_owned(),
        ),
    }
}

/// The environment variable of `--allow-insecure-database-tls`.
pub(crate) const ALLOW_INSECURE_DB_TLS_ENV: &str = "SUBSCRIBER_ALLOW_INSECURE_DB_TLS";

impl DatabaseArgs {
    /// [`check_database_tls`] of these settings.
    ///
    /// # Errors
    /// The one line to print before exiting with status 2.
    pub fn check_tls(&self) -> Result<DatabaseTls, String> {
        check_database_tls(&self.database_url, self.allow_insecure_database_tls)
    }
}

/// How a database connection's TLS stands against the policy (see [`database_tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTls {
    /// `sslmode=verify-full` or `verify-ca`: the server's certificate is checked.
    Verified,
    /// A loopback address, `localhost` or a Unix socket: no network to protect.
    Loopback,
    /// Unverified to a remote host, allowed by `--allow-insecure-database-tls`.
    InsecureAllowed {
        host: String,
        ssl_mode: &'static str,
    },
}

/// Why the database connection's TLS is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DatabaseTlsError {
    #[error(
        "DATABASE_URL (--database-url) connects to {host} with sslmode={ssl_mode}, which does not \
         verify the server's certificate: add sslmode=verify-full (and sslrootcert=CA file) to \
         the URL, or set {ALLOW_INSECURE_DB_TLS_ENV}=true (--allow-insecure-database-tls) to \
         accept an unverified connection"
    )]
    Unverified {
        host: String,
        ssl_mode: &'static str,
    },
}

/// The name of an `sslmode`, as the URL spells it.
fn ssl_mode_name(mode: sqlx::postgres::PgSslMode) -> &'static str {
    use sqlx::postgres::PgSslMode;
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Whether `host` names this machine: `localhost`, or a loopback address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// PURE: the TLS policy. A connection to another machine must verify the server's
/// certificate (`sslmode=verify-full` or `verify-ca`) unless `allow_insecure`.
///
/// # Errors
/// [`DatabaseTlsError::Unverified`] naming the host and the mode.
pub(crate) fn database_tls(
    host: &str,
    unix_socket: bool,
    ssl_mode: sqlx::postgres::PgSslMode,
    allow_insecure: bool,
) -> Result<DatabaseTls, DatabaseTlsError> {
    use sqlx::postgres::PgSslMode;
    if matches!(ssl_mode, PgSslMode::VerifyFull | PgSslMode::VerifyCa) {
        return Ok(DatabaseTls::Verified);
    }
    if unix_socket || is_loopback_host(host) {
        return Ok(DatabaseTls::Loopback);
    }
    let ssl_mode = ssl_mode_name(ssl_mode);
    if allow_insecure {
        return Ok(DatabaseTls::InsecureAllowed {
            host: host.to_owned(),
            ssl_mode,
        });
    }
    Err(DatabaseTlsError::Unverified {
        host: host.to_owned(),
        ssl_mode,
    })
}

/// Applies [`database_tls`] to the URL as sqlx reads it (with `PGSSLMODE`, `PGHOST`…
/// from the environment), and logs an allowed insecure connection at WARN.
///
/// # Errors
/// The one line to print before exiting with status 2.
pub fn check_database_tls(url: &DatabaseUrl, allow_insecure: bool) -> Result<DatabaseTls, String> {
    let options: sqlx::postgres::PgConnectOptions = url
        .expose_secret()
        .parse()
        .map_err(|e| format!("error: invalid value for --database-url (env DATABASE_URL): {e}"))?;
    let decision = database_tls(
        options.get_host(),
        options.get_socket().is_some(),
        options.get_ssl_mode(),
        allow_insecure,
    )
    .map_err(|e| format!("error: {e}"))?;
    if let DatabaseTls::InsecureAllowed { host, ssl_mode } = &decision {
        tracing::warn!(
            host,
            ssl_mode,
            setting = ALLOW_INSECURE_DB_TLS_ENV,
            "INSECURE: the database connection does not verify the server's certificate; \
             anyone on the network path can read or alter it."
        );
    }
    Ok(decision)
}

/// Settings of `subscriber migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub entity: crate::entity::EntityArgs,
}

/// Settings of `subscriber run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub queues: QueueArgs,

    #[command(flatten)]
    pub topic: crate::envelope::TopicCheck,

    #[command(flatten)]
    pub entity: crate::entity::EntityArgs,

    /// Concurrent receive loops, each with at most one batch in flight. Default: 4.
    #[arg(
        long,
        env = "SUBSCRIBER_WORKERS",
        value_name = "N",
        default_value = "4"
    )]
    pub workers: NonZeroUsize,

    /// Messages asked for per ReceiveMessage call, 1 to 10 (the SQS limit). Default: 10.
    #[arg(long, env = "SUBSCRIBER_MAX_MESSAGES", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    pub max_messages: u8,

    /// Long-poll wait per ReceiveMessage call, in seconds, 0 to 20 (the SQS limit).
    /// Default: 20.
    #[arg(long, env = "SUBSCRIBER_WAIT_TIME_SECS", value_name = "SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u8).range(0..=20))]
    pub wait_time_secs: u8,

    /// Most messages one worker applies in one transaction. When a worker is behind
    /// (see --fill-wait-ms) and a receive comes back full, it receives again at once
    /// until it holds this many or --batch-window-ms has passed; a receive that is not
    /// full ends the gathering. One commit then covers up to this many events. 1 to
    /// 1000. Default: 100.
    #[arg(long, env = "SUBSCRIBER_BATCH_MAX_MESSAGES", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_max_messages: u16,

    /// Longest time, in milliseconds, a worker spends gathering more messages after a
    /// full receive, 0 to 1000 (0: one receive per transaction). It bounds the latency
    /// the gathering adds; the first messages' visibility timeout runs meanwhile.
    /// Default: 50.
    #[arg(long, env = "SUBSCRIBER_BATCH_WINDOW_MS", value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub batch_window_ms: u16,

    /// Longest wait, in milliseconds, between a caught-up worker's receives, so that
    /// each comes back full: the wait is what the measured arrival rate needs to queue
    /// a full receive for every worker (workers × max-messages ÷ rate), at most this.
    /// Fewer ReceiveMessage and DeleteMessageBatch requests (SQS bills per request) for
    /// at most this much added latency. A worker whose oldest message waited more than
    /// twice this (at least 500 ms) is behind: it does not wait, and gathers up to
    /// --batch-max-messages. 0 to 5000 (0: never wait). Default: 250.
    #[arg(long, env = "SUBSCRIBER_FILL_WAIT_MS", value_name = "MS", default_value_t = 250,
          value_parser = clap::value_parser!(u16).range(0..=5000))]
    pub fill_wait_ms: u16,

    /// Maximum PostgreSQL connections in the pool, at least workers + 1 (a smaller pool
    /// is refused at start). Default: workers + 1 (one per batch in flight, one spare
    /// for isolation and migrations).
    #[arg(long, env = "SUBSCRIBER_DB_MAX_CONNECTIONS", value_name = "N")]
    pub db_max_connections: Option<NonZeroU32>,

    /// Apply pending migrations before consuming (true/false). Default: false.
    #[arg(long, env = "SUBSCRIBER_MIGRATE_ON_START", value_name = "BOOL", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub migrate_on_start: bool,

    #[command(flatten)]
    pub ops: runtime::OpsArgs,

    #[command(flatten)]
    pub aws: runtime::aws::AwsArgs,
}

impl RunConfig {
    /// Checks the settings that depend on one another.
    ///
    /// # Errors
    /// The one line to print before exiting with status 2: a pool smaller than
    /// `workers + 1` would leave a worker waiting for a connection while another
    /// isolates a batch (or the readiness probe holds one).
    pub fn validate(&self) -> Result<(), String> {
        let needed = u32::try_from(self.workers.get()).map_or(u32::MAX, |w| w.saturating_add(1));
        match self.db_max_connections {
            Some(n) if n.get() < needed => Err(format!(
                "error: invalid value {n} for --db-max-connections (env \
                 SUBSCRIBER_DB_MAX_CONNECTIONS): below workers + 1 = {needed} (SUBSCRIBER_WORKERS \
                 = {}); raise it or lower the workers",
                self.workers
            )),
            _ => Ok(()),
        }
    }

    /// The pool size: the setting, or one connection per worker plus one.
    pub fn db_max_connections(&self) -> u32 {
        self.db_max_connections.map_or_else(
            || u32::try_from(self.workers.get()).map_or(u32::MAX, |w| w.saturating_add(1)),
            NonZeroU32::get,
        )
    }
}

impl RunConfig {
    /// Logs the effective settings on one line, the database password redacted.
    pub fn log_settings(&self) {
        tracing::info!(
            database_url = %self.database.database_url,
            queue_url = %self.queues.queue_url,
            dlq_url = self.queues.dlq_url.as_ref().map_or("(from RedrivePolicy)", Url::as_str),
            workers = self.workers.get(),
            max_messages = self.max_messages,
            wait_time_secs = self.wait_time_secs,
            batch_max_messages = self.batch_max_messages,
            batch_window_ms = self.batch_window_ms,
            fill_wait_ms = self.fill_wait_ms,
            db_max_connections = self.db_max_connections(),
            migrate_on_start = self.migrate_on_start,
            metrics_addr = ?self.ops.metrics_addr,
            "Subscriber starting."
        );
    }
}

/// Settings of `subscriber-lambda`, from its function's environment (flags mirror them
/// for local runs). The queue is the event-source mapping's; the DLQ is named here
/// because a Lambda parks without reading the queue's RedrivePolicy.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "subscriber-lambda",
    version,
    about = "AWS Lambda handler: SQS batches → the PostgreSQL analytics store, with partial batch responses."
)]
pub struct LambdaConfig {
    #[command(flatten)]
    pub database: LambdaDatabaseArgs,

    /// URL of the dead-letter queue that undecodable or refused messages are parked in.
    /// Required.
    #[arg(long, env = "SUBSCRIBER_DLQ_URL", value_name = "URL", value_parser = runtime::cli::parse_http_url)]
    pub dlq_url: Url,

    #[command(flatten)]
    pub topic: crate::envelope::TopicCheck,

    #[command(flatten)]
    pub entity: crate::entity::EntityArgs,

    /// URL of the queue the event-source mapping reads: a message that failed
    /// transiently is delayed there (`ChangeMessageVisibility`, growing with its receive
    /// count) before it is reported. Default: resolved from the records'
    /// `eventSourceARN` with `GetQueueUrl`.
    #[arg(long, env = "SUBSCRIBER_QUEUE_URL", value_name = "URL", value_parser = runtime::cli::parse_http_url)]
    pub queue_url: Option<Url>,

    /// PostgreSQL connections of one execution environment (one invocation at a time).
    /// Default: 2 (one for the batch, one for isolating a refused event).
    #[arg(
        long,
        env = "SUBSCRIBER_DB_MAX_CONNECTIONS",
        value_name = "N",
        default_value = "2"
    )]
    pub db_max_connections: NonZeroU32,

    /// Milliseconds kept before the invocation's deadline: work stops then and what is
    /// unsettled is reported for retry. Default: 2000.
    #[arg(long = "deadline-margin-ms", env = "TRIBUTARY_LAMBDA_DEADLINE_MARGIN_MS",
          value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_margin_ms: u64,

    #[command(flatten)]
    pub log: runtime::telemetry::LogArgs,

    #[command(flatten)]
    pub aws: runtime::aws::AwsArgs,
}

/// A PostgreSQL connection URL: a secret. `Debug` and `Display` show it with the
/// password replaced; [`DatabaseUrl::expose_secret`] is the only way to the original.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

/// Why a `DATABASE_URL` is refused. Never carries the value, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("not a URL: {0}")]
    NotAUrl(url::ParseError),
    #[error("scheme must be postgres or postgresql")]
    WrongScheme,
    /// sqlx would ignore the parameter and log it with its value, which may be a secret.
    #[error("unknown query parameter {key:?} (accepted: {})", ACCEPTED_PARAMETERS.join(", "))]
    UnknownParameter { key: String },
}

/// The query parameters sqlx-postgres 0.9 reads from a URL (`PgConnectOptions` parsing),
/// besides `options[NAME]`. It logs any other with its value, so they are refused.
pub(crate) const ACCEPTED_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Query parameters whose value is a secret.
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// PostgreSQL session settings of the consumer's connections.
/// <https://www.postgresql.org/docs/current/runtime-config-client.html>
pub const SESSION_SETTINGS: [(&str, &str); 2] = [
    // A statement stuck on a lock or a sick server fails (57014, retried) instead of
    // holding a worker, and shutdown, forever.
    ("statement_timeout", "30s"),
    // A connection lost between BEGIN and COMMIT releases its locks.
    ("idle_in_transaction_session_timeout", "60s"),
];

impl DatabaseUrl {
    /// The URL with its password, to connect with. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The URL with any password (in the authority or a `password=` or `sslpassword=`
    /// query parameter) replaced by `REDACTED`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// The connect options of the consumer's pool: the URL's, plus
    /// [`SESSION_SETTINGS`].
    ///
    /// # Errors
    /// sqlx refuses the URL (a bad `sslmode` or port, say).
    pub fn consumer_connect_options(
        &self,
    ) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        let options: sqlx::postgres::PgConnectOptions = self.0.parse()?;
        Ok(options.options(SESSION_SETTINGS))
    }
}

fn redact(url: &str) -> String {
    let Ok(mut url) = Url::parse(url) else {
        return "<unparseable>".to_owned();
    };
    if url.password().is_some() {
        // Fails only for URLs that cannot have a password, which this one has.
        let _ = url.set_password(Some("REDACTED"));
    }
    if url
        .query_pairs()
        .any(|(k, _)| SECRET_PARAMETERS.contains(&k.as_ref()))
    {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMETERS.contains(&k.as_ref()) {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl FromStr for DatabaseUrl {
    type Err = DatabaseUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s).map_err(DatabaseUrlError::NotAUrl)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(DatabaseUrlError::WrongScheme);
        }
        if let Some((key, _)) = url.query_pairs().find(|(key, _)| {
            !(ACCEPTED_PARAMETERS.contains(&key.as_ref())
                || key.starts_with("options[") && key.ends_with(']'))
        }) {
            return Err(DatabaseUrlError::UnknownParameter {
                key: key.into_owned(),
            });
        }
        // Keep the string as given: sqlx reads it, and re-serialising could change it.
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn database_url_redacts_its_password_everywhere() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/analytics".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:REDACTED@db:5432/analytics");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            url.expose_secret(),
            "postgres://app:s3cret@db:5432/analytics"
        );

        let in_query: DatabaseUrl = "postgresql://db/analytics?user=app&password=s3cret"
            .parse()
            .unwrap();
        assert!(!in_query.to_string().contains("s3cret"));
        assert!(in_query.to_string().contains("user=app"));
    }

    #[test]
    fn redaction_masks_the_ssl_key_password_too() {
        let shown = redact("postgres://db/analytics?sslkey=/k.pem&sslpassword=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslpassword=REDACTED"), "{shown}");
    }

    #[test]
    fn an_unknown_query_parameter_is_refused_naming_the_key_not_the_value() {
        let err = "postgres://db/analytics?sslmode=require&sslpassword=s3cret"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert_eq!(
            err,
            DatabaseUrlError::UnknownParameter {
                key: "sslpassword".into()
            }
        );
        assert!(err.to_string().contains("sslpassword"));
        assert!(!err.to_string().contains("s3cret"));

        let err = Cli::try_parse_from([
            "subscriber",
            "migrate",
            "--database-url",
            "postgres://u@h/db?pasword=s3cret",
        ])
        .unwrap_err();
        let line = runtime::cli::one_line(&err, &Cli::command());
        assert!(
            line.contains("pasword") && line.contains("DATABASE_URL"),
            "{line}"
        );
        assert!(!line.contains("s3cret"), "{line}");
    }

    #[test]
    fn the_parameters_sqlx_reads_are_accepted() {
        let url = "postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=/ca.pem\
                   &sslcert=/c.pem&sslkey=/k.pem&application_name=tributary\
                   &statement-cache-capacity=50&options[search_path]=analytics";
        assert!(url.parse::<DatabaseUrl>().is_ok());
    }

    #[test]
    fn consumer_connections_time_out_stuck_statements_and_transactions() {
        let url: DatabaseUrl = "postgres://u@h/db?options[search_path]=analytics"
            .parse()
            .unwrap();
        let options = url.consumer_connect_options().unwrap();
        let set = options.get_options().unwrap();
        assert!(set.contains("search_path=analytics"), "{set}");
        assert!(set.contains("statement_timeout=30s"), "{set}");
        assert!(
            set.contains("idle_in_transaction_session_timeout=60s"),
            "{set}"
        );
    }

    #[test]
    fn database_url_without_password_is_shown_as_is() {
        let url: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/postgres"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
    }

    #[test]
    fn database_url_must_be_postgres() {
        assert_eq!(
            "mysql://u:p@h/db".parse::<DatabaseUrl>(),
            Err(DatabaseUrlError::WrongScheme)
        );
    }

    fn run(args: &[&str]) -> Result<RunConfig, clap::Error> {
        let mut argv = vec![
            "subscriber",
            "run",
            "--database-url",
            "postgres://u:pw@h/db",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(config) => config,
            Command::Migrate(_) => unreachable!("parsed run"),
        })
    }

    #[test]
    fn run_defaults_follow_the_documentation() {
        let config = run(&["--queue-url", "http://127.0.0.1:4566/000000000000/q"]).unwrap();
        assert_eq!(config.workers.get(), 4);
        assert_eq!(config.max_messages, 10);
        assert_eq!(config.wait_time_secs, 20);
        assert_eq!(config.db_max_connections(), 5);
        assert!(!config.migrate_on_start);
        assert!(config.queues.dlq_url.is_none());
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_the_environment_variable() {
        let q = "http://127.0.0.1:4566/000000000000/q";
        for (args, env) in [
            (
                vec!["--queue-url", q, "--max-messages", "11"],
                "SUBSCRIBER_MAX_MESSAGES",
            ),
            (
                vec!["--queue-url", q, "--wait-time-secs", "21"],
                "SUBSCRIBER_WAIT_TIME_SECS",
            ),
            (
                vec!["--queue-url", q, "--workers", "0"],
                "SUBSCRIBER_WORKERS",
            ),
            (vec!["--queue-url", "not a url"], "SUBSCRIBER_QUEUE_URL"),
        ] {
            let err = run(&args).unwrap_err();
            let line = runtime::cli::one_line(&err, &Cli::command());
            assert!(line.contains(env), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_bad_database_url_is_reported_without_its_value() {
        let err = Cli::try_parse_from([
            "subscriber",
            "migrate",
            "--database-url",
            "mysql://u:s3cret@h/db",
        ])
        .unwrap_err();
        let line = runtime::cli::one_line(&err, &Cli::command());
        assert!(line.contains("DATABASE_URL"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
    }

    #[test]
    fn migrate_on_start_accepts_a_bare_flag_and_booleans() {
        let q = "http://127.0.0.1:4566/000000000000/q";
        assert!(
            run(&["--queue-url", q, "--migrate-on-start"])
                .unwrap()
                .migrate_on_start
        );
        assert!(
            run(&["--queue-url", q, "--migrate-on-start=true"])
                .unwrap()
                .migrate_on_start
        );
        assert!(
            !run(&["--queue-url", q, "--migrate-on-start=false"])
                .unwrap()
                .migrate_on_start
        );
    }
}

#[cfg(test)]
mod tls_and_pool_tests {
    use sqlx::postgres::PgSslMode;

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_remote_host_without_certificate_verification_is_refused_naming_the_fix() {
        for mode in [
            PgSslMode::Disable,
            PgSslMode::Allow,
            PgSslMode::Prefer,
            PgSslMode::Require,
        ] {
            let err = database_tls("db.internal", false, mode, false).unwrap_err();
            let line = err.to_string();
            assert!(line.contains("db.internal"), "{line}");
            assert!(line.contains("sslmode=verify-full"), "{line}");
            assert!(line.contains(ALLOW_INSECURE_DB_TLS_ENV), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn verified_loopback_and_allowed_connections_pass() {
        assert_eq!(
            database_tls("db.internal", false, PgSslMode::VerifyFull, false),
            Ok(DatabaseTls::Verified)
        );
        assert_eq!(
            database_tls("db.internal", false, PgSslMode::VerifyCa, false),
            Ok(DatabaseTls::Verified)
        );
        for host in [
            "127.0.0.1",
            "127.3.2.1",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
        ] {
            assert_eq!(
                database_tls(host, false, PgSslMode::Prefer, false),
                Ok(DatabaseTls::Loopback),
                "{host}"
            );
        }
        assert_eq!(
            database_tls("localhost", true, PgSslMode::Disable, false),
            Ok(DatabaseTls::Loopback)
        );
        assert_eq!(
            database_tls("10.0.0.5", false, PgSslMode::Require, true),
            Ok(DatabaseTls::InsecureAllowed {
                host: "10.0.0.5".into(),
                ssl_mode: "require"
            })
        );
    }

    #[test]
    fn the_url_is_checked_as_sqlx_reads_it_with_its_host_parameter() {
        let url: DatabaseUrl = "postgres://u:pw@127.0.0.1/db?host=db.example.com"
            .parse()
            .unwrap();
        let line = check_database_tls(&url, false).unwrap_err();
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains("db.example.com"), "{line}");
        assert!(line.contains("sslmode=prefer"), "{line}");
        assert!(!line.contains("pw"), "{line}");
        let url: DatabaseUrl = "postgres://u@db.example.com/db?sslmode=verify-full"
            .parse()
            .unwrap();
        assert_eq!(check_database_tls(&url, false), Ok(DatabaseTls::Verified));
    }

    #[test]
    fn the_escape_hatch_is_a_flag_and_an_environment_variable() {
        let cli = Cli::try_parse_from([
            "subscriber",
            "migrate",
            "--database-url",
            "postgres://u@db.example.com/db",
            "--allow-insecure-database-tls",
        ])
        .unwrap();
        let Command::Migrate(config) = cli.command else {
            panic!("parsed migrate");
        };
        assert!(config.database.allow_insecure_database_tls);
        let arg = Cli::command()
            .find_subcommand("run")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_id() == "allow_insecure_database_tls")
            .unwrap()
            .get_env()
            .map(|e| e.to_string_lossy().into_owned());
        assert_eq!(arg.as_deref(), Some(ALLOW_INSECURE_DB_TLS_ENV));
    }

    fn run(args: &[&str]) -> RunConfig {
        let mut argv = vec![
            "subscriber",
            "run",
            "--database-url",
            "postgres://u@127.0.0.1/db",
            "--queue-url",
            "http://127.0.0.1:4566/000000000000/q",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(config) => config,
            Command::Migrate(_) => unreachable!("parsed run"),
        }
    }

    #[test]
    fn a_pool_smaller_than_the_workers_plus_one_is_refused_in_one_line() {
        let line = run(&["--workers", "4", "--db-max-connections", "4"])
            .validate()
            .unwrap_err();
        assert!(line.contains("SUBSCRIBER_DB_MAX_CONNECTIONS"), "{line}");
        assert!(line.contains("workers + 1 = 5"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(
            run(&["--workers", "4", "--db-max-connections", "5"])
                .validate()
                .is_ok()
        );
        assert!(run(&["--workers", "4"]).validate().is_ok());
    }

    fn lambda(args: &[&str]) -> Result<LambdaConfig, clap::Error> {
        let mut argv = vec![
            "subscriber-lambda",
            "--dlq-url",
            "http://127.0.0.1:4566/000000000000/dlq",
        ];
        argv.extend_from_slice(args);
        LambdaConfig::try_parse_from(argv)
    }

    #[test]
    fn the_lambda_takes_the_url_or_a_secret_arn_and_not_both() {
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:tributary/db-AbCdEf";
        let config = lambda(&["--database-secret-arn", arn]).unwrap();
        assert_eq!(config.database.database_secret_arn.as_deref(), Some(arn));
        assert!(lambda(&["--database-url", "postgres://u@127.0.0.1/db"]).is_ok());
        if std::env::var_os("DATABASE_URL").is_none() {
            assert!(config.database.database_url.is_none());
            assert!(config.database.validate().is_ok());
            assert!(lambda(&[]).is_err());
        }
        let both = lambda(&[
            "--database-url",
            "postgres://u@127.0.0.1/db",
            "--database-secret-arn",
            arn,
        ])
        .unwrap();
        let line = both.database.validate().unwrap_err();
        assert!(line.contains("DATABASE_URL") && line.contains("SUBSCRIBER_DATABASE_SECRET_ARN"));
        let err = lambda(&["--database-secret-arn", "tributary/db"]).unwrap_err();
        let line = runtime::cli::one_line(&err, &LambdaConfig::command());
        assert!(line.contains("SUBSCRIBER_DATABASE_SECRET_ARN"), "{line}");
    }
}
