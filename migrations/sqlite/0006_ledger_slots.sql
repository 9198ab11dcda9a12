-- The ledger's subject index leads with the time of issue (issue 10).
--
-- `tokens_app_sub` on `(app_key, sub_key)` took every issuance's entry at its app's place in
-- an index of the whole ledger: with issuance spread over thousands of apps, each row dirtied
-- its own page of an index that at 10^7 rows no longer stays in memory, and ES256 issuance at
-- 10,000 apps ran at 0.78x of its 10-app rate (BENCHMARKS.md). The index now leads with
-- `slot`, the start of the row's issue period (a minute, an hour or a day by the row's
-- lifetime, see `ledger_slot` in src/store/tokens.rs): new entries all land in the current
-- slots' small subtrees, and a lookup by app and subject seeks each slot that still holds
-- live rows. `ledger_slots` lists those slots with the latest expiry of their rows (rounded
-- up to a minute); the purge drops a slot once its rows are gone.
ALTER TABLE tokens ADD COLUMN slot INTEGER;
UPDATE tokens SET slot = CASE
    WHEN max(exp, COALESCE(refresh_exp, 0)) - iat <= 7200 THEN iat - iat % 60
    WHEN max(exp, COALESCE(refresh_exp, 0)) - iat <= 172800 THEN iat - iat % 3600 + 1
    ELSE iat - iat % 86400 + 2 END;

CREATE TABLE ledger_slots (
    slot  INTEGER PRIMARY KEY,
    until INTEGER NOT NULL
);
CREATE INDEX ledger_slots_until ON ledger_slots (until);
INSERT INTO ledger_slots (slot, until)
SELECT slot, (MAX(max(exp, COALESCE(refresh_exp, 0))) + 59) / 60 * 60 FROM tokens GROUP BY slot;

DROP INDEX tokens_app_sub;
CREATE INDEX tokens_slot_app_sub ON tokens (slot, app_key, sub_key);
