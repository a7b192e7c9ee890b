-- Append-only history: one row per source change, whatever the delivery count.
CREATE TABLE analytics.profile_changes (
    id                     bigserial   PRIMARY KEY,
    event_id               text        NOT NULL UNIQUE,
    key                    text        NOT NULL,
    generation             bigint      NOT NULL,
    version                bigint      NOT NULL,
    deleted                boolean     NOT NULL,
    event_type             text        NOT NULL,
    reason                 text,
    -- The schema version the event was published as; `data` is always the current one.
    schema_version         smallint    NOT NULL,
    data                   jsonb,
    occurred_at            timestamptz NOT NULL,
    published_at           timestamptz NOT NULL,
    applied_at             timestamptz NOT NULL DEFAULT now(),
    -- Absent for snapshots, which are read by a scan, not from the stream.
    source_sequence_number text,

    CONSTRAINT profile_changes_event_type CHECK (
        event_type IN ('profile.upserted', 'profile.snapshot', 'profile.deleted')
    ),
    CONSTRAINT profile_changes_delete_shape CHECK (
        (deleted AND event_type = 'profile.deleted' AND reason IN ('deleted', 'expired') AND data IS NULL)
        OR (NOT deleted AND event_type <> 'profile.deleted' AND reason IS NULL AND data IS NOT NULL)
    )
);

-- The same source change can arrive under different event ids (from the stream and
-- from a backfill snapshot of the same item version): it is still one change, so one
-- row. This index also serves the per-key history lookups.
CREATE UNIQUE INDEX profile_changes_one_row_per_source_change
    ON analytics.profile_changes (key, generation, version, deleted);
