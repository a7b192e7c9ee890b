//! Counters, gauges and histograms with a fixed set of label names, rendered in the
//! Prometheus text exposition format (version 0.0.4).
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>
//!
//! Label values must be low-cardinality (a reason code, a shard id), never an event id.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds, in seconds, of the replication lag and iterator age histograms:
/// from 10 ms to 15 minutes.
pub const LAG_BUCKETS_SECS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Upper bounds of the batch size histograms (SQS and SNS batches hold at most 10,
/// DynamoDB Streams GetRecords at most 1000).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 100.0, 250.0, 1000.0];

/// A metric's values, one per combination of label values.
#[derive(Debug)]
enum Values {
    Counter(BTreeMap<Vec<String>, u64>),
    Gauge(BTreeMap<Vec<String>, f64>),
    /// Seconds elapsed since a Unix timestamp (milliseconds), computed at render time.
    Age(BTreeMap<Vec<String>, u64>),
    Histogram {
        bounds: &'static [f64],
        series: BTreeMap<Vec<String>, HistogramSeries>,
    },
}

#[derive(Debug, Clone, Default)]
struct HistogramSeries {
    /// Count per bucket (not cumulative); one more than the bounds, for +Inf.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Values,
}

/// A handle to one metric family of a [`Registry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric(usize);

/// The metrics of one process. Cheap to update from many tasks (one short lock).
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
    /// Bumped on every update: lets a test see that something moved.
    updates: AtomicU64,
}

impl Registry {
    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        values: Values,
    ) -> Metric {
        let mut families = self.lock();
        families.push(Family {
            name,
            help,
            labels,
            values,
        });
        Metric(families.len() - 1)
    }

    /// A counter (`name` should end in `_total`).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Metric {
        self.register(name, help, labels, Values::Counter(BTreeMap::new()))
    }

    /// A gauge.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Metric {
        self.register(name, help, labels, Values::Gauge(BTreeMap::new()))
    }

    /// A gauge rendered as the seconds elapsed since the time last given to
    /// [`Registry::touch`] (absent until the first touch).
    pub fn age(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Metric {
        self.register(name, help, labels, Values::Age(BTreeMap::new()))
    }

    /// A histogram with the given bucket upper bounds (ascending; `+Inf` is implied).
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Metric {
        self.register(
            name,
            help,
            labels,
            Values::Histogram {
                bounds,
                series: BTreeMap::new(),
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Family>> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with<F: FnOnce(&mut Values)>(&self, metric: Metric, f: F) {
        if let Some(family) = self.lock().get_mut(metric.0) {
            f(&mut family.values);
            self.updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to a counter.
    pub fn inc_by(&self, metric: Metric, labels: &[&str], n: u64) {
        self.with(metric, |v| {
            if let Values::Counter(m) = v {
                *m.entry(key(labels)).or_default() += n;
            }
        });
    }

    /// A counter's value summed over its label values (0 for another kind of metric):
    /// what the process counted, for a summary line at exit.
    pub fn total(&self, metric: Metric) -> u64 {
        match self.lock().get(metric.0).map(|f| &f.values) {
            Some(Values::Counter(m)) => m.values().sum(),
            _ => 0,
        }
    }

    /// Makes a counter's series exist at 0, so a dashboard sees it before its first
    /// increment.
    pub fn declare(&self, metric: Metric, labels: &[&str]) {
        self.inc_by(metric, labels, 0);
    }

    /// Sets a gauge.
    pub fn set(&self, metric: Metric, labels: &[&str], value: f64) {
        self.with(metric, |v| {
            if let Values::Gauge(m) = v {
                m.insert(key(labels), value);
            }
        });
    }

    /// Drops one series of a gauge or an age (a shard that finished, say).
    pub fn remove(&self, metric: Metric, labels: &[&str]) {
        let k = key(labels);
        self.with(metric, |v| match v {
            Values::Gauge(m) => {
                m.remove(&k);
            }
            Values::Age(m) => {
                m.remove(&k);
            }
            Values::Counter(_) | Values::Histogram { .. } => {}
        });
    }

    /// Records that the event an [`Registry::age`] metric tracks happened now.
    pub fn touch(&self, metric: Metric, labels: &[&str]) {
        let now = unix_millis(SystemTime::now());
        self.with(metric, |v| {
            if let Values::Age(m) = v {
                m.insert(key(labels), now);
            }
        });
    }

    /// Records that the event an [`Registry::age`] metric tracks happened at `at` (the
    /// creation time of the oldest record waiting, say).
    pub fn touch_at(&self, metric: Metric, labels: &[&str], at: SystemTime) {
        let at = unix_millis(at);
        self.with(metric, |v| {
            if let Values::Age(m) = v {
                m.insert(key(labels), at);
            }
        });
    }

    /// Adds one observation to a histogram.
    pub fn observe(&self, metric: Metric, labels: &[&str], value: f64) {
        self.observe_many(metric, labels, std::iter::once(value));
    }

    /// Adds several observations to a histogram under one lock.
    pub fn observe_many(
        &self,
        metric: Metric,
        labels: &[&str],
        values: impl IntoIterator<Item = f64>,
    ) {
        self.with(metric, |v| {
            if let Values::Histogram { bounds, series } = v {
                let s = series
                    .entry(key(labels))
                    .or_insert_with(|| HistogramSeries {
                        buckets: vec![0; bounds.len() + 1],
                        ..HistogramSeries::default()
                    });
                for value in values {
                    let i = bounds
                        .iter()
                        .position(|b| value <= *b)
                        .unwrap_or(bounds.len());
                    s.buckets[i] += 1;
                    s.sum += value;
                    s.count += 1;
                }
            }
        });
    }

    /// How many updates the registry has seen.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        self.render_at(SystemTime::now())
    }

    fn render_at(&self, now: SystemTime) -> String {
        let now_ms = unix_millis(now);
        let mut out = String::new();
        for f in self.lock().iter() {
            let kind = match f.values {
                Values::Counter(_) => "counter",
                Values::Gauge(_) | Values::Age(_) => "gauge",
                Values::Histogram { .. } => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            match &f.values {
                Values::Counter(m) => {
                    for (values, n) in m {
                        let _ = writeln!(out, "{}{} {n}", f.name, labels(f.labels, values, None));
                    }
                }
                Values::Gauge(m) => {
                    for (values, x) in m {
                        let _ = writeln!(
                            out,
                            "{}{} {}",
                            f.name,
                            labels(f.labels, values, None),
                            number(*x)
                        );
                    }
                }
                Values::Age(m) => {
                    for (values, at) in m {
                        let secs = Duration::from_millis(now_ms.saturating_sub(*at)).as_secs_f64();
                        let _ = writeln!(
                            out,
                            "{}{} {}",
                            f.name,
                            labels(f.labels, values, None),
                            number(secs)
                        );
                    }
                }
                Values::Histogram { bounds, series } => {
                    for (values, s) in series {
                        let mut cumulative = 0;
                        for (i, n) in s.buckets.iter().enumerate() {
                            cumulative += n;
                            let le = bounds
                                .get(i)
                                .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                            let _ = writeln!(
                                out,
                                "{}_bucket{} {cumulative}",
                                f.name,
                                labels(f.labels, values, Some(&le))
                            );
                        }
                        let l = labels(f.labels, values, None);
                        let _ = writeln!(out, "{}_sum{l} {}", f.name, number(s.sum));
                        let _ = writeln!(out, "{}_count{l} {}", f.name, s.count);
                    }
                }
            }
        }
        out
    }
}

fn key(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|s| (*s).to_owned()).collect()
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{x}")
    }
}

fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_s_total_sums_its_label_values_and_another_kind_has_none() {
        let r = Registry::default();
        let parked = r.counter("t_parked_total", "Parked.", &["reason"]);
        let lag = r.gauge("t_lag_seconds", "Lag.", &[]);
        assert_eq!(r.total(parked), 0);
        r.inc_by(parked, &["malformed_json"], 2);
        r.inc_by(parked, &["apply_rejected"], 3);
        r.set(lag, &[], 7.0);
        assert_eq!(r.total(parked), 5);
        assert_eq!(r.total(lag), 0);
    }

    #[test]
    fn counters_render_with_their_labels_and_type() {
        let r = Registry::default();
        let parked = r.counter("x_parked_total", "Parked messages.", &["reason"]);
        r.inc_by(parked, &["malformed_json"], 2);
        r.inc_by(parked, &["malformed_json"], 1);
        r.declare(parked, &["apply_rejected"]);
        let text = r.render();
        assert!(text.contains("# TYPE x_parked_total counter\n"), "{text}");
        assert!(
            text.contains("x_parked_total{reason=\"malformed_json\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_parked_total{reason=\"apply_rejected\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let r = Registry::default();
        let h = r.histogram("lag_seconds", "Lag.", &[], &[0.1, 1.0]);
        r.observe_many(h, &[], [0.05, 0.5, 0.7, 3.0]);
        let text = r.render();
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_bucket{le=\"1\"} 3\n"), "{text}");
        assert!(
            text.contains("lag_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_sum 4.25\n"), "{text}");
        assert!(text.contains("lag_seconds_count 4\n"), "{text}");
    }

    #[test]
    fn an_age_is_the_time_since_its_last_touch() {
        let r = Registry::default();
        let age = r.age("since_poll_seconds", "Age.", &["shard"]);
        assert!(
            !r.render().contains("since_poll_seconds{"),
            "absent before a touch"
        );
        r.touch(age, &["s-1"]);
        let later = SystemTime::now() + Duration::from_secs(5);
        let text = r.render_at(later);
        let line = text
            .lines()
            .find(|l| l.starts_with("since_poll_seconds{shard=\"s-1\"}"))
            .unwrap_or_default();
        let secs: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or("x")
            .parse()
            .unwrap_or(-1.0);
        assert!((4.9..6.0).contains(&secs), "{text}");
    }

    #[test]
    fn an_age_touched_at_a_past_time_counts_from_that_time() {
        let r = Registry::default();
        let age = r.age("oldest_seconds", "Age.", &["shard"]);
        let now = SystemTime::now();
        r.touch_at(age, &["s-1"], now - Duration::from_secs(30));
        let text = r.render_at(now);
        assert!(
            text.contains("oldest_seconds{shard=\"s-1\"} 30\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let r = Registry::default();
        let g = r.gauge("g", "A \"gauge\"\nwith two lines.", &["shard"]);
        r.set(g, &["a\"b\\c"], 1.5);
        let text = r.render();
        assert!(text.contains("g{shard=\"a\\\"b\\\\c\"} 1.5\n"), "{text}");
        assert!(
            text.contains("# HELP g A \"gauge\"\\nwith two lines.\n"),
            "{text}"
        );
    }
}
