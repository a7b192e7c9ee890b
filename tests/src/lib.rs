//! The end-to-end harness: real emulators (DynamoDB Local for the table and its stream,
//! moto's server for SNS and SQS), a real PostgreSQL, and the real `publisher` and
//! `subscriber` binaries as child processes.
//!
//! `scripts/test.sh` starts the emulators and exports their endpoints
//! (`AWS_ENDPOINT_URL_*`) and `TRIBUTARY_TEST_DATABASE_URL`; every test builds its own
//! [`Stack`] with random resource names and its own database, so tests run in parallel
//! and leave nothing behind that another test could see. Every wait is bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::AttributeValue as DdbValue;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use contracts::{Position, Profile};
use publisher::record::{Item, project};
use publisher::stream::convert_item;
use runtime::aws::Clients;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Row};
use stack::bootstrap::{Names, Resources, bootstrap};
use stack::demo::{ProfileWriter, Traffic, TrafficPlan};
use tokio::process::{Child, Command};

pub mod operator;
pub mod outage;
pub mod stream;

/// A random lowercase id for resource names.
pub fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// The directory holding the workspace's binaries (`target/debug`), found from the
/// test executable's own path (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIBUTARY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("tests run from target/<profile>/deps");
    dir.to_path_buf()
}

/// Path of one workspace binary, built first: `cargo test -p tributary-e2e` alone does
/// not rebuild the other packages' binaries, and a test must never run a stale one.
/// (Once per test process; a no-op when they are up to date.)
pub fn bin(name: &str) -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    let dir = bin_dir();
    let built = BUILT.get_or_init(|| {
        if std::env::var_os("TRIBUTARY_BINARIES_BUILT").is_some() {
            return Ok(()); // scripts/test.sh built them just before the tests
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        // The same selection as scripts/test.sh's build step: another selection unifies
        // dependency features differently and would rebuild half the dependency tree.
        cmd.args([
            "build",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--features",
            "tributary-e2e/e2e",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build --bins failed: {s}")),
            Err(e) => Err(format!("running cargo: {e}")),
        }
    });
    if let Err(e) = built {
        bail!("{e}");
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The environment a test needs, with a clear message when the emulators are not up.
pub fn require_env() -> Result<String> {
    for var in [
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_SNS",
    ] {
        if std::env::var_os(var).is_none() {
            bail!(
                "{var} is not set: run the tests with scripts/test.sh, which starts the emulators"
            );
        }
    }
    std::env::var("TRIBUTARY_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .context("TRIBUTARY_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh")
}

/// One test's private pipeline: table, stream, topic, queues, database.
#[derive(Debug)]
pub struct Stack {
    pub id: String,
    pub clients: Clients,
    pub resources: Resources,
    /// A second queue subscribed to the topic (raw delivery): a copy of every published
    /// message, for counting and re-sending.
    pub tap_queue_url: String,
    pub database_url: String,
    pub pool: PgPool,
    /// When set, the binaries this stack spawns reach SNS and SQS through this endpoint
    /// (an [`outage::CutProxy`]) instead of the emulator's; the test's own clients do not.
    pub sns_sqs_via: Option<String>,
    admin_url: String,
    database: String,
}

impl Stack {
    /// Creates every resource with random names and a migrated database.
    pub async fn new() -> Result<Stack> {
        let admin_url = require_env()?;
        Stack::on_server(admin_url).await
    }

    /// Like [`Stack::new`], with the database on the server `admin_url` names (e.g. a
    /// [`PrivatePostgres`] the test may restart).
    pub async fn on_server(admin_url: String) -> Result<Stack> {
        require_env()?;
        let id = random_id();
        let config = runtime::aws::default_sdk_config().await;
        let clients = Clients::new(&config);
        let names = Names::scratch("", &id);
        let resources = bootstrap(&clients, &names).await.context("bootstrap")?;
        // Bootstrap is idempotent: running it again finds the same resources.
        let again = bootstrap(&clients, &names)
            .await
            .context("second bootstrap")?;
        anyhow::ensure!(
            again == resources,
            "bootstrap is not idempotent: {again:?} != {resources:?}"
        );

        let tap = clients
            .sqs
            .create_queue()
            .queue_name(format!("tap-{id}"))
            .send()
            .await?;
        let tap_queue_url = tap.queue_url.context("tap queue url")?;
        let tap_arn = queue_arn_of(&clients, &tap_queue_url).await?;
        clients
            .sns
            .subscribe()
            .topic_arn(&resources.topic_arn)
            .protocol("sqs")
            .endpoint(tap_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await?;

        let database = format!("tributary_e2e_{id}");
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options: PgConnectOptions = admin_url.parse()?;
        let options = options.database(&database);
        let database_url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        subscriber::MIGRATOR
            .run(&pool)
            .await
            .context("migrations")?;
        Ok(Stack {
            id,
            clients,
            resources,
            tap_queue_url,
            database_url,
            pool,
            sns_sqs_via: None,
            admin_url,
            database,
        })
    }

    /// Stops each process with SIGTERM (each must exit 0 within [`STOP_WITHIN`], as
    /// [`stops_cleanly`] checks), then [`Stack::teardown`].
    pub async fn finish(self, processes: &mut [&mut Child]) -> Result<()> {
        for process in processes.iter_mut() {
            stops_cleanly(process, STOP_WITHIN).await?;
        }
        self.teardown().await
    }

    /// Drops the test's database (AWS resources are in-memory emulator state).
    pub async fn teardown(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }

    /// The names the stack was bootstrapped with.
    pub fn names(&self) -> Names {
        Names::scratch("", &self.id)
    }

    pub fn writer(&self) -> ProfileWriter {
        ProfileWriter::new(self.clients.dynamodb.clone(), self.resources.table.clone())
    }

    /// Writes `plan` as the profile service would, seeded so every run writes the same
    /// traffic, and returns what was written.
    pub async fn write_traffic(
        &self,
        prefix: &str,
        seed: u64,
        plan: TrafficPlan,
    ) -> Result<Traffic> {
        use rand::SeedableRng;
        let mut traffic = Traffic::new(prefix);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        traffic
            .run(
                &self.writer(),
                &mut rng,
                &plan,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await?;
        Ok(traffic)
    }

    /// Starts the real `publisher` binary on this stack; extra flags appended.
    pub fn spawn_publisher(&self, extra: &[&str]) -> Result<Child> {
        self.spawn_publisher_on(&self.resources.checkpoint_table, extra)
    }

    /// [`Stack::spawn_publisher`] keeping its checkpoints and leases in `checkpoint_table`
    /// (see [`Stack::create_checkpoint_table`]): a publisher that reads the whole stream
    /// on its own, beside another one.
    pub fn spawn_publisher_on(&self, checkpoint_table: &str, extra: &[&str]) -> Result<Child> {
        let r = &self.resources;
        let mut cmd =
            self.publisher_command(&r.table, checkpoint_table, &r.failure_queue_url, extra)?;
        Ok(cmd.spawn()?)
    }

    /// The `publisher` command [`Stack::spawn_publisher`] runs, reading `table`, keeping
    /// its checkpoints in `checkpoint_table` and parking into `failure_queue` (the test
    /// may set more before spawning it).
    pub fn publisher_command(
        &self,
        table: &str,
        checkpoint_table: &str,
        failure_queue: &str,
        extra: &[&str],
    ) -> Result<Command> {
        let topic = &self.resources.topic_arn;
        let mut cmd = Command::new(bin("publisher")?);
        cmd.args(["--table", table, "--topic-arn", topic])
            .args(["--checkpoint-table", checkpoint_table])
            .args(["--failure-queue-url", failure_queue])
            .args(["--lease-ttl-secs", "3", "--idle-poll-max-ms", "300"])
            .args(extra);
        test_logs(&mut cmd);
        self.route_sns_sqs(&mut cmd);
        Ok(cmd)
    }

    /// Points a binary at [`Stack::sns_sqs_via`], when set.
    fn route_sns_sqs(&self, cmd: &mut Command) {
        if let Some(via) = &self.sns_sqs_via {
            cmd.env("AWS_ENDPOINT_URL_SNS", via)
                .env("AWS_ENDPOINT_URL_SQS", via);
        }
    }

    /// Starts the real `subscriber run` on this stack; extra flags appended.
    pub fn spawn_subscriber(&self, extra: &[&str]) -> Result<Child> {
        Ok(self.subscriber_command("1", extra)?.spawn()?)
    }

    /// The `subscriber run` command [`Stack::spawn_subscriber`] runs, long-polling for
    /// `wait_time_secs` (the test may set more before spawning it).
    pub fn subscriber_command(&self, wait_time_secs: &str, extra: &[&str]) -> Result<Command> {
        let r = &self.resources;
        let mut cmd = Command::new(bin("subscriber")?);
        cmd.arg("run")
            .env("SUBSCRIBER_QUEUE_URL", &r.queue_url)
            .env("SUBSCRIBER_DLQ_URL", &r.dlq_url)
            .env("DATABASE_URL", &self.database_url)
            .env("SUBSCRIBER_WAIT_TIME_SECS", wait_time_secs)
            .args(extra);
        test_logs(&mut cmd);
        self.route_sns_sqs(&mut cmd);
        Ok(cmd)
    }

    /// Every item in the source table, as the publisher's decoder sees it.
    pub async fn source_items(&self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<std::collections::HashMap<String, DdbValue>> = None;
        loop {
            let out = self
                .clients
                .dynamodb
                .scan()
                .table_name(&self.resources.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await?;
            for item in out.items.unwrap_or_default() {
                items.push(convert_item(
                    item.into_iter()
                        .map(|(k, v)| (k, to_streams_value(v)))
                        .collect(),
                ));
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(items)
    }

    /// What the analytics store must hold for every live source item.
    pub async fn expected_live(&self) -> Result<BTreeMap<String, (Position, Profile)>> {
        let mut out = BTreeMap::new();
        for item in self.source_items().await? {
            let (position, profile) = project(&item, "scan").map_err(|e| anyhow::anyhow!("{e}"))?;
            out.insert(profile.user_id.clone(), (position, profile));
        }
        Ok(out)
    }

    /// The analytics store's rows.
    pub async fn analytics_rows(&self) -> Result<BTreeMap<String, AnalyticsRow>> {
        let rows = sqlx::query(
            "SELECT user_id, deleted, generation, version, email, display_name, country, plan,
                    marketing_email, marketing_sms, locale, time_zone, lifetime_value_cents::text AS ltv,
                    created_at, updated_at
             FROM analytics.user_profiles",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let r = AnalyticsRow {
                user_id: row.try_get("user_id")?,
                deleted: row.try_get("deleted")?,
                position: Position {
                    generation: row.try_get("generation")?,
                    version: row.try_get("version")?,
                },
                email: row.try_get("email")?,
                display_name: row.try_get("display_name")?,
                country: row.try_get("country")?,
                plan: row.try_get("plan")?,
                marketing_email: row.try_get("marketing_email")?,
                marketing_sms: row.try_get("marketing_sms")?,
                locale: row.try_get("locale")?,
                time_zone: row.try_get("time_zone")?,
                lifetime_value_cents: row.try_get("ltv")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            };
            out.insert(r.user_id.clone(), r);
        }
        Ok(out)
    }

    /// Differences between source and analytics: live rows must equal the projection of
    /// the source item, every other row must be a tombstone. Empty when converged.
    pub async fn drift(&self) -> Result<Vec<String>> {
        let expected = self.expected_live().await?;
        let rows = self.analytics_rows().await?;
        let mut drift = Vec::new();
        for (key, (position, profile)) in &expected {
            match rows.get(key) {
                None => drift.push(format!("{key}: missing")),
                Some(row) => {
                    let want = AnalyticsRow::live(*position, profile);
                    if row != &want {
                        drift.push(format!(
                            "{key}: stale or different\n  have {row:?}\n  want {want:?}"
                        ));
                    }
                }
            }
        }
        for (key, row) in &rows {
            if !expected.contains_key(key) && !row.deleted {
                drift.push(format!("{key}: live in analytics, gone from the source"));
            }
        }
        Ok(drift)
    }

    /// Waits until [`Stack::drift`] is empty; fails with the drift after `timeout`.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let drift = self.drift().await?;
            if drift.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not converged after {timeout:?}; {} keys drift, first: {}",
                    drift.len(),
                    drift[..drift.len().min(3)].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// History rows, and how many distinct source changes they describe.
    pub async fn history_counts(&self) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT count(*) AS n, count(DISTINCT (key, generation, version, deleted)) AS d FROM analytics.profile_changes",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("d")?))
    }

    /// Receives and deletes every message of a queue until it stays empty for `quiet`.
    pub async fn drain(
        &self,
        queue_url: &str,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut last_seen = Instant::now();
        while last_seen.elapsed() < quiet {
            anyhow::ensure!(
                Instant::now() < deadline,
                "queue still not drained after {timeout:?}"
            );
            let msgs = self.receive(queue_url).await?;
            if msgs.is_empty() {
                continue;
            }
            last_seen = Instant::now();
            self.delete_batch(queue_url, &msgs).await?;
            out.extend(msgs);
        }
        Ok(out)
    }

    /// One receive of up to ten messages (one-second long poll), with every attribute.
    pub async fn receive(&self, queue_url: &str) -> Result<Vec<Message>> {
        Ok(self
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await?
            .messages
            .unwrap_or_default())
    }

    /// Deletes received messages (at most ten) with one `DeleteMessageBatch`: moto slows
    /// as a queue grows, and ten single deletes per receive made draining the test's
    /// bottleneck.
    pub async fn delete_batch(&self, queue_url: &str, msgs: &[Message]) -> Result<()> {
        let entries = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                    .build()
                    .expect("id and handle set")
            })
            .collect();
        let deleted = self
            .clients
            .sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(
            deleted.failed.is_empty(),
            "delete failed: {:?}",
            deleted.failed
        );
        Ok(())
    }

    /// Sends bodies to the subscriber's queue, ten at a time.
    pub async fn send_bodies(&self, bodies: &[String]) -> Result<()> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .expect("id and body set")
                })
                .collect();
            let out = self
                .clients
                .sqs
                .send_message_batch()
                .queue_url(&self.resources.queue_url)
                .set_entries(Some(entries))
                .send()
                .await?;
            anyhow::ensure!(out.failed.is_empty(), "send failed: {:?}", out.failed);
        }
        Ok(())
    }

    /// Creates another checkpoint table, as `bootstrap` creates the stack's, and returns
    /// its name (deleted with the stack's resources only if the test deletes it).
    pub async fn create_checkpoint_table(&self, suffix: &str) -> Result<String> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let name = format!("{}-{suffix}", self.resources.checkpoint_table);
        let key = publisher::checkpoint::KEY_ATTRIBUTE;
        self.clients
            .dynamodb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .send()
            .await
            .context("creating a checkpoint table")?;
        Ok(name)
    }

    /// The ARN of one of the stack's queues.
    pub async fn queue_arn(&self, url: &str) -> Result<String> {
        queue_arn_of(&self.clients, url).await
    }

    /// Writes one raw item into the source table.
    pub async fn put_item(&self, item: std::collections::HashMap<String, DdbValue>) -> Result<()> {
        self.clients
            .dynamodb
            .put_item()
            .table_name(&self.resources.table)
            .set_item(Some(item))
            .send()
            .await?;
        Ok(())
    }

    /// Sends one raw body (e.g. poison: `"not an event"`) to the subscriber's queue.
    pub async fn send_raw(&self, body: &str) -> Result<()> {
        self.clients
            .sqs
            .send_message()
            .queue_url(&self.resources.queue_url)
            .message_body(body)
            .send()
            .await?;
        Ok(())
    }

    /// Takes (receives and deletes) messages from `url` until at least `count` have
    /// come, each round draining until `quiet`; fails after `timeout`.
    pub async fn take_at_least(
        &self,
        url: &str,
        count: usize,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {count} messages arrived in {url} after {timeout:?}",
                got.len()
            );
            got.extend(self.drain(url, quiet, timeout).await?);
        }
        Ok(got)
    }

    /// Waits until [`Stack::queue_depth`] of `url` is `depth`.
    pub async fn wait_depth(&self, url: &str, depth: u64, timeout: Duration) -> Result<()> {
        eventually(&format!("{depth} messages in {url}"), timeout, || async {
            Ok((self.queue_depth(url).await? == depth).then_some(()))
        })
        .await
    }

    /// Visible plus in-flight messages of a queue.
    pub async fn queue_depth(&self, queue_url: &str) -> Result<u64> {
        let attrs = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?
            .attributes
            .unwrap_or_default();
        let get = |k: &QueueAttributeName| {
            attrs
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(get(&QueueAttributeName::ApproximateNumberOfMessages)
            + get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }
}

async fn queue_arn_of(clients: &Clients, url: &str) -> Result<String> {
    clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no QueueArn")
}

/// A row of `analytics.user_profiles`, in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsRow {
    pub user_id: String,
    pub deleted: bool,
    pub position: Position,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub country: Option<String>,
    pub plan: Option<String>,
    pub marketing_email: Option<bool>,
    pub marketing_sms: Option<bool>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    pub lifetime_value_cents: Option<String>,
    pub created_at: Option<time::OffsetDateTime>,
    pub updated_at: Option<time::OffsetDateTime>,
}

impl AnalyticsRow {
    /// The row a live profile at `position` must produce.
    pub fn live(position: Position, p: &Profile) -> AnalyticsRow {
        AnalyticsRow {
            user_id: p.user_id.clone(),
            deleted: false,
            position,
            email: Some(p.email.clone()),
            display_name: Some(p.display_name.clone()),
            country: p.country.clone(),
            plan: Some(p.plan.clone()),
            marketing_email: Some(p.consents.marketing_email),
            marketing_sms: Some(p.consents.marketing_sms),
            locale: p.locale.clone(),
            time_zone: p.time_zone.clone(),
            lifetime_value_cents: p
                .lifetime_value_cents
                .as_ref()
                .map(|n| n.as_str().to_owned()),
            created_at: Some(p.created_at),
            updated_at: Some(p.updated_at),
        }
    }
}

fn to_streams_value(v: DdbValue) -> aws_sdk_dynamodbstreams::types::AttributeValue {
    use aws_sdk_dynamodbstreams::primitives::Blob;
    use aws_sdk_dynamodbstreams::types::AttributeValue as S;
    match v {
        DdbValue::S(s) => S::S(s),
        DdbValue::N(n) => S::N(n),
        DdbValue::B(b) => S::B(Blob::new(b.into_inner())),
        DdbValue::Bool(b) => S::Bool(b),
        DdbValue::Null(n) => S::Null(n),
        DdbValue::M(m) => S::M(
            m.into_iter()
                .map(|(k, v)| (k, to_streams_value(v)))
                .collect(),
        ),
        DdbValue::L(l) => S::L(l.into_iter().map(to_streams_value).collect()),
        DdbValue::Ss(v) => S::Ss(v),
        DdbValue::Ns(v) => S::Ns(v),
        DdbValue::Bs(v) => S::Bs(v.into_iter().map(|b| Blob::new(b.into_inner())).collect()),
        _ => S::Null(true),
    }
}

/// Polls `check` until it returns `Some`, failing after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends signal `sig` (`STOP`, `CONT`, `TERM`, …) to a child, with `kill(1)`.
pub fn signal(child: &Child, sig: &str) -> Result<()> {
    let pid = child.id().context("process already reaped")?;
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// How `child` ended if it exits within `limit` (`Some(None)`: by a signal); `None`
/// while it still runs.
pub async fn exit_within(child: &mut Child, limit: Duration) -> Result<Option<Option<i32>>> {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => Ok(Some(status?.code())),
        Err(_) => Ok(None),
    }
}

/// A drain that hangs: `first` leaves `child` running (a second later), and `second`
/// ends it within 10 s with 130.
pub async fn a_second_signal_forces_the_exit(
    child: &mut Child,
    first: &str,
    second: &str,
) -> Result<()> {
    signal(child, first)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = child.try_wait()?;
    anyhow::ensure!(
        early.is_none(),
        "exited ({early:?}) on the first SIG{first}: the drain did not hang, no test"
    );
    signal(child, second)?;
    let ended = exit_within(child, Duration::from_secs(10)).await?;
    anyhow::ensure!(
        ended == Some(Some(130)),
        "{ended:?} after the second signal, expected exit 130"
    );
    Ok(())
}

/// The log level the binaries run at: `TRIBUTARY_TEST_LOG`, else `warn`.
pub fn test_log_level() -> String {
    std::env::var("TRIBUTARY_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// What every binary a test starts gets: text logs at [`test_log_level`], no standard
/// in, killed when dropped.
pub fn test_logs(cmd: &mut Command) -> &mut Command {
    cmd.env("TRIBUTARY_LOG_FORMAT", "text")
        .env("RUST_LOG", test_log_level())
        .stdin(Stdio::null())
        .kill_on_drop(true)
}

/// The workspace binary `name` with `args`, set up by [`test_logs`].
pub fn bin_command(name: &str, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(bin(name)?);
    cmd.args(args);
    test_logs(&mut cmd);
    Ok(cmd)
}

/// Runs `cmd` to the end, bounded by `timeout`, returning its output.
pub async fn run_to_end(mut cmd: Command, timeout: Duration) -> Result<std::process::Output> {
    tokio::time::timeout(timeout, cmd.output())
        .await
        .context("the command did not finish")?
        .context("the command did not start")
}

/// A finished command's standard out followed by its standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A string message attribute of a received SQS message, when it has one.
pub fn message_attr_opt(m: &Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value.clone())
}

/// A string message attribute of a received SQS message (empty when absent).
pub fn message_attr(m: &Message, name: &str) -> String {
    message_attr_opt(m, name).unwrap_or_default()
}

/// How long [`Stack::finish`] gives a process to drain and exit: the subscriber's
/// drain bound (50 s at most) with room to spare on a loaded machine.
pub const STOP_WITHIN: Duration = Duration::from_secs(90);

/// Sends SIGTERM and asserts the process exits with status 0 within `timeout`.
pub async fn stops_cleanly(child: &mut Child, timeout: Duration) -> Result<()> {
    let code = terminate(child, timeout).await?;
    anyhow::ensure!(
        code == Some(0),
        "exit status after SIGTERM: {code:?}, expected Some(0)"
    );
    Ok(())
}

/// Sends SIGTERM and waits for the process to exit; returns its exit code.
pub async fn terminate(child: &mut Child, timeout: Duration) -> Result<Option<i32>> {
    let pid = child.id().context("process already reaped")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    let exit = tokio::time::timeout(timeout, child.wait())
        .await
        .context("process did not exit after SIGTERM")??;
    Ok(exit.code())
}

/// A PostgreSQL cluster of the test's own — `initdb` into a temporary directory, on a
/// free loopback port — for tests that stop and restart the server: the machine's
/// server is shared and must never be restarted by a test.
///
/// The binaries come from `TRIBUTARY_PG_BIN` or the newest
/// `/usr/lib/postgresql/<major>/bin`. PostgreSQL refuses to run as root, so under root
/// every command runs as the `postgres` user (`runuser`). Stopped (immediately) and
/// deleted on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// `initdb` (trust auth, user `postgres`) and start.
    pub fn start() -> Result<PrivatePostgres> {
        let pg = PrivatePostgres::init()?;
        pg.start_server()?;
        Ok(pg)
    }

    /// `initdb` only: configure it ([`PrivatePostgres::write_file`]) and then
    /// [`PrivatePostgres::restart`] starts it.
    pub fn init() -> Result<PrivatePostgres> {
        let bin = match std::env::var_os("TRIBUTARY_PG_BIN") {
            Some(b) => PathBuf::from(b),
            None => newest_pg_bin()?,
        };
        let as_postgres = current_uid_is_root();
        let dir = std::env::temp_dir().join(format!("tributary-pg-{}", random_id()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let pg = PrivatePostgres {
            bin,
            dir,
            port,
            as_postgres,
        };
        pg.chown(&pg.dir)?;
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        Ok(pg)
    }

    /// Writes a file into the data directory (owned by the server's user, mode 0600),
    /// e.g. a certificate, or `pg_hba.conf`; `append` adds to it instead.
    pub fn write_file(&self, name: &str, contents: &str, append: bool) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.data().join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .mode(0o600)
            .open(&path)?;
        file.write_all(contents.as_bytes())?;
        self.chown(&path)?;
        Ok(path)
    }

    fn chown(&self, path: &std::path::Path) -> Result<()> {
        if self.as_postgres {
            let status = std::process::Command::new("chown")
                .args(["postgres:", &path.to_string_lossy()])
                .status()?;
            anyhow::ensure!(status.success(), "chown postgres {}", path.display());
        }
        Ok(())
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn start_server(&self) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.dir.join("server.log").to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server the way a crash does (`-m immediate`: no checkpoint, every
    /// connection cut).
    pub fn crash(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Starts it again after [`PrivatePostgres::crash`] (crash recovery runs first).
    pub fn restart(&self) -> Result<()> {
        self.start_server()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn current_uid_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn newest_pg_bin() -> Result<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: set TRIBUTARY_PG_BIN to PostgreSQL's bin directory")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin: set TRIBUTARY_PG_BIN")
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A free loopback address for a binary's `--metrics-addr`.
pub fn free_addr() -> Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}
