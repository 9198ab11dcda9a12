-- Revoking a key counts its live tokens and their subjects (WHERE kid = ? AND exp > ?,
-- COUNT(DISTINCT sub_sha256)). Through an index on kid alone that is one random table read
-- per token, which at 10^7 ledger rows made an emergency rotation take about a second
-- (BENCHMARKS.md, scale). With exp and sub_sha256 in the index the count never reads the
-- table. Its kid prefix serves every other lookup by kid, so the old index goes.
CREATE INDEX tokens_kid_exp_sub ON tokens (kid, exp, sub_sha256);
DROP INDEX tokens_kid;
