-- Exact rotation guard (issue 21); see migrations/sqlite/0008_jwks_served.sql.
ALTER TABLE apps ADD COLUMN jwks_served_at BIGINT;
ALTER TABLE keys ADD COLUMN served_at_publish BIGINT;
UPDATE apps SET jwks_served_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT);
UPDATE keys SET served_at_publish = published_at WHERE published_at IS NOT NULL;
