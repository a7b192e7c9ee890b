//! The batch step both modes share: stream records → events → SNS, parking what can
//! never be published.
//!
//! The container pipeline checkpoints after a step that finished; the Lambda handler
//! reports the first unfinished record's sequence number as its batch item failure.
//! Either way, every record before [`StepError::first_unfinished`] is accepted by SNS,
//! skipped (a no-change MODIFY) or parked (keys, position, reason) in the failure queue.

use contracts::SchemaVersion;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::park::{FailureQueue, ParkError, ParkedChange, ParkedRecord};
use crate::record::{Origin, StreamRecord, to_event};
use crate::sink::{Encoded, PublishError, SnsSink};

/// Attempts at parking one record before the step gives up on it.
pub(crate) const PARK_ATTEMPTS: u32 = 8;

/// The pause between two attempts at parking a record: from 200 ms, doubling up to
/// 20 s, with jitter (as the read loop's retries).
const PARK_BACKOFF: runtime::backoff::Backoff = runtime::backoff::Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(20),
);

/// What a batch step needs, borrowed from whoever runs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchStep<'a> {
    pub sink: &'a SnsSink,
    pub failures: &'a FailureQueue,
    pub origin: &'a Origin,
    /// The contract version events are encoded as.
    pub emit: SchemaVersion,
}

/// What a finished step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepReport {
    pub published: usize,
    pub skipped: usize,
    pub parked: usize,
    pub retries: usize,
}

/// A step that stopped before every record was published or parked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// `work` was cancelled (shutdown, or a Lambda's deadline) while entries kept
    /// failing.
    #[error("stopped while {pending} events were unpublished, from record {first_unfinished}")]
    Interrupted {
        first_unfinished: usize,
        pending: usize,
    },
    /// Record `index` could be neither published nor parked.
    #[error("record {index} can be neither published nor parked: {source}")]
    Park {
        first_unfinished: usize,
        index: usize,
        source: ParkError,
    },
}

impl StepError {
    /// Index of the first record not published, skipped or parked: the place to resume.
    pub fn first_unfinished(&self) -> usize {
        match self {
            StepError::Interrupted {
                first_unfinished, ..
            }
            | StepError::Park {
                first_unfinished, ..
            } => *first_unfinished,
        }
    }
}

/// Why parking one record stopped.
enum ParkStop {
    Interrupted,
    Failed(ParkError),
}

/// PURE: what the records of a slice come to before anything is sent: the events to
/// publish (tagged with their record's index), how many records change nothing the
/// contract carries, and the records that can never be events (index, reason code,
/// detail), in order.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub events: Vec<Encoded>,
    pub skipped: usize,
    pub undecodable: Vec<(usize, &'static str, String)>,
}

pub(crate) fn decode(
    records: &[StreamRecord],
    origin: &Origin,
    emit: SchemaVersion,
    now: OffsetDateTime,
) -> Decoded {
    let mut decoded = Decoded {
        events: Vec::with_capacity(records.len()),
        ..Decoded::default()
    };
    for (i, record) in records.iter().enumerate() {
        match to_event(record, origin, now) {
            Ok(Some(event)) => decoded.events.push(Encoded::new(i, &event, emit)),
            Ok(None) => decoded.skipped += 1,
            Err(e) => decoded
                .undecodable
                .push((i, e.reason_code(), e.to_string())),
        }
    }
    decoded
}

/// The first record a step could not finish: its index, and why (`None`: interrupted).
type Unfinished = Option<(usize, Option<ParkError>)>;

impl BatchStep<'_> {
    /// Decodes `records` ([`decode`]), parks what can never be an event, publishes the
    /// events, parks what SNS refuses for good.
    ///
    /// Every entry is tried at least once even when `work` is already cancelled; only
    /// what keeps failing is abandoned then. A record that cannot be parked ends the
    /// step there, but the records before it are still published, so the place to
    /// resume is exact.
    ///
    /// # Errors
    /// [`StepError`], naming the first record that is not finished.
    pub async fn run(
        &self,
        shard_id: &str,
        records: &[StreamRecord],
        work: &CancellationToken,
    ) -> Result<StepReport, StepError> {
        let decoded = decode(records, self.origin, self.emit, OffsetDateTime::now_utc());
        let mut report = StepReport {
            skipped: decoded.skipped,
            ..StepReport::default()
        };
        let mut failure = self
            .park_each(shard_id, records, decoded.undecodable, &mut report, work)
            .await;
        // The records from an unparked one on are read again: publish only those before.
        let events = decoded
            .events
            .into_iter()
            .filter(|e| failure.as_ref().is_none_or(|(f, _)| e.tag < *f))
            .collect();
        let mut pending = 0;
        match self.sink.publish(events, work).await {
            Ok(published) => {
                report.published += published.published;
                report.retries += published.retries;
                let mut rejected: Vec<_> = published
                    .rejected
                    .into_iter()
                    .map(|(event, why)| (event.tag, why.reason_code, why.detail))
                    .collect();
                rejected.sort_by_key(|(tag, ..)| *tag);
                // Every rejected event comes before `failure`: one that cannot be
                // parked is the earlier place to resume.
                let rejected_failure = self
                    .park_each(shard_id, records, rejected, &mut report, work)
                    .await;
                failure = rejected_failure.or(failure);
            }
            Err(PublishError::Interrupted {
                pending: p,
                unfinished,
            }) => {
                pending = p;
                if let Some(&first) = unfinished.first()
                    && failure.as_ref().is_none_or(|(f, _)| first < *f)
                {
                    failure = Some((first, None));
                }
            }
        }
        match failure {
            None => {
                debug!(%shard_id, records = records.len(), ?report, "Batch step finished.");
                Ok(report)
            }
            Some((index, Some(source))) => Err(StepError::Park {
                first_unfinished: index,
                index,
                source,
            }),
            Some((index, None)) => Err(StepError::Interrupted {
                first_unfinished: index,
                pending,
            }),
        }
    }

    /// Parks `records[index]` for each `(index, reason, detail)`, in order, until one
    /// cannot be parked: that one is returned.
    async fn park_each(
        &self,
        shard_id: &str,
        records: &[StreamRecord],
        to_park: Vec<(usize, &'static str, String)>,
        report: &mut StepReport,
        work: &CancellationToken,
    ) -> Unfinished {
        for (index, reason, detail) in to_park {
            match self
                .park(shard_id, &records[index], reason, detail, work)
                .await
            {
                Ok(()) => report.parked += 1,
                Err(stop) => return Some((index, stop_cause(stop))),
            }
        }
        None
    }

    /// Parks one record, retrying a send that failed until [`PARK_ATTEMPTS`] or until
    /// `work` is cancelled.
    async fn park(
        &self,
        shard_id: &str,
        record: &StreamRecord,
        reason: &str,
        detail: String,
        work: &CancellationToken,
    ) -> Result<(), ParkStop> {
        let parked = ParkedRecord {
            reason: reason.to_owned(),
            detail,
            stream_arn: self.origin.stream_arn.clone(),
            shard_id: shard_id.to_owned(),
            record: ParkedChange::of(record),
        };
        let mut attempt = 0;
        loop {
            match self.failures.park(&parked).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt + 1 < PARK_ATTEMPTS => {
                    attempt += 1;
                    warn!(%shard_id, error = %e, attempt, "Parking a record failed, will retry.");
                    tokio::select! {
                        _ = tokio::time::sleep(PARK_BACKOFF.delay_random(attempt)) => {}
                        _ = work.cancelled() => return Err(ParkStop::Interrupted),
                    }
                }
                Err(e) => return Err(ParkStop::Failed(e)),
            }
        }
    }
}

fn stop_cause(stop: ParkStop) -> Option<ParkError> {
    match stop {
        ParkStop::Interrupted => None,
        ParkStop::Failed(e) => Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EventName;
    use crate::record::tests::{item, origin, record};

    #[test]
    fn decode_sorts_each_record_into_an_event_a_skip_or_a_reason_to_park() {
        let same = item(3);
        let records = [
            record(EventName::Insert, None, Some(item(1))),
            // A MODIFY that changes nothing the contract carries.
            record(EventName::Modify, Some(same.clone()), Some(same)),
            // A REMOVE without its old image cannot be placed: parked, not guessed.
            record(EventName::Remove, None, None),
            record(EventName::Modify, Some(item(4)), Some(item(5))),
        ];
        let d = decode(
            &records,
            &origin(),
            contracts::CURRENT_SCHEMA_VERSION,
            OffsetDateTime::UNIX_EPOCH,
        );
        let tags: Vec<usize> = d.events.iter().map(|e| e.tag).collect();
        assert_eq!(tags, [0, 3], "events keep their record's index");
        assert_eq!(d.skipped, 1);
        assert_eq!(d.undecodable.len(), 1);
        let (index, reason, detail) = &d.undecodable[0];
        assert_eq!((*index, *reason), (2, "missing_image"));
        assert!(!detail.is_empty());
    }
}
