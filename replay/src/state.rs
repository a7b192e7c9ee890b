//! The snapshot's state file: where each scan segment has got to, so a crash or
//! Ctrl-C resumes where it stopped instead of starting over.
//!
//! A segment's position is the `LastEvaluatedKey` of the last page whose every event
//! was accepted by the destination; it is written (atomically: temp file + rename)
//! after each such page. After a crash at most the pages in flight are sent again,
//! which the subscriber absorbs: snapshot events have deterministic ids and the apply
//! is idempotent.

use std::io::Write;
use std::path::{Path, PathBuf};

use publisher::record::Item;
use serde::{Deserialize, Serialize};

/// Format version of the file.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub format: u32,
    pub table: String,
    /// Where the events go (`--to`): resuming towards another destination would
    /// leave the first one half backfilled, so it is refused.
    pub target: String,
    pub segments: Vec<SegmentState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentState {
    /// The last key of the last page fully sent; `None` before the first page.
    pub last_key: Option<Item>,
    pub done: bool,
    pub items_read: u64,
    pub events_sent: u64,
    pub failed: u64,
}

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state file {path} is not a replay snapshot state ({source}); move it away to start over"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the state file {path} belongs to another run ({what}); pass the same flags to resume, or another --state-file to start over"
    )]
    Mismatch { path: PathBuf, what: String },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SnapshotState {
    pub fn new(table: &str, target: &str, segments: u32) -> Self {
        SnapshotState {
            format: FORMAT,
            table: table.to_owned(),
            target: target.to_owned(),
            segments: vec![SegmentState::default(); segments as usize],
        }
    }

    /// Loads the state at `path` if it exists, checking it belongs to this run; a
    /// fresh state if the file does not exist.
    ///
    /// # Errors
    /// [`StateError`] when the file exists but cannot be read or parsed, or describes
    /// another table, destination or segment count.
    pub fn load_or_new(
        path: &Path,
        table: &str,
        target: &str,
        segments: u32,
    ) -> Result<(SnapshotState, bool), StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((SnapshotState::new(table, target, segments), false));
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: SnapshotState =
            serde_json::from_str(&text).map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mismatch = |what: String| StateError::Mismatch {
            path: path.to_owned(),
            what,
        };
        if state.format != FORMAT {
            return Err(mismatch(format!("format {}", state.format)));
        }
        if state.table != table {
            return Err(mismatch(format!("table {}", state.table)));
        }
        if state.target != target {
            return Err(mismatch(format!("--to {}", state.target)));
        }
        if state.segments.len() != segments as usize {
            return Err(mismatch(format!("--segments {}", state.segments.len())));
        }
        Ok((state, true))
    }

    /// Writes the state atomically: a reader (or a crash) sees the old or the new file,
    /// never half of one.
    ///
    /// # Errors
    /// [`StateError::Write`].
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(self).expect("the state serialises");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&text).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    pub fn done(&self) -> bool {
        self.segments.iter().all(|s| s.done)
    }

    pub fn totals(&self) -> SegmentState {
        let mut t = SegmentState::default();
        for s in &self.segments {
            t.items_read += s.items_read;
            t.events_sent += s.events_sent;
            t.failed += s.failed;
        }
        t.done = self.done();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher::record::AttributeValue;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("replay-state-{}-{name}", std::process::id()))
    }

    #[test]
    fn saves_and_resumes_the_same_run_only() {
        let path = temp_path("roundtrip.json");
        let mut state = SnapshotState::new("profiles", "queue q", 2);
        state.segments[1].last_key = Some(Item::from([(
            "user_id".to_owned(),
            AttributeValue::S("u-9".into()),
        )]));
        state.segments[1].items_read = 7;
        state.save(&path).unwrap();

        let (loaded, resumed) =
            SnapshotState::load_or_new(&path, "profiles", "queue q", 2).unwrap();
        assert!(resumed);
        assert_eq!(loaded, state);
        assert!(matches!(
            SnapshotState::load_or_new(&path, "other", "queue q", 2),
            Err(StateError::Mismatch { .. })
        ));
        assert!(matches!(
            SnapshotState::load_or_new(&path, "profiles", "queue q", 3),
            Err(StateError::Mismatch { .. })
        ));
        std::fs::write(&path, "{not json").unwrap();
        let err = SnapshotState::load_or_new(&path, "profiles", "queue q", 2).unwrap_err();
        assert!(
            err.to_string().contains("not a replay snapshot state"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();

        let (fresh, resumed) = SnapshotState::load_or_new(&path, "profiles", "queue q", 2).unwrap();
        assert!(!resumed);
        assert_eq!(fresh.segments.len(), 2);
    }
}
