//! What the publisher's and the subscriber's mappings share: the contract file they
//! name, and their `[fields]` / `[columns]` tables keyed by contract field paths.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::{Contract, DeclarationError, Published};

/// Why a mapping (the publisher's or a subscriber's) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("{0}")]
    Declaration(DeclarationError),
    /// The contract the mapping names is missing or refused.
    #[error("{0}")]
    Contract(String),
}

/// Reads the mapping file at `path` and checks it with `parse`, which gets the file's
/// name, its text, and a reader of the contract it names (relative to `path`).
///
/// # Errors
/// One line: the file that could not be read, or the first refusal.
pub fn load_mapping<M>(
    path: &Path,
    parse: impl FnOnce(&str, &str, &dyn Fn(&str) -> Result<Contract, String>) -> Result<M, MappingError>,
) -> Result<M, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    parse(&file, &text, &|contract| load_contract(path, contract)).map_err(|e| e.to_string())
}

/// The contract a mapping names (`contract = "…"`), read by `read`, checked to be the
/// entity the mapping says (`entity = "…"`).
///
/// # Errors
/// The contract's refusal, or the mapping's when the entities differ.
pub fn mapping_contract(
    file: &str,
    text: &str,
    entity: &Spanned<String>,
    contract: &Spanned<String>,
    read: impl FnOnce(&str) -> Result<Contract, String>,
) -> Result<Contract, MappingError> {
    let parsed = read(contract.get_ref()).map_err(MappingError::Contract)?;
    if *entity.get_ref() != parsed.entity {
        return Err(MappingError::Declaration(DeclarationError::at(
            file,
            text,
            entity.span().start,
            "entity",
            format!(
                "is {:?}, but {} declares {:?}",
                entity.get_ref(),
                contract.get_ref(),
                parsed.entity
            ),
        )));
    }
    Ok(parsed)
}

/// Reads the contract `relative` names, relative to the directory of the mapping at
/// `mapping`, with the `published.lock` beside it (none when there is no lock).
///
/// # Errors
/// One line: the file that could not be read, or the contract's refusal.
pub fn load_contract(mapping: &Path, relative: &str) -> Result<Contract, String> {
    let dir = mapping.parent().unwrap_or(Path::new("."));
    let path = dir.join(relative);
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
    let lock = path
        .parent()
        .unwrap_or(Path::new("."))
        .join("published.lock");
    let published = match std::fs::read_to_string(&lock) {
        Ok(lock_text) => {
            Published::parse(&lock.display().to_string(), &lock_text).map_err(|e| e.to_string())?
        }
        Err(_) => Published::none(),
    };
    Contract::parse(&file, &text, &published).map_err(|e| e.to_string())
}

/// One entry of a mapping's table of contract fields: `consents.marketing_email = …`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldEntry {
    /// The contract field's dotted path.
    pub path: String,
    /// Where the entry is, for a refusal's line.
    pub offset: usize,
    pub value: toml::Value,
}

/// The entries of a mapping's field table, nested tables flattened to dotted paths.
/// A table holding `leaf_key` (`attribute`, `column`) is an entry, not a nesting.
pub fn field_entries(
    raw: &BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    text: &str,
    leaf_key: &str,
) -> Vec<FieldEntry> {
    fn nested(
        path: &str,
        offset: usize,
        value: &toml::Value,
        leaf_key: &str,
        text: &str,
        out: &mut Vec<FieldEntry>,
    ) {
        match value {
            toml::Value::Table(t) if !t.contains_key(leaf_key) => {
                for (name, v) in t {
                    nested(&format!("{path}.{name}"), offset, v, leaf_key, text, out);
                }
            }
            v => out.push(FieldEntry {
                path: path.to_owned(),
                offset: locate(text, offset, path.rsplit('.').next().unwrap_or("")),
                value: v.clone(),
            }),
        }
    }
    let mut out = Vec::new();
    for (name, value) in raw {
        nested(
            name.get_ref(),
            name.span().start,
            value.get_ref(),
            leaf_key,
            text,
            &mut out,
        );
    }
    out
}

/// The offset of the line at or after `from` whose key is `word` (or ends in
/// `.word`), for a nested key whose own span the parser does not keep; `from` when
/// there is none.
fn locate(text: &str, from: usize, word: &str) -> usize {
    if word.is_empty() || from >= text.len() {
        return from;
    }
    let mut offset = from;
    for line in text[from..].split_inclusive('\n') {
        let key = line.trim_start().split(['=', ' ']).next().unwrap_or("");
        if key == word || key.ends_with(&format!(".{word}")) {
            return offset;
        }
        offset += line.len();
    }
    from
}
