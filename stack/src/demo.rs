//! A stand-in for the User Profile service: writes realistic profile traffic (creates,
//! updates, deletes, re-creates of deleted keys) to the table the way the real service
//! does — optimistic concurrency on `version`, a fresh `created_at` (and so a new
//! generation) with the version restarting at 1 when a deleted profile is re-created.
//! Used by the `demo-writer` binary and by the end-to-end tests.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb as ddb;
use ddb::types::AttributeValue;
use rand::Rng;
use rand::seq::IndexedRandom;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use publisher::record::attr;

/// One profile as the profile service stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileItem {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub country: Option<String>,
    pub plan: String,
    pub marketing_email: bool,
    /// `None`: the item predates SMS consent and has no such attribute.
    pub marketing_sms: Option<bool>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
    pub lifetime_value_cents: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub version: i64,
    /// Service-private data the contract does not carry.
    pub password_hash: Vec<u8>,
}

const FIRST: [&str; 10] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Lamport",
];
const COUNTRIES: [&str; 8] = ["GB", "US", "DE", "FR", "IN", "BR", "JP", "NG"];
const PLANS: [&str; 4] = ["free", "pro", "business", "enterprise"];
const LOCALES: [&str; 5] = ["en-GB", "en-US", "de-DE", "fr-FR", "pt-BR"];
const ZONES: [&str; 4] = [
    "Europe/London",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Tokyo",
];

/// Now, to the microsecond (the contract's generation unit).
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .expect("a truncated nanosecond is valid")
}

impl ProfileItem {
    /// A new profile at version 1. `v2_fields` decides whether the item also has the
    /// attributes only schema v2 carries (SMS consent, time zone).
    pub fn random(rng: &mut impl Rng, user_id: &str, v2_fields: bool) -> ProfileItem {
        let now = now_micros();
        let first = FIRST.choose(rng).expect("non-empty");
        let last = LAST.choose(rng).expect("non-empty");
        ProfileItem {
            user_id: user_id.to_owned(),
            email: format!(
                "{}.{}+{user_id}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            display_name: format!("{first} {last}"),
            country: rng
                .random_bool(0.9)
                .then(|| COUNTRIES.choose(rng).expect("non-empty").to_string()),
            plan: PLANS.choose(rng).expect("non-empty").to_string(),
            marketing_email: rng.random_bool(0.4),
            marketing_sms: v2_fields.then(|| rng.random_bool(0.2)),
            locale: Some(LOCALES.choose(rng).expect("non-empty").to_string()),
            time_zone: v2_fields.then(|| ZONES.choose(rng).expect("non-empty").to_string()),
            lifetime_value_cents: "0".into(),
            created_at: now,
            updated_at: now,
            version: 1,
            password_hash: (0..16).map(|_| rng.random()).collect(),
        }
    }

    /// A plausible edit: plan change, purchase (with a 30+ digit lifetime value now and
    /// then, to exercise exact numbers), consent toggle or rename; bumps the version.
    pub fn mutate(&mut self, rng: &mut impl Rng) {
        match rng.random_range(0..4) {
            0 => self.plan = PLANS.choose(rng).expect("non-empty").to_string(),
            1 => {
                self.lifetime_value_cents = if rng.random_bool(0.1) {
                    format!(
                        "{}{:020}",
                        rng.random_range(1_000_000_000u64..9_999_999_999),
                        rng.random::<u64>() % 10u64.pow(19)
                    )
                } else {
                    (rng.random_range(0..10_000_000u64)).to_string()
                }
            }
            2 => self.marketing_email = !self.marketing_email,
            _ => {
                let first = FIRST.choose(rng).expect("non-empty");
                self.display_name = format!(
                    "{first} {}",
                    self.display_name.split(' ').next_back().unwrap_or("")
                );
            }
        }
        self.updated_at = now_micros().max(self.updated_at);
        self.version += 1;
    }

    /// The DynamoDB item.
    pub fn to_item(&self) -> HashMap<String, AttributeValue> {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let ts =
            |t: &OffsetDateTime| AttributeValue::S(t.format(&Rfc3339).expect("a UTC time formats"));
        let mut item = HashMap::from([
            (attr::USER_ID.to_owned(), s(&self.user_id)),
            (attr::EMAIL.to_owned(), s(&self.email)),
            (attr::DISPLAY_NAME.to_owned(), s(&self.display_name)),
            (attr::PLAN.to_owned(), s(&self.plan)),
            (
                attr::MARKETING_EMAIL.to_owned(),
                AttributeValue::Bool(self.marketing_email),
            ),
            (
                attr::LIFETIME_VALUE_CENTS.to_owned(),
                AttributeValue::N(self.lifetime_value_cents.clone()),
            ),
            (attr::CREATED_AT.to_owned(), ts(&self.created_at)),
            (attr::UPDATED_AT.to_owned(), ts(&self.updated_at)),
            (
                attr::VERSION.to_owned(),
                AttributeValue::N(self.version.to_string()),
            ),
            (
                "password_hash".to_owned(),
                AttributeValue::B(self.password_hash.clone().into()),
            ),
        ]);
        if let Some(c) = &self.country {
            item.insert(attr::COUNTRY.to_owned(), s(c));
        }
        if let Some(l) = &self.locale {
            item.insert(attr::LOCALE.to_owned(), s(l));
        }
        if let Some(z) = &self.time_zone {
            item.insert(attr::TIME_ZONE.to_owned(), s(z));
        }
        if let Some(sms) = self.marketing_sms {
            item.insert(attr::MARKETING_SMS.to_owned(), AttributeValue::Bool(sms));
        }
        item
    }
}

/// A write the table refused or could not take.
#[derive(Debug, thiserror::Error)]
#[error("writing profile {user_id}: {message}")]
pub struct WriteError {
    pub user_id: String,
    pub message: String,
}

impl WriteError {
    fn of<E, R>(item: &ProfileItem, e: &ddb::error::SdkError<E, R>) -> Self
    where
        E: ddb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        WriteError {
            user_id: item.user_id.clone(),
            message: runtime::report::describe_sdk_error(e),
        }
    }
}

/// Writes profiles with the profile service's concurrency rules.
#[derive(Debug, Clone)]
pub struct ProfileWriter {
    client: ddb::Client,
    table: String,
}

impl ProfileWriter {
    pub fn new(client: ddb::Client, table: String) -> Self {
        ProfileWriter { client, table }
    }

    /// Waits until the table exists and is `ACTIVE`, for at most `limit`: under
    /// docker-compose the writer may start before the table's creator has run. Returns
    /// whether it had to wait; `Ok(false)` when the table was there at once.
    ///
    /// # Errors
    /// The table is still missing (or not active) after `limit`, or `DescribeTable`
    /// fails for another reason, or `shutdown` fires first.
    pub async fn wait_for_table(
        &self,
        limit: Duration,
        shutdown: &CancellationToken,
    ) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut waited = false;
        loop {
            let state = match self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
            {
                Ok(out) => out.table().and_then(|t| t.table_status().cloned()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) =>
                {
                    None
                }
                Err(e) => {
                    return Err(format!(
                        "describing table {}: {}",
                        self.table,
                        runtime::report::describe_sdk_error(&e)
                    ));
                }
            };
            if state == Some(ddb::types::TableStatus::Active) {
                return Ok(waited);
            }
            if !waited {
                tracing::info!(table = %self.table, "Waiting for the table to exist and be active.");
                waited = true;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "table {} is not there and active after {} s (state: {}); create it first \
                     (`bootstrap`), or raise DEMO_TABLE_WAIT_SECS",
                    self.table,
                    limit.as_secs(),
                    state.map_or_else(|| "missing".to_owned(), |s| s.as_str().to_owned()),
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = shutdown.cancelled() => return Err("stopped while waiting for the table".to_owned()),
            }
        }
    }

    /// Creates a profile that does not exist.
    ///
    /// # Errors
    /// [`WriteError`] when the item exists or the table refuses the write.
    pub async fn create(&self, item: &ProfileItem) -> Result<(), WriteError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.to_item()))
            .condition_expression("attribute_not_exists(user_id)")
            .send()
            .await
            .map(|_| ())
            .map_err(|e| WriteError::of(item, &e))
    }

    /// Replaces a profile whose stored version is `item.version - 1`.
    ///
    /// # Errors
    /// [`WriteError`] on a version conflict or a refused write.
    pub async fn update(&self, item: &ProfileItem) -> Result<(), WriteError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.to_item()))
            .condition_expression("#v = :expected")
            .expression_attribute_names("#v", attr::VERSION)
            .expression_attribute_values(
                ":expected",
                AttributeValue::N((item.version - 1).to_string()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| WriteError::of(item, &e))
    }

    /// Deletes a profile at the version the caller last saw.
    ///
    /// # Errors
    /// [`WriteError`] on a version conflict or a refused write.
    pub async fn delete(&self, item: &ProfileItem) -> Result<(), WriteError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(attr::USER_ID, AttributeValue::S(item.user_id.clone()))
            .condition_expression("#v = :expected")
            .expression_attribute_names("#v", attr::VERSION)
            .expression_attribute_values(":expected", AttributeValue::N(item.version.to_string()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| WriteError::of(item, &e))
    }
}

/// Counts of what a traffic run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrafficStats {
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub recreates: u64,
}

impl TrafficStats {
    pub fn total(&self) -> u64 {
        self.creates + self.updates + self.deletes + self.recreates
    }
}

/// Live and deleted profiles of one traffic run: the writer's view of the source.
#[derive(Debug, Default)]
pub struct Traffic {
    pub live: Vec<ProfileItem>,
    pub deleted: Vec<ProfileItem>,
    pub stats: TrafficStats,
    next_id: u64,
    prefix: String,
}

impl Traffic {
    /// Keys are `<prefix>-<n>`.
    pub fn new(prefix: &str) -> Self {
        Traffic {
            prefix: prefix.to_owned(),
            ..Traffic::default()
        }
    }

    /// Performs one mutation chosen like real traffic: new sign-ups until `keys` profiles
    /// exist, then mostly edits, some deletions and some re-created deleted profiles.
    ///
    /// # Errors
    /// [`WriteError`] when the table refuses a write.
    pub async fn step(
        &mut self,
        writer: &ProfileWriter,
        rng: &mut impl Rng,
        keys: usize,
        v2_fields: bool,
    ) -> Result<(), WriteError> {
        let roll = rng.random_range(0..100);
        if self.live.len() < keys.min(5)
            || (self.live.len() + self.deleted.len() < keys && (16..36).contains(&roll))
        {
            self.next_id += 1;
            let item = ProfileItem::random(
                rng,
                &format!("{}-{:06}", self.prefix, self.next_id),
                v2_fields,
            );
            writer.create(&item).await?;
            self.live.push(item);
            self.stats.creates += 1;
        } else if roll < 10 && !self.live.is_empty() {
            let i = rng.random_range(0..self.live.len());
            let item = self.live.swap_remove(i);
            writer.delete(&item).await?;
            self.deleted.push(item);
            self.stats.deletes += 1;
        } else if roll < 16 && !self.deleted.is_empty() {
            let i = rng.random_range(0..self.deleted.len());
            let old = self.deleted.swap_remove(i);
            let mut item = ProfileItem::random(rng, &old.user_id, v2_fields);
            // A new incarnation: strictly later created_at, version restarts at 1.
            if item.created_at <= old.created_at {
                item.created_at = old.created_at + Duration::from_micros(1);
                item.updated_at = item.created_at;
            }
            writer.create(&item).await?;
            self.live.push(item);
            self.stats.recreates += 1;
        } else if !self.live.is_empty() {
            let i = rng.random_range(0..self.live.len());
            let mut item = self.live[i].clone();
            item.mutate(rng);
            writer.update(&item).await?;
            self.live[i] = item;
            self.stats.updates += 1;
        }
        Ok(())
    }

    /// Runs `plan.count` mutations at about `plan.rate` per second, or until `shutdown`.
    ///
    /// # Errors
    /// [`WriteError`] when the table refuses a write.
    pub async fn run(
        &mut self,
        writer: &ProfileWriter,
        rng: &mut impl Rng,
        plan: &TrafficPlan,
        shutdown: &CancellationToken,
    ) -> Result<(), WriteError> {
        let period = (plan.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(plan.rate)));
        let mut ticker = period.map(tokio::time::interval);
        for _ in 0..plan.count {
            if let Some(t) = ticker.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            } else if shutdown.is_cancelled() {
                return Ok(());
            }
            self.step(writer, rng, plan.keys, plan.v2_fields).await?;
        }
        Ok(())
    }
}

/// How much traffic to write, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficPlan {
    /// Distinct profiles to create before mostly editing.
    pub keys: usize,
    /// Mutations to perform.
    pub count: u64,
    /// Mutations per second; 0 = as fast as the table takes them.
    pub rate: u32,
    /// Whether items get the attributes only schema v2 carries.
    pub v2_fields: bool,
}

impl TrafficPlan {
    /// `count` mutations over `keys` profiles, unthrottled, with v2 attributes.
    pub fn new(keys: usize, count: u64) -> Self {
        TrafficPlan {
            keys,
            count,
            rate: 0,
            v2_fields: true,
        }
    }

    pub fn rate(self, rate: u32) -> Self {
        TrafficPlan { rate, ..self }
    }

    pub fn v1_items(self) -> Self {
        TrafficPlan {
            v2_fields: false,
            ..self
        }
    }
}
