-- Append-only, hash-chained audit log. hash = SHA-256 of the previous record's hash and
-- this record's fields (see src/audit/mod.rs); seq is dense, so a deletion shows.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    request_id TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

-- Signatures of the chain head by the audit key in the HSM.
CREATE TABLE audit_seals (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    kid       TEXT NOT NULL,
    signature BLOB NOT NULL,
    at        INTEGER NOT NULL
);
