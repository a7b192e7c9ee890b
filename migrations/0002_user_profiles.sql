-- Current state: one row per profile, written only by a version-guarded upsert.
--
-- A row is either live (the projection of the source item's latest state) or a
-- tombstone (the item is gone). A tombstone keeps the key and the position of the
-- delete, so an older upsert arriving late cannot resurrect the item, but none of the
-- profile columns: a deleted user's personal data must not outlive the source item.
CREATE TABLE analytics.user_profiles (
    user_id              text        PRIMARY KEY,
    email                text,
    display_name         text,
    country              text,
    plan                 text,
    marketing_email      boolean,
    marketing_sms        boolean,
    locale               text,
    time_zone            text,
    -- A DynamoDB number: up to 38 significant digits, so numeric, never float.
    lifetime_value_cents numeric,
    created_at           timestamptz,
    updated_at           timestamptz,
    deleted              boolean     NOT NULL,
    deleted_reason       text,
    -- The position of the change that produced this row: (generation, version), with
    -- a delete ranking above an upsert of the same position (see contracts' docs).
    generation           bigint      NOT NULL,
    version              bigint      NOT NULL,
    last_event_id        text        NOT NULL,
    occurred_at          timestamptz NOT NULL,
    applied_at           timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT user_profiles_live_row_is_complete CHECK (
        deleted OR (
            email IS NOT NULL AND display_name IS NOT NULL AND plan IS NOT NULL
            AND marketing_email IS NOT NULL AND marketing_sms IS NOT NULL
            AND created_at IS NOT NULL AND updated_at IS NOT NULL
        )
    ),
    CONSTRAINT user_profiles_tombstone_has_no_profile CHECK (
        NOT deleted OR num_nonnulls(
            email, display_name, country, plan, marketing_email, marketing_sms,
            locale, time_zone, lifetime_value_cents, created_at, updated_at
        ) = 0
    ),
    CONSTRAINT user_profiles_deleted_reason CHECK (
        (deleted AND deleted_reason IN ('deleted', 'expired'))
        OR (NOT deleted AND deleted_reason IS NULL)
    )
);
