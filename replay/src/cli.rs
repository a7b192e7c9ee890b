//! Command line of `replay`. Every flag has an environment variable, shown in `--help`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
/// The analytics store, as `verify` and `status` reach it: the subscriber's own
/// settings, under the same names.
pub use subscriber::config::DatabaseArgs;
use subscriber::status::Url;

use crate::dest::Target;
use crate::dlq::Method;

/// The operator's tool for tributary: is the analytics store in sync and what is
/// parked (status), snapshot a table into the pipeline, return parked messages from a
/// DLQ, publish again what the publisher parked, verify the analytics store against the
/// source and repair drift.
///
/// AWS settings come from the standard chain (AWS_REGION, AWS_PROFILE, credentials,
/// AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_DYNAMODB / _SNS / _SQS for emulators).
/// Logs go to standard error (RUST_LOG filters, default info); results to standard out.
///
/// Exit status: 0 success (verify: in sync; status: shown, in sync or not); 1 finished
/// with failures (verify: drift found or left; status: SQS or PostgreSQL could not be
/// read); 2 a bad flag or setting (nothing was sent); 130 interrupted (a snapshot saved
/// its state: run the same command again to resume).
#[derive(Debug, Parser)]
#[command(name = "replay", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: runtime::telemetry::LogArgs,

    /// Print the final report as JSON on standard out (for scripts).
    #[arg(long, env = "REPLAY_JSON", global = true)]
    pub json: bool,

    #[command(flatten)]
    pub aws: runtime::aws::AwsArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One screen: is the analytics store in sync, how far behind, what is parked in
    /// the DLQ and why (queue, DLQ and failure-queue depths, a peek at the DLQ, the lag
    /// of the last applied changes). Reads only: DLQ messages are peeked and made
    /// visible again at once. Reads the subscriber's and the publisher's own settings
    /// (DATABASE_URL, SUBSCRIBER_QUEUE_URL…), so it runs as is in their environment.
    /// --json prints one JSON object for scripts.
    Status(StatusArgs),
    /// Backfill subscribers from the source table: a parallel Scan, each item sent as a
    /// `profile.snapshot` event with the item's version. Safe while live traffic flows
    /// (a snapshot never overwrites a newer change nor resurrects a deleted item) and
    /// resumable with --state-file.
    Snapshot(SnapshotArgs),
    /// Return parked messages from the DLQ to the main queue: bodies and attributes
    /// kept, deleted from the DLQ only after the main queue accepted them.
    Dlq(DlqArgs),
    /// Compare the source table with the analytics store; exit 1 with a summary and a
    /// sample of drifted keys when they differ. --repair re-emits events for exactly
    /// the drifted keys and checks them again.
    Verify(VerifyArgs),
    /// Publish again what the publisher could not: records parked in its failure queue
    /// (the item is re-read from the table) and batches the Lambda stream mapping wrote
    /// to its S3 on-failure destination (downloaded invocation records, re-published
    /// whole). A queue message is deleted only after its event was accepted; one that
    /// cannot be republished stays, its reason printed.
    Republish(RepublishArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["failure_queue_url", "invocation_records", "bucket"])))]
pub struct RepublishArgs {
    /// Source table (partition key `user_id`), read again for parked records.
    #[arg(long, env = "REPLAY_TABLE", value_name = "NAME")]
    pub table: String,

    /// Where the events go: the SNS topic (every subscriber, as live traffic) or one
    /// SQS queue URL.
    #[arg(long, env = "REPLAY_TO", value_name = "TOPIC_ARN|QUEUE_URL")]
    pub to: Target,

    /// The publisher's failure queue (PUBLISHER_FAILURE_QUEUE_URL) to drain.
    #[arg(long, env = "REPLAY_FAILURE_QUEUE_URL", value_name = "URL")]
    pub failure_queue_url: Option<String>,

    /// Invocation records from the stream mapping's S3 on-failure destination (JSON
    /// files, e.g. from `aws s3 sync s3://BUCKET/ DIR`); comma-separated or repeated.
    #[arg(
        long = "invocation-record",
        env = "REPLAY_INVOCATION_RECORDS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub invocation_records: Vec<PathBuf>,

    /// The stream mapping's S3 on-failure destination (the template's
    /// PublisherFailedBatchesBucketName): every invocation record in it is republished,
    /// and deleted once all its records were.
    #[arg(long, env = "REPLAY_FAILED_BATCHES_BUCKET", value_name = "NAME")]
    pub bucket: Option<String>,

    /// Only the bucket's keys under this prefix (e.g. `aws/lambda/<mapping-uuid>/`).
    #[arg(
        long,
        env = "REPLAY_BUCKET_PREFIX",
        default_value = "",
        value_name = "PREFIX"
    )]
    pub prefix: String,

    /// Address the bucket by path (http://endpoint/bucket), as emulators (moto,
    /// LocalStack) need; AWS itself takes the default virtual-hosted style.
    #[arg(long, env = "REPLAY_S3_PATH_STYLE")]
    pub s3_path_style: bool,

    /// Say what would be republished; send and delete nothing.
    #[arg(long, env = "REPLAY_DRY_RUN")]
    pub dry_run: bool,

    /// Schema version of the events sent.
    #[arg(long, env = "REPLAY_SCHEMA_VERSION", default_value = "2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub schema_version: u8,

    /// Seconds a received failure-queue message stays hidden while it is handled
    /// (1–43200).
    #[arg(long, env = "REPLAY_HOLD_SECS", default_value = "60", value_parser = clap::value_parser!(u64).range(1..=43_200))]
    pub hold_secs: u64,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Source table (partition key `user_id`).
    #[arg(long, env = "REPLAY_TABLE", value_name = "NAME")]
    pub table: String,

    /// Where the events go: an SNS topic ARN reaches every subscriber; an SQS queue URL
    /// reaches only that queue (backfill one subscriber without flooding the others).
    #[arg(long, env = "REPLAY_TO", value_name = "TOPIC_ARN|QUEUE_URL")]
    pub to: Target,

    /// Parallel scan segments (DynamoDB TotalSegments), 1–1000000.
    #[arg(long, env = "REPLAY_SEGMENTS", default_value = "4", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub segments: u32,

    /// Events per second, over all segments; unlimited when unset.
    #[arg(long, env = "REPLAY_RATE", value_name = "N")]
    pub rate: Option<NonZeroU32>,

    /// Items per Scan page (DynamoDB Limit); a 1 MB page when unset.
    #[arg(long, env = "REPLAY_PAGE_SIZE", value_name = "N")]
    pub page_size: Option<NonZeroU32>,

    /// State file for resuming: written after every page; an existing one (from a crash
    /// or Ctrl-C) is resumed if it is for the same --table, --to and --segments.
    #[arg(long, env = "REPLAY_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,

    /// Read and count, send nothing, write no state.
    #[arg(long, env = "REPLAY_DRY_RUN")]
    pub dry_run: bool,

    /// Schema version of the events sent (1 for subscribers not yet on version 2).
    #[arg(long, env = "REPLAY_SCHEMA_VERSION", default_value = "2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub schema_version: u8,

    /// Seconds between progress lines when standard error is not a terminal.
    #[arg(long, env = "REPLAY_PROGRESS_SECS", default_value = "5", value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The dead-letter queue to take messages from.
    #[arg(long, env = "REPLAY_DLQ_URL", value_name = "URL")]
    pub dlq_url: String,

    /// The main queue to return them to.
    #[arg(long, env = "REPLAY_QUEUE_URL", value_name = "URL")]
    pub queue_url: String,

    /// Move only messages parked for this reason (the `tributary-reason` attribute, e.g.
    /// apply_rejected); repeat for several. `none` selects messages without a reason
    /// (moved by the queue's own redrive policy). All when unset.
    #[arg(
        long = "reason",
        env = "REPLAY_REASONS",
        value_delimiter = ',',
        value_name = "REASON"
    )]
    pub reasons: Vec<String>,

    /// List what would move, move nothing.
    #[arg(long, env = "REPLAY_DRY_RUN")]
    pub dry_run: bool,

    /// Messages per second; unlimited when unset.
    #[arg(long, env = "REPLAY_RATE", value_name = "N")]
    pub rate: Option<NonZeroU32>,

    /// Move at most this many messages.
    #[arg(long, env = "REPLAY_MAX", value_name = "N")]
    pub max: Option<NonZeroUsize>,

    /// auto: SQS's StartMessageMoveTask when no filter, limit or dry run applies and the
    /// service offers it; loop: always receive → send → delete, printing each message.
    #[arg(long, env = "REPLAY_DLQ_METHOD", value_enum, default_value = "auto")]
    pub method: Method,

    /// Seconds the loop waits for DLQ messages it cannot receive (another consumer
    /// holds them invisible) before it stops and reports them as remaining (exit 1).
    /// Default: 60.
    #[arg(
        long,
        env = "REPLAY_DLQ_IN_FLIGHT_WAIT_SECS",
        value_name = "SECS",
        default_value_t = 60
    )]
    pub in_flight_wait_secs: u64,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Source table (partition key `user_id`).
    #[arg(long, env = "REPLAY_TABLE", value_name = "NAME")]
    pub table: String,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Re-emit events for exactly the drifted keys to this queue (the subscriber's),
    /// then wait for them to be in sync.
    #[arg(long, env = "REPLAY_REPAIR_QUEUE_URL", value_name = "QUEUE_URL")]
    pub repair: Option<String>,

    /// Seconds to wait before checking drifted keys again: a change still flowing
    /// through the pipeline is not drift.
    #[arg(long, env = "REPLAY_SETTLE_SECS", default_value = "5")]
    pub settle_secs: u64,

    /// Seconds to wait for repaired keys to come back in sync.
    #[arg(long, env = "REPLAY_REPAIR_TIMEOUT_SECS", default_value = "120")]
    pub repair_timeout_secs: u64,

    /// Drifted keys shown in the report.
    #[arg(long, env = "REPLAY_SAMPLE", default_value = "10")]
    pub sample: usize,

    /// Drifted keys held in memory for the re-check and the repair; drift beyond is
    /// counted only (repair it with `replay snapshot --to <queue>`).
    #[arg(long, env = "REPLAY_MAX_HELD", default_value = "100000")]
    pub max_held: NonZeroUsize,

    /// Items per Scan page (DynamoDB Limit); a 1 MB page when unset.
    #[arg(long, env = "REPLAY_PAGE_SIZE", value_name = "N")]
    pub page_size: Option<NonZeroU32>,

    /// Schema version of repair events.
    #[arg(long, env = "REPLAY_SCHEMA_VERSION", default_value = "2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub schema_version: u8,

    /// Seconds between progress lines when standard error is not a terminal.
    #[arg(long, env = "REPLAY_PROGRESS_SECS", default_value = "5", value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,
}

/// The settings of `replay status`. The queue URLs are the subscriber's and the
/// publisher's own variables, not REPLAY_* ones: the command runs in their environment.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub queues: subscriber::config::QueueArgs,

    /// URL of the publisher's failure queue (the publisher's setting), where it parks
    /// the records it could not publish: any message there means the analytics store
    /// is not in sync. Default: not read (the status then says it did not check).
    #[arg(long, env = "PUBLISHER_FAILURE_QUEUE_URL", value_name = "URL", value_parser = runtime::cli::parse_http_url)]
    pub failure_queue_url: Option<Url>,

    /// Minutes of history the lag summary covers, one line per minute (1–1440).
    /// Default: 5.
    #[arg(long, env = "REPLAY_WINDOW_MINUTES", value_name = "MINUTES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub window_minutes: u32,

    /// Most DLQ messages peeked to group the parked ones by reason (1–10000).
    /// Default: 100.
    #[arg(long, env = "REPLAY_PEEK", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub peek: u32,
}

impl StatusArgs {
    /// What [`subscriber::status::gather`] reads.
    pub fn options(&self) -> subscriber::status::Options {
        subscriber::status::Options {
            queue_url: self.queues.queue_url.clone(),
            dlq_url: self.queues.dlq_url.clone(),
            failure_queue_url: self.failure_queue_url.clone(),
            window_minutes: self.window_minutes,
            peek: usize::try_from(self.peek).expect("at most 10000 fits a usize"),
        }
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
    fn republish_needs_a_source_and_a_sane_hold() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let base = ["replay", "republish", "--table", "t", "--to", "http://q"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert!(parse(&base).is_err(), "no failure queue, bucket or file");
        assert!(
            parse(&with(&[
                "--failure-queue-url",
                "http://f",
                "--hold-secs",
                "0"
            ]))
            .is_err()
        );
        assert!(parse(&with(&["--bucket", "b", "--hold-secs", "soon"])).is_err());
        assert!(parse(&with(&["--failure-queue-url", "http://f"])).is_ok());
        assert!(parse(&with(&["--bucket", "b", "--s3-path-style"])).is_ok());
        assert!(parse(&with(&["--invocation-record", "a.json,b.json"])).is_ok());
    }

    /// `replay status --database-url … ARGS`: the global `--json` and the status args.
    fn status(args: &[&str]) -> Result<(bool, StatusArgs), clap::Error> {
        let argv = [
            &[
                "replay",
                "status",
                "--database-url",
                "postgres://u@127.0.0.1/db",
            ][..],
            args,
        ]
        .concat();
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Status(status) => Ok((cli.json, status)),
            _ => unreachable!("parsed status"),
        }
    }

    #[test]
    fn status_defaults_follow_the_documentation() {
        let (json, args) =
            status(&["--queue-url", "http://127.0.0.1:4566/000000000000/q"]).unwrap();
        assert!(!json);
        let options = args.options();
        assert_eq!(
            options.queue_url.as_str(),
            "http://127.0.0.1:4566/000000000000/q"
        );
        assert_eq!(options.dlq_url, None);
        assert_eq!(options.failure_queue_url, None);
        assert_eq!(options.window_minutes, 5);
        assert_eq!(options.peek, 100);
        assert!(!args.database.allow_insecure_database_tls);
    }

    #[test]
    fn status_takes_json_after_the_subcommand_and_its_queues_as_urls() {
        let q = "http://127.0.0.1:4566/000000000000/q";
        let (json, args) = status(&[
            "--queue-url",
            q,
            "--dlq-url",
            "http://127.0.0.1:4566/000000000000/dlq",
            "--failure-queue-url",
            "http://127.0.0.1:4566/000000000000/failures",
            "--window-minutes",
            "30",
            "--peek",
            "7",
            "--json",
        ])
        .unwrap();
        assert!(json);
        let options = args.options();
        assert_eq!(
            options.dlq_url.unwrap().as_str(),
            "http://127.0.0.1:4566/000000000000/dlq"
        );
        assert_eq!(
            options.failure_queue_url.unwrap().as_str(),
            "http://127.0.0.1:4566/000000000000/failures"
        );
        assert_eq!((options.window_minutes, options.peek), (30, 7));
        assert!(status(&[]).is_err(), "the queue is required");
        assert!(status(&["--queue-url", "queue please"]).is_err());
        assert!(status(&["--queue-url", "sqs://q"]).is_err());
        assert!(status(&["--queue-url", q, "--window-minutes", "0"]).is_err());
        assert!(status(&["--queue-url", q, "--window-minutes", "1441"]).is_err());
        assert!(status(&["--queue-url", q, "--peek", "0"]).is_err());
        assert!(status(&["--queue-url", q, "--peek", "10001"]).is_err());
    }

    #[test]
    fn every_status_flag_names_its_environment_variable() {
        let cli = Cli::command();
        let status = cli.find_subcommand("status").unwrap();
        let env = |id: &str| {
            status
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        for (id, var) in [
            ("database_url", "DATABASE_URL"),
            (
                "allow_insecure_database_tls",
                "SUBSCRIBER_ALLOW_INSECURE_DB_TLS",
            ),
            ("queue_url", "SUBSCRIBER_QUEUE_URL"),
            ("dlq_url", "SUBSCRIBER_DLQ_URL"),
            ("failure_queue_url", "PUBLISHER_FAILURE_QUEUE_URL"),
            ("window_minutes", "REPLAY_WINDOW_MINUTES"),
            ("peek", "REPLAY_PEEK"),
        ] {
            assert_eq!(env(id).as_deref(), Some(var), "--{id}");
        }
        for arg in status.get_arguments() {
            assert!(
                arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                "--{} has no help",
                arg.get_id()
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["replay", "snapshot", "--table", "t", "--to", "nowhere"]).is_err());
        assert!(
            parse(&[
                "replay", "snapshot", "--table", "t", "--to", "http://q", "--rate", "0"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "replay", "snapshot", "--table", "t", "--to", "http://q", "--rate", "fast"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "replay",
                "snapshot",
                "--table",
                "t",
                "--to",
                "http://q",
                "--segments",
                "0"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "replay", "snapshot", "--table", "t", "--to", "http://q", "--rate", "50"
            ])
            .is_ok()
        );
    }
}
