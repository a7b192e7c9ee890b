//! One shutdown semantics for every long-running binary: the first SIGTERM (container
//! stop, Lambda/ECS shutdown) or SIGINT (Ctrl-C) cancels a token, and the binary drains
//! what is in flight; a second signal exits the process at once with
//! [`FORCED_EXIT_STATUS`], for a drain that is itself stuck.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status on a second SIGTERM or SIGINT (128 + SIGINT, as shells report Ctrl-C).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// What a binary logs on each signal: what the drain does, and what a forced exit leaves.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownNotes {
    /// Logged at INFO on the first signal.
    pub draining: &'static str,
    /// Logged at WARN on the second, just before exiting.
    pub forced: &'static str,
}

/// A token cancelled on the first SIGTERM or SIGINT; the second exits the process with
/// [`FORCED_EXIT_STATUS`]. Must be called inside a tokio runtime.
///
/// # Errors
/// When a signal handler cannot be installed.
pub fn on_signals(notes: ShutdownNotes) -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = first, "{}", notes.draining);
        cancel.cancel();
        let second = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        warn!(
            signal = second,
            status = FORCED_EXIT_STATUS,
            "{}",
            notes.forced
        );
        std::process::exit(FORCED_EXIT_STATUS);
    });
    Ok(token)
}

/// [`on_signals`] for a binary's `main`: a handler that cannot be installed stops the
/// program at start with one line and exit status 1.
pub fn install(notes: ShutdownNotes) -> CancellationToken {
    on_signals(notes).unwrap_or_else(|e| {
        eprintln!("error: cannot install the SIGTERM and SIGINT handlers: {e}");
        std::process::exit(1)
    })
}
