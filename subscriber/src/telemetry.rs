//! The tracing subscriber every binary installs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a global subscriber: level filter from `RUST_LOG` (default `info`), JSON or
/// text per `format` (`auto`: JSON unless stderr is a terminal). Logs go to stderr, as in
/// every tributary binary: stdout is kept for a command's own output.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
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
        // Colour codes only where someone reads them, not in a redirected file.
        builder.with_ansi(terminal).init();
    }
}
