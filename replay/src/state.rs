//! The snapshot's state file: where each scan segment has got to, so a crash or
//! Ctrl-C resumes where it stopped instead of starting over.
//!
//! A segment's position is the `LastEvaluatedKey` of the last page whose every event
//! was accepted by the destination; it is written (atomically: a new temp file,
//! owner-only, fsynced, renamed over the old one, the directory fsynced) after each
//! such page. After a crash at most the pages in flight are sent again,
//! which the subscriber absorbs: snapshot events have deterministic ids and the apply
//! is idempotent.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use publisher::record::Item;
use serde::{Deserialize, Serialize};

/// Format version of the file.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    pub format: u32,
    pub table: String,
    /// Where the events go (`--to`): resuming towards another destination would
    /// leave the first one half backfilled, so it is refused.
    pub target: String,
    pub segments: Vec<SegmentState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentState {
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

    /// Writes the state atomically and durably: a reader (or a crash, or a power cut)
    /// sees the old or the new file, never half of one.
    ///
    /// The new content goes to a temp file of a fresh name beside `path`, created
    /// exclusively (`O_CREAT | O_EXCL`, which never follows a symbolic link, so a link
    /// planted at the temp name cannot redirect the write) and readable by the owner
    /// only (0600: the file holds table keys). It is fsynced, renamed over `path` (a
    /// link at `path` is replaced, not followed), and the directory is fsynced so the
    /// rename survives a crash.
    ///
    /// # Errors
    /// [`StateError::Write`].
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).expect("the state serialises");
        let (tmp, mut file) = create_temp_beside(path).map_err(err)?;
        let written = file
            .write_all(&text)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        sync_dir(path).map_err(err)
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

/// Creates a new file, mode 0600, of a name no one else uses, in `path`'s directory.
fn create_temp_beside(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the state file path names no file"))?;
    let mut attempts = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".{}.{}.{nanos:08x}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use publisher::record::AttributeValue;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("replay-state-{}-{name}", std::process::id()))
    }

    /// A directory of the test's own, removed at the end.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = temp_path(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let path = dir.join("state.json");
        SnapshotState::new("profiles", "queue q", 1)
            .save(&path)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_planted_beside_the_state_file_is_never_written_through() {
        let dir = temp_dir("links");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.join("state.json");
        // The names a writer might use for its temp file, and the file itself.
        for name in ["state.json.tmp", ".state.json.tmp", "state.json"] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        SnapshotState::new("profiles", "queue q", 1)
            .save(&path)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the link was replaced by a file"
        );
        let (_, resumed) = SnapshotState::load_or_new(&path, "profiles", "queue q", 1).unwrap();
        assert!(resumed);
        std::fs::remove_dir_all(&dir).unwrap();
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
