//! Shutdown on SIGTERM or Ctrl-C, and a way out when the drain itself is stuck.
//!
//! The first signal cancels the token: a snapshot finishes its pages in flight and
//! saves its state, a redrive stops after its batch in flight and releases what it
//! holds, and the command exits 130. A second signal exits 130 at once (the state
//! file then holds the last page saved; what was in flight is sent again on resume).

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status of an interrupted command (128 + SIGINT), as the README promises.
pub const INTERRUPTED: u8 = 130;

/// A token cancelled on the first SIGTERM or SIGINT; the second exits the process
/// with [`INTERRUPTED`] at once.
///
/// # Errors
/// When a signal handler cannot be installed.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
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
        info!(
            signal = first,
            "Stopping after the work in flight; a second signal exits at once."
        );
        cancel.cancel();
        let second = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        warn!(
            signal = second,
            status = INTERRUPTED,
            "Second signal, exiting now; the work in flight is redone by the next run."
        );
        std::process::exit(i32::from(INTERRUPTED));
    });
    Ok(token)
}
