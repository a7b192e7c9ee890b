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
//!
//! Every decision (move task or loop, move / would move / keep, batch planning, what
//! SQS's answers mean, the report's counts) is PURE, in [`decide`]; this module only
//! talks to SQS.

mod decide;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::limiter::RateLimiter;
use decide::{AfterIdle, SendResult, Settled, TaskStep, Triage};
pub use decide::{NO_REASON, plan_sends};

use runtime::limits::sqs::MAX_BATCH_BYTES;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub message_id: String,
    pub reason: String,
    pub key: Option<String>,
    pub event_type: Option<String>,
    /// `moved`, `would-move`, `kept` (filtered out) or `failed: …`.
    pub outcome: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    if decide::uses_move_task(options)
        && let Some(report) = move_task(sqs, &dlq_arn, &queue_arn, options.rate, shutdown).await?
    {
        return Ok(report);
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
        let status = task.status().unwrap_or("UNKNOWN");
        let moved = u64::try_from(task.approximate_number_of_messages_moved()).unwrap_or(0);
        info!(%status, moved, "Message move task progress.");
        match decide::task_step(status, moved, task.failure_reason()) {
            TaskStep::Completed(report) => return Ok(Some(report)),
            TaskStep::Failed(detail) => {
                return Err(DlqError::Sqs {
                    operation: "StartMessageMoveTask",
                    detail,
                });
            }
            TaskStep::Running => {}
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
    let hold_secs = decide::hold_secs(options.hold);
    let result = async {
        while !shutdown.is_cancelled() {
            if decide::reached_max(options.max, report.moved) {
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
            let fresh =
                decide::fresh_messages(out.messages.unwrap_or_default(), &mut seen, &mut held);
            if fresh.is_empty() {
                let in_dlq = dlq_count(sqs, &options.dlq_url).await?;
                match decide::after_idle(
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
                let s = decide::describe(&m);
                let settled = match decide::triage(options, report.moved, to_move.len(), &s.reason)
                {
                    Triage::Move => {
                        to_move.push((m, s));
                        continue;
                    }
                    Triage::WouldMove => Settled::WouldMove,
                    Triage::Keep => Settled::Kept,
                };
                if settled.stays() {
                    hold(&mut held, &m, &s);
                }
                on_message(decide::settle(&mut report, s, &settled));
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

/// Holds `m` under its latest receipt handle, to be released at the end.
fn hold(held: &mut HashMap<String, String>, m: &Message, s: &Seen) {
    if let Some(h) = m.receipt_handle() {
        held.insert(s.message_id.clone(), h.to_owned());
    }
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
        .map(|(m, _)| decide::entry_size(m, &decide::original_attributes(m.message_attributes())))
        .collect();
    let (batches, too_large) = plan_sends(&sizes);
    let mut messages: Vec<Option<(Message, Seen)>> = messages.into_iter().map(Some).collect();
    for i in too_large {
        let (m, s) = messages[i].take().expect("each index is planned once");
        warn!(message_id = %s.message_id, bytes = sizes[i], limit = MAX_BATCH_BYTES, "The message is larger than SQS accepts in a send; it stays in the DLQ.");
        let outcome = decide::too_large(sizes[i]);
        if outcome.stays() {
            hold(held, &m, &s);
        }
        on_message(decide::settle(report, s, &outcome));
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
    let fifo = decide::is_fifo(&options.queue_url);
    let entries: Vec<SendMessageBatchRequestEntry> = batch
        .iter()
        .enumerate()
        .map(|(i, (m, _))| decide::send_entry(i, m, fifo))
        .collect();
    let out = sqs
        .send_message_batch()
        .queue_url(&options.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(sqs_error("SendMessageBatch"))?;
    let refused: HashMap<&str, String> = out
        .failed()
        .iter()
        .map(|f| (f.id(), decide::refusal(f.code(), f.message())))
        .collect();
    let accepted: HashSet<&str> = out.successful().iter().map(|ok| ok.id()).collect();
    let mut deletes = Vec::new();
    let mut settled = Vec::new();
    for (i, (m, s)) in batch.into_iter().enumerate() {
        let id = i.to_string();
        let result = decide::send_result(&id, &refused, &accepted);
        let outcome = result.settled();
        if outcome.stays() {
            // Not deleted: it stays in the DLQ, held until the end.
            hold(held, &m, &s);
        }
        match &result {
            SendResult::Accepted => deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("id and handle are set"),
            ),
            SendResult::Refused(why) => {
                warn!(message_id = %s.message_id, error = %why, "The queue refused the copy; the message stays in the DLQ.");
            }
            SendResult::Unanswered => {}
        }
        settled.push((s, outcome));
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
    for (s, result) in settled {
        on_message(decide::settle(report, s, &result));
    }
    Ok(())
}

async fn release(sqs: &aws_sdk_sqs::Client, dlq_url: &str, handles: &[String]) {
    if let Err(e) = subscriber::queue::release(sqs, dlq_url, handles).await {
        let error = aws_sdk_sqs::error::DisplayErrorContext(&e);
        warn!(error = %error, "Could not release held DLQ messages; they become visible when their hold expires.");
    }
}
