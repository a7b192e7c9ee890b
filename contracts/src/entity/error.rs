//! The one-line refusal of a declaration.

use std::fmt;

/// Why a declaration file cannot be used: the file, the line, the key, and what to fix.
///
/// Displayed on one line, `file:line: key: message`, so a binary can print it and stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// The key's dotted path, e.g. `version[2].fields.consents.marketing_sms`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for DeclarationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

impl std::error::Error for DeclarationError {}

impl DeclarationError {
    /// A refusal at byte `offset` of `text`, the contents of `file`.
    pub fn at(
        file: &str,
        text: &str,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> DeclarationError {
        Source { file, text }.refuse(offset, key, message)
    }

    /// A TOML syntax or shape error in `text`, the contents of `file`, made one line.
    pub fn from_toml(file: &str, text: &str, error: &toml::de::Error) -> DeclarationError {
        Source { file, text }.toml_error(error)
    }
}

/// Where a byte offset falls: its 1-based line.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Builds refusals for one file.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn refuse(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> DeclarationError {
        DeclarationError {
            file: self.file.to_owned(),
            line: line_of(self.text, offset),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error, made one line.
    pub fn toml_error(&self, error: &toml::de::Error) -> DeclarationError {
        let offset = error.span().map_or(0, |span| span.start);
        self.refuse(
            offset,
            "",
            error.message().replace('\n', " ").trim().to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }

    #[test]
    fn displays_on_one_line_with_file_line_and_key() {
        let e = DeclarationError {
            file: "profile.toml".into(),
            line: 7,
            key: "version[1].fields.email".into(),
            message: "unknown type \"text\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "profile.toml:7: version[1].fields.email: unknown type \"text\""
        );
    }
}
