//! Key rows: one per key pair in the HSM, written before the object is made.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Dialect, Store, StoreError, Tx, opt_i64};
use crate::alg::{Algorithm, KeySpec};
use crate::keys::{KeyState, Kid};

/// Where a key pair was born (migration 0010).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyOrigin {
    /// Generated inside the token (`CKA_LOCAL` true).
    #[default]
    Generated,
    /// Made elsewhere and imported with `C_CreateObject` (`CKA_LOCAL` and
    /// `CKA_NEVER_EXTRACTABLE` false): signs for at most `imported_key_max_life`.
    Imported,
}

impl KeyOrigin {
    /// Name as stored and shown (`generated`, `imported`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::Imported => "imported",
        }
    }
}

impl std::str::FromStr for KeyOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "generated" => Ok(Self::Generated),
            "imported" => Ok(Self::Imported),
            other => Err(format!("key origin {other:?}")),
        }
    }
}

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id (also the HSM `CKA_ID`).
    pub kid: Kid,
    /// Owning app (`None` for spare and pending pool keys).
    pub app_id: Option<String>,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// RSA bits (0 for non-RSA).
    pub rsa_bits: u32,
    /// State.
    pub state: KeyState,
    /// SubjectPublicKeyInfo DER.
    pub spki: Option<Vec<u8>>,
    /// Self-signed certificate DER, once made.
    pub cert: Option<Vec<u8>>,
    /// SHA-256 of the SPKI, hex.
    pub fingerprint: Option<String>,
    /// Row written.
    pub created_at: i64,
    /// Became `next` (published).
    pub published_at: Option<i64>,
    /// When the app's JWKS had last been served, as the store knew it at publication
    /// (`None`: never); see [`crate::keys::policy::signs_from`].
    pub served_at_publish: Option<i64>,
    /// Became `current`.
    pub activated_at: Option<i64>,
    /// Stopped signing (became `previous`).
    pub deactivated_at: Option<i64>,
    /// Retired.
    pub retired_at: Option<i64>,
    /// Revoked.
    pub revoked_at: Option<i64>,
    /// HSM objects destroyed.
    pub destroyed_at: Option<i64>,
    /// Generated in the token or imported.
    pub origin: KeyOrigin,
}

impl KeyRow {
    /// The key's generation spec.
    pub fn spec(&self) -> KeySpec {
        KeySpec::new(self.algorithm, self.rsa_bits)
    }
}

macro_rules! key_cols {
    () => {
        "kid, app_id, algorithm, rsa_bits, state, spki, cert, fingerprint, created_at, published_at, served_at_publish, activated_at, deactivated_at, retired_at, revoked_at, destroyed_at, origin"
    };
}

fn key_from_row(r: &AnyRow) -> Result<KeyRow, StoreError> {
    let kid: String = r.try_get("kid")?;
    let alg: String = r.try_get("algorithm")?;
    let state: String = r.try_get("state")?;
    let origin: String = r.try_get("origin")?;
    Ok(KeyRow {
        kid: kid
            .parse()
            .map_err(|_| StoreError::corrupt(format!("kid {kid:?}")))?,
        app_id: r.try_get("app_id")?,
        algorithm: alg
            .parse()
            .map_err(|_| StoreError::corrupt(format!("key algorithm {alg:?}")))?,
        rsa_bits: u32::try_from(r.try_get::<i64, _>("rsa_bits")?).unwrap_or(0),
        state: state.parse().map_err(StoreError::corrupt)?,
        spki: r.try_get("spki")?,
        cert: r.try_get("cert")?,
        fingerprint: r.try_get("fingerprint")?,
        created_at: r.try_get("created_at")?,
        published_at: opt_i64(r, "published_at")?,
        served_at_publish: opt_i64(r, "served_at_publish")?,
        activated_at: opt_i64(r, "activated_at")?,
        deactivated_at: opt_i64(r, "deactivated_at")?,
        retired_at: opt_i64(r, "retired_at")?,
        revoked_at: opt_i64(r, "revoked_at")?,
        destroyed_at: opt_i64(r, "destroyed_at")?,
        origin: origin.parse().map_err(StoreError::corrupt)?,
    })
}

/// The timestamp column a transition into `state` sets.
fn stamp_column(state: KeyState) -> Option<&'static str> {
    match state {
        KeyState::Next => Some("published_at"),
        KeyState::Current => Some("activated_at"),
        KeyState::Previous => Some("deactivated_at"),
        KeyState::Retired => Some("retired_at"),
        KeyState::Revoked => Some("revoked_at"),
        KeyState::Pending | KeyState::Spare => None,
    }
}

impl Store {
    /// Write a `pending` row before the HSM object is made (crash safety: a row always
    /// exists for an object we create).
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_pending_key(
        &self,
        kid: Kid,
        spec: KeySpec,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keys (kid, app_id, algorithm, rsa_bits, state, created_at) \
             VALUES ($1, NULL, $2, $3, 'pending', $4)",
        )
        .bind(kid.to_string())
        .bind(spec.alg.as_str())
        .bind(i64::from(spec.rsa_bits))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Write the `pending` row of a key about to be imported (before its objects are made,
    /// as for a generated key). The reconciler never makes such a row a spare: if the
    /// import does not finish, it destroys the objects and deletes the row.
    ///
    /// # Errors
    /// Database failures (a kid already in use among them).
    pub async fn insert_pending_import(
        &self,
        kid: Kid,
        spec: KeySpec,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keys (kid, app_id, algorithm, rsa_bits, state, created_at, origin) \
             VALUES ($1, NULL, $2, $3, 'pending', $4, 'imported')",
        )
        .bind(kid.to_string())
        .bind(spec.alg.as_str())
        .bind(i64::from(spec.rsa_bits))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Give a `pending` imported key to `app_id` in `state` (`next`, `current` or
    /// `previous`), with its public key (SPKI DER and fingerprint), inside `tx`. It is published now; a `current` key
    /// also signs from now, a `previous` one stopped signing now (its tokens verify for
    /// the app's `verification_ttl`). Returns whether the row was still pending.
    ///
    /// # Errors
    /// Database failures (the one-`current`/one-`next` indexes among them).
    pub async fn place_imported(
        &self,
        tx: &mut Tx,
        kid: Kid,
        app_id: &str,
        state: KeyState,
        (spki, fingerprint): (&[u8], &str),
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE keys SET app_id = $1, state = $2, spki = $3, fingerprint = $4, published_at = $5, \
             activated_at = CASE WHEN $2 = 'current' THEN $5 ELSE NULL END, \
             deactivated_at = CASE WHEN $2 = 'previous' THEN $5 ELSE NULL END, \
             served_at_publish = (SELECT jwks_served_at FROM apps WHERE id = $1) \
             WHERE kid = $6 AND state = 'pending' AND origin = 'imported'",
        )
        .bind(app_id)
        .bind(state.as_str())
        .bind(spki)
        .bind(fingerprint)
        .bind(now)
        .bind(kid.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// `pending` → `spare`, with the public key the HSM returned.
    ///
    /// # Errors
    /// Database failures.
    pub async fn mark_spare(
        &self,
        kid: Kid,
        spki: &[u8],
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE keys SET state = 'spare', spki = $1, fingerprint = $2 WHERE kid = $3 AND state = 'pending' AND origin = 'generated'",
        )
        .bind(spki)
        .bind(fingerprint)
        .bind(kid.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Take one spare key of `spec` for `app_id`, making it `state` (`next` or `current`).
    /// Concurrent callers never get the same key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn take_spare(
        &self,
        tx: &mut Tx,
        spec: KeySpec,
        app_id: &str,
        state: KeyState,
        now: i64,
    ) -> Result<Option<KeyRow>, StoreError> {
        let pick = match self.dialect {
            Dialect::Sqlite => {
                "SELECT kid FROM keys WHERE state = 'spare' AND algorithm = $4 AND rsa_bits = $5 ORDER BY kid LIMIT 1"
            }
            Dialect::Postgres => {
                "SELECT kid FROM keys WHERE state = 'spare' AND algorithm = $4 AND rsa_bits = $5 ORDER BY kid LIMIT 1 FOR UPDATE SKIP LOCKED"
            }
        };
        // Becoming `current` straight from the pool (app creation, emergency) also means
        // it was published now. The app's last JWKS serve is copied onto the key in the
        // same statement: it bounds the caches that lack the key (the rotation guard).
        let sql = format!(
            "UPDATE keys SET app_id = $1, state = $2, published_at = $3, activated_at = CASE WHEN $2 = 'current' THEN $3 ELSE NULL END, \
             served_at_publish = (SELECT jwks_served_at FROM apps WHERE id = $1) \
             WHERE kid = ({pick}) AND state = 'spare' RETURNING {}",
            key_cols!()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app_id)
            .bind(state.as_str())
            .bind(now)
            .bind(spec.alg.as_str())
            .bind(i64::from(spec.rsa_bits))
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Move `kid` from `from` to `to` if it is still in `from` (compare-and-swap), setting
    /// the transition's timestamp. Returns whether it moved.
    ///
    /// # Errors
    /// Database failures.
    pub async fn transition_key(
        &self,
        tx: &mut Tx,
        kid: Kid,
        from: KeyState,
        to: KeyState,
        now: i64,
    ) -> Result<bool, StoreError> {
        debug_assert!(from.can_become(to), "{from} -> {to}");
        let sql = match stamp_column(to) {
            Some(col) => {
                format!("UPDATE keys SET state = $1, {col} = $2 WHERE kid = $3 AND state = $4")
            }
            None => {
                "UPDATE keys SET state = $1 WHERE kid = $3 AND state = $4 AND $2 = $2".to_owned()
            }
        };
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now)
            .bind(kid.to_string())
            .bind(from.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record that `kid`'s HSM objects are gone.
    ///
    /// # Errors
    /// Database failures.
    pub async fn mark_destroyed(&self, kid: Kid, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE keys SET destroyed_at = $1 WHERE kid = $2 AND destroyed_at IS NULL")
            .bind(now)
            .bind(kid.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store `kid`'s certificate.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_cert(&self, kid: Kid, cert: &[u8]) -> Result<(), StoreError> {
        sqlx::query("UPDATE keys SET cert = $1 WHERE kid = $2")
            .bind(cert)
            .bind(kid.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn key(&self, kid: Kid) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM keys WHERE kid = $1"))
            .bind(kid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Every key of an app, newest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn app_keys(&self, app_id: &str) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE app_id = $1 ORDER BY kid DESC"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every key of an app, newest first, read inside `tx`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn app_keys_tx(&self, tx: &mut Tx, app_id: &str) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE app_id = $1 ORDER BY kid DESC"
        ))
        .bind(app_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every key in one of the published states (next, current, previous), for the caches.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE state IN ('next', 'current', 'previous')"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Keys in `state` (any app).
    ///
    /// # Errors
    /// Database failures.
    pub async fn keys_in_state(&self, state: KeyState) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE state = $1 ORDER BY kid"
        ))
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// `previous` keys whose verification window has closed at `now` (deactivated at least
    /// the app's `verification_ttl` ago), as `(app_id, kid)`. The filter runs in the
    /// database, so a tick reads only the keys it retires, not every `previous` key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn previous_keys_due(&self, now: i64) -> Result<Vec<(String, Kid)>, StoreError> {
        let rows = sqlx::query(
            "SELECT keys.app_id AS app_id, keys.kid AS kid FROM keys JOIN apps ON apps.id = keys.app_id \
             WHERE keys.state = 'previous' AND COALESCE(keys.deactivated_at, $1) + apps.verification_ttl <= $1 \
             ORDER BY keys.kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let app: String = r.try_get("app_id")?;
            let kid: String = r.try_get("kid")?;
            let kid = kid
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("bad kid {kid}")))?;
            out.push((app, kid));
        }
        Ok(out)
    }

    /// Keys whose objects should be gone but were not confirmed destroyed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn undestroyed_dead_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE state IN ('retired', 'revoked') AND destroyed_at IS NULL"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Spare keys per spec: `(algorithm, rsa_bits, count)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn spare_counts(&self) -> Result<Vec<(KeySpec, usize)>, StoreError> {
        let rows = sqlx::query(
            "SELECT algorithm, rsa_bits, COUNT(*) AS n FROM keys WHERE state = 'spare' GROUP BY algorithm, rsa_bits",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let alg: String = r.try_get("algorithm")?;
            let Ok(alg) = alg.parse::<Algorithm>() else {
                continue;
            };
            let bits = u32::try_from(r.try_get::<i64, _>("rsa_bits")?).unwrap_or(0);
            let n = usize::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0);
            out.push((KeySpec::new(alg, bits), n));
        }
        Ok(out)
    }

    /// Keys per app and state (every state an app's key can be in, retired and revoked
    /// too): `(app_id, state, count)`, for one app or (`None`) all of them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn key_counts_per_app(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        // Two statements, not `($1 = '' OR app_id = $1)`: that form keeps one app's view from
        // using `keys_app_state` and reads every key ever made.
        let rows = match app_id {
            Some(id) => sqlx::query(
                "SELECT app_id, state, COUNT(*) AS n FROM keys WHERE app_id = $1 GROUP BY app_id, state",
            )
            .bind(id),
            None => sqlx::query(
                "SELECT app_id, state, COUNT(*) AS n FROM keys WHERE app_id IS NOT NULL GROUP BY app_id, state",
            ),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("app_id")?, r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// The distinct key specs apps use for new keys.
    ///
    /// # Errors
    /// Database failures.
    pub async fn specs_in_use(&self) -> Result<Vec<KeySpec>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT signing_alg, rsa_bits FROM apps")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let alg: String = r.try_get("signing_alg")?;
            let Ok(alg) = alg.parse::<Algorithm>() else {
                continue;
            };
            let bits = u32::try_from(r.try_get::<i64, _>("rsa_bits")?).unwrap_or(0);
            out.push(KeySpec::new(alg, bits));
        }
        Ok(out)
    }

    /// Delete a `pending` row whose object was never made (generation failed).
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_pending_key(&self, kid: Kid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM keys WHERE kid = $1 AND state = 'pending'")
            .bind(kid.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Advisory-lock key of the scheduler lease (PostgreSQL).
const SCHEDULER_LOCK: i64 = 0x6873_6d72_6f74; // "hsmrot"

/// The scheduler lease: held by one replica at a time for the length of a tick.
pub struct Lease(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Lease {
    /// Give the lease up.
    pub async fn release(mut self) {
        if let Some(mut c) = self.0.take() {
            let ok = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(SCHEDULER_LOCK)
                .execute(&mut *c)
                .await
                .is_ok();
            if !ok {
                // Closing the session releases the lock for sure.
                drop(c.detach());
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            // Never return a connection that still holds the lock to the pool.
            drop(c.detach());
        }
    }
}

impl Store {
    /// Try to take the scheduler lease (a PostgreSQL advisory lock; SQLite has one
    /// replica and always grants it).
    ///
    /// # Errors
    /// Database failures.
    pub async fn scheduler_lease(&self) -> Result<Option<Lease>, StoreError> {
        match self.dialect {
            Dialect::Sqlite => Ok(Some(Lease(None))),
            Dialect::Postgres => {
                let mut conn = self.pool.acquire().await?;
                let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
                    .bind(SCHEDULER_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                let got: bool = row.try_get("got")?;
                Ok(got.then(|| Lease(Some(conn))))
            }
        }
    }

    /// Every kid the store knows, in any state.
    ///
    /// # Errors
    /// Database failures.
    pub async fn all_kids(&self) -> Result<std::collections::HashSet<Kid>, StoreError> {
        let rows = sqlx::query("SELECT kid FROM keys")
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashSet::with_capacity(rows.len());
        for r in rows {
            let k: String = r.try_get("kid")?;
            if let Ok(kid) = k.parse() {
                out.insert(kid);
            }
        }
        Ok(out)
    }

    /// Record one reconciler pass's sightings of orphans (objects of this store that no
    /// row knows): each kid in `seen` gets a pass counted (first seen now if new), every
    /// sighting not in `seen` is forgotten. Returns each seen kid's `(first_seen, passes)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sight_orphans(
        &self,
        seen: &[Kid],
        now: i64,
    ) -> Result<std::collections::HashMap<Kid, (i64, i64)>, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query("SELECT kid FROM hsm_orphans")
            .fetch_all(&mut *tx)
            .await?;
        let wanted: std::collections::HashSet<String> =
            seen.iter().map(ToString::to_string).collect();
        for r in rows {
            let k: String = r.try_get("kid")?;
            if !wanted.contains(&k) {
                sqlx::query("DELETE FROM hsm_orphans WHERE kid = $1")
                    .bind(k)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut out = std::collections::HashMap::with_capacity(seen.len());
        for kid in seen {
            let r = sqlx::query(
                "INSERT INTO hsm_orphans (kid, first_seen, last_seen, passes) VALUES ($1, $2, $2, 1) \
                 ON CONFLICT (kid) DO UPDATE SET last_seen = $2, passes = hsm_orphans.passes + 1 \
                 RETURNING first_seen, passes",
            )
            .bind(kid.to_string())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            out.insert(*kid, (r.try_get("first_seen")?, r.try_get("passes")?));
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Forget the sighting of an orphan (destroyed, or claimed by a row).
    ///
    /// # Errors
    /// Database failures.
    pub async fn forget_orphan(&self, kid: Kid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM hsm_orphans WHERE kid = $1")
            .bind(kid.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keys that should have HSM objects (spare, next, current, previous).
    ///
    /// # Errors
    /// Database failures.
    pub async fn keys_with_objects(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM keys WHERE state IN ('spare', 'next', 'current', 'previous')"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// A spare whose object is gone: it can never be used; record it as revoked and gone.
    ///
    /// # Errors
    /// Database failures.
    pub async fn discard_spare(&self, kid: Kid, now: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE keys SET state = 'revoked', revoked_at = $1, destroyed_at = $1 WHERE kid = $2 AND state = 'spare'",
        )
        .bind(now)
        .bind(kid.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
