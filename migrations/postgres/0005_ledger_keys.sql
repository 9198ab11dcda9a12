-- A compact subject index for the ledger (issue 10); see migrations/sqlite/0005_ledger_keys.sql.
ALTER TABLE apps ADD COLUMN ledger_key BIGINT;
CREATE SEQUENCE apps_ledger_key_seq OWNED BY apps.ledger_key;
UPDATE apps SET ledger_key = nextval('apps_ledger_key_seq');
ALTER TABLE apps ALTER COLUMN ledger_key SET DEFAULT nextval('apps_ledger_key_seq');
ALTER TABLE apps ALTER COLUMN ledger_key SET NOT NULL;
CREATE UNIQUE INDEX apps_ledger_key ON apps (ledger_key);

ALTER TABLE tokens ADD COLUMN app_key BIGINT, ADD COLUMN sub_key BIGINT;
-- sub_key: the digest's first 7 hex digits as a number (src/store/tokens.rs, `sub_key`).
UPDATE tokens t SET app_key = a.ledger_key,
    sub_key = ('x' || substr(t.sub_sha256, 1, 7))::bit(28)::bigint
FROM apps a WHERE a.id = t.app_id;
DROP INDEX tokens_app_sub;
CREATE INDEX tokens_app_sub ON tokens (app_key, sub_key);
