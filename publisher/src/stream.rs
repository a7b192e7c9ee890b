//! Reading a DynamoDB stream: shards and their lineage, iterators, `GetRecords`.
//!
//! The lineage rule ([`ready_shards`]) is pure and unit-tested with fabricated split
//! topologies, since the emulators never split shards.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_dynamodbstreams as streams;
use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};
use streams::types::{self as st, ShardIteratorType};
use time::OffsetDateTime;

use crate::record::{AttributeValue, EventName, Item, StreamRecord};

use runtime::limits::dynamodb_streams::MAX_RECORDS_PER_CALL;

/// A shard as `DescribeStream` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    /// Set once the shard is closed (split or retired): it will end.
    pub ending_sequence_number: Option<String>,
}

/// Where to start reading a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Just after this sequence number (a checkpoint).
    After(String),
    TrimHorizon,
    Latest,
    /// From the trim horizon, skipping records created before this time (Unix
    /// milliseconds, less [`SINCE_SLACK_MS`]): where `--start-position latest` resumes
    /// before it has published anything from a shard.
    Since(i64),
}

/// How much older than a [`StartAt::Since`] time a record may be and still be published.
/// `ApproximateCreationDateTime` is rounded (DynamoDB Local rounds it down to the
/// minute) and clocks differ: publishing a little more than asked is harmless (the
/// subscriber ignores what it has), skipping a record written after the start is not.
pub(crate) const SINCE_SLACK_MS: i64 = 120_000;

/// Splits off the records a [`StartAt::Since`] start skips: those created before
/// `since_ms - SINCE_SLACK_MS`. Records keep their order; a record without a creation
/// time is kept. Returns (kept, sequence number of the last skipped record, skipped).
pub(crate) fn skip_older_than(
    records: Vec<StreamRecord>,
    since_ms: i64,
) -> (Vec<StreamRecord>, Option<String>, usize) {
    let cutoff = i128::from(since_ms - SINCE_SLACK_MS) * 1_000_000;
    let mut last_skipped = None;
    let mut skipped = 0;
    let kept = records
        .into_iter()
        .filter(|r| match r.approximate_creation {
            Some(at) if at.unix_timestamp_nanos() < cutoff => {
                last_skipped = r.sequence_number.clone().or(last_skipped.take());
                skipped += 1;
                false
            }
            _ => true,
        })
        .collect();
    (kept, last_skipped, skipped)
}

/// Errors talking to the stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The iterator is older than 15 minutes; get a new one from the last position.
    #[error("shard iterator expired")]
    IteratorExpired,
    /// The position asked for was trimmed (older than 24 hours): records were lost to us.
    #[error("stream position trimmed (records older than the stream's retention)")]
    Trimmed,
    /// The stream or the shard does not exist.
    #[error("stream or shard not found: {0}")]
    NotFound(String),
    /// Anything else the SDK reported, after its own retries.
    #[error("dynamodb streams call {operation} failed: {message}")]
    Sdk {
        operation: &'static str,
        code: Option<String>,
        message: String,
    },
}

impl StreamError {
    /// Worth trying again after a back-off (the SDK has already retried throttling).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StreamError::Sdk { .. })
    }

    fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_owned);
        match code.as_deref() {
            Some("ExpiredIteratorException") => StreamError::IteratorExpired,
            Some("TrimmedDataAccessException") => StreamError::Trimmed,
            Some("ResourceNotFoundException") => {
                StreamError::NotFound(err.message().unwrap_or_default().to_owned())
            }
            _ => StreamError::Sdk {
                operation,
                message: runtime::report::describe_sdk_error(&err),
                code,
            },
        }
    }
}

/// Thin adapter over the DynamoDB Streams client.
#[derive(Debug, Clone)]
pub struct StreamReader {
    client: streams::Client,
    stream_arn: String,
}

/// One `GetRecords` answer.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<StreamRecord>,
    /// `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
}

impl StreamReader {
    pub fn new(client: streams::Client, stream_arn: String) -> Self {
        StreamReader { client, stream_arn }
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// The DynamoDB Streams client, for a reader of another stream.
    pub fn client(&self) -> &streams::Client {
        &self.client
    }

    /// The stream's view type (`NEW_AND_OLD_IMAGES` is required) and every shard, following
    /// `LastEvaluatedShardId` pages.
    ///
    /// # Errors
    /// [`StreamError`] from `DescribeStream`.
    pub async fn describe(&self) -> Result<(Option<String>, Vec<ShardInfo>), StreamError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        let mut view_type = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| StreamError::from_sdk("DescribeStream", e))?;
            let Some(desc) = out.stream_description else {
                break;
            };
            view_type = desc
                .stream_view_type
                .as_ref()
                .map(|v| v.as_str().to_owned());
            for shard in desc.shards.unwrap_or_default() {
                let Some(shard_id) = shard.shard_id else {
                    continue;
                };
                shards.push(ShardInfo {
                    shard_id,
                    parent_shard_id: shard.parent_shard_id,
                    ending_sequence_number: shard
                        .sequence_number_range
                        .and_then(|r| r.ending_sequence_number),
                });
            }
            match desc.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        Ok((view_type, shards))
    }

    /// A fresh iterator for `shard_id`.
    ///
    /// # Errors
    /// [`StreamError::Trimmed`] when a checkpoint is older than the stream keeps.
    pub async fn iterator(&self, shard_id: &str, start: &StartAt) -> Result<String, StreamError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard_id);
        let req = match start {
            StartAt::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            StartAt::TrimHorizon | StartAt::Since(_) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
        };
        let out = req
            .send()
            .await
            .map_err(|e| StreamError::from_sdk("GetShardIterator", e))?;
        out.shard_iterator
            .ok_or_else(|| StreamError::NotFound(format!("no iterator for shard {shard_id}")))
    }

    /// One page of records.
    ///
    /// # Errors
    /// [`StreamError::IteratorExpired`] when the iterator must be re-acquired.
    pub async fn get_records(&self, iterator: &str) -> Result<Batch, StreamError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(MAX_RECORDS_PER_CALL)
            .send()
            .await
            .map_err(|e| StreamError::from_sdk("GetRecords", e))?;
        Ok(Batch {
            records: out
                .records
                .unwrap_or_default()
                .into_iter()
                .map(from_sdk_record)
                .collect(),
            next_iterator: out.next_shard_iterator,
        })
    }
}

/// Shards that may be read now: not finished, not already being read, and whose parent
/// is finished or no longer listed (trimmed away). Reading a child before its parent
/// ends would publish a key's later changes before its earlier ones.
pub(crate) fn ready_shards(
    shards: &[ShardInfo],
    finished: &HashSet<String>,
    active: &HashSet<String>,
) -> Vec<String> {
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let mut ready: Vec<String> = shards
        .iter()
        .filter(|s| !finished.contains(&s.shard_id) && !active.contains(&s.shard_id))
        .filter(|s| match &s.parent_shard_id {
            None => true,
            Some(parent) => finished.contains(parent) || !listed.contains(parent.as_str()),
        })
        .map(|s| s.shard_id.clone())
        .collect();
    ready.sort();
    ready
}

/// Every record converts: one the decoder cannot use (an unknown event name, no
/// `dynamodb` payload) is refused there and parked, never dropped here, since the
/// checkpoint moves past it.
fn from_sdk_record(record: st::Record) -> StreamRecord {
    let event_name = match record.event_name {
        Some(st::OperationType::Insert) => EventName::Insert,
        Some(st::OperationType::Modify) => EventName::Modify,
        Some(st::OperationType::Remove) => EventName::Remove,
        _ => EventName::Unsupported,
    };
    let data = record
        .dynamodb
        .unwrap_or_else(|| st::StreamRecord::builder().build());
    StreamRecord {
        event_id: record.event_id,
        event_name,
        keys: convert_item(data.keys.unwrap_or_default()),
        new_image: data.new_image.map(convert_item),
        old_image: data.old_image.map(convert_item),
        sequence_number: data.sequence_number,
        approximate_creation: data
            .approximate_creation_date_time
            .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()),
        user_identity: record.user_identity.map(|u| {
            (
                u.r#type.unwrap_or_default(),
                u.principal_id.unwrap_or_default(),
            )
        }),
    }
}

/// SDK item → our item type.
pub fn convert_item(item: HashMap<String, st::AttributeValue>) -> Item {
    item.into_iter()
        .map(|(k, v)| (k, convert_value(v)))
        .collect::<BTreeMap<_, _>>()
}

fn convert_value(v: st::AttributeValue) -> AttributeValue {
    match v {
        st::AttributeValue::S(s) => AttributeValue::S(s),
        st::AttributeValue::N(n) => AttributeValue::N(n),
        st::AttributeValue::B(b) => AttributeValue::B(b.into_inner()),
        st::AttributeValue::Bool(b) => AttributeValue::Bool(b),
        st::AttributeValue::Null(_) => AttributeValue::Null,
        st::AttributeValue::M(m) => AttributeValue::M(convert_item(m)),
        st::AttributeValue::L(l) => AttributeValue::L(l.into_iter().map(convert_value).collect()),
        st::AttributeValue::Ss(v) => AttributeValue::Ss(v),
        st::AttributeValue::Ns(v) => AttributeValue::Ns(v),
        st::AttributeValue::Bs(v) => {
            AttributeValue::Bs(v.into_iter().map(|b| b.into_inner()).collect())
        }
        // A type added to the API after this build: the decoder refuses it by name.
        _ => AttributeValue::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parent_shard_id: parent.map(Into::into),
            ending_sequence_number: None,
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn children_wait_until_their_parent_is_finished() {
        // root splits into a and b; a splits into a1 and a2.
        let shards = [
            shard("root", None),
            shard("a", Some("root")),
            shard("b", Some("root")),
            shard("a1", Some("a")),
            shard("a2", Some("a")),
        ];
        assert_eq!(ready_shards(&shards, &set(&[]), &set(&[])), vec!["root"]);
        assert_eq!(
            ready_shards(&shards, &set(&["root"]), &set(&[])),
            vec!["a", "b"]
        );
        assert_eq!(
            ready_shards(&shards, &set(&["root", "a"]), &set(&["b"])),
            vec!["a1", "a2"]
        );
        assert!(ready_shards(&shards, &set(&["root", "a", "b", "a1", "a2"]), &set(&[])).is_empty());
    }

    #[test]
    fn a_child_whose_parent_was_trimmed_away_is_ready() {
        let shards = [shard("child", Some("gone")), shard("other", None)];
        assert_eq!(
            ready_shards(&shards, &set(&[]), &set(&[])),
            vec!["child", "other"]
        );
    }

    #[test]
    fn shards_already_being_read_are_not_ready_again() {
        let shards = [shard("s1", None), shard("s2", None)];
        assert_eq!(ready_shards(&shards, &set(&[]), &set(&["s1"])), vec!["s2"]);
    }

    fn created(seq: &str, unix_ms: i64) -> StreamRecord {
        StreamRecord {
            event_id: Some(seq.into()),
            event_name: EventName::Insert,
            keys: Item::new(),
            new_image: None,
            old_image: None,
            sequence_number: Some(seq.into()),
            approximate_creation: OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(unix_ms) * 1_000_000,
            )
            .ok(),
            user_identity: None,
        }
    }

    #[test]
    fn a_since_start_skips_only_records_older_than_its_time_and_slack() {
        let since = 1_800_000_000_000;
        let records = vec![
            created("1", since - SINCE_SLACK_MS - 1),
            created("2", since - SINCE_SLACK_MS - 1),
            created("3", since - 60_000), // rounded down to the minute: still kept
            created("4", since + 5),
        ];
        let (kept, last_skipped, skipped) = skip_older_than(records, since);
        let kept: Vec<_> = kept
            .iter()
            .filter_map(|r| r.sequence_number.clone())
            .collect();
        assert_eq!(kept, ["3", "4"]);
        assert_eq!(last_skipped.as_deref(), Some("2"));
        assert_eq!(skipped, 2);
    }

    #[test]
    fn sdk_records_convert_without_losing_number_precision() {
        let big = "98765432109876543210987654321098765432";
        let item = HashMap::from([
            ("n".to_string(), st::AttributeValue::N(big.into())),
            ("ns".to_string(), st::AttributeValue::Ns(vec![big.into()])),
            (
                "b".to_string(),
                st::AttributeValue::B(aws_sdk_dynamodbstreams::primitives::Blob::new(vec![0, 255])),
            ),
        ]);
        let converted = convert_item(item);
        assert_eq!(converted["n"], AttributeValue::N(big.into()));
        assert_eq!(converted["ns"], AttributeValue::Ns(vec![big.into()]));
        assert_eq!(converted["b"], AttributeValue::B(vec![0, 255]));
    }
}
