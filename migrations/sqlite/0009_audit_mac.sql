-- Audit records sealed in the HSM (issue 26).
--
-- The old seals were ES256 signatures checked against a public key kept in this database,
-- so whoever could write the database could delete them or rebuild the chain. Now every
-- record gets an HMAC-SHA256 computed in the HSM with a secret key that never leaves it
-- (src/hsm/mac.rs), and the HSM keeps a high-water mark of the sealed records. The old
-- seals and the settings naming the old audit key go; the first start after this
-- migration makes the MAC key, seals the whole existing log with it and records that it
-- did (an `audit.anchor` record).
DROP TABLE audit_seals;
DELETE FROM settings WHERE key IN ('audit_kid', 'audit_spki_hex');

CREATE TABLE audit_macs (
    seq INTEGER PRIMARY KEY,
    mac TEXT NOT NULL,
    at  INTEGER NOT NULL
);
