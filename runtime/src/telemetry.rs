//! Logging, the same in every binary: one line per event on stderr (stdout is kept for
//! a command's own output), JSON when a machine reads it, text with colours only where
//! a person does. `RUST_LOG` filters (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a container, a log shipper), text when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The logging setting, flattened into each binary's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct LogArgs {
    /// Log format: `auto` is JSON when stderr is not a terminal, text when it is;
    /// `json`; `text`. `RUST_LOG` filters the lines (default `info`). Default: auto.
    #[arg(long = "log-format", env = "TRIBUTARY_LOG_FORMAT", value_enum, value_name = "FORMAT",
          default_value_t = LogFormat::Auto, global = true)]
    pub format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            format: LogFormat::Auto,
        }
    }
}

/// Installs the process's global subscriber. Call once, first thing in `main`.
pub fn init(args: LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if writes_json(args.format, terminal) {
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

fn writes_json(format: LogFormat, terminal: bool) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn auto_is_json_for_a_machine_and_text_for_a_person() {
        assert!(writes_json(LogFormat::Auto, false));
        assert!(!writes_json(LogFormat::Auto, true));
        assert!(writes_json(LogFormat::Json, true));
        assert!(!writes_json(LogFormat::Text, false));
    }

    #[test]
    fn the_flag_defaults_to_auto_and_refuses_other_words() {
        assert_eq!(Cli::try_parse_from(["x"]).unwrap().log, LogArgs::default());
        let json = Cli::try_parse_from(["x", "--log-format", "json"]).unwrap();
        assert_eq!(json.log.format, LogFormat::Json);
        assert!(Cli::try_parse_from(["x", "--log-format", "loud"]).is_err());
    }
}
