//! The ordering rule: which of two events of one key the store keeps.
//!
//! An event ranks by its [`Position`] (`generation`, then `version`); at an equal
//! position a delete ranks above an upsert (the item was written, then removed); and at
//! an equal position and kind, the richer schema version ranks above the poorer one, so
//! that copies of one change published under different schema versions (a rolling
//! deploy, a v1 snapshot, a redrive of old messages) converge on the richest copy
//! whatever their delivery order, instead of taking turns.
//!
//! The store's SQL guard compares the same four columns as a row value
//! ([`Rank::SQL_GUARD_COLUMNS`]); a database test proves the two orders agree on every
//! pair of ranks.

use crate::envelope::Position;

/// An event's rank among its key's events. Compared lexicographically, field by field,
/// in declaration order (the derived `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub position: Position,
    /// A delete ranks above an upsert of the same position.
    pub deleted: bool,
    /// Of two copies of one change, the richer (higher) schema version wins: its number.
    pub schema: u16,
}

impl Rank {
    /// The stored row's columns, in the order the SQL guard compares them as a row value
    /// (`(generation, version, deleted::int, schema_version)`), matching the field order
    /// of [`Rank`].
    pub const SQL_GUARD_COLUMNS: [&'static str; 4] =
        ["generation", "version", "deleted::int", "schema_version"];

    /// The same change (position and kind), whatever the schema version it was published as.
    pub fn same_change(&self, other: &Rank) -> bool {
        self.cmp_change(other).is_eq()
    }

    /// The order of the changes themselves (position, then a delete above an upsert),
    /// leaving out the schema version: for comparing a stored row with its source item,
    /// where the question is which change is newer, not which copy of one is richer.
    pub fn cmp_change(&self, other: &Rank) -> std::cmp::Ordering {
        (self.position, self.deleted).cmp(&(other.position, other.deleted))
    }

    /// The rank of an upsert, or of a delete when `deleted`, at `position`, as written by
    /// the current schema (for a rank compared with [`Rank::cmp_change`], where the
    /// schema does not count).
    pub fn of_change(position: Position, deleted: bool) -> Rank {
        Rank {
            position,
            deleted,
            schema: crate::CURRENT_SCHEMA_VERSION.number().into(),
        }
    }

    /// An SQL `ORDER BY` list that sorts rows of one key greatest rank first, derived
    /// from [`Rank::SQL_GUARD_COLUMNS`] (for `DISTINCT ON (key)`: the row kept is the one
    /// the guard would keep).
    pub fn sql_order_greatest_first() -> String {
        Self::SQL_GUARD_COLUMNS
            .iter()
            .map(|c| format!("{c} DESC"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::SchemaVersion;

    fn rank(generation: i64, version: i64, deleted: bool, schema: SchemaVersion) -> Rank {
        Rank {
            position: Position {
                generation,
                version,
            },
            deleted,
            schema: schema.number().into(),
        }
    }

    #[test]
    fn a_later_generation_wins_over_a_higher_version_of_an_older_one() {
        assert!(rank(2, 1, false, SchemaVersion::V1) > rank(1, 99, true, SchemaVersion::V2));
    }

    #[test]
    fn a_delete_ranks_above_an_upsert_of_its_own_position_whatever_the_schema() {
        assert!(rank(1, 3, true, SchemaVersion::V1) > rank(1, 3, false, SchemaVersion::V2));
    }

    #[test]
    fn the_change_order_leaves_the_schema_out_and_keeps_the_rest() {
        use std::cmp::Ordering;
        let v1 = rank(1, 3, false, SchemaVersion::V1);
        let v2 = rank(1, 3, false, SchemaVersion::V2);
        assert_eq!(v1.cmp_change(&v2), Ordering::Equal);
        assert_eq!(
            rank(1, 3, true, SchemaVersion::V1).cmp_change(&v2),
            Ordering::Greater
        );
        assert_eq!(
            rank(1, 2, true, SchemaVersion::V2).cmp_change(&v1),
            Ordering::Less
        );
    }

    #[test]
    fn the_sql_order_sorts_by_the_guard_s_columns_greatest_first() {
        assert_eq!(
            Rank::sql_order_greatest_first(),
            "generation DESC, version DESC, deleted::int DESC, schema_version DESC"
        );
    }

    #[test]
    fn the_richer_schema_ranks_above_a_poorer_copy_of_the_same_change() {
        let v1 = rank(1, 3, false, SchemaVersion::V1);
        let v2 = rank(1, 3, false, SchemaVersion::V2);
        assert!(v2 > v1);
        assert!(v1.same_change(&v2));
        assert!(!v1.same_change(&rank(1, 3, true, SchemaVersion::V1)));
    }
}
