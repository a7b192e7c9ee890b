//! The table's DynamoDB stream as Lambda sees it: records read with the real Streams
//! API, and the DynamoDB JSON of Lambda's stream event built from them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodbstreams::types as st;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Stack, eventually};

/// A stream attribute value in DynamoDB JSON, as Lambda's stream event carries it.
pub fn ddb_json(v: &st::AttributeValue) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match v {
        st::AttributeValue::S(s) => json!({ "S": s }),
        st::AttributeValue::N(n) => json!({ "N": n }),
        st::AttributeValue::B(b) => json!({ "B": b64(b.as_ref()) }),
        st::AttributeValue::Bool(b) => json!({ "BOOL": b }),
        st::AttributeValue::Null(b) => json!({ "NULL": b }),
        st::AttributeValue::M(m) => json!({ "M": item_json(m) }),
        st::AttributeValue::L(l) => json!({ "L": l.iter().map(ddb_json).collect::<Vec<_>>() }),
        st::AttributeValue::Ss(v) => json!({ "SS": v }),
        st::AttributeValue::Ns(v) => json!({ "NS": v }),
        st::AttributeValue::Bs(v) => {
            json!({ "BS": v.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>() })
        }
        other => panic!("attribute type not expected from the test's items: {other:?}"),
    }
}

/// An item (keys or image) in DynamoDB JSON.
pub fn item_json(item: &HashMap<String, st::AttributeValue>) -> Value {
    Value::Object(item.iter().map(|(k, v)| (k.clone(), ddb_json(v))).collect())
}

/// A record as DynamoDB Streams' `GetRecords` returned it, in the shape Lambda's
/// DynamoDB event carries it.
pub fn stream_record_json(r: &st::Record, stream_arn: &str) -> Value {
    let d = r
        .dynamodb
        .as_ref()
        .expect("a stream record has its dynamodb part");
    let mut data = json!({
        "Keys": item_json(d.keys.as_ref().expect("a stream record has its keys")),
        "SequenceNumber": d.sequence_number,
        "SizeBytes": d.size_bytes,
        "StreamViewType": d.stream_view_type.as_ref().map(|t| t.as_str()),
    });
    if let Some(t) = d.approximate_creation_date_time {
        data["ApproximateCreationDateTime"] = json!(t.secs());
    }
    if let Some(i) = &d.new_image {
        data["NewImage"] = item_json(i);
    }
    if let Some(i) = &d.old_image {
        data["OldImage"] = item_json(i);
    }
    json!({
        "eventID": r.event_id,
        "eventName": r.event_name.as_ref().map(|n| n.as_str()),
        "eventVersion": r.event_version,
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region,
        "eventSourceARN": stream_arn,
        "dynamodb": data,
    })
}

impl Stack {
    /// Every record the table's stream holds, read with the real Streams API, once at
    /// least `count` are there (failing after `timeout`).
    pub async fn stream_records(&self, count: usize, timeout: Duration) -> Result<Vec<st::Record>> {
        let streams = &self.clients.streams;
        let arn = &self.resources.stream_arn;
        eventually("the stream's records", timeout, || async {
            let shards = streams
                .describe_stream()
                .stream_arn(arn)
                .send()
                .await?
                .stream_description
                .and_then(|d| d.shards)
                .unwrap_or_default();
            let mut records = Vec::new();
            for shard in shards {
                let mut iterator = streams
                    .get_shard_iterator()
                    .stream_arn(arn)
                    .shard_id(shard.shard_id.unwrap_or_default())
                    .shard_iterator_type(st::ShardIteratorType::TrimHorizon)
                    .send()
                    .await?
                    .shard_iterator;
                while let Some(it) = iterator {
                    let out = streams.get_records().shard_iterator(it).send().await?;
                    let got = out.records.unwrap_or_default();
                    if got.is_empty() {
                        break;
                    }
                    records.extend(got);
                    iterator = out.next_shard_iterator;
                }
            }
            Ok((records.len() >= count).then_some(records))
        })
        .await
    }

    /// The Lambda stream event of every record the table's stream holds, once at least
    /// `count` are there.
    pub async fn stream_event(&self, count: usize, timeout: Duration) -> Result<Value> {
        let records: Vec<Value> = self
            .stream_records(count, timeout)
            .await?
            .iter()
            .map(|r| stream_record_json(r, &self.resources.stream_arn))
            .collect();
        Ok(json!({ "Records": records }))
    }
}
