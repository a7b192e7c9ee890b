-- The analytics store's own schema, so its tables never collide with another
-- service's objects in `public` and can be granted as a unit.
CREATE SCHEMA IF NOT EXISTS analytics;
