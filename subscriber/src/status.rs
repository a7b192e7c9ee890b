//! The replication's status (the operator runs it as `replay status`): one screen
//! answering "is analytics in sync, how far behind, what is parked and why" — from the
//! queue's and the DLQ's depths, a peek at the DLQ, and the history table's
//! `applied_at − occurred_at`.
//!
//! Reads only: DLQ messages are received with a short visibility timeout and made
//! visible again at once (their receive count goes up by one, which a DLQ without a
//! redrive policy of its own does not act on).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Serialize;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
/// The type of [`Options`]' queue URLs, for callers that do not depend on `url`.
pub use url::Url;

use crate::queue::{ReceiveSettings, SqsQueue};

/// Visibility timeout of a peeked DLQ message, in seconds: long enough for the peek to
/// finish, after which each is made visible again explicitly.
const PEEK_VISIBILITY_SECS: i32 = 30;
/// Newest history rows the key-space summary looks at.
const KEY_SPACE_ROWS: i64 = 10_000;
/// Longest body sample shown for a parked message.
const SAMPLE_BODY_CHARS: usize = 160;
/// Reason shown for a DLQ message without a `tributary-reason` attribute: SQS moved
/// it after `maxReceiveCount` receives.
pub const NO_REASON: &str = "(none: moved by the redrive policy)";

/// What [`gather`] reads, however the caller came by it (`replay status` parses it
/// from its command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The queue the subscriber consumes.
    pub queue_url: Url,
    /// The subscriber's dead-letter queue; `None`: the queue's RedrivePolicy target.
    pub dlq_url: Option<Url>,
    /// The publisher's failure queue, where it parks the records it could not publish;
    /// `None`: not read (the status then says it did not check).
    pub failure_queue_url: Option<Url>,
    /// Minutes of history the lag summary covers, one line per minute.
    pub window_minutes: u32,
    /// Most DLQ messages peeked to group the parked ones by reason.
    pub peek: usize,
}

/// Why the status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("binding the queue")]
    Queue(#[from] crate::queue::QueueError),
    #[error("reading the attributes of {queue_url}: {message}")]
    Attributes { queue_url: String, message: String },
    #[error("peeking into the DLQ {queue_url}: {message}")]
    Peek { queue_url: String, message: String },
    #[error("querying the analytics store")]
    Database(#[from] sqlx::Error),
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// No message waiting or in flight on the queue, none parked in the DLQ, and none
    /// in the publisher's failure queue (when it was given).
    pub in_sync: bool,
    pub queue: QueueDepth,
    pub dlq: QueueDepth,
    /// The publisher's failure queue; `None` when [`Options::failure_queue_url`] was not
    /// given.
    pub failure_queue: Option<QueueDepth>,
    pub lag: Lag,
    /// Parked messages grouped by reason, from a peek at up to `peek` DLQ messages.
    pub parked: Vec<ParkedGroup>,
    /// DLQ messages peeked (may be fewer than the DLQ's depth).
    pub parked_peeked: usize,
    /// The last applied change per key space (the key up to its last `-`), among the
    /// newest history rows.
    pub key_spaces: Vec<KeySpace>,
}

/// The approximate depth of one queue (SQS's `ApproximateNumberOf*` attributes).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueDepth {
    pub url: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl QueueDepth {
    /// Every message the queue holds.
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// Replication lag: `applied_at − occurred_at` of the history rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    /// The last applied change's lag, in milliseconds.
    pub last_ms: Option<i64>,
    pub last_event_id: Option<String>,
    pub last_key: Option<String>,
    /// When the last change was applied (RFC 3339).
    pub last_applied_at: Option<String>,
    /// Seconds since then.
    pub last_applied_secs_ago: Option<i64>,
    pub window_minutes: u32,
    pub window: LagStats,
    /// One entry per minute of the window with changes applied, oldest first.
    pub per_minute: Vec<LagStats>,
}

/// Lag statistics over a set of changes, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LagStats {
    /// The minute (RFC 3339) for a per-minute entry; absent for the whole window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minute: Option<String>,
    pub changes: i64,
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// Parked messages of one reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ParkedGroup {
    pub reason: String,
    pub count: usize,
    pub sample: ParkedSample,
}

/// One parked message, as an example of its group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ParkedSample {
    pub message_id: String,
    pub source_message_id: Option<String>,
    pub detail: Option<String>,
    pub body: String,
}

/// The last applied change of one key space.
#[derive(Debug, Clone, Serialize)]
pub struct KeySpace {
    pub key_space: String,
    pub changes: i64,
    pub last_event_id: String,
    pub last_key: String,
    pub last_event_type: String,
    pub last_applied_at: String,
}

/// Gathers the status.
///
/// # Errors
/// [`StatusError`] when SQS or PostgreSQL cannot be read.
pub async fn gather(options: &Options, sqs: Client, pool: &PgPool) -> Result<Status, StatusError> {
    let settings = ReceiveSettings {
        max_messages: 10,
        wait_time_secs: 0,
    };
    let source = SqsQueue::connect(
        sqs.clone(),
        &options.queue_url,
        options.dlq_url.as_ref(),
        settings,
    )
    .await?;
    let queue = depth(&sqs, source.queue_url()).await?;
    let dlq = depth(&sqs, source.dlq_url()).await?;
    let failure_queue = match &options.failure_queue_url {
        Some(url) => Some(depth(&sqs, url.as_str()).await?),
        None => None,
    };
    let peeked = peek(&sqs, source.dlq_url(), options.peek).await?;
    let parked = group_parked(&peeked);
    let lag = lag(pool, options.window_minutes).await?;
    let key_spaces = key_spaces(pool).await?;
    Ok(Status {
        in_sync: queue.total() == 0
            && dlq.total() == 0
            && failure_queue.as_ref().is_none_or(|f| f.total() == 0),
        queue,
        dlq,
        failure_queue,
        lag,
        parked,
        parked_peeked: peeked.len(),
        key_spaces,
    })
}

async fn depth(sqs: &Client, url: &str) -> Result<QueueDepth, StatusError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| StatusError::Attributes {
            queue_url: url.to_owned(),
            message: runtime::report::error_chain(&e),
        })?;
    let get = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(QueueDepth {
        url: url.to_owned(),
        visible: get(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

/// A peeked DLQ message: id, tributary attributes and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peeked {
    pub message_id: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source_message_id: Option<String>,
    pub body: String,
}

async fn peek(sqs: &Client, url: &str, limit: usize) -> Result<Vec<Peeked>, StatusError> {
    let err = |e: &dyn std::error::Error| StatusError::Peek {
        queue_url: url.to_owned(),
        message: runtime::report::error_chain(e),
    };
    let mut seen: BTreeMap<String, (Peeked, String)> = BTreeMap::new();
    let mut empty_receives = 0;
    // Short polls sample a subset of SQS's servers: stop after two empty ones.
    while seen.len() < limit && empty_receives < 2 {
        let want = i32::try_from((limit - seen.len()).min(10)).unwrap_or(10);
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(want)
            .visibility_timeout(PEEK_VISIBILITY_SECS)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| err(&e))?;
        let messages = out.messages.unwrap_or_default();
        let mut new = 0;
        for m in messages {
            let (Some(id), Some(handle)) = (m.message_id.clone(), m.receipt_handle.clone()) else {
                continue;
            };
            let attr = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value().map(str::to_owned))
            };
            let peeked = Peeked {
                message_id: id.clone(),
                reason: attr("tributary-reason"),
                detail: attr("tributary-detail"),
                source_message_id: attr("tributary-source-message-id"),
                body: m.body.clone().unwrap_or_default(),
            };
            if !seen.contains_key(&id) {
                new += 1;
            }
            seen.insert(id, (peeked, handle));
        }
        if new == 0 {
            empty_receives += 1;
        }
    }
    // Make every peeked message visible again at once.
    let handles: Vec<&String> = seen.values().map(|(_, h)| h).collect();
    crate::queue::release(sqs, url, &handles)
        .await
        .map_err(|e| err(&e))?;
    Ok(seen.into_values().map(|(p, _)| p).collect())
}

/// Groups peeked DLQ messages by reason, most frequent first, with the first one of
/// each reason as its sample.
pub(crate) fn group_parked(peeked: &[Peeked]) -> Vec<ParkedGroup> {
    let mut groups: BTreeMap<String, ParkedGroup> = BTreeMap::new();
    for p in peeked {
        let reason = p.reason.clone().unwrap_or_else(|| NO_REASON.to_owned());
        groups
            .entry(reason.clone())
            .and_modify(|g| g.count += 1)
            .or_insert_with(|| ParkedGroup {
                reason,
                count: 1,
                sample: ParkedSample {
                    message_id: p.message_id.clone(),
                    source_message_id: p.source_message_id.clone(),
                    detail: p.detail.clone(),
                    body: p.body.chars().take(SAMPLE_BODY_CHARS).collect(),
                },
            });
    }
    let mut groups: Vec<ParkedGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    groups
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn ms(x: Option<f64>) -> Option<i64> {
    x.map(|v| v.round() as i64)
}

const LAG_SQL: &str = r#"
SELECT date_trunc('minute', applied_at) AS minute,
       count(*)::int8 AS changes,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms))::float8 AS p50,
       (percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_ms))::float8 AS p95,
       max(lag_ms)::float8 AS max
FROM (SELECT applied_at,
             (extract(epoch FROM applied_at - occurred_at) * 1000)::float8 AS lag_ms
      FROM analytics.profile_changes
      WHERE applied_at > now() - make_interval(mins => $1)) AS recent
GROUP BY GROUPING SETS ((date_trunc('minute', applied_at)), ())
ORDER BY minute NULLS FIRST
"#;

async fn lag(pool: &PgPool, window_minutes: u32) -> Result<Lag, sqlx::Error> {
    let mut lag = Lag {
        window_minutes,
        ..Lag::default()
    };
    let last = sqlx::query(
        "SELECT event_id, key, applied_at,
                (extract(epoch FROM applied_at - occurred_at) * 1000)::float8 AS lag_ms,
                extract(epoch FROM now() - applied_at)::float8 AS ago
         FROM analytics.profile_changes ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(row) = last {
        lag.last_event_id = Some(row.try_get("event_id")?);
        lag.last_key = Some(row.try_get("key")?);
        lag.last_applied_at = Some(rfc3339(row.try_get("applied_at")?));
        lag.last_ms = ms(row.try_get("lag_ms")?);
        lag.last_applied_secs_ago = ms(row.try_get("ago")?);
    }
    let rows = sqlx::query(LAG_SQL)
        .bind(i32::try_from(window_minutes).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await?;
    for row in rows {
        let minute: Option<OffsetDateTime> = row.try_get("minute")?;
        let stats = LagStats {
            minute: minute.map(rfc3339),
            changes: row.try_get("changes")?,
            p50_ms: ms(row.try_get("p50")?),
            p95_ms: ms(row.try_get("p95")?),
            max_ms: ms(row.try_get("max")?),
        };
        if stats.minute.is_some() {
            lag.per_minute.push(stats);
        } else {
            lag.window = stats;
        }
    }
    Ok(lag)
}

async fn key_spaces(pool: &PgPool) -> Result<Vec<KeySpace>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT key_space, changes, event_id, key, event_type, applied_at FROM (
             SELECT DISTINCT ON (key_space) key_space, event_id, key, event_type, applied_at, id,
                    count(*) OVER (PARTITION BY key_space)::int8 AS changes
             FROM (SELECT regexp_replace(key, '-[^-]*$', '') AS key_space, event_id, key,
                          event_type, applied_at, id
                   FROM analytics.profile_changes ORDER BY id DESC LIMIT $1) AS newest
             ORDER BY key_space, id DESC) AS last
         ORDER BY id DESC LIMIT 20",
    )
    .bind(KEY_SPACE_ROWS)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(KeySpace {
                key_space: row.try_get("key_space")?,
                changes: row.try_get("changes")?,
                last_event_id: row.try_get("event_id")?,
                last_key: row.try_get("key")?,
                last_event_type: row.try_get("event_type")?,
                last_applied_at: rfc3339(row.try_get("applied_at")?),
            })
        })
        .collect()
}

fn opt_ms(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"))
}

/// The one-screen text rendering of a status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let verdict = if s.in_sync && s.failure_queue.is_some() {
        "IN SYNC: nothing waiting, nothing parked".to_owned()
    } else if s.in_sync {
        "IN SYNC: nothing waiting, nothing parked (the publisher's failure queue was not \
         checked: set PUBLISHER_FAILURE_QUEUE_URL)"
            .to_owned()
    } else {
        let mut why = Vec::new();
        if s.queue.total() > 0 {
            why.push(format!("{} messages not yet applied", s.queue.total()));
        }
        if s.dlq.total() > 0 {
            why.push(format!("{} messages parked in the DLQ", s.dlq.total()));
        }
        if let Some(f) = s.failure_queue.as_ref().filter(|f| f.total() > 0) {
            why.push(format!(
                "{} records parked in the publisher's failure queue (replay them)",
                f.total()
            ));
        }
        format!("NOT IN SYNC: {}", why.join(", "))
    };
    let _ = writeln!(out, "analytics   {verdict}");
    let _ = writeln!(
        out,
        "queue       {} waiting, {} in flight, {} delayed   {}",
        s.queue.visible, s.queue.in_flight, s.queue.delayed, s.queue.url
    );
    let _ = writeln!(
        out,
        "dlq         {} messages   {}",
        s.dlq.total(),
        s.dlq.url
    );
    match &s.failure_queue {
        Some(f) => {
            let _ = writeln!(out, "failures    {} records   {}", f.total(), f.url);
        }
        None => {
            let _ = writeln!(out, "failures    not checked (PUBLISHER_FAILURE_QUEUE_URL)");
        }
    }
    match (&s.lag.last_ms, &s.lag.last_applied_secs_ago) {
        (Some(_), ago) => {
            let _ = writeln!(
                out,
                "lag now     {} (last change applied {} s ago: event {} key {})",
                opt_ms(s.lag.last_ms),
                ago.unwrap_or(0),
                s.lag.last_event_id.as_deref().unwrap_or("-"),
                s.lag.last_key.as_deref().unwrap_or("-"),
            );
        }
        (None, _) => {
            let _ = writeln!(out, "lag now     - (nothing applied yet)");
        }
    }
    let w = &s.lag.window;
    let _ = writeln!(
        out,
        "lag {:>2} min  {} changes, p50 {}, p95 {}, max {}",
        s.lag.window_minutes,
        w.changes,
        opt_ms(w.p50_ms),
        opt_ms(w.p95_ms),
        opt_ms(w.max_ms)
    );
    for m in &s.lag.per_minute {
        let _ = writeln!(
            out,
            "  {}  {:>6} changes, p50 {}, p95 {}, max {}",
            m.minute.as_deref().unwrap_or("-"),
            m.changes,
            opt_ms(m.p50_ms),
            opt_ms(m.p95_ms),
            opt_ms(m.max_ms)
        );
    }
    if s.parked.is_empty() {
        let _ = writeln!(out, "parked      none seen");
    } else {
        let _ = writeln!(
            out,
            "parked      by reason ({} peeked of {}):",
            s.parked_peeked,
            s.dlq.total()
        );
        for g in &s.parked {
            let _ = writeln!(
                out,
                "  {:<28} {:>5}  e.g. message {}",
                g.reason, g.count, g.sample.message_id
            );
            if let Some(detail) = &g.sample.detail {
                let _ = writeln!(out, "  {:<28}        detail: {detail}", "");
            }
            let _ = writeln!(
                out,
                "  {:<28}        body: {}",
                "",
                g.sample.body.replace('\n', " ")
            );
        }
    }
    if s.key_spaces.is_empty() {
        let _ = writeln!(out, "key spaces  none applied yet");
    } else {
        let _ = writeln!(
            out,
            "key spaces  last applied change (newest {KEY_SPACE_ROWS} changes):"
        );
        for k in &s.key_spaces {
            let _ = writeln!(
                out,
                "  {:<24} {:>6} changes, last {} {} event {} at {}",
                k.key_space,
                k.changes,
                k.last_event_type,
                k.last_key,
                k.last_event_id,
                k.last_applied_at
            );
        }
    }
    out
}

/// How long a `status` may take before it is abandoned.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn peeked(id: &str, reason: Option<&str>) -> Peeked {
        Peeked {
            message_id: id.into(),
            reason: reason.map(Into::into),
            detail: Some(format!("detail of {id}")),
            source_message_id: None,
            body: "x".repeat(500),
        }
    }

    #[test]
    fn parked_messages_group_by_reason_most_frequent_first() {
        let groups = group_parked(&[
            peeked("a", Some("malformed_json")),
            peeked("b", Some("apply_rejected")),
            peeked("c", Some("malformed_json")),
            peeked("d", None),
        ]);
        let summary: Vec<(&str, usize, &str)> = groups
            .iter()
            .map(|g| (g.reason.as_str(), g.count, g.sample.message_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("malformed_json", 2, "a"),
                (NO_REASON, 1, "d"),
                ("apply_rejected", 1, "b"),
            ]
        );
        assert_eq!(groups[0].sample.body.chars().count(), SAMPLE_BODY_CHARS);
    }

    fn quiet(failure_queue: Option<QueueDepth>) -> Status {
        let queue = QueueDepth {
            url: "http://q".into(),
            ..QueueDepth::default()
        };
        let dlq = QueueDepth {
            url: "http://dlq".into(),
            ..QueueDepth::default()
        };
        let in_sync = failure_queue.as_ref().is_none_or(|f| f.total() == 0);
        Status {
            in_sync,
            queue,
            dlq,
            failure_queue,
            lag: Lag::default(),
            parked: Vec::new(),
            parked_peeked: 0,
            key_spaces: Vec::new(),
        }
    }

    #[test]
    fn records_in_the_publishers_failure_queue_mean_not_in_sync() {
        let parked = QueueDepth {
            url: "http://failures".into(),
            visible: 2,
            in_flight: 1,
            delayed: 0,
        };
        let text = render(&quiet(Some(parked)));
        assert!(
            text.starts_with(
                "analytics   NOT IN SYNC: 3 records parked in the publisher's failure queue"
            ),
            "{text}"
        );
        assert!(
            text.contains("failures    3 records   http://failures"),
            "{text}"
        );
        let text = render(&quiet(Some(QueueDepth::default())));
        assert!(
            text.starts_with("analytics   IN SYNC: nothing waiting, nothing parked\n"),
            "{text}"
        );
        let text = render(&quiet(None));
        assert!(text.contains("not checked"), "{text}");
    }
}
