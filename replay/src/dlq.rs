//! `replay dlq`: returns parked messages to the main queue once their cause is fixed.
//!
//! With no reason filter and not a dry run, SQS's own `StartMessageMoveTask` does the
//! move where the service offers it. Otherwise (a filter, a dry run, or an emulator
//! without move tasks) a receive → send → delete loop does: a message is deleted from
//! the DLQ only after the main queue accepted its copy, so a crash can duplicate a
//! message (the subscriber absorbs that) but never lose one. Messages the filter
//! leaves are held invisible while the loop runs and released at the end.
//!
//! The loop ends when the DLQ holds nothing but what the loop itself holds (kept,
//! dry-run or refused messages): an empty receive alone proves nothing, as messages
//! received by someone else are invisible for a while. Those are waited for up to
//! `--in-flight-wait-secs`, then reported as remaining (exit 1).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use serde::Serialize;
use subscriber::parking::{DETAIL_ATTRIBUTE, REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::limiter::RateLimiter;

use runtime::limits::sqs::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};

/// Reason shown for a message SQS moved by itself (its redrive policy's
/// `maxReceiveCount`), which carries no reason attribute.
pub const NO_REASON: &str = "none";

/// How the move is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `StartMessageMoveTask` when it applies (no filter, no dry run) and the service
    /// offers it, the loop otherwise.
    Auto,
    /// Always the receive → send → delete loop (prints every message it moves).
    Loop,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dlq_url: String,
    pub queue_url: String,
    /// Move only messages parked for one of these reasons (`tributary-reason`); all when
    /// empty. `none` selects messages without a reason attribute.
    pub reasons: Vec<String>,
    pub dry_run: bool,
    pub rate: Option<u32>,
    pub max: Option<u64>,
    pub method: Method,
    /// How long a received message stays invisible to others while the loop runs.
    pub hold: Duration,
    /// How long the loop waits for DLQ messages it cannot see (received by someone
    /// else, invisible for their visibility timeout) before it reports them remaining.
    pub in_flight_wait: Duration,
}

/// One message the loop looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub message_id: String,
    pub reason: String,
    pub key: Option<String>,
    pub event_type: Option<String>,
    /// `moved`, `would-move`, `kept` (filtered out) or `failed: …`.
    pub outcome: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub method: String,
    pub dry_run: bool,
    pub examined: u64,
    pub moved: u64,
    pub kept: u64,
    pub failed: u64,
    /// Moved (or would move) by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Messages (approximately, as SQS counts) still in the DLQ that the loop never
    /// received: in flight elsewhere past `--in-flight-wait-secs`. Non-zero is a failure.
    pub remaining: u64,
    pub messages: Vec<Seen>,
}

/// Splits messages of these sizes (bytes, as `entry_size` counts them) into
/// `SendMessageBatch` calls within [`MAX_BATCH_ENTRIES`] and [`MAX_BATCH_BYTES`],
/// keeping their order. Returns the batches (indexes into `sizes`) and the indexes of
/// messages too large for any batch, which are never sent.
pub fn plan_sends(sizes: &[usize]) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut too_large = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if size > MAX_BATCH_BYTES {
            too_large.push(i);
            continue;
        }
        if current.len() == MAX_BATCH_ENTRIES || bytes + size > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    (batches, too_large)
}

/// The bytes a copy of `m` counts towards [`MAX_BATCH_BYTES`]: its body and the
/// attributes copied with it (name, data type and value of each).
fn entry_size(m: &Message, attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    let body = m.body().map_or(0, str::len);
    let attributes: usize = attributes
        .iter()
        .map(|(name, v)| name.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
        .sum();
    body + attributes
}

/// What the loop does after a receive brought no message it had not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterIdle {
    /// The DLQ holds only what this loop holds: everything was examined.
    Done,
    /// Messages this loop never saw are in the DLQ (invisible, in flight elsewhere):
    /// receive again.
    Wait,
    /// They stayed out of reach for the whole in-flight wait: stop and report them.
    GiveUp { remaining: u64 },
}

/// Decides whether the loop has examined every message: `in_dlq` is the DLQ's
/// visible plus invisible count, `held` the messages this loop holds invisible
/// itself, `idle_for` the time since a receive last brought an unseen message.
pub(crate) fn after_idle(
    in_dlq: u64,
    held: u64,
    idle_for: Duration,
    in_flight_wait: Duration,
) -> AfterIdle {
    let unseen = in_dlq.saturating_sub(held);
    if unseen == 0 {
        AfterIdle::Done
    } else if idle_for >= in_flight_wait {
        AfterIdle::GiveUp { remaining: unseen }
    } else {
        AfterIdle::Wait
    }
}

/// The DLQ's visible plus invisible messages, as SQS approximates them.
async fn dlq_count(sqs: &aws_sdk_sqs::Client, dlq_url: &str) -> Result<u64, DlqError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(sqs_error("GetQueueAttributes"))?;
    let attributes = out.attributes();
    let count = |name: QueueAttributeName| {
        attributes
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{which} {url}: {detail} (check {flag})")]
    Queue {
        which: &'static str,
        url: String,
        flag: &'static str,
        detail: String,
    },
    #[error("{operation} failed: {detail}")]
    Sqs {
        operation: &'static str,
        detail: String,
    },
}

fn sqs_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    operation: &'static str,
) -> impl FnOnce(aws_sdk_sqs::error::SdkError<E, R>) -> DlqError {
    move |e| DlqError::Sqs {
        operation,
        detail: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
    }
}

async fn queue_arn(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    which: &'static str,
    flag: &'static str,
) -> Result<String, DlqError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| DlqError::Queue {
            which,
            url: url.to_owned(),
            flag,
            detail: aws_sdk_sqs::error::DisplayErrorContext(&e).to_string(),
        })?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| DlqError::Queue {
            which,
            url: url.to_owned(),
            flag,
            detail: "no QueueArn attribute".into(),
        })
}

/// Runs the redrive; `on_message` is called for every message the loop settles (the
/// binary prints it).
///
/// # Errors
/// [`DlqError`] when a queue does not exist (nothing is moved then) or SQS keeps failing.
pub async fn run(
    sqs: &aws_sdk_sqs::Client,
    options: &Options,
    shutdown: &CancellationToken,
    mut on_message: impl FnMut(&Seen),
) -> Result<Report, DlqError> {
    let dlq_arn = queue_arn(sqs, &options.dlq_url, "DLQ", "--dlq-url").await?;
    let queue_arn = queue_arn(sqs, &options.queue_url, "queue", "--queue-url").await?;
    if options.method == Method::Auto
        && options.reasons.is_empty()
        && !options.dry_run
        && options.max.is_none()
    {
        match move_task(sqs, &dlq_arn, &queue_arn, options.rate, shutdown).await {
            Ok(Some(report)) => return Ok(report),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    redrive_loop(sqs, options, shutdown, &mut on_message).await
}

/// `StartMessageMoveTask`, followed to the end; `None` when the service does not
/// offer it (then the loop runs).
async fn move_task(
    sqs: &aws_sdk_sqs::Client,
    dlq_arn: &str,
    queue_arn: &str,
    rate: Option<u32>,
    shutdown: &CancellationToken,
) -> Result<Option<Report>, DlqError> {
    let started = sqs
        .start_message_move_task()
        .source_arn(dlq_arn)
        .destination_arn(queue_arn)
        .set_max_number_of_messages_per_second(rate.map(|r| i32::try_from(r).unwrap_or(500)))
        .send()
        .await;
    let handle = match started {
        Ok(out) => out.task_handle.unwrap_or_default(),
        Err(e) => {
            info!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "StartMessageMoveTask is not available here; moving message by message.");
            return Ok(None);
        }
    };
    info!(task = %handle, "Message move task started.");
    loop {
        let out = sqs
            .list_message_move_tasks()
            .source_arn(dlq_arn)
            .max_results(1)
            .send()
            .await
            .map_err(sqs_error("ListMessageMoveTasks"))?;
        let Some(task) = out.results().first() else {
            return Err(DlqError::Sqs {
                operation: "ListMessageMoveTasks",
                detail: "the started task is not listed".into(),
            });
        };
        let status = task.status().unwrap_or("UNKNOWN").to_owned();
        let moved = u64::try_from(task.approximate_number_of_messages_moved()).unwrap_or(0);
        info!(%status, moved, "Message move task progress.");
        match status.as_str() {
            "COMPLETED" => {
                return Ok(Some(Report {
                    method: "StartMessageMoveTask".into(),
                    moved,
                    examined: moved,
                    ..Report::default()
                }));
            }
            "FAILED" | "CANCELLED" => {
                return Err(DlqError::Sqs {
                    operation: "StartMessageMoveTask",
                    detail: format!(
                        "task {status} after {moved} messages: {}",
                        task.failure_reason().unwrap_or("no reason given")
                    ),
                });
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => {
                let _ = sqs.cancel_message_move_task().task_handle(&handle).send().await;
                return Err(DlqError::Sqs { operation: "StartMessageMoveTask", detail: format!("interrupted after about {moved} messages; the task was cancelled") });
            }
        }
    }
}

async fn redrive_loop(
    sqs: &aws_sdk_sqs::Client,
    options: &Options,
    shutdown: &CancellationToken,
    on_message: &mut impl FnMut(&Seen),
) -> Result<Report, DlqError> {
    let limiter = RateLimiter::new(options.rate);
    let mut report = Report {
        method: "receive-send-delete".into(),
        dry_run: options.dry_run,
        ..Report::default()
    };
    let mut seen: HashSet<String> = HashSet::new();
    // The latest receipt handle of each message held invisible (filtered out, dry run,
    // refused by the main queue), by message id, released at the end so they are
    // visible again at once.
    let mut held: HashMap<String, String> = HashMap::new();
    let mut last_fresh = Instant::now();
    let hold_secs = i32::try_from(options.hold.as_secs()).unwrap_or(60).max(1);
    let result = async {
        while !shutdown.is_cancelled() {
            if options.max.is_some_and(|max| report.moved >= max) {
                break;
            }
            let out = sqs
                .receive_message()
                .queue_url(&options.dlq_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .visibility_timeout(hold_secs)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(sqs_error("ReceiveMessage"))?;
            let messages = out.messages.unwrap_or_default();
            let mut fresh: Vec<Message> = Vec::new();
            for m in messages {
                let (Some(id), Some(handle)) = (m.message_id(), m.receipt_handle()) else {
                    continue;
                };
                if seen.insert(id.to_owned()) {
                    fresh.push(m);
                } else if let Some(h) = held.get_mut(id) {
                    // Seen before, its hold expired: held again under this handle.
                    handle.clone_into(h);
                }
            }
            if fresh.is_empty() {
                let in_dlq = dlq_count(sqs, &options.dlq_url).await?;
                match after_idle(
                    in_dlq,
                    held.len() as u64,
                    last_fresh.elapsed(),
                    options.in_flight_wait,
                ) {
                    AfterIdle::Done => break,
                    AfterIdle::Wait => continue,
                    AfterIdle::GiveUp { remaining } => {
                        warn!(
                            remaining,
                            wait_secs = options.in_flight_wait.as_secs(),
                            "DLQ messages stayed in flight elsewhere; they were not examined."
                        );
                        report.remaining = remaining;
                        break;
                    }
                }
            }
            last_fresh = Instant::now();
            let mut to_move = Vec::new();
            for m in fresh {
                report.examined += 1;
                let mut s = describe(&m);
                let wanted = options.reasons.is_empty() || options.reasons.contains(&s.reason);
                let room = options
                    .max
                    .is_none_or(|max| report.moved + (to_move.len() as u64) < max);
                if !wanted || !room || options.dry_run {
                    if let Some(h) = m.receipt_handle() {
                        held.insert(s.message_id.clone(), h.to_owned());
                    }
                    if wanted && room {
                        s.outcome = "would-move".into();
                        report.moved += 1;
                        *report.by_reason.entry(s.reason.clone()).or_default() += 1;
                    } else {
                        s.outcome = "kept".into();
                        report.kept += 1;
                    }
                    on_message(&s);
                    report.messages.push(s);
                } else {
                    to_move.push((m, s));
                }
            }
            if to_move.is_empty() {
                continue;
            }
            limiter.acquire(to_move.len()).await;
            move_messages(sqs, options, to_move, &mut report, &mut held, on_message).await?;
        }
        Ok::<(), DlqError>(())
    }
    .await;
    let handles: Vec<String> = held.into_values().collect();
    release(sqs, &options.dlq_url, &handles).await;
    result.map(|()| report)
}

/// Moves the messages in batches within the `SendMessageBatch` limits; a message too
/// large for any batch stays in the DLQ (held, released at the end) and counts as
/// failed.
async fn move_messages(
    sqs: &aws_sdk_sqs::Client,
    options: &Options,
    messages: Vec<(Message, Seen)>,
    report: &mut Report,
    held: &mut HashMap<String, String>,
    on_message: &mut impl FnMut(&Seen),
) -> Result<(), DlqError> {
    let sizes: Vec<usize> = messages
        .iter()
        .map(|(m, _)| entry_size(m, &original_attributes(m.message_attributes())))
        .collect();
    let (batches, too_large) = plan_sends(&sizes);
    let mut messages: Vec<Option<(Message, Seen)>> = messages.into_iter().map(Some).collect();
    for i in too_large {
        let (m, mut s) = messages[i].take().expect("each index is planned once");
        warn!(message_id = %s.message_id, bytes = sizes[i], limit = MAX_BATCH_BYTES, "The message is larger than SQS accepts in a send; it stays in the DLQ.");
        s.outcome = format!(
            "failed: {} bytes, more than the {MAX_BATCH_BYTES} SQS accepts",
            sizes[i]
        );
        report.failed += 1;
        if let Some(h) = m.receipt_handle() {
            held.insert(s.message_id.clone(), h.to_owned());
        }
        on_message(&s);
        report.messages.push(s);
    }
    for batch in batches {
        let batch: Vec<(Message, Seen)> = batch
            .into_iter()
            .map(|i| messages[i].take().expect("each index is planned once"))
            .collect();
        move_batch(sqs, options, batch, report, held, on_message).await?;
    }
    Ok(())
}

/// Sends copies to the main queue, then deletes from the DLQ exactly those accepted.
async fn move_batch(
    sqs: &aws_sdk_sqs::Client,
    options: &Options,
    batch: Vec<(Message, Seen)>,
    report: &mut Report,
    held: &mut HashMap<String, String>,
    on_message: &mut impl FnMut(&Seen),
) -> Result<(), DlqError> {
    let fifo = options.queue_url.ends_with(".fifo");
    let entries: Vec<SendMessageBatchRequestEntry> = batch
        .iter()
        .enumerate()
        .map(|(i, (m, _))| {
            let system = m.attributes();
            let get = |name: MessageSystemAttributeName| system.and_then(|a| a.get(&name)).cloned();
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(m.body().unwrap_or_default())
                .set_message_attributes(Some(original_attributes(m.message_attributes())));
            if fifo {
                entry = entry
                    .set_message_group_id(get(MessageSystemAttributeName::MessageGroupId))
                    .set_message_deduplication_id(get(
                        MessageSystemAttributeName::MessageDeduplicationId,
                    ));
            }
            entry.build().expect("id and body are set")
        })
        .collect();
    let out = sqs
        .send_message_batch()
        .queue_url(&options.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(sqs_error("SendMessageBatch"))?;
    let failed: HashMap<&str, String> = out
        .failed()
        .iter()
        .map(|f| {
            (
                f.id(),
                format!("{}: {}", f.code(), f.message().unwrap_or_default()),
            )
        })
        .collect();
    let mut deletes = Vec::new();
    let mut settled = Vec::new();
    for (i, (m, mut s)) in batch.into_iter().enumerate() {
        let id = i.to_string();
        if let Some(why) = failed.get(id.as_str()) {
            // Not deleted: it stays in the DLQ and shows again once its hold expires.
            warn!(message_id = %s.message_id, error = %why, "The queue refused the copy; the message stays in the DLQ.");
            s.outcome = format!("failed: {why}");
            report.failed += 1;
            if let Some(h) = m.receipt_handle() {
                held.insert(s.message_id.clone(), h.to_owned());
            }
        } else if out.successful().iter().any(|ok| ok.id() == id) {
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("id and handle are set"),
            );
            s.outcome = "moved".into();
            report.moved += 1;
            *report.by_reason.entry(s.reason.clone()).or_default() += 1;
        } else {
            s.outcome = "failed: neither accepted nor refused".into();
            report.failed += 1;
            if let Some(h) = m.receipt_handle() {
                held.insert(s.message_id.clone(), h.to_owned());
            }
        }
        settled.push(s);
    }
    if !deletes.is_empty() {
        let out = sqs
            .delete_message_batch()
            .queue_url(&options.dlq_url)
            .set_entries(Some(deletes))
            .send()
            .await
            .map_err(sqs_error("DeleteMessageBatch"))?;
        for f in out.failed() {
            // Copied but not deleted: it will be moved again (a duplicate the
            // subscriber absorbs), never lost.
            warn!(
                id = f.id(),
                code = f.code(),
                "Moved message not deleted from the DLQ; it may be moved twice."
            );
        }
    }
    for s in settled {
        on_message(&s);
        report.messages.push(s);
    }
    Ok(())
}

/// The message's attributes minus the parking bookkeeping (reason, detail, source id),
/// which describes the parking, not the event. Binary attributes are not copied (see
/// the subscriber's `dlq_attributes`).
pub(crate) fn original_attributes(
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
) -> HashMap<String, MessageAttributeValue> {
    attributes
        .into_iter()
        .flatten()
        .filter(|(name, _)| {
            ![
                REASON_ATTRIBUTE,
                DETAIL_ATTRIBUTE,
                SOURCE_MESSAGE_ID_ATTRIBUTE,
            ]
            .contains(&name.as_str())
        })
        .filter(|(_, v)| v.data_type().starts_with("String") || v.data_type().starts_with("Number"))
        .map(|(name, v)| {
            let copy = MessageAttributeValue::builder()
                .data_type(v.data_type())
                .set_string_value(v.string_value().map(str::to_owned))
                .build()
                .expect("data type is set");
            (name.clone(), copy)
        })
        .collect()
}

fn describe(m: &Message) -> Seen {
    let attribute = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    let event = m
        .body()
        .and_then(|b| subscriber::envelope::decode_body(b).ok());
    Seen {
        message_id: m.message_id().unwrap_or_default().to_owned(),
        reason: attribute(REASON_ATTRIBUTE).unwrap_or_else(|| NO_REASON.to_owned()),
        key: event.as_ref().map(|e| e.key.clone()),
        event_type: event
            .as_ref()
            .map(|e| e.change.event_type().as_str().to_owned())
            .or_else(|| attribute("event_type")),
        outcome: String::new(),
    }
}

async fn release(sqs: &aws_sdk_sqs::Client, dlq_url: &str, handles: &[String]) {
    for chunk in handles.chunks(10) {
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        if let Err(e) = sqs
            .change_message_visibility_batch()
            .queue_url(dlq_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "Could not release held DLQ messages; they become visible when their hold expires.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn batches_never_exceed_the_total_size_sqs_accepts() {
        let sizes = [100 * KIB, 100 * KIB, 100 * KIB, 10 * KIB, 250 * KIB];
        let (batches, too_large) = plan_sends(&sizes);
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(too_large.is_empty());
        for batch in &batches {
            let total: usize = batch.iter().map(|&i| sizes[i]).sum();
            assert!(total <= MAX_BATCH_BYTES, "{batch:?}: {total} bytes");
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries_in_order() {
        let (batches, _) = plan_sends(&[10; 23]);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 3]
        );
        assert_eq!(batches.concat(), (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn an_entry_over_the_limit_is_reported_and_never_sent() {
        let (batches, too_large) = plan_sends(&[KIB, MAX_BATCH_BYTES + 1, MAX_BATCH_BYTES]);
        assert_eq!(too_large, vec![1]);
        assert_eq!(batches, vec![vec![0], vec![2]]);
    }

    #[test]
    fn an_empty_receive_ends_the_loop_only_when_the_dlq_holds_nothing_unseen() {
        let wait = Duration::from_secs(60);
        // Everything left is what the loop holds itself (kept, dry run).
        assert_eq!(after_idle(3, 3, Duration::ZERO, wait), AfterIdle::Done);
        assert_eq!(after_idle(0, 0, Duration::ZERO, wait), AfterIdle::Done);
        // Two messages in flight elsewhere: wait for them to come back.
        assert_eq!(
            after_idle(5, 3, Duration::from_secs(5), wait),
            AfterIdle::Wait
        );
        // They stayed away for the whole wait: reported, not ignored.
        assert_eq!(
            after_idle(5, 3, Duration::from_secs(60), wait),
            AfterIdle::GiveUp { remaining: 2 }
        );
    }
}
