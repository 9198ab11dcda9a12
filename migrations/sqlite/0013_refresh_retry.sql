-- Refresh reuse grace (issue 26 item 2, `refresh_reuse_grace`).
--
-- `parent_sha256`: the refresh token this one was exchanged from (NULL for a family's
-- first), so that a retry of a spent token finds the successor it was answered with.
-- `superseded_at`: set (with `revoked_at`) on a successor that a retry within the grace
-- replaced before it was ever used; presented later, it is reuse, and revokes its family.
ALTER TABLE refresh_tokens ADD COLUMN parent_sha256 TEXT;
ALTER TABLE refresh_tokens ADD COLUMN superseded_at INTEGER;
CREATE INDEX refresh_parent ON refresh_tokens (parent_sha256) WHERE parent_sha256 IS NOT NULL;
