//! The lease and the per-shard checkpoints, in a DynamoDB table.
//!
//! One item per stream holds the lease (`pk = "lease#<stream arn>"`: owner, expiry); one
//! item per shard holds the position published up to (`pk = "shard#<stream arn>#<shard>"`).
//! A checkpoint is written in one transaction with a condition on the lease, so a
//! publisher that lost its lease (paused, partitioned) can never move a checkpoint the
//! new owner depends on.
//!
//! A checkpoint also only moves forward: each shard item carries `position`, a string
//! that sorts as the position does ([`position_key`]: sequence numbers are decimal
//! integers of varying length, so they are zero-padded), and the write is conditional
//! on it. A zombie that re-took an expired lease after a successor moved on is refused
//! ([`CheckpointError::Behind`]) instead of moving the successor's checkpoint back.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb as ddb;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use ddb::operation::transact_write_items::TransactWriteItemsError;
use ddb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};

/// Sequence-number marker of a shard read to its end.
const SHARD_END: &str = "SHARD_END";
/// Sequence-number prefix of a [`Checkpoint::Since`] marker (`LATEST@<unix ms>`).
const SINCE_PREFIX: &str = "LATEST@";
/// Digits a sequence number is padded to in [`position_key`]. DynamoDB Streams sequence
/// numbers are 21 to 40 digits long.
///
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_SequenceNumberRange.html>
const POSITION_DIGITS: usize = 64;
/// Key attribute of the checkpoint table.
pub const KEY_ATTRIBUTE: &str = "pk";

/// How far a shard has been published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record up to and including this sequence number is published.
    At(String),
    /// The shard is closed and every record in it is published.
    Finished,
    /// `--start-position latest` began this shard at this time (Unix milliseconds) and
    /// nothing was published from it yet: a restart reads from the trim horizon and
    /// skips only what is older, instead of taking a new LATEST that would skip what
    /// was written meanwhile.
    Since(i64),
}

/// A string that sorts as checkpoints do: a `Since` marker below every sequence number,
/// sequence numbers numerically (left-padded with zeros), `Finished` above all.
pub(crate) fn position_key(checkpoint: &Checkpoint) -> String {
    match checkpoint {
        Checkpoint::Since(_) => "a".to_owned(),
        Checkpoint::At(seq) => {
            let digits = seq.trim_start_matches('0');
            format!("n{digits:0>POSITION_DIGITS$}")
        }
        Checkpoint::Finished => "z".to_owned(),
    }
}

/// Errors of the checkpoint table.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another publisher holds the lease now; this one must stop without writing.
    #[error("lease on {stream_arn} lost to another publisher")]
    LeaseLost { stream_arn: String },
    /// The stored checkpoint of the shard is further on than the one written: another
    /// publisher moved it while this one was paused. This process's view is stale.
    #[error(
        "checkpoint of shard {shard_id} is ahead of this publisher's; refusing to move it back"
    )]
    Behind { shard_id: String },
    #[error("checkpoint table call {operation} failed: {message}")]
    Sdk {
        operation: &'static str,
        message: String,
    },
}

impl CheckpointError {
    /// A lost lease or a stale position is final for this process; table errors are
    /// worth another try.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::Sdk { .. })
    }
}

fn sdk<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    operation: &'static str,
    err: SdkError<E, R>,
) -> CheckpointError {
    CheckpointError::Sdk {
        operation,
        message: runtime::report::describe_sdk_error(&err),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// A conditional write whose condition failing is as good as success (another
/// writer already did it, or did better).
fn unless_superseded<O, E, R>(
    operation: &'static str,
    result: Result<O, SdkError<E, R>>,
) -> Result<(), CheckpointError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_condition_failure(&err) => Ok(()),
        Err(err) => Err(sdk(operation, err)),
    }
}

/// The wall clock in Unix milliseconds (lease expiry and `Since` markers).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who holds the lease, as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub owner: String,
    pub expires_at_ms: i64,
}

/// The lease and checkpoints of one stream, on behalf of one publisher (`owner`).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    client: ddb::Client,
    table: String,
    stream_arn: String,
    owner: String,
}

impl CheckpointStore {
    pub fn new(client: ddb::Client, table: String, stream_arn: String, owner: String) -> Self {
        CheckpointStore {
            client,
            table,
            stream_arn,
            owner,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The same owner's store for another stream of the table (its own lease).
    pub fn for_stream(&self, stream_arn: String) -> CheckpointStore {
        CheckpointStore {
            stream_arn,
            ..self.clone()
        }
    }

    fn followed_key(table: &str) -> AttributeValue {
        AttributeValue::S(format!("followed#{table}"))
    }

    /// The stream of `table` a publisher last followed, if one was recorded.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn followed_stream(&self, table: &str) -> Result<Option<String>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, Self::followed_key(table))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item.and_then(|item| string_attr(&item, "stream_arn")))
    }

    /// Records that this store's stream is the one of `table` being followed, so that
    /// a restart finishes it even after the table's stream was replaced. Only forward:
    /// a stream ARN ends in its creation time (`…/stream/2026-12-01T20:15:49.190`), so a
    /// newer stream's ARN sorts after an older one's; a publisher still on an older
    /// stream does not move the record back.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn follow_stream(&self, table: &str) -> Result<(), CheckpointError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY_ATTRIBUTE, Self::followed_key(table))
            .item("stream_arn", AttributeValue::S(self.stream_arn.clone()))
            .item("owner", AttributeValue::S(self.owner.clone()))
            .condition_expression("attribute_not_exists(#arn) OR #arn <= :arn")
            .expression_attribute_names("#arn", "stream_arn")
            .expression_attribute_values(":arn", AttributeValue::S(self.stream_arn.clone()))
            .send()
            .await;
        unless_superseded("PutItem", result)
    }

    fn lease_key(&self) -> AttributeValue {
        AttributeValue::S(format!("lease#{}", self.stream_arn))
    }

    fn shard_key(&self, shard_id: &str) -> AttributeValue {
        AttributeValue::S(format!("shard#{}#{}", self.stream_arn, shard_id))
    }

    /// Takes or renews the lease for `ttl`. Returns `Ok(None)` when it is held, or
    /// `Ok(Some(holder))` naming the other publisher that holds it.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn acquire(&self, ttl: Duration) -> Result<Option<LeaseHolder>, CheckpointError> {
        let now = now_ms();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY_ATTRIBUTE, self.lease_key())
            .item("owner", AttributeValue::S(self.owner.clone()))
            .item(
                "expires_at_ms",
                AttributeValue::N((now + ttl.as_millis() as i64).to_string()),
            )
            .condition_expression("attribute_not_exists(#pk) OR #owner = :me OR #exp < :now")
            .expression_attribute_names("#pk", KEY_ATTRIBUTE)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#exp", "expires_at_ms")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(err) if is_condition_failure(&err) => {
                Ok(Some(self.holder().await?.unwrap_or(LeaseHolder {
                    owner: "<unknown>".into(),
                    expires_at_ms: now,
                })))
            }
            Err(err) => Err(sdk("PutItem", err)),
        }
    }

    /// The current lease holder, if any.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn holder(&self) -> Result<Option<LeaseHolder>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, self.lease_key())
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item.map(|item| LeaseHolder {
            owner: string_attr(&item, "owner").unwrap_or_default(),
            expires_at_ms: string_attr(&item, "expires_at_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        }))
    }

    /// Gives the lease up so a successor need not wait for it to expire.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn release(&self) -> Result<(), CheckpointError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, self.lease_key())
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .send()
            .await;
        unless_superseded("DeleteItem", result)
    }

    /// The checkpoint of one shard.
    ///
    /// # Errors
    /// [`CheckpointError::Sdk`] when the table cannot be reached.
    pub async fn load(&self, shard_id: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, self.shard_key(shard_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out
            .item
            .and_then(|item| string_attr(&item, "sequence_number"))
            .map(|seq| parse_stored(&seq)))
    }

    /// Records a shard's position, only while this publisher holds the lease.
    ///
    /// # Errors
    /// [`CheckpointError::LeaseLost`] when another publisher owns the stream now.
    pub async fn save(
        &self,
        shard_id: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let seq = match checkpoint {
            Checkpoint::At(seq) => seq.clone(),
            Checkpoint::Finished => SHARD_END.to_owned(),
            Checkpoint::Since(ms) => format!("{SINCE_PREFIX}{ms}"),
        };
        let lease_check = ConditionCheck::builder()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, self.lease_key())
            .condition_expression("#owner = :me AND #exp > :now")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#exp", "expires_at_ms")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .build()
            .expect("table, key and condition are set");
        let put = Put::builder()
            .table_name(&self.table)
            .item(KEY_ATTRIBUTE, self.shard_key(shard_id))
            .item("sequence_number", AttributeValue::S(seq))
            .item("owner", AttributeValue::S(self.owner.clone()))
            .item("updated_at_ms", AttributeValue::N(now_ms().to_string()))
            .item("position", AttributeValue::S(position_key(checkpoint)))
            // Only forward (or the same position again: a retried write). Items written
            // before `position` existed carry none and may be moved once.
            .condition_expression("attribute_not_exists(#pos) OR #pos <= :pos")
            .expression_attribute_names("#pos", "position")
            .expression_attribute_values(":pos", AttributeValue::S(position_key(checkpoint)))
            .build()
            .expect("table and item are set");
        let result = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .condition_check(lease_check)
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await;
        match failed_conditions(&result) {
            (true, _) => Err(CheckpointError::LeaseLost {
                stream_arn: self.stream_arn.clone(),
            }),
            (false, true) => Err(CheckpointError::Behind {
                shard_id: shard_id.to_owned(),
            }),
            (false, false) => match result {
                Ok(_) => Ok(()),
                Err(err) => Err(sdk("TransactWriteItems", err)),
            },
        }
    }
}

/// Which conditions of a cancelled checkpoint transaction failed: (the lease check, the
/// only-forward put). Reasons come in the order of the items. A conflict with another
/// transaction is neither, and worth a retry.
fn failed_conditions<T, R>(
    result: &Result<T, SdkError<TransactWriteItemsError, R>>,
) -> (bool, bool) {
    let Err(err) = result else {
        return (false, false);
    };
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            let failed = |i: usize| {
                e.cancellation_reasons()
                    .get(i)
                    .is_some_and(|r| r.code() == Some("ConditionalCheckFailed"))
            };
            (failed(0), failed(1))
        }
        _ => (false, false),
    }
}

/// A stored `sequence_number` attribute as a checkpoint.
fn parse_stored(seq: &str) -> Checkpoint {
    if seq == SHARD_END {
        Checkpoint::Finished
    } else if let Some(ms) = seq
        .strip_prefix(SINCE_PREFIX)
        .and_then(|ms| ms.parse().ok())
    {
        Checkpoint::Since(ms)
    } else {
        Checkpoint::At(seq.to_owned())
    }
}

fn string_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name)? {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_sort_as_numbers_whatever_their_length() {
        let at = |s: &str| position_key(&Checkpoint::At(s.into()));
        // 9 < 10 as numbers, though "9" > "10" as strings.
        assert!(at("9") < at("10"));
        assert!(at("000000000000000000009") < at("100000000000000000000"));
        assert!(at("99999999999999999999") < at("1000000000000000000000000000000000000000"));
        assert_eq!(at("00042"), at("42"));
        assert!(position_key(&Checkpoint::Since(i64::MAX)) < at("0"));
        assert!(at(&"9".repeat(40)) < position_key(&Checkpoint::Finished));
    }

    #[test]
    fn stored_markers_read_back_as_what_was_written() {
        assert_eq!(parse_stored("SHARD_END"), Checkpoint::Finished);
        assert_eq!(
            parse_stored("LATEST@1700000000000"),
            Checkpoint::Since(1_700_000_000_000)
        );
        assert_eq!(parse_stored("000123"), Checkpoint::At("000123".into()));
    }
}
