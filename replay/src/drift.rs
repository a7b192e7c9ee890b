//! PURE: how a key's stored row compares with its source item, and the event that
//! repairs it. `replay verify` reads both sides and asks this; the order it judges by is
//! [`contracts::Rank`]'s.

use contracts::{Change, ChangeEvent, DeleteReason, Position, Rank};
use publisher::record::Item;
use serde::Serialize;
use time::OffsetDateTime;

use crate::items;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Missing,
    Stale,
    Differs,
    Ahead,
    ShouldBeTombstone,
    NoSourceItem,
    UnreadableSource,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Stale => "stale",
            Kind::Differs => "differs",
            Kind::Ahead => "ahead",
            Kind::ShouldBeTombstone => "should_be_tombstone",
            Kind::NoSourceItem => "no_source_item",
            Kind::UnreadableSource => "unreadable_source",
        }
    }

    /// Whether re-emitting an event can fix it.
    pub fn repairable(self) -> bool {
        !matches!(self, Kind::Ahead | Kind::UnreadableSource)
    }
}

/// What the store holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub position: Position,
    pub deleted: bool,
}

/// One drifted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub key: String,
    pub kind: Kind,
    /// The source item's position, when it exists and projects.
    pub source: Option<Position>,
    pub stored: Option<Stored>,
    /// Why the source item does not project (`unreadable_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Classifies a key whose source item exists and projects, from what the store holds.
/// `differs` is whether the stored content differs from the item's projection (only
/// meaningful for a live row at the same position). `None`: in sync.
pub(crate) fn classify_present(
    source: Position,
    stored: Option<Stored>,
    differs: bool,
) -> Option<Kind> {
    let Some(stored) = stored else {
        return Some(Kind::Missing);
    };
    // A tombstone ranks above an upsert of its own position (contracts::Rank).
    let stored = Rank::of_change(stored.position, stored.deleted);
    match stored.cmp_change(&Rank::of_change(source, false)) {
        std::cmp::Ordering::Less => Some(Kind::Stale),
        std::cmp::Ordering::Greater => Some(Kind::Ahead),
        std::cmp::Ordering::Equal if differs => Some(Kind::Differs),
        std::cmp::Ordering::Equal => None,
    }
}

/// Classifies a key whose source item is gone, from the store's row.
pub(crate) fn classify_absent(stored: Option<Stored>, has_history: bool) -> Option<Kind> {
    match stored {
        Some(Stored { deleted: false, .. }) if has_history => Some(Kind::ShouldBeTombstone),
        Some(Stored { deleted: false, .. }) => Some(Kind::NoSourceItem),
        _ => None,
    }
}

/// The event that brings a drifted key back in sync, if one can.
pub(crate) fn repair_event(
    drift: &Drift,
    item: Option<&Item>,
    table: &str,
    now: OffsetDateTime,
) -> Option<ChangeEvent> {
    match drift.kind {
        Kind::Missing | Kind::Stale | Kind::Differs => {
            items::snapshot_event(item?, table, now).ok()
        }
        Kind::ShouldBeTombstone | Kind::NoSourceItem => {
            // A delete at the live row's own position ranks above it.
            let position = drift.stored?.position;
            let change = Change::Deleted(DeleteReason::Deleted);
            let key = drift.key.clone();
            Some(items::replayed_event(
                key, position, change, table, now, now,
            ))
        }
        Kind::Ahead | Kind::UnreadableSource => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(generation: i64, version: i64) -> Position {
        Position {
            generation,
            version,
        }
    }

    fn live(g: i64, v: i64) -> Option<Stored> {
        Some(Stored {
            position: pos(g, v),
            deleted: false,
        })
    }

    fn tomb(g: i64, v: i64) -> Option<Stored> {
        Some(Stored {
            position: pos(g, v),
            deleted: true,
        })
    }

    #[test]
    fn present_items_classify_by_position_then_content() {
        for (source, stored, differs, want) in [
            (pos(1, 3), None, true, Some(Kind::Missing)),
            (pos(1, 3), live(1, 2), false, Some(Kind::Stale)),
            (pos(1, 3), live(1, 4), false, Some(Kind::Ahead)),
            (pos(1, 3), live(1, 3), false, None),
            (pos(1, 3), live(1, 3), true, Some(Kind::Differs)),
            // A re-created item (newer generation) over an old tombstone: the store
            // missed it.
            (pos(2, 1), tomb(1, 9), true, Some(Kind::Stale)),
            // A tombstone of the item's own version: the store is ahead of the source.
            (pos(1, 3), tomb(1, 3), true, Some(Kind::Ahead)),
        ] {
            let got = classify_present(source, stored, differs);
            assert_eq!(
                got, want,
                "{source:?} over {stored:?}, content differs: {differs}"
            );
        }
    }

    #[test]
    fn absent_items_want_a_tombstone() {
        assert_eq!(classify_absent(None, false), None);
        assert_eq!(classify_absent(tomb(1, 2), true), None);
        assert_eq!(
            classify_absent(live(1, 2), true),
            Some(Kind::ShouldBeTombstone)
        );
        assert_eq!(classify_absent(live(1, 2), false), Some(Kind::NoSourceItem));
    }

    #[test]
    fn repair_of_a_live_row_without_source_is_a_delete_above_it() {
        let d = Drift {
            key: "u-1".into(),
            kind: Kind::ShouldBeTombstone,
            source: None,
            stored: live(5, 7),
            detail: None,
        };
        let e = repair_event(&d, None, "profiles", OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(e.position, pos(5, 7));
        assert_eq!(e.change, Change::Deleted(DeleteReason::Deleted));
        let ahead = Drift {
            kind: Kind::Ahead,
            ..d
        };
        assert!(repair_event(&ahead, None, "profiles", OffsetDateTime::UNIX_EPOCH).is_none());
    }
}
