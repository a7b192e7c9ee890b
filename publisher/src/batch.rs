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

impl BatchStep<'_> {
    /// Decodes `records`, publishes their events, parks what can never be published.
    ///
    /// Every entry is tried at least once even when `work` is already cancelled; only
    /// what keeps failing is abandoned then. A record that cannot be parked stops the
    /// decoding there, but the records before it are still published, so the place to
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
        let now = OffsetDateTime::now_utc();
        let mut report = StepReport::default();
        let mut encoded = Vec::with_capacity(records.len());
        // The first failure met, as (record index, cause): `None` cause = interrupted.
        let mut failure: Option<(usize, Option<ParkError>)> = None;
        for (i, record) in records.iter().enumerate() {
            match to_event(record, self.origin, now) {
                Ok(Some(event)) => encoded.push(Encoded::new(i, &event, self.emit)),
                Ok(None) => report.skipped += 1,
                Err(e) => match self
                    .park(shard_id, record, e.reason_code(), e.to_string(), work)
                    .await
                {
                    Ok(()) => report.parked += 1,
                    Err(stop) => {
                        failure = Some((i, stop_cause(stop)));
                        break;
                    }
                },
            }
        }
        let mut pending = 0;
        match self.sink.publish(encoded, work).await {
            Ok(published) => {
                report.published += published.published;
                report.retries += published.retries;
                let mut rejected = published.rejected;
                rejected.sort_by_key(|(e, _)| e.tag);
                for (event, why) in rejected {
                    // After a failure the records are read again from there: parking a
                    // later one now would only park it twice.
                    if failure.as_ref().is_some_and(|(f, _)| event.tag > *f) {
                        break;
                    }
                    let record = &records[event.tag];
                    match self
                        .park(shard_id, record, why.reason_code, why.detail, work)
                        .await
                    {
                        Ok(()) => report.parked += 1,
                        Err(stop) => {
                            failure = Some((event.tag, stop_cause(stop)));
                            break;
                        }
                    }
                }
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
                        _ = tokio::time::sleep(crate::pipeline::backoff(attempt)) => {}
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
