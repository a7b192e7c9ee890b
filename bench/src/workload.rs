//! The apply benchmark's workload: a realistic stream of change events over a fixed set
//! of keys, with duplicates and local reordering, and the final state it must produce.
//!
//! Deterministic for a seed, so every contender of one run gets the very same events.

use std::collections::BTreeMap;

use contracts::{
    Change, ChangeEvent, Consents, DeleteReason, Position, Profile, Rank, SchemaVersion, Source,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

/// What the workload is made of.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Events in total, duplicates included.
    pub events: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Share of distinct changes that are creates (first creates and re-creates of
    /// deleted keys) and deletes; the rest are updates.
    pub creates: f64,
    pub deletes: f64,
    /// Share of `events` that are redeliveries of an earlier event (same event id).
    pub duplicates: f64,
    /// Events are shuffled within windows of this many, so a key's versions sometimes
    /// arrive out of order, as they do through standard SNS/SQS with several workers.
    pub reorder_window: usize,
    pub seed: u64,
}

impl Mix {
    /// The mix: 100k events, 70/20/10 over 20k keys, 5% duplicates.
    pub fn standard() -> Mix {
        Mix {
            events: 100_000,
            keys: 20_000,
            creates: 0.20,
            deletes: 0.10,
            duplicates: 0.05,
            reorder_window: 64,
            seed: 6,
        }
    }
}

/// The events in delivery order, and what they must leave behind.
#[derive(Debug)]
pub struct Workload {
    pub events: Vec<ChangeEvent>,
    pub stats: Stats,
}

/// One key's expected final row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub position: Position,
    pub deleted: bool,
    pub email: Option<String>,
}

/// What was generated, for the table header.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub creates: usize,
    pub updates: usize,
    pub deletes: usize,
    pub duplicates: usize,
    /// Events delivered after a greater-ranked event of the same key.
    pub out_of_order: usize,
}

struct KeyState {
    generation: i64,
    version: i64,
    live: bool,
}

/// The greatest-ranked event per key (a delete above an upsert of the same position),
/// and how many events arrived after a greater-or-equal one of their key.
pub fn expected_state(events: &[ChangeEvent]) -> (BTreeMap<String, Expected>, usize) {
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut not_newer = 0;
    for e in events {
        let deleted = matches!(e.change, Change::Deleted(_));
        match expected.get(&e.key) {
            Some(kept)
                if Rank::of_change(kept.position, kept.deleted)
                    .cmp_change(&e.rank())
                    .is_ge() =>
            {
                not_newer += 1;
            }
            _ => {
                expected.insert(
                    e.key.clone(),
                    Expected {
                        position: e.position,
                        deleted,
                        email: e.change.profile().map(|p| p.email.clone()),
                    },
                );
            }
        }
    }
    (expected, not_newer)
}

/// Distinct source changes among `events`: the history rows they must leave.
pub fn distinct_changes(events: &[ChangeEvent]) -> usize {
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.len()
}

/// Generates the workload.
pub fn generate(mix: Mix) -> Workload {
    let mut rng = StdRng::seed_from_u64(mix.seed);
    let distinct = mix.events - (mix.events as f64 * mix.duplicates) as usize;
    let base = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("a valid timestamp");
    let mut keys: Vec<Option<KeyState>> = (0..mix.keys).map(|_| None).collect();
    let mut live: Vec<usize> = Vec::new();
    let mut not_live: Vec<usize> = (0..mix.keys).rev().collect();
    let mut stats = Stats::default();
    let mut events = Vec::with_capacity(mix.events);
    let mut clock: i64 = 0;

    for n in 0..distinct {
        clock += 1;
        let roll: f64 = rng.random();
        // Creates while keys were never seen must come first for updates to have targets.
        let want_create = live.is_empty() || roll < mix.creates;
        let want_delete = !want_create && roll < mix.creates + mix.deletes;
        let at = base + time::Duration::microseconds(clock * 1000);
        let (k, change) = if want_create && !not_live.is_empty() {
            let pick = rng.random_range(0..not_live.len());
            let k = not_live.swap_remove(pick);
            let generation = base.unix_timestamp() * 1_000_000 + clock;
            keys[k] = Some(KeyState {
                generation,
                version: 1,
                live: true,
            });
            live.push(k);
            stats.creates += 1;
            (k, None)
        } else if want_delete {
            let pick = rng.random_range(0..live.len());
            let k = live.swap_remove(pick);
            not_live.push(k);
            let state = keys[k].as_mut().expect("a live key has a state");
            state.version += 1;
            state.live = false;
            stats.deletes += 1;
            (k, Some(DeleteReason::Deleted))
        } else {
            let k = live[rng.random_range(0..live.len())];
            let state = keys[k].as_mut().expect("a live key has a state");
            state.version += 1;
            stats.updates += 1;
            (k, None)
        };
        let state = keys[k].as_ref().expect("just set");
        debug_assert!(state.live == change.is_none());
        let key = format!("user-{k:06}");
        let position = Position {
            generation: state.generation,
            version: state.version,
        };
        let change = match change {
            Some(reason) => Change::Deleted(reason),
            None => Change::Upserted(profile(&key, n, state.generation, at)),
        };
        events.push(ChangeEvent {
            event_id: format!("bench-{n:08}"),
            key,
            position,
            occurred_at: at,
            published_at: at,
            source: Source {
                table: "profiles".to_owned(),
                stream_arn: Some(
                    "arn:aws:dynamodb:us-east-1:000000000000:table/profiles/stream/bench"
                        .to_owned(),
                ),
                sequence_number: Some(format!("{:021}", clock)),
            },
            published_schema: SchemaVersion::V2,
            change,
        });
    }

    // Redeliveries of earlier events, inserted a little after the original.
    let duplicates = mix.events - distinct;
    for _ in 0..duplicates {
        let from = rng.random_range(0..events.len());
        let copy = events[from].clone();
        let to = (from + rng.random_range(1..500)).min(events.len());
        events.insert(to, copy);
        stats.duplicates += 1;
    }
    for window in events.chunks_mut(mix.reorder_window) {
        window.shuffle(&mut rng);
    }

    let (_, out_of_order) = expected_state(&events);
    // A duplicate arriving after its original counts as "not newer" too; keep the
    // reordering figure about reordering only.
    stats.out_of_order = out_of_order.saturating_sub(stats.duplicates);
    Workload { events, stats }
}

fn profile(key: &str, n: usize, generation: i64, at: OffsetDateTime) -> Profile {
    const PLANS: [&str; 4] = ["free", "pro", "business", "enterprise"];
    const COUNTRIES: [&str; 4] = ["GB", "US", "DE", "JP"];
    Profile {
        user_id: key.to_owned(),
        email: format!("{key}+{n}@example.com"),
        display_name: format!("User {key}"),
        country: Some(COUNTRIES[n % COUNTRIES.len()].to_owned()),
        plan: PLANS[n % PLANS.len()].to_owned(),
        consents: Consents {
            marketing_email: n.is_multiple_of(2),
            marketing_sms: n.is_multiple_of(3),
        },
        locale: Some("en-GB".to_owned()),
        time_zone: Some("Europe/London".to_owned()),
        lifetime_value_cents: Some(
            format!("{}", (n as u64).wrapping_mul(7919) % 10_000_000)
                .parse()
                .expect("digits are a number"),
        ),
        created_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(generation) * 1000)
            .expect("a valid timestamp"),
        updated_at: at,
    }
}
