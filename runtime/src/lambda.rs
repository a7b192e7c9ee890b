//! What the two Lambda handlers share: the partial batch response, the invocation's
//! deadline and the time left to work in it, and [`serve`], the runtime loop with the
//! process's one shutdown semantics.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// A Lambda handler's partial batch response (`FunctionResponseTypes:
/// [ReportBatchItemFailures]`), the same for a stream and a queue event source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One failed item: a stream record's sequence number, or an SQS message id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchItemFailure {
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

impl BatchResponse {
    /// A response naming each of `ids` for retry, in their order.
    pub fn failures<I: IntoIterator<Item = String>>(ids: I) -> Self {
        BatchResponse {
            batch_item_failures: ids
                .into_iter()
                .map(|item_identifier| BatchItemFailure { item_identifier })
                .collect(),
        }
    }
}

/// A Lambda invocation's deadline from the runtime API's `Lambda-Runtime-Deadline-Ms`
/// header, which AWS defines as milliseconds since the Unix epoch.
///
/// cargo-lambda's runtime emulator (1.9.2) sends the function's timeout there instead
/// (`600000`: a duration), which read as an epoch time is in 1970, so every handler
/// would think its deadline long past. A value before 2001 cannot be a real deadline;
/// it is read as a duration from `now`.
pub fn invocation_deadline(deadline_ms: u64, now: SystemTime) -> SystemTime {
    /// 2001-01-01T00:00:00Z in milliseconds since the epoch.
    const PLAUSIBLE_EPOCH_MS: u64 = 978_307_200_000;
    let ms = Duration::from_millis(deadline_ms);
    if deadline_ms < PLAUSIBLE_EPOCH_MS {
        now + ms
    } else {
        std::time::UNIX_EPOCH + ms
    }
}

/// How long a handler may work before `deadline`, keeping `margin` to report what is
/// unfinished: zero when the deadline is already that close; `None` without a deadline
/// (a test calling the handler directly). Both handlers stop their work at this bound.
pub fn work_budget(
    deadline: Option<SystemTime>,
    margin: Duration,
    now: SystemTime,
) -> Option<Duration> {
    deadline.map(|d| {
        d.duration_since(now)
            .unwrap_or_default()
            .saturating_sub(margin)
    })
}

/// Runs the Lambda runtime loop: each invocation's payload `A` goes to `handle` with its
/// deadline. On the first SIGTERM or SIGINT (`shutdown`) the invocation in flight
/// finishes and is answered, then the loop returns `Ok`; the second signal exits the
/// process with [`crate::shutdown::FORCED_EXIT_STATUS`] (see [`crate::shutdown`]).
///
/// # Errors
/// When the runtime API fails (it is not there, or refuses the answer).
pub async fn serve<A, H, Fut, E>(
    handle: H,
    shutdown: CancellationToken,
) -> Result<(), lambda_runtime::Error>
where
    A: DeserializeOwned + Send,
    H: Fn(A, SystemTime) -> Fut,
    Fut: Future<Output = Result<BatchResponse, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    // Each invocation holds a read lock from its start until its answer is posted to
    // the runtime API; the drain takes the write lock, so it waits for both.
    let in_flight = Arc::new(tokio::sync::RwLock::new(()));
    let handle = &handle;
    let service =
        lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<A>| async move {
            let deadline = invocation_deadline(event.context.deadline, SystemTime::now());
            handle(event.payload, deadline)
                .await
                .map_err(lambda_runtime::Error::from)
        });
    let runtime = lambda_runtime::Runtime::new(service)
        .layer(lambda_runtime::layers::TracingLayer::new())
        .layer(InFlight {
            lock: Arc::clone(&in_flight),
        });
    tokio::select! {
        result = runtime.run() => result,
        () = async {
            shutdown.cancelled().await;
            let _drained = in_flight.write().await;
        } => {
            tracing::info!("Invocation in flight answered; stopping.");
            Ok(())
        }
    }
}

/// A layer around the whole invocation (handler, then the answer's POST to the runtime
/// API): each holds a read lock on `lock` until it is answered.
struct InFlight {
    lock: Arc<tokio::sync::RwLock<()>>,
}

impl<S> lambda_runtime::tower::Layer<S> for InFlight {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            lock: Arc::clone(&self.lock),
        }
    }
}

struct Tracked<S> {
    inner: S,
    lock: Arc<tokio::sync::RwLock<()>>,
}

impl<S> lambda_runtime::tower::Service<lambda_runtime::LambdaInvocation> for Tracked<S>
where
    S: lambda_runtime::tower::Service<
            lambda_runtime::LambdaInvocation,
            Response = (),
            Error = lambda_runtime::Error,
        >,
{
    type Response = ();
    type Error = lambda_runtime::Error;
    type Future = Guarded<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: lambda_runtime::LambdaInvocation) -> Self::Future {
        Guarded {
            acquire: Some(Box::pin(Arc::clone(&self.lock).read_owned())),
            guard: None,
            inner: Box::pin(self.inner.call(invocation)),
        }
    }
}

type Acquire =
    std::pin::Pin<Box<dyn Future<Output = tokio::sync::OwnedRwLockReadGuard<()>> + Send>>;

/// An invocation's future that first takes the read lock, then runs, and releases the
/// lock when it is dropped (answered, or abandoned).
struct Guarded<F> {
    acquire: Option<Acquire>,
    guard: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    inner: std::pin::Pin<Box<F>>,
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        if let Some(acquire) = this.acquire.as_mut() {
            match acquire.as_mut().poll(cx) {
                std::task::Poll::Ready(guard) => {
                    this.guard = Some(guard);
                    this.acquire = None;
                }
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
        this.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn an_epoch_deadline_is_taken_as_it_is_and_a_duration_is_counted_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_586_566);
        let real = 1_795_586_596_000;
        assert_eq!(
            invocation_deadline(real, now),
            UNIX_EPOCH + Duration::from_millis(real)
        );
        assert_eq!(
            invocation_deadline(600_000, now),
            now + Duration::from_secs(600)
        );
    }

    #[test]
    fn the_budget_keeps_the_margin_and_is_zero_past_the_deadline() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let margin = Duration::from_secs(2);
        let in_ten = Some(now + Duration::from_secs(10));
        assert_eq!(
            work_budget(in_ten, margin, now),
            Some(Duration::from_secs(8))
        );
        let in_one = Some(now + Duration::from_secs(1));
        assert_eq!(work_budget(in_one, margin, now), Some(Duration::ZERO));
        let past = Some(now - Duration::from_secs(1));
        assert_eq!(work_budget(past, margin, now), Some(Duration::ZERO));
        assert_eq!(work_budget(None, margin, now), None);
    }

    #[test]
    fn a_failure_response_names_each_item_in_order_in_aws_s_shape() {
        let r = BatchResponse::failures(["b".to_owned(), "a".to_owned()]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"batchItemFailures":[{"itemIdentifier":"b"},{"itemIdentifier":"a"}]}"#
        );
    }
}
