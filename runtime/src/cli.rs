//! The command line of every binary: parsed once, and a bad or missing setting reported
//! as ONE line that names the flag and its environment variable, never a secret's
//! value, with exit status [`BAD_SETTING`]. Clap's own report spans several lines, names
//! only the flag, and echoes the value.
//!
//! A setting is a secret when its argument hides its environment value
//! (`hide_env_values = true`, as `DATABASE_URL` does): the one flag that marks it in
//! `--help` also keeps it out of every error line.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, Command, Parser};

/// Exit status of a bad or missing setting (clap's own, and the shells' "misuse").
pub const BAD_SETTING: u8 = 2;

/// Parses the command line and environment of a binary (`C`); on a bad or missing
/// setting prints one line (see the module's documentation) and exits with
/// [`BAD_SETTING`]. `--help` and `--version` print and exit 0 as usual.
pub fn parse_or_exit<C: Parser>() -> C {
    match C::try_parse() {
        Ok(cli) => cli,
        Err(e) if shows_help(&e) => e.exit(),
        Err(e) => exit_bad_setting(&one_line(&e, &C::command())),
    }
}

/// Prints `line` (one line, naming the setting to fix) on stderr and exits with
/// [`BAD_SETTING`]: for the checks clap cannot make (a pool smaller than the workers, a
/// TLS policy), so that they read like clap's.
pub fn exit_bad_setting(line: &str) -> ! {
    eprintln!("{}", line.replace('\n', " "));
    std::process::exit(i32::from(BAD_SETTING))
}

fn shows_help(e: &clap::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// A clap error as one line: what is wrong, each flag it names followed by
/// `(env NAME)`, and the refused value unless the flag is a secret.
pub fn one_line(e: &clap::Error, root: &Command) -> String {
    let args: Vec<String> = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::StyledStr(s)) => vec![s.to_string()],
        Some(ContextValue::StyledStrs(v)) => v.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    };
    let found: Vec<Option<&Arg>> = args.iter().map(|a| find_arg(root, a)).collect();
    let named: Vec<String> = args
        .iter()
        .zip(&found)
        .map(|(text, arg)| {
            // `--database-url=VALUE` as given on the command line keeps only its flag.
            let text = match arg {
                Some(a) if a.is_hide_env_values_set() && text.contains('=') => {
                    text.split('=').next().unwrap_or_default().to_owned()
                }
                _ => text.clone(),
            };
            match arg.and_then(|a| a.get_env()) {
                Some(env) => format!("{text} (env {})", env.to_string_lossy()),
                None => text,
            }
        })
        .collect();
    let secret = found.iter().flatten().any(|a| a.is_hide_env_values_set());
    match e.kind() {
        ErrorKind::MissingRequiredArgument if !named.is_empty() => {
            format!("error: missing required setting {}", named.join(", "))
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation if !named.is_empty() => {
            let value = match e.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(v)) if !secret => format!(" {v:?}"),
                _ => String::new(),
            };
            let reason = std::error::Error::source(e)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            format!(
                "error: invalid value{value} for {}{reason}",
                named.join(", ")
            )
        }
        _ if secret => format!("error: invalid setting {}", named.join(", ")),
        // An unknown flag or stray word is echoed by clap whole: it may be a secret
        // given to the wrong flag (`--db-url=postgres://u:PASSWORD@…`) or without one.
        ErrorKind::UnknownArgument => {
            let shown: Vec<String> = args
                .iter()
                .map(|a| match a.split_once('=') {
                    _ if !a.starts_with('-') => "a value without its flag".to_owned(),
                    Some((flag, _)) => format!("{flag}=…"),
                    None => a.clone(),
                })
                .collect();
            format!(
                "error: unexpected argument {} (see --help)",
                shown.join(", ")
            )
        }
        // A word where a subcommand goes: named when it looks like one (a typo), left
        // out when it could be a value (a URL, a password).
        ErrorKind::InvalidSubcommand => match e.get(ContextKind::InvalidSubcommand) {
            Some(ContextValue::String(word))
                if word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                format!("error: unrecognized subcommand {word:?} (see --help)")
            }
            _ => "error: unrecognized subcommand (see --help)".to_owned(),
        },
        _ => {
            // Clap's own message up to its usage block, on one line.
            let text = e.render().to_string();
            let head: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            if head.is_empty() {
                "error: invalid command line".to_owned()
            } else {
                head.join(" ")
            }
        }
    }
}

/// A clap value parser: an absolute `http` or `https` URL (a queue URL, an endpoint).
///
/// # Errors
/// The reason, for clap to show beside the flag.
pub fn parse_http_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("a {other} URL; an http(s) URL is expected")),
    }
}

/// The argument a clap error names (`--workers <N>`, `--database-url=…`), in the root
/// command or any subcommand.
fn find_arg<'a>(root: &'a Command, text: &str) -> Option<&'a Arg> {
    let flag = text.split_whitespace().next()?;
    let long = flag.strip_prefix("--")?.split('=').next()?;
    let mut commands = vec![root];
    let mut at = 0;
    while let Some(command) = commands.get(at) {
        commands.extend(command.get_subcommands());
        at += 1;
    }
    commands
        .into_iter()
        .flat_map(Command::get_arguments)
        .find(|a| a.get_long() == Some(long))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    /// A command line with the shapes the binaries have: a required flag, a secret, a
    /// ranged number, a subcommand.
    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, env = "T_TABLE")]
        table: String,
        #[arg(long, env = "T_COUNT", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=10))]
        count: u32,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Run {
            #[arg(long, env = "T_DATABASE_URL", hide_env_values = true,
                  value_parser = parse_database_url)]
            database_url: String,
            #[arg(long, env = "T_QUEUE_URL")]
            queue_url: String,
        },
    }

    fn parse_database_url(s: &str) -> Result<String, String> {
        if s.starts_with("postgres://") {
            Ok(s.to_owned())
        } else {
            Err("scheme must be postgres".into())
        }
    }

    fn line(args: &[&str]) -> String {
        // Nothing from the test's own environment may satisfy a required flag.
        let err = Cli::try_parse_from(args).unwrap_err();
        let line = one_line(&err, &Cli::command());
        assert!(!line.contains('\n'), "{line}");
        line
    }

    #[test]
    fn a_missing_setting_names_its_flag_and_variable() {
        assert_eq!(
            line(&["t"]),
            "error: missing required setting --table <TABLE> (env T_TABLE)"
        );
    }

    #[test]
    fn several_missing_settings_are_named_on_one_line() {
        let l = line(&["t", "--table", "x", "run"]);
        assert!(
            l.contains("--database-url <DATABASE_URL> (env T_DATABASE_URL)"),
            "{l}"
        );
        assert!(
            l.contains("--queue-url <QUEUE_URL> (env T_QUEUE_URL)"),
            "{l}"
        );
    }

    #[test]
    fn a_bad_value_is_quoted_with_its_flag_variable_and_reason() {
        let l = line(&["t", "--table", "x", "--count", "11"]);
        assert!(
            l.starts_with("error: invalid value \"11\" for --count"),
            "{l}"
        );
        assert!(l.contains("(env T_COUNT): 11 is not in 1..=10"), "{l}");
    }

    #[test]
    fn a_secret_is_named_but_its_value_never_shown() {
        let l = line(&[
            "t",
            "--table",
            "x",
            "run",
            "--queue-url",
            "q",
            "--database-url",
            "mysql://u:s3cret@h/db",
        ]);
        assert!(
            l.contains("(env T_DATABASE_URL): scheme must be postgres"),
            "{l}"
        );
        assert!(!l.contains("s3cret"), "{l}");
    }

    #[test]
    fn a_secret_given_where_it_is_not_expected_is_not_echoed() {
        let l = line(&[
            "t",
            "--table",
            "x",
            "--database-url=postgres://u:s3cret@h/db",
        ]);
        assert!(!l.contains("s3cret"), "{l}");
        assert!(l.contains("--database-url"), "{l}");
    }

    #[test]
    fn only_an_absolute_http_url_is_taken() {
        assert!(parse_http_url("https://sqs.eu-west-1.amazonaws.com/1/q").is_ok());
        assert!(parse_http_url("http://127.0.0.1:4566/000000000000/q").is_ok());
        assert_eq!(
            parse_http_url("ftp://q/1").unwrap_err(),
            "a ftp URL; an http(s) URL is expected"
        );
        assert!(
            parse_http_url("queue please")
                .unwrap_err()
                .starts_with("not a URL")
        );
    }

    #[test]
    fn an_unknown_flag_is_named_on_one_line() {
        let l = line(&["t", "--table", "x", "--colour", "red"]);
        assert!(l.contains("unexpected argument --colour"), "{l}");
    }

    #[test]
    fn a_secret_given_to_a_misspelt_flag_or_none_is_not_echoed() {
        let l = line(&["t", "--table", "x", "--db-url=postgres://u:s3cret@h/db"]);
        assert!(l.contains("--db-url") && !l.contains("s3cret"), "{l}");
        let l = line(&["t", "--table", "x", "postgres://u:s3cret@h/db"]);
        assert!(!l.contains("s3cret"), "{l}");
        let l = line(&["t", "--table", "x", "rnu"]);
        assert!(l.contains("unrecognized subcommand \"rnu\""), "{l}");
    }
}
