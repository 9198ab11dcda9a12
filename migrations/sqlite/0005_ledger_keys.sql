-- A compact subject index for the ledger (issue 10).
--
-- `tokens_app_sub` on `(app_id, sub_sha256)` held about 100 bytes an entry (the app's id and
-- the subject digest in hex), about 1 GB at 10^7 rows, and every issuance inserts into it at a
-- scattered place: ES256 issuance at 10,000 apps and 10^7 rows ran at 0.80x of its 10-app
-- rate, and at 1.04x with the index dropped (BENCHMARKS.md). It is rebuilt on two integers:
-- the app's `ledger_key`, a small number given once per app, and `sub_key`, the first 28 bits
-- of the subject digest. Queries still compare `app_id` and `sub_sha256` on the row; the keys
-- only find it.
ALTER TABLE apps ADD COLUMN ledger_key INTEGER;
UPDATE apps SET ledger_key = rowid;
CREATE UNIQUE INDEX apps_ledger_key ON apps (ledger_key);
-- New apps take the next number (PostgreSQL: a sequence). Writers are serialised, so two
-- apps never read the same maximum.
CREATE TRIGGER apps_ledger_key AFTER INSERT ON apps WHEN NEW.ledger_key IS NULL
BEGIN
    UPDATE apps SET ledger_key = (SELECT COALESCE(MAX(ledger_key), 0) + 1 FROM apps)
    WHERE rowid = NEW.rowid;
END;

ALTER TABLE tokens ADD COLUMN app_key INTEGER;
ALTER TABLE tokens ADD COLUMN sub_key INTEGER;
-- sub_key: the digest's first 7 hex digits as a number (src/store/tokens.rs, `sub_key`).
UPDATE tokens SET
    app_key = (SELECT a.ledger_key FROM apps a WHERE a.id = tokens.app_id),
    sub_key = (instr('0123456789abcdef', substr(sub_sha256, 1, 1)) - 1) * 16777216
        + (instr('0123456789abcdef', substr(sub_sha256, 2, 1)) - 1) * 1048576
        + (instr('0123456789abcdef', substr(sub_sha256, 3, 1)) - 1) * 65536
        + (instr('0123456789abcdef', substr(sub_sha256, 4, 1)) - 1) * 4096
        + (instr('0123456789abcdef', substr(sub_sha256, 5, 1)) - 1) * 256
        + (instr('0123456789abcdef', substr(sub_sha256, 6, 1)) - 1) * 16
        + (instr('0123456789abcdef', substr(sub_sha256, 7, 1)) - 1);
DROP INDEX tokens_app_sub;
CREATE INDEX tokens_app_sub ON tokens (app_key, sub_key);
