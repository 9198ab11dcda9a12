-- Token Status List (issue 24, draft-ietf-oauth-status-list): apps that opt in give every
-- token they issue an index in one of the app's lists, and publish each list as a signed
-- bit array at `/apps/{id}/statuslists/{n}`.
--
-- The bits are not stored: the list worker computes them from the ledger (deny-list, app
-- and subject cut-offs, key states, refresh-token state), so every replica publishes the
-- same list. Only the signed result is kept, so that replicas also serve the same bytes.

-- 1 when the app's new tokens carry a `status` claim (BIGINT, as every flag).
ALTER TABLE apps ADD COLUMN status_list BIGINT NOT NULL DEFAULT 0;

-- A ledger row's list (`status_lists.id`) and its index there; `refresh_idx` is the index of
-- the refresh token issued with it, when that is a JWT (JWTPlus).
ALTER TABLE tokens ADD COLUMN status_list BIGINT;
ALTER TABLE tokens ADD COLUMN status_idx BIGINT;
ALTER TABLE tokens ADD COLUMN refresh_idx BIGINT;
-- Partial: apps without lists pay nothing; entries of a list are appended.
CREATE INDEX tokens_status_list ON tokens (status_list) WHERE status_list IS NOT NULL;

-- One row per list. `bits` entries of one bit each, handed to replicas `chunk` at a time:
-- `handed` chunks so far, in the order `(k * 2654435761 + seed) mod chunks` (a permutation:
-- the number of chunks is a power of two and the stride odd). `until` is the latest time a
-- token of the list may still be valid (its access or refresh expiry); the list is reused
-- (its number kept, its chunks handed out again) only once `until` has passed.
-- `token` is the last signed status list token, `lst_sha256` the digest of its bits.
CREATE TABLE status_lists (
    id         BIGSERIAL PRIMARY KEY,
    app_id     TEXT NOT NULL,
    n          BIGINT NOT NULL,
    bits       BIGINT NOT NULL,
    chunk      BIGINT NOT NULL,
    handed     BIGINT NOT NULL,
    seed       BIGINT NOT NULL,
    until      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    token      TEXT,
    lst_sha256 TEXT,
    signed_at  BIGINT,
    UNIQUE (app_id, n)
);
