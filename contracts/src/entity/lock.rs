//! The lock of published versions: `contracts/entities/published.lock`.
//!
//! One line per published version, `<entity> <version> sha256:<fingerprint>`, where the
//! fingerprint hashes the version's fields and upcast steps (not its documentation).
//! A version in the lock cannot change or disappear: [`super::Contract::parse`] refuses
//! it. Lines are only ever added; `scripts/check-published.sh` proves that against the
//! git history in CI, so the lock itself cannot be edited to let a change through.

use std::collections::BTreeMap;

use sha2::Digest as _;

use super::error::{DeclarationError, Source};
use super::model::{Version, is_identifier};

/// The published versions and their fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// The lock's file name, for refusals.
    pub file: String,
    entries: BTreeMap<(String, u32), String>,
}

impl Published {
    /// No version published: every declared version is a draft.
    pub fn none() -> Published {
        Published::default()
    }

    /// Reads a lock file. `#` starts a comment; blank lines are ignored.
    ///
    /// # Errors
    /// A [`DeclarationError`] for a line that is not `<entity> <version> sha256:<hex>`
    /// or a version locked twice.
    pub fn parse(file: &str, text: &str) -> Result<Published, DeclarationError> {
        let src = Source { file, text };
        let mut entries = BTreeMap::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let at = offset;
            offset += line.len();
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let parts: Vec<&str> = content.split_whitespace().collect();
            let parsed = match parts.as_slice() {
                [entity, version, print]
                    if is_identifier(entity) && print.starts_with("sha256:") =>
                {
                    version.parse::<u32>().ok().map(|v| (entity, v, print))
                }
                _ => None,
            };
            let Some((entity, version, print)) = parsed else {
                return Err(src.refuse(at, "", "is not `<entity> <version> sha256:<fingerprint>`"));
            };
            if entries
                .insert(((*entity).to_owned(), version), (*print).to_owned())
                .is_some()
            {
                return Err(src.refuse(at, "", format!("locks {entity} version {version} twice")));
            }
        }
        Ok(Published {
            file: file.to_owned(),
            entries,
        })
    }

    /// The fingerprint a version's lock line carries.
    pub fn fingerprint(version: &Version) -> String {
        let canonical = serde_json::to_string(version).expect("a version serialises");
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
        )
    }

    /// The lock line that publishes `version` of `entity`.
    pub fn line(entity: &str, version: &Version) -> String {
        format!(
            "{entity} {} {}",
            version.number,
            Published::fingerprint(version)
        )
    }

    /// Whether `version` of `entity` is locked.
    pub fn contains(&self, entity: &str, version: u32) -> bool {
        self.entries.contains_key(&(entity.to_owned(), version))
    }

    /// Refuses a published version whose declaration changed.
    pub(crate) fn check(&self, entity: &str, version: &Version) -> Result<(), String> {
        let Some(locked) = self.entries.get(&(entity.to_owned(), version.number)) else {
            return Ok(());
        };
        let now = Published::fingerprint(version);
        if *locked == now {
            return Ok(());
        }
        Err(format!(
            "version {} of {entity} is published ({}) and its declaration changed: a published version cannot be edited; undo the change and declare version {} instead",
            version.number,
            self.file,
            version.number + 1
        ))
    }

    /// The lowest published version of `entity` above `declared`, if any.
    pub(crate) fn missing(&self, entity: &str, declared: usize) -> Option<u32> {
        self.entries
            .keys()
            .filter(|(e, v)| e == entity && *v as usize > declared)
            .map(|(_, v)| *v)
            .min()
    }
}
