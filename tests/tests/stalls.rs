//! No silent stall: every AWS call of every binary is bounded by a timeout, and the
//! operator's tools finish what they start or say what is left.
//!
//! - A TCP "black hole" on 127.0.0.1 (accepts connections, never answers) stands in
//!   for a half-open connection to SNS or SQS: the call fails with a timeout within
//!   the configured bound, is retried and logged, and SIGTERM still stops the binary.
//! - The SQS long poll gets its wait on top of the attempt bound.
//! - `replay`: a second signal exits 130 at once; `replay dlq` does not end early
//!   while messages are in flight elsewhere, and splits its sends by total size.
//!
//! The real binaries against moto, DynamoDB Local and PostgreSQL.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::{Stack, eventually, terminate};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use stack::demo::ProfileItem;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Longest a step may take in these tests: far above the bounds they configure (1.5 s
/// per call), far below "forever".
const BOUND: Duration = Duration::from_secs(20);

/// A listener that accepts every connection and never reads, writes or closes it:
/// a peer gone silent after the handshake.
struct BlackHole {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn open() -> Result<BlackHole> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(BlackHole { url, task })
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of an emulator endpoint URL from the environment.
fn endpoint_addr(var: &str) -> Result<String> {
    let url = std::env::var(var).with_context(|| format!("{var} is not set"))?;
    Ok(url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned())
}

/// A child process and everything it wrote to standard error so far.
struct Logged {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Logged {
    fn spawn(mut cmd: Command) -> Result<Logged> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("stderr is piped")?;
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Ok(Logged { child, stderr })
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM: the process drains and exits 0 within [`BOUND`].
    async fn exits_cleanly(mut self) -> Result<()> {
        let code = terminate(&mut self.child, BOUND).await?;
        anyhow::ensure!(code == Some(0), "exit {code:?}; stderr:\n{}", self.log());
        Ok(())
    }

    /// Waits until standard error holds `times` lines containing `needle`.
    async fn wait_for(&self, needle: &str, times: usize) -> Result<String> {
        eventually(
            &format!("{times} log lines with {needle:?}"),
            BOUND,
            || async {
                let log = self.log();
                Ok((log.lines().filter(|l| l.contains(needle)).count() >= times).then_some(log))
            },
        )
        .await
        .with_context(|| format!("stderr so far:\n{}", self.log()))
    }
}

/// `publisher` on the stack, logging text at warn.
fn publisher(stack: &Stack) -> Result<Command> {
    let r = &stack.resources;
    stack.publisher_command(&r.table, &r.checkpoint_table, &r.failure_queue_url, &[])
}

/// `subscriber run` on the stack, logging text at warn.
fn subscriber(stack: &Stack, wait_time_secs: &str) -> Result<Command> {
    stack.subscriber_command(wait_time_secs, &[])
}

/// Sends an unreadable body to the subscriber's queue and waits until the subscriber
/// has parked it in the DLQ (the DLQ holds one message).
async fn an_unreadable_body_is_parked(stack: &Stack, subscriber: &Logged) -> Result<()> {
    stack.send_raw("not an event").await?;
    stack
        .wait_depth(&stack.resources.dlq_url, 1, BOUND)
        .await
        .with_context(|| format!("stderr:\n{}", subscriber.log()))
}

fn replay(args: &[&str]) -> Result<Command> {
    e2e::bin_command("replay", args)
}

/// Short bounds (set by environment, which a binary without the settings ignores).
fn short_timeouts(cmd: &mut Command) {
    cmd.env("TRIBUTARY_AWS_CONNECT_TIMEOUT_MS", "500")
        .env("TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS", "500")
        .env("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "1500");
}

fn is_timeout(line: &str) -> bool {
    let line = line.to_lowercase();
    line.contains("timeout") || line.contains("timed out")
}

#[tokio::test]
async fn a_publish_to_an_sns_endpoint_that_never_answers_times_out_is_retried_and_stops_on_sigterm()
-> Result<()> {
    let stack = Stack::new().await?;
    let hole = BlackHole::open().await?;
    let writer = stack.writer();
    let mut rng = StdRng::seed_from_u64(81);
    for i in 0..3 {
        writer
            .create(&ProfileItem::random(&mut rng, &format!("hole-{i}"), true))
            .await?;
    }
    let mut cmd = publisher(&stack)?;
    cmd.env("AWS_ENDPOINT_URL_SNS", &hole.url);
    short_timeouts(&mut cmd);
    let mut publisher = Logged::spawn(cmd)?;

    // Two failed attempts of the sink, each a timeout: bounded, retried, reported.
    let log = publisher.wait_for("PublishBatch failed", 2).await?;
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("PublishBatch failed"))
        .collect();
    assert!(
        failures.iter().all(|l| is_timeout(l)),
        "each failure is a timeout: {failures:#?}"
    );

    // The drain is not held by a call that never returns.
    let started = Instant::now();
    let code = terminate(&mut publisher.child, BOUND)
        .await
        .with_context(|| format!("stderr:\n{}", publisher.log()))?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped after {:?} (exit {code:?})",
        started.elapsed()
    );
    drop(publisher);
    stack.teardown().await
}

#[tokio::test]
async fn a_receive_from_an_sqs_endpoint_that_stops_answering_times_out_and_is_retried() -> Result<()>
{
    let stack = Stack::new().await?;
    let switch = e2e::outage::FreezeProxy::start(endpoint_addr("AWS_ENDPOINT_URL_SQS")?).await?;
    let mut cmd = subscriber(&stack, "1")?;
    cmd.env("AWS_ENDPOINT_URL_SQS", switch.url());
    short_timeouts(&mut cmd);
    let subscriber = Logged::spawn(cmd)?;
    // Running through the proxy: an unreadable body is received and parked.
    an_unreadable_body_is_parked(&stack, &subscriber).await?;

    // SQS goes silent while the subscriber long-polls it.
    switch.freeze();

    let log = subscriber.wait_for("Receive failed", 2).await?;
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Receive failed"))
        .collect();
    assert!(
        failures.iter().all(|l| is_timeout(l)),
        "each failure is a timeout: {failures:#?}"
    );
    subscriber.exits_cleanly().await?;
    stack.teardown().await
}

#[tokio::test]
async fn a_long_poll_longer_than_the_attempt_timeout_is_not_taken_for_a_dead_connection()
-> Result<()> {
    let stack = Stack::new().await?;
    // Each receive waits 3 s on an empty queue; an attempt may take 0.5 s and an
    // operation 2.5 s, both shorter than the poll, so a client that did not extend them
    // by the wait would cut every poll. (1.5 s of slack proved too little for moto
    // answering four suites at once on CI: a poll came back after 4.5 s.)
    let mut cmd = subscriber(&stack, "3")?;
    short_timeouts(&mut cmd);
    cmd.env("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "2500");
    let subscriber = Logged::spawn(cmd)?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The long polls still deliver: an unreadable body is received and parked.
    an_unreadable_body_is_parked(&stack, &subscriber).await?;
    let log = subscriber.log();
    assert!(
        !log.lines().any(|l| l.contains("Receive failed")),
        "no long poll timed out:\n{log}"
    );
    subscriber.exits_cleanly().await?;
    stack.teardown().await
}

#[tokio::test]
async fn a_second_signal_stops_replay_at_once_with_status_130() -> Result<()> {
    let hole = BlackHole::open().await?;
    // Every call hangs for a minute: only the second signal can end this run quickly.
    let mut cmd = replay(&[
        "dlq",
        "--dlq-url",
        &format!("{}/000000000000/dlq", hole.url),
        "--queue-url",
        &format!("{}/000000000000/main", hole.url),
        "--method",
        "loop",
    ])?;
    cmd.env("AWS_ENDPOINT_URL_SQS", &hole.url)
        .env("TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS", "60000")
        .env("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "60000");
    let mut replay = Logged::spawn(cmd)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = replay.child.id().context("replay runs")?.to_string();
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(5), replay.child.wait())
        .await
        .with_context(|| {
            format!(
                "replay ignored the second SIGTERM; stderr:\n{}",
                replay.log()
            )
        })??;
    assert_eq!(status.code(), Some(130), "stderr:\n{}", replay.log());
    Ok(())
}

/// Sends `n` bodies of `bytes` bytes each straight to the stack's DLQ.
async fn park(stack: &Stack, n: usize, bytes: usize) -> Result<()> {
    for i in 0..n {
        let body = format!("{i:04}{}", "x".repeat(bytes.saturating_sub(4)));
        stack
            .clients
            .sqs
            .send_message()
            .queue_url(&stack.resources.dlq_url)
            .message_body(body)
            .send()
            .await?;
    }
    Ok(())
}

async fn redrive(stack: &Stack, extra: &[&str]) -> Result<(Option<i32>, Value, String)> {
    let r = &stack.resources;
    let mut args = vec![
        "dlq",
        "--dlq-url",
        &r.dlq_url,
        "--queue-url",
        &r.queue_url,
        "--method",
        "loop",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = tokio::time::timeout(Duration::from_secs(90), replay(&args)?.output())
        .await
        .context("replay dlq did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    Ok((out.status.code(), report, stderr))
}

#[tokio::test]
async fn replay_dlq_waits_for_messages_in_flight_elsewhere_and_reports_those_that_stay_away()
-> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    park(&stack, 4, 100).await?;
    // Another consumer holds two of them for 5 s: invisible when the redrive starts.
    let mut taken = 0;
    while taken < 2 {
        let out = stack
            .clients
            .sqs
            .receive_message()
            .queue_url(&r.dlq_url)
            .max_number_of_messages(i32::try_from(2 - taken)?)
            .visibility_timeout(5)
            .send()
            .await?;
        taken += out.messages().len();
    }
    // (The default in-flight wait, 60 s, is far longer than their 5 s.)
    let (code, report, stderr) = redrive(&stack, &[]).await?;
    assert_eq!(code, Some(0), "report {report}; stderr: {stderr}");
    assert_eq!(report["moved"].as_u64(), Some(4), "report {report}");
    assert_eq!(stack.queue_depth(&r.dlq_url).await?, 0);
    assert_eq!(stack.queue_depth(&r.queue_url).await?, 4);

    // One held for two minutes: reported as remaining, exit 1, not a silent success.
    park(&stack, 1, 100).await?;
    let out = stack
        .clients
        .sqs
        .receive_message()
        .queue_url(&r.dlq_url)
        .visibility_timeout(120)
        .send()
        .await?;
    assert_eq!(out.messages().len(), 1);
    let (code, report, stderr) = redrive(&stack, &["--in-flight-wait-secs", "3"]).await?;
    assert_eq!(code, Some(1), "report {report}; stderr: {stderr}");
    assert_eq!(report["remaining"].as_u64(), Some(1), "report {report}");
    stack.teardown().await
}

#[tokio::test]
async fn replay_dlq_splits_its_sends_by_the_total_size_sqs_accepts() -> Result<()> {
    let stack = Stack::new().await?;
    let r = &stack.resources;
    // Three 100 KiB messages: one receive, more than one SendMessageBatch. Neither moto
    // nor LocalStack enforces the 256 KiB total (both accepted the unsplit call), so
    // this checks that every split batch arrives; the split itself is proven by the
    // unit tests of `replay::dlq::plan_sends`.
    park(&stack, 3, 100 * 1024).await?;
    let (code, report, stderr) = redrive(&stack, &[]).await?;
    assert_eq!(code, Some(0), "report {report}; stderr: {stderr}");
    assert_eq!(report["moved"].as_u64(), Some(3), "report {report}");
    assert_eq!(stack.queue_depth(&r.dlq_url).await?, 0);
    assert_eq!(stack.queue_depth(&r.queue_url).await?, 3);
    stack.teardown().await
}

#[tokio::test]
async fn replay_refuses_bad_timeout_and_wait_settings_naming_them() -> Result<()> {
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "--aws-attempt-timeout-ms",
                "0",
                "dlq",
                "--dlq-url",
                "http://127.0.0.1:9/d",
                "--queue-url",
                "http://127.0.0.1:9/q",
            ],
            "TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS",
        ),
        (
            &[
                "dlq",
                "--dlq-url",
                "http://127.0.0.1:9/d",
                "--queue-url",
                "http://127.0.0.1:9/q",
                "--in-flight-wait-secs",
                "soon",
            ],
            "REPLAY_DLQ_IN_FLIGHT_WAIT_SECS",
        ),
    ];
    for (args, name) in cases {
        let out = replay(args)?.output().await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            lines.len() == 1 && lines[0].contains(name),
            "{args:?}: one line naming {name}: {stderr}"
        );
    }
    Ok(())
}

/// A subscriber started while SQS is unreachable (a redeploy during an outage, a
/// container restarted mid-outage) waits for it, retrying the bind with back-off,
/// instead of exiting with "could not bind the queue": with no supervisor to restart
/// it, nothing would ever be applied. The chaos run lost its only subscriber this way.
#[tokio::test]
async fn a_subscriber_started_while_sqs_is_down_waits_for_it_and_then_consumes() -> Result<()> {
    let mut stack = Stack::new().await?;
    let sqs = e2e::outage::CutProxy::start(&std::env::var("AWS_ENDPOINT_URL_SQS")?).await?;
    sqs.cut();
    stack.sns_sqs_via = Some(sqs.url.clone());
    let mut subscriber = stack.spawn_subscriber(&[])?;
    // Longer than the SDK's own retries of the first call (three attempts with
    // back-off), after which the subscriber used to give up.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        subscriber.try_wait()?.is_none(),
        "the subscriber exited while SQS was down: {:?}",
        subscriber.try_wait()?
    );
    sqs.restore();
    // Publisher direct to the emulator: only the subscriber's path was cut.
    stack.sns_sqs_via = None;
    let _publisher = stack.spawn_publisher(&[])?;
    let writer = stack.writer();
    let mut rng = StdRng::seed_from_u64(13);
    for i in 0..5 {
        writer
            .create(&ProfileItem::random(
                &mut rng,
                &format!("late-bind-{i}"),
                true,
            ))
            .await?;
    }
    stack.wait_converged(Duration::from_secs(90)).await?;
    terminate(&mut subscriber, Duration::from_secs(30)).await?;
    stack.teardown().await
}
