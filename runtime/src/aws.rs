//! The one place every binary builds its AWS SDK configuration: region, credentials
//! and endpoints from the standard environment, plus the retry and timeout settings
//! every client shares.
//!
//! Without timeouts a half-open connection (a peer that accepted the connection and
//! never answers) holds a call forever: a `PublishBatch`, a checkpoint write, a delete.
//! Every call is therefore bounded three ways: connecting, each attempt, and the
//! whole operation with its retries.
//!
//! A long poll (`ReceiveMessage` with `WaitTimeSeconds`) legitimately waits longer
//! than an attempt: its call site widens the bounds by the wait with
//! [`long_poll_timeouts`].

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// Attempts per AWS call, the first included (the SDK's standard retry mode, with
/// exponential back-off and jitter between them).
///
/// Three, the SDK's own default, for every binary: each loop around these calls
/// (publishing, checkpointing, receiving, deleting) already retries with its own
/// back-off and logs every failure, so attempts hidden inside one call only make that
/// call slower and quieter. Three default attempts of [`DEFAULT_ATTEMPT_TIMEOUT_MS`]
/// fit in [`DEFAULT_OPERATION_TIMEOUT_MS`], so each attempt can use its whole bound.
pub const MAX_ATTEMPTS: u32 = 3;
/// Default of `--aws-connect-timeout-ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Default of `--aws-attempt-timeout-ms`.
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// Default of `--aws-operation-timeout-ms`.
pub const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 15_000;

/// Timeouts of every AWS call, flattened into each binary's command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AwsArgs {
    /// Milliseconds to open a connection (TCP and TLS) to an AWS endpoint before the
    /// attempt fails and is retried. Default: 3000.
    #[arg(long = "aws-connect-timeout-ms", env = "TRIBUTARY_AWS_CONNECT_TIMEOUT_MS",
          value_name = "MS", default_value_t = DEFAULT_CONNECT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub connect_timeout_ms: u64,

    /// Milliseconds one attempt of an AWS call may take, from sending the request to
    /// reading the whole answer, before it is abandoned and retried (a connection that
    /// stopped answering). An SQS long poll gets its wait on top. Default: 5000.
    #[arg(long = "aws-attempt-timeout-ms", env = "TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS",
          value_name = "MS", default_value_t = DEFAULT_ATTEMPT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub attempt_timeout_ms: u64,

    /// Milliseconds one AWS call may take with all its attempts (3) and the pauses
    /// between them; the call then fails with a timeout error, which the caller logs
    /// and retries or reports. An SQS long poll gets its wait on top. Default: 15000.
    #[arg(long = "aws-operation-timeout-ms", env = "TRIBUTARY_AWS_OPERATION_TIMEOUT_MS",
          value_name = "MS", default_value_t = DEFAULT_OPERATION_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub operation_timeout_ms: u64,
}

impl Default for AwsArgs {
    /// The documented defaults (what the flags give when unset).
    fn default() -> Self {
        AwsArgs {
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            attempt_timeout_ms: DEFAULT_ATTEMPT_TIMEOUT_MS,
            operation_timeout_ms: DEFAULT_OPERATION_TIMEOUT_MS,
        }
    }
}

impl AwsArgs {
    /// The SDK timeout settings these flags describe.
    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .operation_attempt_timeout(Duration::from_millis(self.attempt_timeout_ms))
            .operation_timeout(Duration::from_millis(self.operation_timeout_ms))
            .build()
    }
}

/// The AWS SDK configuration of a process: the standard environment (region,
/// credentials, `AWS_ENDPOINT_URL*`), [`MAX_ATTEMPTS`] in the standard retry mode and
/// the timeouts of `args`. Built once per process; every client is made from it.
pub async fn sdk_config(args: &AwsArgs) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(args.timeout_config())
        .load()
        .await
}

/// [`sdk_config`] with the documented default timeouts, for tools without the
/// `--aws-*-timeout-ms` flags (tests, benchmarks).
pub async fn default_sdk_config() -> aws_config::SdkConfig {
    sdk_config(&AwsArgs::default()).await
}

/// The AWS clients a process talks through, built once from one SDK configuration and
/// cloned (cheaply: each is a handle) into whatever needs them.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl Clients {
    /// Every client from `config`.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            streams: aws_sdk_dynamodbstreams::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
        }
    }
}

/// The timeouts for one long poll that may wait `wait` for a message: the client's
/// attempt and operation bounds, each widened by the wait, so an idle queue's answer
/// (which comes after the whole wait) is not taken for a dead connection. Every field
/// is set, as a per-call override replaces the client's timeouts whole. A client
/// without a bound keeps none.
pub fn long_poll_timeouts(client: Option<&TimeoutConfig>, wait: Duration) -> TimeoutConfig {
    let widen = |d: Option<Duration>| d.map(|d| d + wait);
    let mut builder = TimeoutConfig::builder();
    builder
        .set_connect_timeout(client.and_then(TimeoutConfig::connect_timeout))
        .set_read_timeout(client.and_then(TimeoutConfig::read_timeout))
        .set_operation_attempt_timeout(widen(
            client.and_then(TimeoutConfig::operation_attempt_timeout),
        ))
        .set_operation_timeout(widen(client.and_then(TimeoutConfig::operation_timeout)));
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        aws: AwsArgs,
    }

    #[test]
    fn the_defaults_are_the_documented_ones_and_bound_every_call() {
        let parsed = Cli::try_parse_from(["x"]).unwrap().aws;
        assert_eq!(parsed, AwsArgs::default());
        let t = parsed.timeout_config();
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(15)));
        assert!(
            u64::from(MAX_ATTEMPTS) * DEFAULT_ATTEMPT_TIMEOUT_MS <= DEFAULT_OPERATION_TIMEOUT_MS,
            "every default attempt fits in the operation bound"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        for flag in [
            "--aws-connect-timeout-ms",
            "--aws-attempt-timeout-ms",
            "--aws-operation-timeout-ms",
        ] {
            assert!(Cli::try_parse_from(["x", flag, "0"]).is_err(), "{flag} 0");
            assert!(
                Cli::try_parse_from(["x", flag, "soon"]).is_err(),
                "{flag} soon"
            );
        }
    }

    #[test]
    fn a_long_poll_gets_its_wait_on_top_of_the_attempt_and_operation_bounds() {
        let client = AwsArgs {
            connect_timeout_ms: 1_000,
            attempt_timeout_ms: 2_000,
            operation_timeout_ms: 6_000,
        }
        .timeout_config();
        let t = long_poll_timeouts(Some(&client), Duration::from_secs(20));
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(1)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(22)));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(26)));
    }

    #[test]
    fn a_client_without_bounds_keeps_none_for_its_long_polls() {
        let t = long_poll_timeouts(None, Duration::from_secs(20));
        assert_eq!(t.operation_attempt_timeout(), None);
        assert_eq!(t.operation_timeout(), None);
    }
}
