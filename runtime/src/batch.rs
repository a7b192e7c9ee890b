//! "Send a batch, retry only the entries that failed": the one sender behind every batch
//! call to SNS and SQS (`PublishBatch`, `SendMessageBatch`, `DeleteMessageBatch`,
//! `ChangeMessageVisibilityBatch`).
//!
//! A batch call answers per entry: accepted, refused through the sender's fault (a
//! malformed entry, an expired receipt handle: sending it again cannot help), or failed
//! on the service's side (throttled, internal: worth sending again). An entry the answer
//! names neither way is treated as failed, so it is sent again rather than lost.
//!
//! - [`entry_results`] — PURE: one answer → what happened to each entry.
//! - [`send`] — the loop: calls of at most `per_call` entries, then calls again with only
//!   the failed ones, with back-off, until they pass, the retries run out, or shutdown.

use std::collections::HashMap;
use std::future::Future;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::backoff::Backoff;

/// What the service said of one entry of a batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    Accepted,
    /// Refused through the sender's fault: never sent again.
    Refused {
        code: String,
        message: String,
    },
    /// Failed on the service's side, or not named by the answer: sent again.
    Failed {
        code: String,
    },
}

/// One entry of a batch answer's `Failed` list, as both services report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    /// The entry's `Id` in the request.
    pub id: String,
    pub code: String,
    pub message: String,
    pub sender_fault: bool,
}

/// SNS and SQS report a failed entry in the same shape, as two types.
macro_rules! failed_entry_from {
    ($($entry:ty),+) => {$(
        impl From<&$entry> for FailedEntry {
            fn from(f: &$entry) -> Self {
                FailedEntry {
                    id: f.id().to_owned(),
                    code: f.code().to_owned(),
                    message: f.message().unwrap_or_default().to_owned(),
                    sender_fault: f.sender_fault(),
                }
            }
        }
    )+};
}

failed_entry_from!(
    aws_sdk_sqs::types::BatchResultErrorEntry,
    aws_sdk_sns::types::BatchResultErrorEntry
);

/// PURE: what happened to each entry of one call, in the order of `ids` (the entries'
/// request `Id`s, as numbers), from the ids the answer lists as successful and the
/// entries it lists as failed.
pub fn entry_results<'a>(
    ids: &[usize],
    successful: impl IntoIterator<Item = &'a str>,
    failed: &[FailedEntry],
) -> Vec<EntryResult> {
    let failed: HashMap<&str, &FailedEntry> = failed.iter().map(|f| (f.id.as_str(), f)).collect();
    let successful: std::collections::HashSet<&str> = successful.into_iter().collect();
    ids.iter()
        .map(|id| {
            let id = id.to_string();
            match failed.get(id.as_str()) {
                Some(f) if f.sender_fault => EntryResult::Refused {
                    code: f.code.clone(),
                    message: f.message.clone(),
                },
                Some(f) => EntryResult::Failed {
                    code: f.code.clone(),
                },
                None if successful.contains(id.as_str()) => EntryResult::Accepted,
                None => EntryResult::Failed {
                    code: "NotInAnswer".to_owned(),
                },
            }
        })
        .collect()
}

/// Rounds of failures after which each further one is logged at ERROR.
pub const ESCALATE_AFTER: u32 = 5;

/// An SDK batch answer (`PublishBatch`, `SendMessageBatch`, `DeleteMessageBatch`,
/// `ChangeMessageVisibilityBatch`): what it says of each entry.
pub trait BatchOutput {
    /// [`entry_results`] of this answer, for the entries `ids` of its request.
    fn results(&self, ids: &[usize]) -> Vec<EntryResult>;
}

macro_rules! batch_output {
    ($($output:ty),+ $(,)?) => {$(
        impl BatchOutput for $output {
            fn results(&self, ids: &[usize]) -> Vec<EntryResult> {
                let failed: Vec<FailedEntry> = self.failed().iter().map(FailedEntry::from).collect();
                entry_results(ids, self.successful().iter().filter_map(|s| s.id().into()), &failed)
            }
        }
    )+};
}

batch_output!(
    aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput,
    aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput,
    aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput,
    aws_sdk_sns::operation::publish_batch::PublishBatchOutput,
);

/// What a batch call came to, for [`send`]: the answer's [`EntryResult`]s, or the
/// call's error as one line ([`crate::report::describe_sdk_error`]).
///
/// # Errors
/// The call's own error.
pub fn answer<O, E, R>(
    ids: &[usize],
    call: Result<O, aws_sdk_sqs::error::SdkError<E, R>>,
) -> Result<Vec<EntryResult>, String>
where
    O: BatchOutput,
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    call.map(|output| output.results(ids))
        .map_err(|e| crate::report::describe_sdk_error(&e))
}

/// PURE: splits `items`, in order, into batch calls of at most `max_entries` entries
/// and `max_bytes` bytes (by `size`), starting a new call also where
/// `split_before(call so far, next item)` says so. An item larger than `max_bytes` on
/// its own fits no call: it is returned apart, never sent.
pub fn plan<T>(
    items: impl IntoIterator<Item = T>,
    max_entries: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
    split_before: impl Fn(&[T], &T) -> bool,
) -> (Vec<Vec<T>>, Vec<T>) {
    let (mut calls, mut too_large) = (Vec::new(), Vec::new());
    let (mut current, mut bytes): (Vec<T>, usize) = (Vec::new(), 0);
    for item in items {
        let n = size(&item);
        if n > max_bytes {
            too_large.push(item);
            continue;
        }
        if current.len() == max_entries || bytes + n > max_bytes || split_before(&current, &item) {
            calls.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += n;
        current.push(item);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    (calls, too_large)
}

/// How [`send`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The pause before each round of retries.
    pub backoff: Backoff,
    /// Rounds of retries after the first call; `None`: until shutdown.
    pub max_retries: Option<u32>,
    /// Calls of one round sent at once (1 keeps the entries' order, as a FIFO queue
    /// needs).
    pub concurrency: usize,
    /// Whether a call that fails as a whole (the SDK's own attempts spent) is retried
    /// like failed entries, or ends the send at once ([`Sent::call_error`]): a caller
    /// draining at shutdown cannot wait out several operation timeouts.
    pub retry_call_errors: bool,
    /// With a shutdown token: how long a call in flight when shutdown comes may still
    /// take before it is abandoned (its entries then count as unsent). `None`: calls in
    /// flight are always awaited (each is bounded by the client's own timeouts).
    pub in_flight_grace: Option<std::time::Duration>,
}

impl RetryPolicy {
    /// Until every entry is accepted or shutdown comes: from 50 ms doubling to 20 s,
    /// one call at a time (so a FIFO target keeps each key's order). For sends that
    /// must not drop an event for a throttle: publishing, replaying.
    pub const UNTIL_ACCEPTED: RetryPolicy = RetryPolicy {
        backoff: Backoff::new(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(20),
        ),
        max_retries: None,
        concurrency: 1,
        retry_call_errors: true,
        in_flight_grace: None,
    };
}

/// What [`send`] did.
#[derive(Debug)]
pub struct Sent<E> {
    /// Indexes of the entries the service accepted.
    pub accepted: Vec<usize>,
    /// Entries refused through the sender's fault, with the service's code and message.
    pub refused: Vec<(usize, String, String)>,
    /// Entries still failing when the retries ran out, or left when shutdown came; with
    /// the last code seen (or the call's error).
    pub unsent: Vec<(usize, String)>,
    /// Entries sent again after a failure.
    pub retried: usize,
    /// Whether shutdown ended the retries.
    pub interrupted: bool,
    /// The error of a call that ended the send (with `retry_call_errors` off); its
    /// entries, and every other one still pending, are in `unsent`.
    pub call_error: Option<E>,
}

/// Sends `total` entries (indexes `0..total`) in calls of at most `per_call`, then
/// again only those that failed, per `policy`. `call` gets the indexes of one call's
/// entries (in order; use these indexes, which are global, as the request ids) and answers with one
/// [`EntryResult`] per index, or an error for the whole call, whose entries then all
/// count as failed. `operation` names the call in the logs.
pub async fn send<F, Fut, E>(
    operation: &'static str,
    total: usize,
    per_call: usize,
    policy: RetryPolicy,
    shutdown: Option<&CancellationToken>,
    mut call: F,
) -> Sent<E>
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<EntryResult>, E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let mut sent = Sent {
        accepted: Vec::new(),
        refused: Vec::new(),
        unsent: Vec::new(),
        retried: 0,
        interrupted: false,
        call_error: None,
    };
    let mut pending: Vec<usize> = (0..total).collect();
    let mut round: u32 = 0;
    loop {
        let calls: Vec<Vec<usize>> = pending
            .chunks(per_call.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        let answers: Vec<_> = futures::stream::iter(calls.into_iter().map(|indexes| {
            let answer = call(indexes.clone());
            async move {
                let answer = match (shutdown, policy.in_flight_grace) {
                    (Some(token), Some(grace)) => tokio::select! {
                        answer = answer => Some(answer),
                        () = async {
                            token.cancelled().await;
                            tokio::time::sleep(grace).await;
                        } => None,
                    },
                    _ => Some(answer.await),
                };
                (indexes, answer)
            }
        }))
        .buffered(policy.concurrency.max(1))
        .collect()
        .await;
        let mut again: Vec<(usize, String)> = Vec::new();
        let mut abandoned: Vec<(usize, String)> = Vec::new();
        // Entries of calls that failed as a whole, already logged above.
        let mut call_failed = 0;
        for (indexes, answer) in answers {
            let Some(answer) = answer else {
                warn!(
                    operation,
                    entries = indexes.len(),
                    "Batch call still unanswered after shutdown; abandoned."
                );
                abandoned.extend(
                    indexes
                        .into_iter()
                        .map(|i| (i, "AbandonedAtShutdown".to_owned())),
                );
                continue;
            };
            match answer {
                Ok(results) => {
                    for (k, &index) in indexes.iter().enumerate() {
                        match results.get(k) {
                            Some(EntryResult::Accepted) => sent.accepted.push(index),
                            Some(EntryResult::Refused { code, message }) => {
                                sent.refused.push((index, code.clone(), message.clone()));
                            }
                            Some(EntryResult::Failed { code }) => again.push((index, code.clone())),
                            None => again.push((index, "NotInAnswer".to_owned())),
                        }
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    if !policy.retry_call_errors {
                        sent.call_error.get_or_insert(e);
                    } else if round + 1 >= ESCALATE_AFTER {
                        error!(operation, entries = indexes.len(), attempt = round + 1, %error, "{operation} keeps failing; an operator must look (the endpoint, permissions, the service). Will retry.");
                    } else {
                        warn!(operation, entries = indexes.len(), attempt = round + 1, %error, "{operation} failed, will retry.");
                    }
                    call_failed += indexes.len();
                    again.extend(indexes.into_iter().map(|i| (i, error.clone())));
                }
            }
        }
        if !abandoned.is_empty() {
            again.extend(abandoned);
            again.sort_unstable();
            sent.unsent = again;
            sent.interrupted = true;
            return sent;
        }
        if again.is_empty() {
            return sent;
        }
        if sent.call_error.is_some() {
            again.sort_unstable();
            sent.unsent = again;
            return sent;
        }
        round += 1;
        if policy.max_retries.is_some_and(|max| round > max) {
            sent.unsent = again;
            return sent;
        }
        let delay = policy.backoff.delay_random(round);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let code = &again[0].1;
        if again.len() == call_failed {
            // Only whole calls failed: logged with their error.
        } else if round >= ESCALATE_AFTER {
            error!(operation, entries = again.len(), round, delay_ms, %code, "Batch entries keep failing; an operator must look (throttling, permissions, the service). Retrying.");
        } else {
            warn!(operation, entries = again.len(), round, delay_ms, %code, "Batch entries failed, retrying them.");
        }
        let slept = match shutdown {
            Some(token) => tokio::select! {
                () = tokio::time::sleep(delay) => true,
                () = token.cancelled() => false,
            },
            None => {
                tokio::time::sleep(delay).await;
                true
            }
        };
        if !slept {
            sent.unsent = again;
            sent.interrupted = true;
            return sent;
        }
        sent.retried += again.len();
        pending = again.into_iter().map(|(i, _)| i).collect();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    const QUICK: RetryPolicy = RetryPolicy {
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
        max_retries: Some(3),
        concurrency: 2,
        retry_call_errors: true,
        in_flight_grace: None,
    };

    fn failed(id: &str, sender_fault: bool) -> FailedEntry {
        FailedEntry {
            id: id.into(),
            code: if sender_fault {
                "InvalidParameterValue"
            } else {
                "InternalError"
            }
            .into(),
            message: "m".into(),
            sender_fault,
        }
    }

    #[test]
    fn plan_keeps_the_order_within_both_limits_and_sets_apart_what_fits_no_call() {
        let sizes = [4, 4, 11, 3, 3, 3, 1];
        // At most 3 entries and 10 bytes a call; an odd size starts a new call.
        let (calls, too_large) = plan(sizes, 3, 10, |&n| n, |_, &n| n == 1);
        assert_eq!(calls, vec![vec![4, 4], vec![3, 3, 3], vec![1]]);
        assert_eq!(too_large, vec![11]);
        let (calls, too_large) = plan(Vec::<usize>::new(), 3, 10, |&n| n, |_, _| false);
        assert!(calls.is_empty() && too_large.is_empty());
    }

    #[test]
    fn each_entry_is_accepted_refused_or_failed_and_an_unnamed_one_is_failed() {
        let results = entry_results(
            &[0, 1, 2, 3],
            ["0", "3"],
            &[failed("1", true), failed("2", false)],
        );
        assert_eq!(results[0], EntryResult::Accepted);
        assert!(
            matches!(&results[1], EntryResult::Refused { code, .. } if code == "InvalidParameterValue")
        );
        assert!(matches!(&results[2], EntryResult::Failed { code } if code == "InternalError"));
        assert_eq!(results[3], EntryResult::Accepted);
        let unnamed = entry_results(&[0, 1], ["0"], &[]);
        assert!(matches!(&unnamed[1], EntryResult::Failed { code } if code == "NotInAnswer"));
        let later_round = entry_results(&[7, 12], ["12"], &[failed("7", false)]);
        assert!(matches!(&later_round[0], EntryResult::Failed { .. }));
        assert_eq!(later_round[1], EntryResult::Accepted);
    }

    #[tokio::test]
    async fn only_the_failed_entries_are_sent_again_in_calls_of_at_most_per_call() {
        let calls = Mutex::new(Vec::new());
        let sent = send("Test", 25, 10, QUICK, None, |indexes: Vec<usize>| {
            calls.lock().unwrap().push(indexes.clone());
            let first_time = calls.lock().unwrap().len() <= 3;
            async move {
                Ok::<_, String>(
                    indexes
                        .iter()
                        .map(|i| match i {
                            // Entry 7 fails once, entry 20 is refused.
                            7 if first_time => EntryResult::Failed {
                                code: "Throttled".into(),
                            },
                            20 => EntryResult::Refused {
                                code: "Bad".into(),
                                message: "m".into(),
                            },
                            _ => EntryResult::Accepted,
                        })
                        .collect(),
                )
            }
        })
        .await;
        let calls = calls.into_inner().unwrap();
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5, 1]
        );
        assert_eq!(calls[3], [7]);
        assert_eq!(sent.accepted.len(), 24);
        assert_eq!(sent.refused, [(20, "Bad".to_owned(), "m".to_owned())]);
        assert_eq!(sent.retried, 1);
        assert!(sent.unsent.is_empty() && !sent.interrupted);
    }

    #[tokio::test]
    async fn a_failed_call_retries_its_entries_and_gives_up_after_the_retries() {
        let rounds = Mutex::new(0);
        let sent = send("Test", 3, 10, QUICK, None, |_indexes: Vec<usize>| {
            *rounds.lock().unwrap() += 1;
            async { Err::<Vec<EntryResult>, _>("connection reset") }
        })
        .await;
        assert_eq!(
            *rounds.lock().unwrap(),
            4,
            "the first call and three retries"
        );
        assert_eq!(
            sent.unsent,
            [
                (0, "connection reset".to_owned()),
                (1, "connection reset".to_owned()),
                (2, "connection reset".to_owned())
            ]
        );
        assert!(sent.accepted.is_empty() && !sent.interrupted);
    }

    #[tokio::test]
    async fn without_call_retries_a_failed_call_ends_the_send_at_once() {
        let policy = RetryPolicy {
            retry_call_errors: false,
            ..QUICK
        };
        let calls = Mutex::new(0);
        let sent = send("Test", 15, 10, policy, None, |indexes: Vec<usize>| {
            *calls.lock().unwrap() += 1;
            async move {
                if indexes[0] == 0 {
                    Err("timed out".to_owned())
                } else {
                    Ok(vec![EntryResult::Accepted; indexes.len()])
                }
            }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), 2, "no retry round");
        assert_eq!(sent.call_error.as_deref(), Some("timed out"));
        assert_eq!(sent.unsent.len(), 10);
        assert_eq!(sent.accepted, (10..15).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_call_hanging_at_shutdown_is_abandoned_after_its_grace() {
        let token = CancellationToken::new();
        let policy = RetryPolicy {
            in_flight_grace: Some(Duration::from_millis(20)),
            ..QUICK
        };
        let cancel = token.clone();
        let sent = send("Test", 2, 10, policy, Some(&token), |_ids: Vec<usize>| {
            cancel.cancel();
            std::future::pending::<Result<Vec<EntryResult>, String>>()
        })
        .await;
        assert!(sent.interrupted);
        assert_eq!(sent.unsent.len(), 2);
    }

    #[tokio::test]
    async fn shutdown_ends_unbounded_retries_and_names_what_is_unsent() {
        let token = CancellationToken::new();
        let policy = RetryPolicy {
            max_retries: None,
            backoff: Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
            ..QUICK
        };
        let cancel = token.clone();
        let sent = send(
            "Test",
            2,
            10,
            policy,
            Some(&token),
            |indexes: Vec<usize>| {
                cancel.cancel();
                async move {
                    Ok::<_, String>(
                        indexes
                            .iter()
                            .map(|&i| {
                                if i == 0 {
                                    EntryResult::Accepted
                                } else {
                                    EntryResult::Failed {
                                        code: "InternalError".into(),
                                    }
                                }
                            })
                            .collect(),
                    )
                }
            },
        )
        .await;
        assert!(sent.interrupted);
        assert_eq!(sent.accepted, [0]);
        assert_eq!(sent.unsent, [(1, "InternalError".to_owned())]);
    }
}
