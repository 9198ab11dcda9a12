-- Objects of this store's token that no key row knows (issue 25).
--
-- The reconciler used to destroy such an object on sight; one start on the wrong store
-- destroyed every key of the token. Now every object carries its store's id in its label,
-- and an orphan of our own store is destroyed only after it has been seen in several
-- passes over a grace period; this table remembers the sightings across passes and
-- restarts. A row leaves when the object is destroyed or a key row claims it.
CREATE TABLE hsm_orphans (
    kid        TEXT PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    passes     BIGINT NOT NULL
);
