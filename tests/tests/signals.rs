//! Every binary has the same signal semantics (`runtime::shutdown`): the first SIGTERM
//! or SIGINT drains what is in flight and the process exits with its documented status
//! (0 for a service, 130 for a command it interrupted); a second signal exits 130 at
//! once, whatever the drain is waiting for.
//!
//! Each binary is started against peers that accept connections and never answer (AWS,
//! PostgreSQL), so that its work hangs the way it does behind a half-open connection.
//! The Lambda binaries get a runtime API that hands out one invocation and then waits,
//! so that the first signal finds an invocation in flight.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

/// A peer that accepts every connection and never says a word.
async fn black_hole() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}

/// A Lambda runtime API that answers the first `GET …/invocation/next` with `event`,
/// accepts the invocation's answer (`POST …/response`, noted in the flag it returns),
/// and meets every later request with silence.
async fn runtime_api(event: String, deadline_secs: u64) -> Result<(SocketAddr, Arc<AtomicBool>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answered = Arc::new(AtomicBool::new(false));
    let noted = Arc::clone(&answered);
    let served = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Each connection in its own task, request after request: the runtime's
            // client keeps its connection alive and posts the answer on it.
            let (event, served, noted) = (event.clone(), Arc::clone(&served), Arc::clone(&noted));
            tokio::spawn(async move {
                let mut socket = socket;
                loop {
                    let mut request = [0u8; 8192];
                    let n = match socket.read(&mut request).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let head = String::from_utf8_lossy(&request[..n]);
                    let answer = if head.starts_with("GET /2018-06-01/runtime/invocation/next")
                        && !served.swap(true, Ordering::SeqCst)
                    {
                        let deadline = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            + Duration::from_secs(deadline_secs);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Lambda-Runtime-Aws-Request-Id: 8476a536-e9f4-11e8-9739-2dfe598c3fcd\r\n\
                             Lambda-Runtime-Deadline-Ms: {}\r\n\
                             Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:f\r\n\
                             Content-Length: {}\r\n\r\n{event}",
                            deadline.as_millis(),
                            event.len()
                        )
                    } else if head.starts_with("POST ") && head.contains("/response") {
                        noted.store(true, Ordering::SeqCst);
                        "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_owned()
                    } else {
                        // A second invocation, or anything else: never answered.
                        std::future::pending::<()>().await;
                        return;
                    };
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, answered))
}

/// The environment of a Lambda binary run against the runtime API at `api`.
fn lambda_env<'a>(
    endpoint: &(&'a str, String),
    api: SocketAddr,
    name: &str,
) -> Vec<(&'a str, String)> {
    vec![
        endpoint.clone(),
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
    ]
}

/// (binary, arguments, environment, what the first signal leads to, which signal)
type Case<'a> = (
    &'a str,
    Vec<&'a str>,
    Vec<(&'a str, String)>,
    First,
    &'a str,
);

/// How long a drain that ends by itself may take: the longest is an invocation whose
/// calls time out one after another.
const FIRST_SIGNAL_WAIT: Duration = Duration::from_secs(20);

/// What the first signal must lead to.
#[derive(Debug, Clone, Copy)]
enum First {
    /// The drain ends by itself and the process exits with this status.
    Exits(i32),
    /// The drain waits on a peer that never answers: only the second signal ends it.
    Hangs,
}

/// Starts `binary`, lets it reach its hanging call, signals it once, and (if it is
/// still draining) twice; checks each step against `first`.
async fn check(
    binary: &str,
    args: &[&str],
    env: &[(&str, String)],
    first: First,
    signal: &str,
) -> Result<()> {
    let mut child = Command::new(e2e::bin(binary)?)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        // Every AWS call hangs for the whole test instead of timing out.
        .env("TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS", "120000")
        .env("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "240000")
        .env("TRIBUTARY_LOG_FORMAT", "text")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    if let Some(status) = child.try_wait()? {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await?;
        bail!("{binary} exited ({status}) before any signal; stderr:\n{err}");
    }
    e2e::signal(&child, signal)?;
    let after_first = e2e::exit_within(&mut child, FIRST_SIGNAL_WAIT).await?;
    match (first, after_first) {
        (First::Exits(want), Some(code)) if code == Some(want) => return Ok(()),
        (First::Exits(want), Some(code)) => {
            bail!("{binary}: exit {code:?} after the first SIG{signal}, expected {want}")
        }
        (First::Exits(want), None) => {
            bail!(
                "{binary}: still running {FIRST_SIGNAL_WAIT:?} after the first SIG{signal}, expected exit {want}"
            )
        }
        (First::Hangs, Some(code)) => {
            bail!(
                "{binary}: exited {code:?} on the first SIG{signal}: its drain did not hang, no test"
            )
        }
        (First::Hangs, None) => {}
    }
    e2e::signal(&child, "TERM")?;
    match e2e::exit_within(&mut child, Duration::from_secs(5)).await? {
        Some(Some(130)) => {}
        other => bail!("{binary}: {other:?} after the second signal, expected exit 130"),
    }
    // The first signal started a drain (the handler cancelled the binary's token and
    // said so), and the second forced the exit: in that order.
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).await?;
    }
    let at = |level: &str, sig: &str| {
        err.lines()
            .position(|l| l.contains(level) && l.contains(&format!("signal=\"SIG{sig}\"")))
    };
    match (at("INFO", signal), at("WARN", "TERM")) {
        (Some(drain), Some(forced)) if drain < forced => Ok(()),
        _ => bail!(
            "{binary}: no drain logged on the first SIG{signal} before the forced exit; stderr:\n{err}"
        ),
    }
}

#[tokio::test]
async fn every_binary_drains_on_the_first_signal_and_exits_130_on_the_second() -> Result<()> {
    let aws = format!("http://{}", black_hole().await?);
    let pg = black_hole().await?;
    let hung_db = format!("postgres://postgres@{pg}/analytics");
    let queue = format!("{aws}/000000000000/analytics");
    let topic = "arn:aws:sns:us-east-1:000000000000:profile-changes".to_owned();
    let endpoint = ("AWS_ENDPOINT_URL", aws.clone());

    let stream_event = serde_json::json!({"Records": [{
        "eventID": "1", "eventName": "INSERT", "eventSourceARN":
        "arn:aws:dynamodb:us-east-1:000000000000:table/profiles/stream/2026-01-01T00:00:00.000",
        "dynamodb": {"Keys": {"user_id": {"S": "u1"}}, "SequenceNumber": "100",
            "NewImage": {"user_id": {"S": "u1"}, "version": {"N": "1"},
                "email": {"S": "a@example.com"}, "display_name": {"S": "A"},
                "created_at": {"S": "2026-01-01T00:00:00Z"},
                "updated_at": {"S": "2026-01-01T00:00:00Z"}}}}]})
    .to_string();
    let sqs_event = serde_json::json!({"Records": [{
        "messageId": "m1", "receiptHandle": "r1", "body": "{}",
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:analytics"}]})
    .to_string();
    let (publisher_api, _) = runtime_api(stream_event.clone(), 600).await?;
    let (subscriber_api, _) = runtime_api(sqs_event, 600).await?;
    // An invocation whose deadline comes 6 s after it starts.
    let (draining_api, draining_answered) = runtime_api(stream_event, 6).await?;

    let publisher_env = vec![
        endpoint.clone(),
        ("PUBLISHER_TABLE", "profiles".to_owned()),
        ("PUBLISHER_TOPIC_ARN", topic.clone()),
        ("PUBLISHER_CHECKPOINT_TABLE", "checkpoints".to_owned()),
        (
            "PUBLISHER_FAILURE_QUEUE_URL",
            format!("{aws}/000000000000/f"),
        ),
    ];
    let publisher_lambda_env = vec![
        ("PUBLISHER_TOPIC_ARN", topic.clone()),
        (
            "PUBLISHER_FAILURE_QUEUE_URL",
            format!("{aws}/000000000000/f"),
        ),
    ];
    let cases: Vec<Case> = vec![
        // Services at start, their first call (DescribeTable, GetQueueAttributes) in
        // flight: the drain waits for it (up to the AWS operation timeout).
        (
            "publisher",
            vec![],
            publisher_env.clone(),
            First::Hangs,
            "TERM",
        ),
        (
            "subscriber",
            vec!["run"],
            vec![
                endpoint.clone(),
                ("DATABASE_URL", hung_db.clone()),
                ("SUBSCRIBER_QUEUE_URL", queue.clone()),
            ],
            First::Hangs,
            "INT",
        ),
        // The Lambda binaries: the invocation in flight (publishing to a silent SNS,
        // or applying against a silent PostgreSQL) holds the drain.
        (
            "publisher-lambda",
            vec![],
            [
                lambda_env(&endpoint, publisher_api, "publisher"),
                publisher_lambda_env.clone(),
            ]
            .concat(),
            First::Hangs,
            "TERM",
        ),
        (
            "subscriber-lambda",
            vec![],
            [
                lambda_env(&endpoint, subscriber_api, "subscriber"),
                vec![
                    ("DATABASE_URL", hung_db.clone()),
                    ("SUBSCRIBER_DLQ_URL", format!("{aws}/000000000000/dlq")),
                ],
            ]
            .concat(),
            First::Hangs,
            "TERM",
        ),
        // An invocation that ends a few seconds after the first signal: publishing to
        // the silent SNS stops at its deadline (6 s) less the 2 s margin, the call in
        // flight is given up after its 1 s attempt bound, and the first unfinished
        // record is reported. The drain waits for that, posts the answer, exits 0.
        (
            "publisher-lambda",
            vec![],
            [
                lambda_env(&endpoint, draining_api, "publisher"),
                publisher_lambda_env.clone(),
                vec![("TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS", "1000".into())],
            ]
            .concat(),
            First::Exits(0),
            "TERM",
        ),
        // Commands: interrupted, they say so with 130.
        (
            "bootstrap",
            vec![],
            vec![endpoint.clone()],
            First::Exits(130),
            "TERM",
        ),
        (
            "replay",
            vec!["snapshot", "--table", "profiles", "--to", &topic],
            vec![endpoint.clone()],
            First::Hangs,
            "INT",
        ),
        (
            "tributary-bench",
            vec![
                "apply",
                "--events",
                "10",
                "--keys",
                "2",
                "--peer-events",
                "2",
            ],
            vec![("DATABASE_URL", format!("postgres://postgres@{pg}/postgres"))],
            First::Exits(130),
            "TERM",
        ),
        // The demo writer's PutItem hangs: only the second signal ends it.
        (
            "demo-writer",
            vec!["--table", "profiles", "--table-wait-secs", "1"],
            vec![endpoint.clone()],
            First::Hangs,
            "INT",
        ),
    ];
    let checks = cases
        .iter()
        .map(|(binary, args, env, first, signal)| async move {
            check(binary, args, env, *first, signal)
                .await
                .map_err(|e| format!("{e:#}"))
        });
    // At once: each check waits on its own child.
    let wrong: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(std::result::Result::err)
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        draining_answered.load(Ordering::SeqCst),
        "the draining publisher-lambda exited without answering its invocation"
    );
    Ok(())
}
