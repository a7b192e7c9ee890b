//! The SQS adapter: receive, batch delete, visibility changes, and parking in the DLQ.
//!
//! Thin on purpose: what to delete, park or retry is decided by the worker; this module
//! only speaks SQS, retries the entries of a batch call that failed, and keeps within
//! the service's limits.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use runtime::backoff::Backoff;
use runtime::batch::{BatchOutput, EntryResult, RetryPolicy};
use tracing::{debug, error, instrument, warn};
use url::Url;

use runtime::report::error_chain;

use crate::parking::{dlq_attributes, minimal_dlq_attributes};
use crate::redrive::{dlq_from_redrive_policy, max_receive_count_from_redrive_policy};

pub use runtime::limits::sqs::{
    MAX_BATCH_ENTRIES, MAX_MESSAGE_ATTRIBUTES, MAX_MESSAGE_BYTES, MAX_VISIBILITY_TIMEOUT_SECS,
    MAX_WAIT_TIME_SECS,
};

/// A message as received, with what the worker needs to settle it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    /// SQS's id for the message; the item identifier a Lambda partial batch response uses.
    pub message_id: String,
    /// Needed to delete the message or change its visibility; valid for this receive only.
    pub receipt_handle: String,
    /// The event JSON, raw or SNS-wrapped; copied unchanged to the DLQ when parked.
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on first delivery. Drives the retry back-off.
    pub receive_count: u32,
    /// `SentTimestamp`, milliseconds since the epoch: when the message entered the
    /// queue. Tells a worker whether it is behind (see [`crate::pace`]).
    pub sent_at_ms: Option<u64>,
    /// Copied to the DLQ when the message is parked.
    pub message_attributes: HashMap<String, MessageAttributeValue>,
}

impl ReceivedMessage {
    /// `None` for a message without id or receipt handle, which SQS always sets.
    fn from_sdk(message: Message) -> Option<ReceivedMessage> {
        let receive_count = message
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let sent_at_ms = message
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|n| n.parse().ok());
        Some(ReceivedMessage {
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: message.body.unwrap_or_default(),
            receive_count,
            sent_at_ms,
            message_attributes: message.message_attributes.unwrap_or_default(),
        })
    }
}

/// The SQS call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Receive,
    Delete,
    ChangeVisibility,
    SendToDlq,
    GetQueueAttributes,
    GetQueueUrl,
}

impl Operation {
    /// The SQS action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Receive => "ReceiveMessage",
            Operation::Delete => "DeleteMessageBatch",
            Operation::ChangeVisibility => "ChangeMessageVisibilityBatch",
            Operation::SendToDlq => "SendMessage",
            Operation::GetQueueAttributes => "GetQueueAttributes",
            Operation::GetQueueUrl => "GetQueueUrl",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an SQS call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The call itself failed (after the SDK's own retries).
    #[error("{operation} on {queue_url} failed")]
    Sdk {
        operation: Operation,
        queue_url: String,
        /// Whether the failure was transient (network, throttling, a 5xx).
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Some entries of a batch call still failed after the entry retries.
    #[error("{operation} on {queue_url}: {failed} entries failed, first with {code}")]
    EntriesFailed {
        operation: Operation,
        queue_url: String,
        failed: usize,
        code: String,
    },
    /// Neither a configured DLQ nor a RedrivePolicy on the queue.
    #[error(
        "queue {queue_url} has no RedrivePolicy and SUBSCRIBER_DLQ_URL is not set: refusing \
         to start, as a message that can never be applied would have nowhere to go"
    )]
    NoDeadLetterQueue { queue_url: String },
    /// The queue's RedrivePolicy could not be read.
    #[error("queue {queue_url} has an unusable RedrivePolicy: {problem}")]
    BadRedrivePolicy {
        queue_url: String,
        problem: &'static str,
    },
}

impl QueueError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Sdk { retryable, .. } => *retryable,
            QueueError::EntriesFailed { .. } => true,
            QueueError::NoDeadLetterQueue { .. } | QueueError::BadRedrivePolicy { .. } => false,
        }
    }
}

fn sdk_error<E>(operation: Operation, queue_url: &str, err: SdkError<E>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let throttled = matches!(
                service.err().code(),
                Some("ThrottlingException" | "RequestThrottled" | "ServiceUnavailable")
            );
            throttled || service.raw().status().is_server_error()
        }
        _ => false,
    };
    QueueError::Sdk {
        operation,
        queue_url: queue_url.to_owned(),
        retryable,
        source: Box::new(err),
    }
}

/// Where messages that can never be applied go.
///
/// The container worker parks them itself ([`SqsQueue::park`]: send to the DLQ, then
/// delete); a Lambda handler would only send, and report the message as handled so the
/// service deletes it.
pub trait Parker: Sync {
    /// Moves `message` out of the main queue into the DLQ with the reason attached.
    ///
    /// # Errors
    /// The message could not be parked and must stay on the queue.
    fn park(
        &self,
        message: &ReceivedMessage,
        reason_code: &'static str,
        detail: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// How long a received message stays invisible to other consumers, when the batch
    /// must keep its messages invisible itself while it works on them one by one (the
    /// container worker). `None` where the invocation's own bound is below the queue's
    /// visibility timeout (a Lambda: the template sets the visibility timeout to six
    /// times the function timeout, as AWS advises).
    fn visibility_timeout(&self) -> Option<Duration> {
        None
    }

    /// Makes `messages` invisible for another [`Parker::visibility_timeout`] from now.
    /// Returns whether every message's visibility was extended.
    fn keep_invisible(&self, messages: &[&ReceivedMessage]) -> impl Future<Output = bool> + Send {
        let _ = messages;
        async { true }
    }
}

/// Receive settings, already validated by the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveSettings {
    /// 1 ..= [`MAX_BATCH_ENTRIES`].
    pub max_messages: u8,
    /// 0 ..= [`MAX_WAIT_TIME_SECS`].
    pub wait_time_secs: u8,
}

/// One SQS queue and its DLQ.
#[derive(Debug, Clone)]
pub(crate) struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq: DeadLetterQueue,
    receive: ReceiveSettings,
    /// The RedrivePolicy's `maxReceiveCount`: SQS moves a message to the DLQ (without
    /// a reason) after that many receives. `None` without a RedrivePolicy.
    max_receive_count: Option<u32>,
    /// The queue's `VisibilityTimeout`: how long a received message stays invisible,
    /// which a batch isolating its events one by one must keep extending.
    visibility_timeout: Duration,
}

impl SqsQueue {
    /// Binds the queue and resolves its DLQ: `dlq_url` if given, else the queue's
    /// RedrivePolicy target. Checks that the DLQ exists, and reads its maximum message
    /// size and the queue's `maxReceiveCount`.
    ///
    /// # Errors
    /// [`QueueError::NoDeadLetterQueue`] when there is no DLQ to park in; SQS errors.
    #[instrument(skip_all, fields(queue_url = %queue_url), err)]
    pub async fn connect(
        client: Client,
        queue_url: &Url,
        dlq_url: Option<&Url>,
        receive: ReceiveSettings,
    ) -> Result<SqsQueue, QueueError> {
        let queue_url = queue_url.as_str().to_owned();
        let policy = match (read_redrive_policy(&client, &queue_url).await, dlq_url) {
            (Ok(policy), _) => policy,
            // The DLQ is configured: the policy would only tell when SQS redrives.
            (Err(e), Some(_)) => {
                warn!(error = %error_chain(&e), "Could not read the queue's RedrivePolicy; receive counts near its maxReceiveCount will not be reported.");
                None
            }
            (Err(e), None) => return Err(e),
        };
        let max_receive_count = policy
            .as_deref()
            .and_then(max_receive_count_from_redrive_policy);
        let visibility_timeout = match read_visibility_timeout(&client, &queue_url).await {
            Ok(Some(timeout)) => timeout,
            Ok(None) => DEFAULT_VISIBILITY_TIMEOUT,
            Err(e) => {
                warn!(error = %error_chain(&e), default_secs = DEFAULT_VISIBILITY_TIMEOUT.as_secs(), "Could not read the queue's VisibilityTimeout; assuming SQS's default.");
                DEFAULT_VISIBILITY_TIMEOUT
            }
        };
        let dlq_url = match (dlq_url, policy) {
            (Some(url), _) => url.as_str().to_owned(),
            (None, Some(policy)) => resolve_dlq(&client, &queue_url, &policy).await?,
            (None, None) => return Err(QueueError::NoDeadLetterQueue { queue_url }),
        };
        // Fail at start, not at the first poison message, if the DLQ is not there.
        let dlq = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(|e| sdk_error(Operation::GetQueueAttributes, &dlq_url, e))?;
        let dlq_max_message_bytes = dlq
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize))
            .and_then(|size| size.parse::<usize>().ok())
            .filter(|&size| size > 0)
            .unwrap_or(MAX_MESSAGE_BYTES);
        debug!(
            dlq_max_message_bytes,
            max_receive_count, "Queue and DLQ bound."
        );
        Ok(SqsQueue {
            dlq: DeadLetterQueue::new(client.clone(), dlq_url, dlq_max_message_bytes),
            client,
            queue_url,
            receive: ReceiveSettings {
                max_messages: receive.max_messages.clamp(1, MAX_BATCH_ENTRIES as u8),
                wait_time_secs: receive.wait_time_secs.min(MAX_WAIT_TIME_SECS),
            },
            max_receive_count,
            visibility_timeout,
        })
    }

    /// The main queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The dead-letter queue's URL.
    pub fn dlq_url(&self) -> &str {
        self.dlq.url()
    }

    /// The long-poll wait of each receive, in seconds (0: short polling).
    pub fn wait_time_secs(&self) -> u8 {
        self.receive.wait_time_secs
    }

    /// The RedrivePolicy's `maxReceiveCount`, if the queue has one.
    pub fn max_receive_count(&self) -> Option<u32> {
        self.max_receive_count
    }

    /// Long-polls for up to `max_messages` messages, with all their message attributes
    /// and their receive count. An empty batch means the wait ended without messages.
    ///
    /// # Errors
    /// [`QueueError::Sdk`].
    pub async fn receive(&self) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_at_most(self.receive.max_messages).await
    }

    /// As [`SqsQueue::receive`], but for at most `max_messages` (clamped to
    /// 1 ..= the configured maximum): a trial batch while the database is suspect.
    ///
    /// # Errors
    /// [`QueueError::Sdk`].
    pub async fn receive_at_most(
        &self,
        max_messages: u8,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_call(max_messages, self.receive.wait_time_secs)
            .await
    }

    /// As [`SqsQueue::receive_at_most`], but a short poll: returns at once with what
    /// is there. For gathering more of a backlog into the batch in hand.
    ///
    /// # Errors
    /// [`QueueError::Sdk`].
    pub async fn receive_now(&self, max_messages: u8) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_call(max_messages, 0).await
    }

    /// Most messages one ReceiveMessage call asks for.
    pub fn max_messages(&self) -> u8 {
        self.receive.max_messages
    }

    async fn receive_call(
        &self,
        max_messages: u8,
        wait_time_secs: u8,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max_messages = max_messages.clamp(1, self.receive.max_messages);
        // The answer to a long poll of an idle queue comes after the whole wait: the
        // client's attempt and operation bounds are widened by it for this call.
        let timeouts = runtime::aws::long_poll_timeouts(
            self.client.config().timeout_config(),
            Duration::from_secs(u64::from(wait_time_secs)),
        );
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(i32::from(max_messages))
            .wait_time_seconds(i32::from(wait_time_secs))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::new().timeout_config(timeouts))
            .send()
            .await
            .map_err(|e| sdk_error(Operation::Receive, &self.queue_url, e))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let message_id = m.message_id.clone();
                let received = ReceivedMessage::from_sdk(m);
                if received.is_none() {
                    warn!(
                        ?message_id,
                        "Received a message without id or receipt handle, ignoring it."
                    );
                }
                received
            })
            .collect())
    }

    /// Deletes the messages (in calls of at most [`MAX_BATCH_ENTRIES`]), retrying the
    /// entries that failed transiently with exponential back-off and jitter.
    ///
    /// # Errors
    /// [`QueueError::EntriesFailed`] if some entries could not be deleted: those
    /// messages come back after their visibility timeout and are applied again, which
    /// the idempotent apply makes harmless. [`QueueError::Sdk`] if a call failed.
    #[instrument(skip_all, fields(messages = messages.len()))]
    pub async fn delete_batch(&self, messages: &[&ReceivedMessage]) -> Result<(), QueueError> {
        let queue_url = self.queue_url.as_str();
        retry_failed_entries(Operation::Delete, queue_url, messages.len(), |indexes| {
            let entries: Vec<_> = indexes
                .iter()
                .map(|&i| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&messages[i].receipt_handle)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            let call = self.client.delete_message_batch().queue_url(queue_url);
            let call = call.set_entries(Some(entries)).send();
            async move {
                let output = call.await;
                let output = output.map_err(|e| sdk_error(Operation::Delete, queue_url, e))?;
                Ok(output.results(&indexes))
            }
        })
        .await
    }

    /// Sets each message's visibility timeout (capped at
    /// [`MAX_VISIBILITY_TIMEOUT_SECS`]), so it comes back after that delay.
    ///
    /// # Errors
    /// As [`SqsQueue::delete_batch`]; a message whose visibility could not be changed
    /// simply comes back after the queue's default visibility timeout.
    #[instrument(skip_all, fields(messages = changes.len()))]
    pub async fn change_visibility_batch(
        &self,
        changes: &[(&ReceivedMessage, Duration)],
    ) -> Result<(), QueueError> {
        let queue_url = self.queue_url.as_str();
        retry_failed_entries(
            Operation::ChangeVisibility,
            queue_url,
            changes.len(),
            |indexes| {
                let entries: Vec<_> = indexes
                    .iter()
                    .map(|&i| {
                        let (message, delay) = changes[i];
                        visibility_entry(i, message, delay)
                    })
                    .collect();
                let call = self.client.change_message_visibility_batch();
                let call = call.queue_url(queue_url).set_entries(Some(entries)).send();
                async move {
                    let output = call.await;
                    let output =
                        output.map_err(|e| sdk_error(Operation::ChangeVisibility, queue_url, e))?;
                    Ok(output.results(&indexes))
                }
            },
        )
        .await
    }
}

/// A dead-letter queue, where messages that can never be applied are parked with their
/// reason. The container worker parks through [`SqsQueue`] (send, then delete); a
/// Lambda handler parks through this directly (send only: the service deletes the
/// messages it reports as handled).
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    client: Client,
    url: String,
    /// The DLQ's `MaximumMessageSize`, in bytes: a parked copy is made to fit it.
    max_message_bytes: usize,
}

impl DeadLetterQueue {
    pub fn new(client: Client, url: String, max_message_bytes: usize) -> DeadLetterQueue {
        DeadLetterQueue {
            client,
            url,
            max_message_bytes,
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQS client it sends with (the Lambda handler's too).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends a copy of `message` to the DLQ: the original body and message attributes,
    /// plus the reason, the detail and the original message id, made to fit the DLQ's
    /// maximum message size ([`dlq_attributes`]). If the DLQ refuses that copy for good
    /// (an attribute it will not take), sends it once more with only the body and the
    /// reason. Does not delete it.
    ///
    /// # Errors
    /// [`QueueError::Sdk`]; the message must then stay on the main queue.
    pub async fn send(
        &self,
        message: &ReceivedMessage,
        reason_code: &'static str,
        detail: &str,
    ) -> Result<(), QueueError> {
        // A decode error's text may quote a character SQS refuses in an attribute.
        let detail = runtime::sqs_text::sanitize_text(detail);
        let attributes = dlq_attributes(message, reason_code, &detail, self.max_message_bytes);
        match self.send_copy(&message.body, attributes).await {
            Err(e) if !e.is_retryable() => {
                error!(
                    message_id = %message.message_id,
                    reason = reason_code,
                    error = %error_chain(&e),
                    "The DLQ refused the parked copy; sending it again with only its body and reason."
                );
                self.send_copy(&message.body, minimal_dlq_attributes(reason_code))
                    .await
            }
            sent => sent,
        }
    }

    async fn send_copy(
        &self,
        body: &str,
        attributes: HashMap<String, MessageAttributeValue>,
    ) -> Result<(), QueueError> {
        // The body came from SQS, so this is a no-op unless a caller parks text that
        // did not: then it keeps SQS from refusing the parked copy.
        let body = runtime::sqs_text::escape_json(body);
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body.as_ref())
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| sdk_error(Operation::SendToDlq, &self.url, e))?;
        Ok(())
    }
}

/// Makes held messages visible again at once (`ChangeMessageVisibilityBatch` to 0),
/// [`MAX_BATCH_ENTRIES`] at a time: what a peek or a stopped move leaves behind.
///
/// # Errors
/// The last call that failed (every chunk is tried).
pub async fn release<H: AsRef<str>>(
    sqs: &Client,
    queue_url: &str,
    handles: &[H],
) -> Result<
    (),
    SdkError<
        aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchError,
    >,
> {
    let mut outcome = Ok(());
    for chunk in handles.chunks(MAX_BATCH_ENTRIES) {
        let entries = chunk.iter().enumerate().map(|(i, h)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h.as_ref())
                .visibility_timeout(0)
                .build()
                .expect("id and handle are set")
        });
        let call = sqs.change_message_visibility_batch().queue_url(queue_url);
        if let Err(e) = call.set_entries(Some(entries.collect())).send().await {
            outcome = Err(e);
        }
    }
    outcome
}

impl Parker for DeadLetterQueue {
    /// Sends to the DLQ only; the caller reports the message as handled.
    #[instrument(skip_all, fields(message_id = %message.message_id, reason = reason_code))]
    async fn park(
        &self,
        message: &ReceivedMessage,
        reason_code: &'static str,
        detail: &str,
    ) -> Result<(), QueueError> {
        self.send(message, reason_code, detail).await?;
        crate::metrics::metrics().parked(&message.message_id, reason_code, detail, &self.url);
        Ok(())
    }
}

impl Parker for SqsQueue {
    fn visibility_timeout(&self) -> Option<Duration> {
        Some(self.visibility_timeout)
    }

    async fn keep_invisible(&self, messages: &[&ReceivedMessage]) -> bool {
        let changes: Vec<(&ReceivedMessage, Duration)> = messages
            .iter()
            .map(|&m| (m, self.visibility_timeout))
            .collect();
        match self.change_visibility_batch(&changes).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %error_chain(&e), messages = messages.len(), "Could not extend the visibility of the batch being isolated.");
                false
            }
        }
    }

    /// Parks in the DLQ first ([`DeadLetterQueue`]'s `park`) and deletes from the main
    /// queue after, so a crash in between leaves a duplicate in the DLQ, never a lost
    /// message.
    async fn park(
        &self,
        message: &ReceivedMessage,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), QueueError> {
        self.dlq.park(message, reason, detail).await?;
        if let Err(e) = self.delete_batch(&[message]).await {
            // It is safe in the DLQ; if it comes back it is parked again (a duplicate
            // in the DLQ, which a redrive applies idempotently).
            warn!(message_id = %message.message_id, error = %error_chain(&e), "Parked message not deleted from the queue.");
        }
        Ok(())
    }
}

/// The `ChangeMessageVisibilityBatch` entry (request id `id`) that makes `message` come
/// back after `delay`, capped at [`MAX_VISIBILITY_TIMEOUT_SECS`].
pub(crate) fn visibility_entry(
    id: usize,
    message: &ReceivedMessage,
    delay: Duration,
) -> ChangeMessageVisibilityBatchRequestEntry {
    let secs = delay.as_secs().min(MAX_VISIBILITY_TIMEOUT_SECS);
    ChangeMessageVisibilityBatchRequestEntry::builder()
        .id(id.to_string())
        .receipt_handle(&message.receipt_handle)
        .visibility_timeout(i32::try_from(secs).expect("capped at 43200"))
        .build()
        .expect("id and receipt handle are set")
}

/// How deletes and visibility changes retry their failed entries: five rounds, from
/// 100 ms doubling to 5 s. A call that fails as a whole ends the send (the SDK has
/// already spent its attempts), so a drain at shutdown is never held by several
/// operation timeouts. The calls of one round go out together: a coalesced batch of 100
/// messages is ten calls, and their round trips should not add up.
const ENTRY_RETRY: RetryPolicy = RetryPolicy {
    backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
    max_retries: Some(5),
    concurrency: usize::MAX,
    retry_call_errors: false,
    in_flight_grace: None,
};

/// Runs a batch call over `total` entries (their request ids are their indexes), at most
/// [`MAX_BATCH_ENTRIES`] per call, retrying only the entries that failed through no
/// fault of ours ([`runtime::batch::send`]).
async fn retry_failed_entries<F, Fut>(
    operation: Operation,
    queue_url: &str,
    total: usize,
    send: F,
) -> Result<(), QueueError>
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<EntryResult>, QueueError>>,
{
    let sent = runtime::batch::send(
        operation.as_str(),
        total,
        MAX_BATCH_ENTRIES,
        ENTRY_RETRY,
        None,
        send,
    )
    .await;
    if let Some(e) = sent.call_error {
        return Err(e);
    }
    // Refused (an expired receipt handle: sending it again cannot help) or still
    // failing after the retries.
    let codes = sent
        .refused
        .iter()
        .map(|(_, code, _)| code)
        .chain(sent.unsent.iter().map(|(_, code)| code));
    let failed = sent.refused.len() + sent.unsent.len();
    match codes.into_iter().next() {
        None => Ok(()),
        Some(code) => Err(QueueError::EntriesFailed {
            operation,
            queue_url: queue_url.to_owned(),
            failed,
            code: code.clone(),
        }),
    }
}

/// SQS's default `VisibilityTimeout` of a queue.
///
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html>
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

async fn read_visibility_timeout(
    client: &Client,
    queue_url: &str,
) -> Result<Option<Duration>, QueueError> {
    let secs = read_attribute(client, queue_url, QueueAttributeName::VisibilityTimeout).await?;
    Ok(secs
        .and_then(|secs| secs.parse::<u64>().ok())
        .map(Duration::from_secs))
}

async fn read_redrive_policy(
    client: &Client,
    queue_url: &str,
) -> Result<Option<String>, QueueError> {
    read_attribute(client, queue_url, QueueAttributeName::RedrivePolicy).await
}

/// One attribute of a queue (`GetQueueAttributes`); `None` when the queue has none.
async fn read_attribute(
    client: &Client,
    queue_url: &str,
    name: QueueAttributeName,
) -> Result<Option<String>, QueueError> {
    let output = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| sdk_error(Operation::GetQueueAttributes, queue_url, e))?;
    Ok(output.attributes().and_then(|a| a.get(&name)).cloned())
}

/// The URL of the DLQ a RedrivePolicy names.
async fn resolve_dlq(client: &Client, queue_url: &str, policy: &str) -> Result<String, QueueError> {
    let target =
        dlq_from_redrive_policy(policy).map_err(|problem| QueueError::BadRedrivePolicy {
            queue_url: queue_url.to_owned(),
            problem,
        })?;
    let output = client
        .get_queue_url()
        .queue_name(&target.queue_name)
        .queue_owner_aws_account_id(&target.account_id)
        .send()
        .await
        .map_err(|e| sdk_error(Operation::GetQueueUrl, queue_url, e))?;
    output
        .queue_url()
        .map(str::to_owned)
        .ok_or(QueueError::BadRedrivePolicy {
            queue_url: queue_url.to_owned(),
            problem: "GetQueueUrl returned no URL for the deadLetterTargetArn",
        })
}
