-- Exact rotation guard (issue 21): when each app's JWKS was last served, and, on each key,
-- what that time was when the key was published (became `next`).
--
-- A `next` key may sign once every verifier's cached JWKS contains it. A cache that lacks
-- it was fetched before the key was published, so it expires by the last serve before the
-- publication plus `jwks_max_age`; if the JWKS was never served before, no cache lacks it
-- and the key may sign at once (see `signs_from` in src/keys/policy.rs).
--
-- Rows from before this migration carry no such record: each existing app counts as served
-- now, and each existing key as published right after a serve, so both keep the guard they
-- had (publication + `jwks_max_age`).
ALTER TABLE apps ADD COLUMN jwks_served_at INTEGER;
ALTER TABLE keys ADD COLUMN served_at_publish INTEGER;
UPDATE apps SET jwks_served_at = CAST(strftime('%s', 'now') AS INTEGER);
UPDATE keys SET served_at_publish = published_at WHERE published_at IS NOT NULL;
