//! Progress for a person at a terminal (a bar with rate and ETA) or for a log reader
//! (a plain line every few seconds), and the counters behind both.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    estimate: Option<u64>,
    started: Instant,
    pub read: AtomicU64,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

impl Progress {
    /// A bar on standard error when it is a terminal, else nothing drawn (see
    /// [`Progress::spawn_logger`]). `estimate` is the expected total (e.g. the table's
    /// approximate item count), for the ETA.
    pub fn new(what: &'static str, estimate: Option<u64>, already: u64) -> Arc<Progress> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match estimate {
                Some(n) if n > 0 => ProgressBar::new(n.max(already)),
                _ => ProgressBar::new_spinner(),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            let template = if estimate.is_some_and(|n| n > 0) {
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} ({per_sec}, ETA {eta})"
            } else {
                "{spinner} [{elapsed_precise}] {pos} {msg} ({per_sec})"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_message(what);
            bar.set_position(already);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Arc::new(Progress {
            what,
            bar,
            estimate,
            started: Instant::now(),
            read: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    pub fn add(&self, read: u64, sent: u64, failed: u64) {
        self.read.fetch_add(read, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(read);
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// When no bar is drawn, logs the counters every `every` until `stop`.
    pub fn spawn_logger(
        self: &Arc<Self>,
        every: Duration,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.bar.is_some() {
            return None;
        }
        let me = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => me.log_line(),
                    _ = stop.cancelled() => return,
                }
            }
        }))
    }

    fn log_line(&self) {
        let read = self.read.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = read as f64 / secs;
        let eta = self.estimate.filter(|n| *n > read && rate > 0.0).map(|n| {
            let left = (n - read) as f64 / rate;
            format!("{left:.0}s")
        });
        info!(
            what = self.what,
            read,
            sent = self.sent.load(Ordering::Relaxed),
            failed = self.failed.load(Ordering::Relaxed),
            per_sec = format!("{rate:.0}"),
            estimate = self.estimate,
            eta = eta.as_deref().unwrap_or("unknown"),
            "Progress."
        );
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
