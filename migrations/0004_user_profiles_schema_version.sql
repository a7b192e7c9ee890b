-- The schema version of the copy a state row was written from, so that copies of one
-- change published under different schema versions (a rolling deploy, a v1 snapshot, a
-- redrive of old messages) converge on the richest one instead of taking turns: the
-- guard ranks (generation, version, deleted, schema_version), see contracts' `Rank`.
-- A row written by anything else (an operator's INSERT) is taken as version 1, the
-- poorest, so any richer copy of its change still lands.
ALTER TABLE analytics.user_profiles ADD COLUMN schema_version smallint NOT NULL DEFAULT 1;

-- Rows written before this migration: the history knows which copy each came from
-- (its `schema_version` is the version that copy was published as).
UPDATE analytics.user_profiles AS p
   SET schema_version = c.schema_version
  FROM analytics.profile_changes AS c
 WHERE c.key = p.user_id AND c.generation = p.generation
   AND c.version = p.version AND c.deleted = p.deleted
   AND c.schema_version <> 1;
