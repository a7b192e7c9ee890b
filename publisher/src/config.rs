//! Typed settings of `publisher`, read once from flags or the environment.

use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, ValueEnum};
use contracts::SchemaVersion;

/// Where to start a shard that has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartPosition {
    /// The oldest record the stream still holds (up to 24 hours back).
    TrimHorizon,
    /// Only records written after the publisher starts.
    Latest,
}

/// A schema version a publisher can emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmitVersion {
    #[value(name = "1")]
    V1,
    #[value(name = "2")]
    V2,
}

impl From<EmitVersion> for SchemaVersion {
    fn from(v: EmitVersion) -> Self {
        match v {
            EmitVersion::V1 => SchemaVersion::V1,
            EmitVersion::V2 => SchemaVersion::V2,
        }
    }
}

/// Settings of the stream → SNS publisher (container mode).
///
/// AWS endpoints, region and credentials come from the standard AWS variables
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`,
/// `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`, `AWS_ENDPOINT_URL_SNS`, `AWS_ENDPOINT_URL_SQS`,
/// `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, …) as every AWS SDK reads them.
/// `--schema-version`, the same in both modes.
#[derive(Debug, Clone, Copy, Args)]
pub struct EmitArgs {
    /// Contract schema version to publish. 2 is current; 1 acts as a publisher that
    /// predates v2 (for rolling deploys).
    #[arg(
        long,
        env = "PUBLISHER_SCHEMA_VERSION",
        value_enum,
        default_value = "2"
    )]
    pub schema_version: EmitVersion,
}

#[derive(Debug, Clone, Args)]
pub struct PublisherConfig {
    /// Source DynamoDB table; its stream must be enabled with NEW_AND_OLD_IMAGES.
    #[arg(long, env = "PUBLISHER_TABLE")]
    pub table: String,

    /// ARN of the SNS topic to publish to (a `.fifo` topic gets MessageGroupId = key and
    /// MessageDeduplicationId = event id).
    #[arg(long, env = "PUBLISHER_TOPIC_ARN", value_parser = parse_arn)]
    pub topic_arn: String,

    /// DynamoDB table holding the lease and per-shard checkpoints (key attribute `pk`, S).
    #[arg(long, env = "PUBLISHER_CHECKPOINT_TABLE")]
    pub checkpoint_table: String,

    /// SQS queue URL where records that can never be published are parked (keys,
    /// position and reason, never the item's data: `replay republish` re-reads it).
    /// Required: without it such a record would hold its shard. A record
    /// that can be neither published nor parked pauses its shard (ERROR log,
    /// `tributary_shard_paused`, `/readyz` fails; tried again after 60 s) while the
    /// other shards go on.
    #[arg(long, env = "PUBLISHER_FAILURE_QUEUE_URL", value_parser = runtime::cli::parse_http_url)]
    pub failure_queue_url: url::Url,

    /// Where a shard without a checkpoint starts. `latest` is made durable at once (a
    /// marker checkpoint with the start time): a restart or an expired iterator resumes
    /// from the trim horizon skipping only records older than that time (less 2
    /// minutes), never at a new LATEST.
    #[arg(
        long,
        env = "PUBLISHER_START_POSITION",
        value_enum,
        default_value = "trim-horizon"
    )]
    pub start_position: StartPosition,

    #[command(flatten)]
    pub emit: EmitArgs,

    /// This publisher's name in the lease (a random suffix is added per start). Default:
    /// host name and process id.
    #[arg(long, env = "PUBLISHER_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Lease length in seconds; renewed every third of it. A crashed publisher's
    /// successor waits at most this long.
    #[arg(long = "lease-ttl-secs", env = "PUBLISHER_LEASE_TTL_SECS", default_value = "30", value_parser = parse_secs)]
    pub lease_ttl: Duration,

    /// Shortest pause, in milliseconds, before polling a shard that returned no records.
    #[arg(long = "idle-poll-min-ms", env = "PUBLISHER_IDLE_POLL_MIN_MS", default_value = "200", value_parser = parse_millis)]
    pub idle_poll_min: Duration,

    /// Longest pause, in milliseconds, between polls of an idle shard (the pause doubles
    /// from the minimum while the shard stays idle). DynamoDB allows 5 reads/s per shard.
    #[arg(long = "idle-poll-max-ms", env = "PUBLISHER_IDLE_POLL_MAX_MS", default_value = "1000", value_parser = parse_millis)]
    pub idle_poll_max: Duration,

    /// Shortest time, in milliseconds, between two GetRecords calls on one shard while
    /// it is caught up (its last page was not full). Each call then returns what
    /// accumulated meanwhile, so SNS batches fill up and fewer reads, publishes and
    /// checkpoints are paid per event, for at most this much added latency. A full page
    /// (a backlog) is followed by the next read at once. DynamoDB allows 5 reads per
    /// second per shard; a Lambda event source mapping polls 4 times a second.
    #[arg(long = "read-interval-ms", env = "PUBLISHER_READ_INTERVAL_MS", default_value = "250", value_parser = parse_millis)]
    pub read_interval: Duration,

    /// Seconds between looks for new shards (children of split shards).
    #[arg(long = "shard-discovery-secs", env = "PUBLISHER_SHARD_DISCOVERY_SECS", default_value = "10", value_parser = parse_secs)]
    pub shard_discovery: Duration,

    /// Most shards read at once.
    #[arg(long, env = "PUBLISHER_MAX_SHARDS", default_value = "64")]
    pub max_shards: NonZeroUsize,

    /// Most records published between two checkpoint writes. A GetRecords page (up to
    /// 1 000 records) is published in slices of this many, and the position is
    /// checkpointed once SNS has this many more (or --checkpoint-interval-ms has
    /// passed), so a publisher killed mid-page resends at most this many records (as
    /// duplicates the subscriber ignores). Smaller costs more checkpoint writes (one
    /// DynamoDB transaction each); larger resends more after a crash.
    #[arg(long, env = "PUBLISHER_CHECKPOINT_EVERY", default_value = "200")]
    pub checkpoint_every: NonZeroUsize,

    /// Longest time, in milliseconds, a published position waits for its checkpoint
    /// while fewer than --checkpoint-every records follow it. A crash re-publishes at
    /// most this much (duplicates the subscriber ignores); a trickle of small pages then
    /// costs a checkpoint per interval, not one per page. An idle shard and a stopping
    /// publisher checkpoint at once.
    #[arg(long = "checkpoint-interval-ms", env = "PUBLISHER_CHECKPOINT_INTERVAL_MS", default_value = "1000", value_parser = parse_millis)]
    pub checkpoint_interval: Duration,

    #[command(flatten)]
    pub log: runtime::telemetry::LogArgs,

    #[command(flatten)]
    pub ops: runtime::OpsArgs,

    #[command(flatten)]
    pub aws: runtime::aws::AwsArgs,
}

impl PublisherConfig {
    /// The lease owner name: the configured id (or host name and process id) plus a
    /// random suffix per start, so two processes never share an owner name — not two
    /// containers that are both PID 1, nor replicas given the same worker id.
    pub fn owner(&self) -> String {
        let base = self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "publisher".into());
            format!("{host}-{}", std::process::id())
        });
        format!("{base}-{:08x}", rand::random::<u32>())
    }
}

/// Settings of `publisher-lambda`, from its function's environment (flags mirror them
/// for local runs). The stream itself is the event-source mapping's: no table, lease or
/// checkpoint settings here.
#[derive(Debug, Clone, Args)]
pub struct PublisherLambdaConfig {
    /// ARN of the SNS topic to publish to.
    #[arg(long, env = "PUBLISHER_TOPIC_ARN", value_parser = parse_arn)]
    pub topic_arn: String,

    /// SQS queue URL where records that can never be published are parked (keys,
    /// position and reason, never the item's data: `replay republish` re-reads it).
    /// Required: without it such a record would hold its shard.
    #[arg(long, env = "PUBLISHER_FAILURE_QUEUE_URL", value_parser = runtime::cli::parse_http_url)]
    pub failure_queue_url: url::Url,

    #[command(flatten)]
    pub emit: EmitArgs,

    /// Table name stamped on events whose stream ARN does not name one (emulated
    /// events). Default: read from each event's `eventSourceARN`.
    #[arg(long, env = "PUBLISHER_TABLE")]
    pub table: Option<String>,

    /// Milliseconds kept before the invocation's deadline: publishing stops then and
    /// the first unfinished record is reported for retry.
    #[arg(long = "deadline-margin-ms", env = "TRIBUTARY_LAMBDA_DEADLINE_MARGIN_MS", default_value = "2000", value_parser = parse_millis)]
    pub deadline_margin: Duration,

    #[command(flatten)]
    pub log: runtime::telemetry::LogArgs,

    #[command(flatten)]
    pub aws: runtime::aws::AwsArgs,
}

/// Parses a whole number of seconds (> 0).
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "{s:?} is not a whole number of seconds greater than 0"
        )),
    }
}

/// Parses a whole number of milliseconds (> 0).
pub(crate) fn parse_millis(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
        _ => Err(format!(
            "{s:?} is not a whole number of milliseconds greater than 0"
        )),
    }
}

/// Checks that a value looks like an ARN (`arn:partition:service:region:account:resource`).
pub(crate) fn parse_arn(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" && !parts[2].is_empty() && !parts[5].is_empty() {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use clap::error::ErrorKind;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        config: PublisherConfig,
    }

    fn args(overrides: &[(&'static str, &'static str)]) -> Vec<&'static str> {
        let mut settings = vec![
            ("--table", "profiles"),
            (
                "--topic-arn",
                "arn:aws:sns:us-east-1:123456789012:profile-changes",
            ),
            ("--checkpoint-table", "cp"),
            (
                "--failure-queue-url",
                "http://127.0.0.1:9/000000000000/failures",
            ),
        ];
        for (flag, value) in overrides {
            settings.retain(|(f, _)| f != flag);
            settings.push((flag, value));
        }
        std::iter::once("publisher")
            .chain(settings.into_iter().flat_map(|(f, v)| [f, v]))
            .collect()
    }

    #[test]
    fn defaults_are_sane() {
        let cli = Cli::try_parse_from(args(&[])).unwrap();
        assert_eq!(cli.config.lease_ttl, Duration::from_secs(30));
        assert_eq!(cli.config.start_position, StartPosition::TrimHorizon);
        assert_eq!(
            SchemaVersion::from(cli.config.emit.schema_version),
            SchemaVersion::V2
        );
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        for (flag, value) in [
            ("--topic-arn", "profile-changes"),
            ("--failure-queue-url", "not a url"),
            ("--lease-ttl-secs", "0"),
            ("--start-position", "yesterday"),
            ("--schema-version", "3"),
        ] {
            let err = Cli::try_parse_from(args(&[(flag, value)])).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation
                ),
                "{flag}: {err}"
            );
            assert!(err.to_string().contains(flag), "{flag}: {err}");
            let line = runtime::cli::one_line(&err, &<Cli as clap::CommandFactory>::command());
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains(flag) && line.contains("(env PUBLISHER_"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_failure_queue_is_required() {
        let mut without = args(&[]);
        let at = without
            .iter()
            .position(|a| *a == "--failure-queue-url")
            .unwrap();
        without.drain(at..at + 2);
        let err = Cli::try_parse_from(without).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let line = runtime::cli::one_line(&err, &<Cli as clap::CommandFactory>::command());
        assert!(line.contains("PUBLISHER_FAILURE_QUEUE_URL"), "{line}");
    }

    #[test]
    fn a_missing_setting_is_one_line_naming_its_variable() {
        let err = Cli::try_parse_from(["publisher", "--table", "t"]).unwrap_err();
        let line = runtime::cli::one_line(&err, &<Cli as clap::CommandFactory>::command());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--topic-arn <TOPIC_ARN> (env PUBLISHER_TOPIC_ARN), --checkpoint-table"),
            "{line}"
        );
    }
}
