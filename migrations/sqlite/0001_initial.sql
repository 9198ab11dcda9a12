-- hsm-rotator schema (SQLite). Times are Unix seconds; ids are ULIDs.
-- Keep in step with migrations/postgres/0001_initial.sql: same tables, same columns.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE apps (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    signing_alg         TEXT NOT NULL,
    rsa_bits            INTEGER NOT NULL,
    rotation_period     INTEGER NOT NULL,
    verification_ttl    INTEGER NOT NULL,
    token_ttl           INTEGER NOT NULL,
    token_nbf           INTEGER NOT NULL DEFAULT 0,
    refresh_ttl         INTEGER NOT NULL,
    refresh_nbf         INTEGER NOT NULL DEFAULT 0,
    subject_dn          TEXT NOT NULL,
    access_token_sha256 TEXT NOT NULL UNIQUE,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    -- Tokens whose jti (a ULID) sorts below the cut-off are rejected.
    cutoff              TEXT,
    last_rotated_at     INTEGER
);

-- One row per key pair in the HSM. app_id is NULL for spare keys.
-- state: pending (row written, HSM object being made), spare, next, current,
-- previous, retired, revoked.
CREATE TABLE keys (
    kid            TEXT PRIMARY KEY,
    app_id         TEXT REFERENCES apps(id) ON DELETE SET NULL,
    algorithm      TEXT NOT NULL,
    rsa_bits       INTEGER NOT NULL,
    state          TEXT NOT NULL,
    spki           BLOB,
    cert           BLOB,
    fingerprint    TEXT,
    created_at     INTEGER NOT NULL,
    published_at   INTEGER,
    activated_at   INTEGER,
    deactivated_at INTEGER,
    retired_at     INTEGER,
    revoked_at     INTEGER,
    destroyed_at   INTEGER
);
CREATE UNIQUE INDEX keys_one_current ON keys (app_id) WHERE state = 'current';
CREATE UNIQUE INDEX keys_one_next ON keys (app_id) WHERE state = 'next';
CREATE INDEX keys_app_state ON keys (app_id, state);
CREATE INDEX keys_spare ON keys (state, algorithm, rsa_bits);

-- The token ledger: one row per issued JWT.
CREATE TABLE tokens (
    jti         TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL,
    kid         TEXT NOT NULL,
    sub_sha256  TEXT,
    iat         INTEGER NOT NULL,
    exp         INTEGER NOT NULL,
    family      TEXT,
    refresh_exp INTEGER
);
CREATE INDEX tokens_app_sub ON tokens (app_id, sub_sha256);
CREATE INDEX tokens_kid ON tokens (kid);
CREATE INDEX tokens_exp ON tokens (exp);

-- Refresh tokens (opaque, stored as SHA-256); single use, grouped in families.
CREATE TABLE refresh_tokens (
    token_sha256 TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL,
    family       TEXT NOT NULL,
    jti          TEXT NOT NULL,
    sub_sha256   TEXT,
    claims       TEXT NOT NULL,
    exp          INTEGER NOT NULL,
    used_at      INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX refresh_family ON refresh_tokens (family);
CREATE INDEX refresh_exp ON refresh_tokens (exp);

-- Revoked token ids, kept until the token would have expired anyway.
CREATE TABLE denied_jti (
    jti    TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    exp    INTEGER NOT NULL
);
CREATE INDEX denied_exp ON denied_jti (exp);

-- Per-subject logout: tokens of the subject whose jti sorts below the cut-off are rejected.
CREATE TABLE subject_cutoffs (
    app_id     TEXT NOT NULL,
    sub_sha256 TEXT NOT NULL,
    cutoff     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, sub_sha256)
);
