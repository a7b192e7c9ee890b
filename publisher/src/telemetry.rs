//! Logging setup for the binaries: structured JSON when not on a terminal.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when standard error is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

pub use ops::shutdown::FORCED_EXIT_STATUS;

/// A token cancelled on the first SIGTERM or Ctrl-C: loops finish their in-flight batch
/// and stop. A second signal exits the process at once with [`FORCED_EXIT_STATUS`]
/// (what was in flight is read again by the next run: nothing was checkpointed past it).
/// See [`ops::shutdown`].
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    ops::shutdown::on_signals(ops::shutdown::ShutdownNotes {
        draining: "Shutdown requested, finishing in-flight work.",
        forced: "Second shutdown signal, exiting now.",
    })
    .expect("installing the SIGTERM and SIGINT handlers")
}
