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

/// Exit status after a second SIGTERM or Ctrl-C (128 + SIGINT, as a shell reports an
/// interrupted program).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// A token cancelled on the first SIGTERM or Ctrl-C: loops finish their in-flight batch
/// and stop. A second signal exits the process at once with [`FORCED_EXIT_STATUS`]
/// (what was in flight is read again by the next run: nothing was checkpointed past it).
pub fn shutdown_on_signals() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, finishing in-flight work."),
            _ = int.recv() => tracing::info!("Interrupt received, finishing in-flight work."),
        }
        t.cancel();
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(
            signal = second,
            status = FORCED_EXIT_STATUS,
            "Second shutdown signal, exiting now."
        );
        std::process::exit(FORCED_EXIT_STATUS);
    });
    token
}
