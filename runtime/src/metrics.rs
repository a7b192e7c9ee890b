//! The metric types every tributary process uses, on
//! [`prometheus-client`](https://docs.rs/prometheus-client), the Prometheus project's own
//! Rust client. Each family is a typed field of its crate's metrics struct (a counter
//! cannot be set, a gauge cannot be given a label it does not declare), so a wrong handle
//! does not compile.
//!
//! Names follow the Prometheus conventions
//! (<https://prometheus.io/docs/practices/naming/>): a counter is registered without
//! `_total` (the encoder adds it), and a unit is given as [`Unit`] so it comes last
//! (`…_seconds`). The exposition is the OpenMetrics text format, which Prometheus asks for
//! first. Label values must be low-cardinality (a reason code, a shard id), never an event
//! id.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
pub use prometheus_client::registry::{Registry, Unit};

/// A gauge of a fractional value (seconds, a ratio, 0 or 1).
pub type Gauge = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// The content type of [`render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the replication lag and iterator age histograms:
/// from 10 ms to 15 minutes.
pub const LAG_BUCKETS_SECS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Upper bounds of the batch size histograms (SQS and SNS batches hold at most 10,
/// DynamoDB Streams GetRecords at most 1000).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 100.0, 250.0, 1000.0];

/// A histogram with the given bucket upper bounds (`+Inf` is implied).
pub fn histogram(bounds: &[f64]) -> Histogram {
    Histogram::new(bounds.iter().copied())
}

/// The label of a series counted by reason code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: Cow<'static, str>,
}

impl ReasonLabel {
    pub fn of(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// The label of a per-shard series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

impl ShardLabel {
    pub fn of(shard: &str) -> Self {
        Self {
            shard: shard.to_owned(),
        }
    }
}

/// A registry that already holds `tributary_build_info` (`version`, `service`): what
/// every process's registry starts from, so a dashboard can tell which build answers.
pub fn registry(service: &'static str) -> Registry {
    let mut r = Registry::default();
    r.register(
        "tributary_build",
        "The build this process runs: its version and service (publisher, subscriber).",
        prometheus_client::metrics::info::Info::new([
            ("version", env!("CARGO_PKG_VERSION")),
            ("service", service),
        ]),
    );
    r
}

/// Registers `metric` under `name` (with `unit` last, when given) and hands it back: a
/// family is declared in one expression.
pub fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: M,
) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

/// The whole registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A gauge rendered as the seconds elapsed since the time last given to
/// [`Age::touch`], computed when scraped, so it grows while nothing happens. Absent
/// until the first touch.
#[derive(Debug, Clone, Default)]
pub struct Age(Arc<AtomicU64>);

impl Age {
    /// The event this age tracks happened now.
    pub fn touch(&self) {
        self.touch_at(SystemTime::now());
    }

    /// The event this age tracks happened at `at` (the creation time of the oldest
    /// record waiting, say).
    pub fn touch_at(&self, at: SystemTime) {
        // 0 means "never": a time at the epoch counts from 1 ms after it.
        self.0.store(unix_millis(at).max(1), Ordering::Relaxed);
    }

    fn seconds_at(&self, now: SystemTime) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(unix_millis(now).saturating_sub(at)).as_secs_f64()),
        }
    }
}

impl TypedMetric for Age {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Age {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let secs = self.seconds_at(SystemTime::now()).unwrap_or(0.0);
        encoder.encode_gauge(&secs)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that the rendered `text` holds `line`, showing the whole text if not.
    fn has(text: &str, line: &str) {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }

    #[test]
    fn a_counter_gets_its_total_suffix_and_its_labels() {
        let mut r = registry("test");
        let parked = Family::<ReasonLabel, Counter>::default();
        r.register("x_parked", "Parked messages.", parked.clone());
        parked
            .get_or_create(&ReasonLabel::of("malformed_json"))
            .inc_by(3);
        drop(parked.get_or_create(&ReasonLabel::of("apply_rejected")));
        let text = render(&r);
        has(&text, "# TYPE x_parked counter\n");
        has(&text, "x_parked_total{reason=\"malformed_json\"} 3\n");
        has(&text, "x_parked_total{reason=\"apply_rejected\"} 0\n");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_registry_says_which_build_answers() {
        let text = render(&registry("publisher"));
        assert!(
            text.contains(&format!(
                "tributary_build_info{{version=\"{}\",service=\"publisher\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn a_unit_comes_last_in_the_name() {
        let mut r = Registry::default();
        let lag = histogram(&[0.1, 1.0]);
        r.register_with_unit("lag", "Lag.", Unit::Seconds, lag.clone());
        for v in [0.05, 0.5, 0.7, 3.0] {
            lag.observe(v);
        }
        let text = render(&r);
        has(&text, "lag_seconds_bucket{le=\"0.1\"} 1\n");
        has(&text, "lag_seconds_bucket{le=\"1.0\"} 3\n");
        has(&text, "lag_seconds_bucket{le=\"+Inf\"} 4\n");
        has(&text, "lag_seconds_sum 4.25\n");
        has(&text, "lag_seconds_count 4\n");
    }

    #[test]
    fn an_age_is_absent_until_touched_then_the_time_since_its_touch() {
        let mut r = Registry::default();
        let age = Family::<ShardLabel, Age>::default();
        let since = Age::default();
        r.register_with_unit("oldest", "Age.", Unit::Seconds, age.clone());
        r.register_with_unit("since_poll", "Age.", Unit::Seconds, since.clone());
        assert!(!render(&r).contains("oldest"), "absent before a touch");
        assert!(!render(&r).contains("since_poll"), "absent before a touch");

        let now = SystemTime::now();
        let a = age.get_or_create(&ShardLabel::of("s-1"));
        a.touch_at(now - Duration::from_secs(30));
        let secs = a.seconds_at(now).unwrap_or(-1.0);
        assert!((secs - 30.0).abs() < 1e-9, "{secs}");
        since.touch();
        let text = render(&r);
        has(&text, "oldest_seconds{shard=\"s-1\"} 30");
        has(&text, "since_poll_seconds 0");
    }
}
