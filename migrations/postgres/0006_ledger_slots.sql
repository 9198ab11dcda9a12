-- The ledger's subject index leads with the time of issue (issue 10); see
-- migrations/sqlite/0006_ledger_slots.sql.
ALTER TABLE tokens ADD COLUMN slot BIGINT;
UPDATE tokens SET slot = CASE
    WHEN GREATEST(exp, COALESCE(refresh_exp, 0)) - iat <= 7200 THEN iat - iat % 60
    WHEN GREATEST(exp, COALESCE(refresh_exp, 0)) - iat <= 172800 THEN iat - iat % 3600 + 1
    ELSE iat - iat % 86400 + 2 END;

CREATE TABLE ledger_slots (
    slot  BIGINT PRIMARY KEY,
    until BIGINT NOT NULL
);
CREATE INDEX ledger_slots_until ON ledger_slots (until);
INSERT INTO ledger_slots (slot, until)
SELECT slot, (MAX(GREATEST(exp, COALESCE(refresh_exp, 0))) + 59) / 60 * 60 FROM tokens GROUP BY slot;

DROP INDEX tokens_app_sub;
CREATE INDEX tokens_slot_app_sub ON tokens (slot, app_key, sub_key);
