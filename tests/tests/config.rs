//! Configuration and secrets, with the real binaries:
//! - a bad or missing setting stops the program at start, exit 2, with ONE line on
//!   stderr that names the setting (flag and environment variable);
//! - the database password and the AWS secrets never appear in anything a failing
//!   run prints (stdout or stderr, at `RUST_LOG=debug`);
//! - TLS to PostgreSQL with `sslmode=verify-full` and a CA file, against a private
//!   cluster with a certificate from a CA made here with openssl.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::{PrivatePostgres, Stack, bin, free_port};
use tokio::process::Command;

const DB_PASSWORD: &str = "Pg-S3cret-Do-Not-Print-7731";
const AWS_SECRET: &str = "AwsSecretKey/Do+Not+Print/0123456789abcdefXYZ";
const AWS_TOKEN: &str = "AwsSessionToken-Do-Not-Print-FQoGZXIvYXdzEJr";

/// Output of one run of a binary.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `binary args` with exactly `env` (plus PATH/HOME), no AWS settings from the
/// test's own environment; SIGTERM after `limit` if it is still running.
async fn run(binary: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Result<Run> {
    let mut cmd = Command::new(bin(binary)?);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let pid = child.id().context("pid")?;
    let waited = tokio::spawn(child.wait_with_output());
    let term = tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    });
    let out = tokio::time::timeout(limit + Duration::from_secs(30), waited)
        .await
        .context("the binary did not stop after SIGTERM")???;
    term.abort();
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

const QUEUE: &str = "http://127.0.0.1:9/000000000000/analytics";
const DB: &str = "postgres://postgres@127.0.0.1:5432/analytics";

/// The settings of a run that would start, with `over` replacing (or, with an empty
/// value, removing) some of them.
fn settings<'a>(
    base: &[(&'a str, &'a str)],
    over: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = base
        .iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .copied()
        .collect();
    out.extend(over.iter().filter(|(_, v)| !v.is_empty()).copied());
    out
}

/// (binary, subcommand, base settings, the change, the setting the line must name)
type BadSetting<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    (&'a str, &'a str),
    &'a str,
);

#[tokio::test]
async fn a_bad_setting_stops_each_binary_at_start_with_one_line_naming_it() -> Result<()> {
    let subscriber = [
        ("DATABASE_URL", DB),
        ("SUBSCRIBER_QUEUE_URL", QUEUE),
        ("AWS_REGION", "us-east-1"),
    ];
    let publisher = [
        ("PUBLISHER_TABLE", "profiles"),
        (
            "PUBLISHER_TOPIC_ARN",
            "arn:aws:sns:us-east-1:000000000000:profile-changes",
        ),
        ("PUBLISHER_CHECKPOINT_TABLE", "checkpoints"),
        (
            "PUBLISHER_FAILURE_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/failures",
        ),
        ("AWS_REGION", "us-east-1"),
    ];
    let lambda = [
        ("DATABASE_URL", DB),
        ("SUBSCRIBER_DLQ_URL", QUEUE),
        ("AWS_REGION", "us-east-1"),
    ];
    // A subscriber mapping that names a version its contract does not declare.
    let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts/entities/order.toml");
    let mapping = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/subscriber/order.toml"),
    )?
    .replace(
        "../../contracts/entities/order.toml",
        &contract.display().to_string(),
    )
    .replace("reads = 1", "reads = 9");
    let bad_mapping = dir.join("bad-mapping.toml");
    std::fs::write(&bad_mapping, mapping)?;
    let bad_mapping = bad_mapping.display().to_string();
    let mapping_line =
        format!("{bad_mapping}:7: reads: is 9, but the contract declares versions 1 to 1");
    let remote = "postgres://postgres@db.example.com:5432/analytics";
    let remote_require = "postgres://postgres@10.20.30.40:5432/analytics?sslmode=require";
    let cases: Vec<BadSetting> = vec![
        // A bad declaration stops the start with its file, line and key.
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_MAPPING", &bad_mapping),
            &mapping_line,
        ),
        (
            "subscriber-lambda",
            &[],
            &lambda,
            ("SUBSCRIBER_MAPPING", &bad_mapping),
            &mapping_line,
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_MAPPING", "/nonexistent/orders.toml"),
            "/nonexistent/orders.toml: No such file or directory",
        ),
        // TLS to a remote PostgreSQL must verify the certificate (or be allowed loudly).
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("DATABASE_URL", remote),
            "SUBSCRIBER_ALLOW_INSECURE_DB_TLS",
        ),
        (
            "subscriber",
            &["migrate"],
            &subscriber,
            ("DATABASE_URL", remote_require),
            "sslmode=verify-full",
        ),
        (
            "replay",
            &["status"],
            &subscriber,
            ("DATABASE_URL", remote),
            "DATABASE_URL",
        ),
        (
            "subscriber-lambda",
            &[],
            &lambda,
            ("DATABASE_URL", remote),
            "SUBSCRIBER_ALLOW_INSECURE_DB_TLS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_ALLOW_INSECURE_DB_TLS", "perhaps"),
            "SUBSCRIBER_ALLOW_INSECURE_DB_TLS",
        ),
        (
            "subscriber-lambda",
            &[],
            &lambda,
            (
                "SUBSCRIBER_DATABASE_SECRET_ARN",
                "tributary/analytics-database",
            ),
            "SUBSCRIBER_DATABASE_SECRET_ARN",
        ),
        (
            "replay",
            &["verify"],
            &[
                ("REPLAY_TABLE", "profiles"),
                ("DATABASE_URL", DB),
                ("AWS_REGION", "us-east-1"),
            ],
            ("DATABASE_URL", remote),
            "SUBSCRIBER_ALLOW_INSECURE_DB_TLS",
        ),
        // A pool smaller than the 4 default workers + 1.
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_DB_MAX_CONNECTIONS", "4"),
            "SUBSCRIBER_DB_MAX_CONNECTIONS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("DATABASE_URL", "not a url"),
            "DATABASE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("DATABASE_URL", "mysql://db/x"),
            "DATABASE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("DATABASE_URL", ""),
            "DATABASE_URL",
        ),
        (
            "subscriber",
            &["migrate"],
            &subscriber,
            ("DATABASE_URL", "::"),
            "DATABASE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_QUEUE_URL", ""),
            "SUBSCRIBER_QUEUE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_QUEUE_URL", "queue please"),
            "SUBSCRIBER_QUEUE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_QUEUE_URL", "ftp://q/1"),
            "SUBSCRIBER_QUEUE_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_DLQ_URL", "dlq"),
            "SUBSCRIBER_DLQ_URL",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            (
                "SUBSCRIBER_TOPIC_ARN",
                "arn:aws:sqs:us-east-1:1:profile-changes",
            ),
            "SUBSCRIBER_TOPIC_ARN",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_WORKERS", "0"),
            "SUBSCRIBER_WORKERS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_WORKERS", "many"),
            "SUBSCRIBER_WORKERS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_WAIT_TIME_SECS", "21"),
            "SUBSCRIBER_WAIT_TIME_SECS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_MAX_MESSAGES", "11"),
            "SUBSCRIBER_MAX_MESSAGES",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_BATCH_MAX_MESSAGES", "0"),
            "SUBSCRIBER_BATCH_MAX_MESSAGES",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_BATCH_WINDOW_MS", "soon"),
            "SUBSCRIBER_BATCH_WINDOW_MS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_FILL_WAIT_MS", "6000"),
            "SUBSCRIBER_FILL_WAIT_MS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("SUBSCRIBER_MIGRATE_ON_START", "perhaps"),
            "SUBSCRIBER_MIGRATE_ON_START",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("TRIBUTARY_LOG_FORMAT", "loud"),
            "TRIBUTARY_LOG_FORMAT",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_TABLE", ""),
            "PUBLISHER_TABLE",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_TOPIC_ARN", "profile-changes"),
            "PUBLISHER_TOPIC_ARN",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_CHECKPOINT_TABLE", ""),
            "PUBLISHER_CHECKPOINT_TABLE",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_FAILURE_QUEUE_URL", "not a url"),
            "PUBLISHER_FAILURE_QUEUE_URL",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_FAILURE_QUEUE_URL", ""),
            "PUBLISHER_FAILURE_QUEUE_URL",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_START_POSITION", "sideways"),
            "PUBLISHER_START_POSITION",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_SCHEMA_VERSION", "3"),
            "PUBLISHER_SCHEMA_VERSION",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_LEASE_TTL_SECS", "0"),
            "PUBLISHER_LEASE_TTL_SECS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_IDLE_POLL_MAX_MS", "soon"),
            "PUBLISHER_IDLE_POLL_MAX_MS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_MAX_SHARDS", "0"),
            "PUBLISHER_MAX_SHARDS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_CHECKPOINT_EVERY", "0"),
            "PUBLISHER_CHECKPOINT_EVERY",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_CHECKPOINT_INTERVAL_MS", "1s"),
            "PUBLISHER_CHECKPOINT_INTERVAL_MS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("PUBLISHER_READ_INTERVAL_MS", "-5"),
            "PUBLISHER_READ_INTERVAL_MS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("TRIBUTARY_LOG_FORMAT", "loud"),
            "TRIBUTARY_LOG_FORMAT",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "soon"),
            "TRIBUTARY_AWS_OPERATION_TIMEOUT_MS",
        ),
        (
            "publisher",
            &[],
            &publisher,
            ("TRIBUTARY_AWS_CONNECT_TIMEOUT_MS", "-1"),
            "TRIBUTARY_AWS_CONNECT_TIMEOUT_MS",
        ),
        (
            "subscriber",
            &["run"],
            &subscriber,
            ("TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS", "0"),
            "TRIBUTARY_AWS_ATTEMPT_TIMEOUT_MS",
        ),
        (
            "replay",
            &["status"],
            &subscriber,
            ("TRIBUTARY_AWS_OPERATION_TIMEOUT_MS", "0"),
            "TRIBUTARY_AWS_OPERATION_TIMEOUT_MS",
        ),
        // Every other binary reads its command line the same way.
        (
            "publisher-lambda",
            &[],
            &publisher,
            ("PUBLISHER_TOPIC_ARN", "profile-changes"),
            "PUBLISHER_TOPIC_ARN",
        ),
        (
            "publisher-lambda",
            &[],
            &publisher,
            ("TRIBUTARY_LAMBDA_DEADLINE_MARGIN_MS", "soon"),
            "TRIBUTARY_LAMBDA_DEADLINE_MARGIN_MS",
        ),
        (
            "subscriber-lambda",
            &[],
            &lambda,
            ("SUBSCRIBER_DLQ_URL", "dlq"),
            "SUBSCRIBER_DLQ_URL",
        ),
        (
            "bootstrap",
            &[],
            &[("AWS_REGION", "us-east-1")],
            ("BOOTSTRAP_MAX_RECEIVE_COUNT", "many"),
            "BOOTSTRAP_MAX_RECEIVE_COUNT",
        ),
        (
            "bootstrap",
            &[],
            &[("AWS_REGION", "us-east-1")],
            ("TRIBUTARY_LOG_FORMAT", "loud"),
            "TRIBUTARY_LOG_FORMAT",
        ),
        (
            "demo-writer",
            &[],
            &[("AWS_REGION", "us-east-1")],
            ("DEMO_COUNT", "many"),
            "DEMO_COUNT",
        ),
        (
            "demo-writer",
            &[],
            &[("AWS_REGION", "us-east-1")],
            ("TRIBUTARY_AWS_CONNECT_TIMEOUT_MS", "0"),
            "TRIBUTARY_AWS_CONNECT_TIMEOUT_MS",
        ),
        (
            "replay",
            &["snapshot"],
            &[
                ("REPLAY_TABLE", "profiles"),
                ("REPLAY_TO", "arn:aws:sns:us-east-1:000000000000:t"),
                ("AWS_REGION", "us-east-1"),
            ],
            ("REPLAY_SEGMENTS", "0"),
            "REPLAY_SEGMENTS",
        ),
        (
            "tributary-bench",
            &["apply", "--events", "many"],
            &[],
            ("RUST_LOG", "warn"),
            "--events",
        ),
    ];
    let mut wrong = Vec::new();
    for (binary, sub, base, change, names) in cases {
        let env = settings(base, &[change]);
        let out = run(binary, sub, &env, Duration::from_secs(20)).await?;
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let ok = out.code == Some(2)
            && out.stdout.is_empty()
            && lines.len() == 1
            && lines[0].contains(names);
        if !ok {
            wrong.push(format!(
                "{binary} {sub:?} with {change:?}: exit {:?}, stderr {:?}",
                out.code, out.stderr
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn the_insecure_database_tls_escape_hatch_is_logged_at_warn_on_start() -> Result<()> {
    // A remote host that does not resolve: the start gets past the TLS policy, warns,
    // then fails to connect.
    let env = [
        (
            "DATABASE_URL",
            "postgres://postgres@db.invalid:5432/analytics",
        ),
        ("SUBSCRIBER_ALLOW_INSECURE_DB_TLS", "true"),
        ("TRIBUTARY_LOG_FORMAT", "text"),
    ];
    let out = run("subscriber", &["migrate"], &env, Duration::from_secs(20)).await?;
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("INSECURE"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("SUBSCRIBER_ALLOW_INSECURE_DB_TLS"),
        "{out:?}"
    );
    assert_ne!(out.code, Some(2), "allowed, so not a bad setting: {out:?}");
    Ok(())
}

#[tokio::test]
async fn a_bad_database_url_holding_a_password_is_refused_without_echoing_it() -> Result<()> {
    let with_password =
        format!("postgres://app:{DB_PASSWORD}@db:5432/analytics?sslmode=sometimes&colour=blue");
    for sub in ["run", "migrate"] {
        let env = [
            ("DATABASE_URL", with_password.as_str()),
            ("SUBSCRIBER_QUEUE_URL", QUEUE),
        ];
        let out = run("subscriber", &[sub], &env, Duration::from_secs(20)).await?;
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains("DATABASE_URL"), "{out:?}");
        assert!(!out.stderr.contains(DB_PASSWORD) && !out.stdout.contains(DB_PASSWORD));
    }
    Ok(())
}

fn assert_no_secret(what: &str, out: &Run) {
    for secret in [DB_PASSWORD, AWS_SECRET, AWS_TOKEN] {
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains(secret),
                "{what}: {stream} contains a secret:\n{text}"
            );
        }
    }
}

fn aws_secrets(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDTRIBUTARYTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.into()),
        ("AWS_SESSION_TOKEN", AWS_TOKEN.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        ("RUST_LOG", "debug".into()),
        ("TRIBUTARY_LOG_FORMAT", "json".into()),
    ]
}

fn borrow<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn secrets_never_appear_in_the_output_of_a_failing_run() -> Result<()> {
    let closed = free_port()?;
    let nowhere = format!("http://127.0.0.1:{closed}");
    let db_nowhere = format!("postgres://app:{DB_PASSWORD}@127.0.0.1:{closed}/analytics");

    // Every AWS call fails (nothing listens): the subscriber cannot read its queue.
    let mut env = aws_secrets(&nowhere);
    env.push(("DATABASE_URL", db_nowhere.clone()));
    env.push(("SUBSCRIBER_QUEUE_URL", format!("{nowhere}/000000000000/q")));
    let out = run(
        "subscriber",
        &["run"],
        &borrow(&env),
        Duration::from_secs(8),
    )
    .await?;
    assert!(
        out.stderr.contains("ERROR") || out.code != Some(0),
        "{out:?}"
    );
    assert_no_secret("subscriber run, AWS unreachable", &out);

    // The database unreachable: migrate fails.
    let out = run(
        "subscriber",
        &["migrate"],
        &borrow(&env),
        Duration::from_secs(20),
    )
    .await?;
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_no_secret("subscriber migrate, database unreachable", &out);

    // The publisher, every AWS call failing.
    let mut env = aws_secrets(&nowhere);
    env.push(("PUBLISHER_TABLE", "profiles".into()));
    env.push((
        "PUBLISHER_TOPIC_ARN",
        "arn:aws:sns:us-east-1:000000000000:t".into(),
    ));
    env.push(("PUBLISHER_CHECKPOINT_TABLE", "checkpoints".into()));
    env.push((
        "PUBLISHER_FAILURE_QUEUE_URL",
        "http://127.0.0.1:9/000000000000/failures".into(),
    ));
    let out = run("publisher", &[], &borrow(&env), Duration::from_secs(8)).await?;
    // Unreachable is not a bad setting: DescribeTable is retried until SIGTERM, which
    // stops the publisher cleanly.
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_no_secret("publisher, AWS unreachable", &out);
    Ok(())
}

#[tokio::test]
async fn secrets_never_appear_when_the_database_fails_under_a_live_queue() -> Result<()> {
    // The real queue (the emulator), a database that refuses: the subscriber keeps
    // receiving, fails to apply, backs off, and logs all of it.
    let stack = Stack::new().await?;
    stack
        .send_bodies(&[include_str!("../../contracts/fixtures/v2/upserted.json").to_owned()])
        .await?;
    let closed = free_port()?;
    for db in [
        format!("postgres://app:{DB_PASSWORD}@127.0.0.1:{closed}/analytics"),
        // A server that answers, a role that does not exist.
        format!("postgres://no_such_role:{DB_PASSWORD}@127.0.0.1:5432/analytics"),
    ] {
        let mut env: Vec<(&'static str, String)> = [
            "AWS_ENDPOINT_URL_SQS",
            "AWS_ENDPOINT_URL_SNS",
            "AWS_ENDPOINT_URL_DYNAMODB",
        ]
        .iter()
        .filter_map(|k| Some((*k, std::env::var(k).ok()?)))
        .collect();
        env.extend(aws_secrets("http://127.0.0.1:9"));
        env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
        env.push(("DATABASE_URL", db));
        env.push(("SUBSCRIBER_QUEUE_URL", stack.resources.queue_url.clone()));
        env.push(("SUBSCRIBER_DLQ_URL", stack.resources.dlq_url.clone()));
        env.push(("SUBSCRIBER_WAIT_TIME_SECS", "1".into()));
        let out = run(
            "subscriber",
            &["run"],
            &borrow(&env),
            Duration::from_secs(8),
        )
        .await?;
        assert!(
            out.stderr.contains("ERROR") || out.stderr.contains("WARN"),
            "{out:?}"
        );
        assert_no_secret("subscriber run, database failing", &out);
    }
    stack.teardown().await
}

/// openssl, quietly; fails with its output.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA and a server certificate for `localhost` signed by it, in `dir`.
fn make_ca_and_server_cert(dir: &Path, ca_name: &str) -> Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{ca_name}.key"),
            "-out",
            &format!("{ca_name}.crt"),
            "-subj",
            &format!("/CN={ca_name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca_name}.crt"),
            "-CAkey",
            &format!("{ca_name}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    )?;
    Ok(())
}

#[tokio::test]
async fn tls_to_postgres_with_verify_full_and_a_ca_file() -> Result<()> {
    let certs = std::env::temp_dir().join(format!("tributary-tls-{}", e2e::random_id()));
    std::fs::create_dir_all(&certs)?;
    make_ca_and_server_cert(&certs, "test-ca")?;
    // A second CA that signed nothing of this server's.
    let other = certs.join("other");
    std::fs::create_dir_all(&other)?;
    make_ca_and_server_cert(&other, "other-ca")?;

    let pg = PrivatePostgres::init()?;
    let read = |p: &str| std::fs::read_to_string(certs.join(p));
    pg.write_file("server.crt", &read("server.crt")?, false)?;
    pg.write_file("server.key", &read("server.key")?, false)?;
    pg.write_file(
        "postgresql.conf",
        "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        true,
    )?;
    // TLS or nothing: a plain connection is refused by the server itself.
    pg.write_file(
        "pg_hba.conf",
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        false,
    )?;
    pg.restart()?;

    let url = |params: &str| {
        format!(
            "postgres://postgres@localhost:{}/postgres?{params}",
            pg.port()
        )
    };
    let ca = certs.join("test-ca.crt");
    let other_ca = other.join("other-ca.crt");
    let migrate = |db: String| async move {
        run(
            "subscriber",
            &["migrate"],
            &[
                ("DATABASE_URL", db.as_str()),
                ("TRIBUTARY_LOG_FORMAT", "text"),
            ],
            Duration::from_secs(30),
        )
        .await
    };

    let good = migrate(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca.display()
    )))
    .await?;
    assert_eq!(
        good.code,
        Some(0),
        "verify-full with the right CA: {good:?}"
    );

    let wrong_ca = migrate(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    )))
    .await?;
    assert_ne!(
        wrong_ca.code,
        Some(0),
        "a server certificate from another CA was accepted"
    );

    let plain = migrate(url("sslmode=disable")).await?;
    assert_ne!(plain.code, Some(0), "the server took a plain connection");

    // Same CA, but the certificate names `localhost`, not 127.0.0.1: verify-full checks it.
    let wrong_name = migrate(format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    ))
    .await?;
    assert_ne!(
        wrong_name.code,
        Some(0),
        "a certificate for another host name was accepted"
    );

    std::fs::remove_dir_all(&certs)?;
    Ok(())
}
