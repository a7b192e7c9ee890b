//! The lease and the per-shard checkpoints, in a DynamoDB table.
//!
//! One item per stream holds the lease (`pk = "lease#<stream arn>"`: owner, expiry); one
//! item per shard holds the position published up to (`pk = "shard#<stream arn>#<shard>"`).
//! A checkpoint is written in one transaction with a condition on the lease, so a
//! publisher that lost its lease (paused, partitioned) can never move a checkpoint the
//! new owner depends on.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb as ddb;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use ddb::operation::transact_write_items::TransactWriteItemsError;
use ddb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};

/// Sequence-number marker of a shard read to its end.
const SHARD_END: &str = "SHARD_END";
/// Key attribute of the checkpoint table.
pub const KEY_ATTRIBUTE: &str = "pk";

/// How far a shard has been published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Every record up to and including this sequence number is published.
    At(String),
    /// The shard is closed and every record in it is published.
    Finished,
}

/// Errors of the checkpoint table.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another publisher holds the lease now; this one must stop without writing.
    #[error("lease on {stream_arn} lost to another publisher")]
    LeaseLost { stream_arn: String },
    #[error("checkpoint table call {operation} failed: {message}")]
    Sdk {
        operation: &'static str,
        message: String,
    },
}

impl CheckpointError {
    /// A lost lease is final for this process; table errors are worth another try.
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
        message: crate::describe_sdk_error(&err),
    }
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

fn now_ms() -> i64 {
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
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failure(&err) => Ok(()),
            Err(err) => Err(sdk("DeleteItem", err)),
        }
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
            .map(|seq| {
                if seq == SHARD_END {
                    Checkpoint::Finished
                } else {
                    Checkpoint::At(seq)
                }
            }))
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
        match result {
            Ok(_) => Ok(()),
            Err(err) if lease_check_failed(&err) => Err(CheckpointError::LeaseLost {
                stream_arn: self.stream_arn.clone(),
            }),
            Err(err) => Err(sdk("TransactWriteItems", err)),
        }
    }
}

/// A cancelled transaction is a lost lease only when the condition check failed; a
/// conflict with another transaction is worth a retry.
fn lease_check_failed<R>(err: &SdkError<TransactWriteItemsError, R>) -> bool {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => e
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

fn string_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name)? {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s.clone()),
        _ => None,
    }
}
