//! Shutdown on SIGTERM or Ctrl-C, and a way out when the drain itself is stuck.
//!
//! The first signal cancels the token: a snapshot finishes its pages in flight and
//! saves its state, a redrive stops after its batch in flight and releases what it
//! holds, and the command exits 130. A second signal exits 130 at once (the state
//! file then holds the last page saved; what was in flight is sent again on resume).

use tokio_util::sync::CancellationToken;

/// Exit status of an interrupted command (128 + SIGINT), as the README promises.
pub const INTERRUPTED: u8 = 130;
const _: () = assert!(INTERRUPTED as i32 == ops::shutdown::FORCED_EXIT_STATUS);

/// A token cancelled on the first SIGTERM or SIGINT; the second exits the process
/// with [`INTERRUPTED`] at once. See [`ops::shutdown`].
///
/// # Errors
/// When a signal handler cannot be installed.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    ops::shutdown::on_signals(ops::shutdown::ShutdownNotes {
        draining: "Stopping after the work in flight; a second signal exits at once.",
        forced: "Second signal, exiting now; the work in flight is redone by the next run.",
    })
}
