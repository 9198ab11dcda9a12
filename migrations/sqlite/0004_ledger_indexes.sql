-- Ledger indexes for scale (issue 10).
--
-- `tokens_kid` goes: every issuance wrote an entry at one insertion point per active key, so
-- with thousands of apps each commit dirtied one more leaf page per row (the ledger's insert
-- rate at 2,000 apps went from 0.25x to 0.41x of its 8-app rate without it: scripts/bench
-- ledger). Every query by key also knows the key's app and goes through `tokens_app_sub`.
DROP INDEX tokens_kid;

-- `(exp, app_id)` replaces `(exp)`: still appended in time order and still serving the purge,
-- it also counts live tokens per app without reading the table (the app list).
DROP INDEX tokens_exp;
CREATE INDEX tokens_exp_app ON tokens (exp, app_id);

-- Refresh-family revocation (reuse of a spent refresh token) scanned the whole ledger inside
-- its write transaction; only tokens issued with a refresh token have a family.
CREATE INDEX tokens_family ON tokens (family) WHERE family IS NOT NULL;

-- Ending a subject's, a key's or an app's refresh tokens read every refresh token of every app
-- inside its write transaction; all three know the app.
CREATE INDEX refresh_app_sub ON refresh_tokens (app_id, sub_sha256);

-- The purge finds expired subject cut-offs by their expiry, as it does every other table's rows.
CREATE INDEX subject_cutoffs_expires ON subject_cutoffs (expires_at);
