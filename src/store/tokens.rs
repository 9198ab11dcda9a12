//! The token ledger, refresh tokens, the jti deny-list and subject cut-offs.

use sqlx::Row as _;

use super::{Store, StoreError, Tx, opt_i64};

/// Tokens of app `$1` that verify at time `$2` given the app cut-off `$3` ('' for none).
const LIVE: &str = "t.app_id = $1 AND t.exp > $2 AND t.jti >= $3 \
    AND t.kid IN (SELECT k.kid FROM keys k WHERE k.app_id = $1 AND k.state IN ('next', 'current', 'previous')) \
    AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti)";

/// One issued JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// Token id (ULID).
    pub jti: String,
    /// App.
    pub app_id: String,
    /// Signing key.
    pub kid: String,
    /// SHA-256 (hex) of `sub`, when the token has one.
    pub sub_sha256: Option<String>,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Refresh family, when issued with a refresh token.
    pub family: Option<String>,
    /// Expiry of the refresh token issued with it.
    pub refresh_exp: Option<i64>,
    /// Client metadata (JSON), e.g. JWTPlus `ip` and `useragent`.
    pub meta: Option<String>,
}

/// A live session as listed for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Token id.
    pub jti: String,
    /// Signing key.
    pub kid: String,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Refresh-token expiry.
    pub refresh_exp: Option<i64>,
    /// Client metadata (JSON).
    pub meta: Option<String>,
}

/// A refresh token as stored (the token itself only as a digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    /// SHA-256 (hex) of the token.
    pub token_sha256: String,
    /// App.
    pub app_id: String,
    /// Family: every refresh token descending from one issuance.
    pub family: String,
    /// The access token issued with it.
    pub jti: String,
    /// SHA-256 of the subject.
    pub sub_sha256: Option<String>,
    /// The caller's claims, JSON, to re-issue.
    pub claims: String,
    /// Expiry.
    pub exp: i64,
    /// When it was exchanged.
    pub used_at: Option<i64>,
    /// When its family was revoked.
    pub revoked_at: Option<i64>,
}

/// Rows one purge statement deletes at most.
pub(crate) const PURGE_BATCH: i64 = 5_000;

impl Store {
    /// Append rows to the ledger in one transaction.
    ///
    /// # Errors
    /// Database failures (nothing is written then).
    pub async fn insert_ledger(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        // Multi-row VALUES in chunks keeps round trips low under load.
        for chunk in rows.chunks(100) {
            let mut sql = String::from(
                "INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp, family, refresh_exp, meta) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 9;
                if i > 0 {
                    sql.push(',');
                }
                sql.push('(');
                for c in 1..=9 {
                    if c > 1 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", b + c));
                }
                sql.push(')');
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(&r.jti)
                    .bind(&r.app_id)
                    .bind(&r.kid)
                    .bind(&r.sub_sha256)
                    .bind(r.iat)
                    .bind(r.exp)
                    .bind(&r.family)
                    .bind(r.refresh_exp)
                    .bind(&r.meta);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One ledger row.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ledger_row(&self, jti: &str) -> Result<Option<LedgerRow>, StoreError> {
        let row = sqlx::query(
            "SELECT jti, app_id, kid, sub_sha256, iat, exp, family, refresh_exp, meta FROM tokens WHERE jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LedgerRow {
                jti: r.try_get("jti")?,
                app_id: r.try_get("app_id")?,
                kid: r.try_get("kid")?,
                sub_sha256: r.try_get("sub_sha256")?,
                iat: r.try_get("iat")?,
                exp: r.try_get("exp")?,
                family: r.try_get("family")?,
                refresh_exp: opt_i64(&r, "refresh_exp")?,
                meta: r.try_get("meta")?,
            })
        })
        .transpose()
    }

    /// A subject's tokens that have not expired (or whose refresh token has not), newest
    /// first, excluding denied jtis.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sessions(
        &self,
        app_id: &str,
        sub_sha256: &str,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.jti, t.kid, t.iat, t.exp, t.refresh_exp, t.meta FROM tokens t \
             WHERE t.app_id = $1 AND t.sub_sha256 = $2 AND (t.exp > $3 OR COALESCE(t.refresh_exp, 0) > $3) \
             AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti) ORDER BY t.jti DESC",
        )
        .bind(app_id)
        .bind(sub_sha256)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    jti: r.try_get("jti")?,
                    kid: r.try_get("kid")?,
                    iat: r.try_get("iat")?,
                    exp: r.try_get("exp")?,
                    refresh_exp: opt_i64(r, "refresh_exp")?,
                    meta: r.try_get("meta")?,
                })
            })
            .collect()
    }

    /// Live (unexpired) tokens and distinct subjects signed by any of `kids`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_token_counts(
        &self,
        kids: &[String],
        now: i64,
    ) -> Result<(i64, i64), StoreError> {
        let mut tokens = 0;
        let mut subjects = 0;
        for kid in kids {
            let r = sqlx::query(
                "SELECT COUNT(*) AS n, COUNT(DISTINCT sub_sha256) AS s FROM tokens WHERE kid = $1 AND exp > $2",
            )
            .bind(kid)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            tokens += r.try_get::<i64, _>("n")?;
            subjects += r.try_get::<i64, _>("s")?;
        }
        Ok((tokens, subjects))
    }

    /// Tokens of one app that still verify, per signing key: `(kid, tokens, subjects)`, for
    /// the blast-radius preview. "Still verify" means unexpired, not on the deny-list,
    /// issued at or after the app's cut-off `cutoff` (a ULID; tokens whose `jti` sorts
    /// before it are rejected) and signed by a published key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_tokens_by_kid(
        &self,
        app_id: &str,
        now: i64,
        cutoff: Option<&str>,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let sql = format!(
            "SELECT t.kid, COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE {LIVE} GROUP BY t.kid"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app_id)
            .bind(now)
            .bind(cutoff.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("n")?, r.try_get("s")?)))
            .collect()
    }

    /// Tokens of one app that still verify (as in [`Self::live_tokens_by_kid`]) and their
    /// distinct subjects, all keys together.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_tokens_of_app(
        &self,
        app_id: &str,
        now: i64,
        cutoff: Option<&str>,
    ) -> Result<(i64, i64), StoreError> {
        let sql = format!(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE {LIVE}"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app_id)
            .bind(now)
            .bind(cutoff.unwrap_or(""))
            .fetch_one(&self.pool)
            .await?;
        Ok((r.try_get("n")?, r.try_get("s")?))
    }

    /// Unexpired tokens per app, for the app list: one app or (`None`) all of them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_token_counts_per_app(
        &self,
        app_id: Option<&str>,
        now: i64,
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, COUNT(*) AS n FROM tokens WHERE exp > $1 AND ($2 = '' OR app_id = $2) GROUP BY app_id",
        )
        .bind(now)
        .bind(app_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("app_id")?, r.try_get("n")?)))
            .collect()
    }

    /// Put `jti` on the deny-list until `exp`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn deny_jti(
        &self,
        tx: &mut Tx,
        jti: &str,
        app_id: &str,
        exp: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO denied_jti (jti, app_id, exp) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(app_id)
            .bind(exp)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Every denied jti that has not expired: `(jti, app_id, exp)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn denied_jtis(&self, now: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT jti, app_id, exp FROM denied_jti WHERE exp > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("app_id")?, r.try_get("exp")?)))
            .collect()
    }

    /// Set a subject's cut-off (tokens of the subject with a lower jti are rejected).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_subject_cutoff(
        &self,
        tx: &mut Tx,
        app_id: &str,
        sub_sha256: &str,
        cutoff: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO subject_cutoffs (app_id, sub_sha256, cutoff, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, sub_sha256) DO UPDATE SET cutoff = excluded.cutoff, expires_at = excluded.expires_at",
        )
        .bind(app_id)
        .bind(sub_sha256)
        .bind(cutoff)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every subject cut-off still in force: `(app_id, sub_sha256, cutoff)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn subject_cutoffs(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, sub_sha256, cutoff FROM subject_cutoffs WHERE expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("app_id")?,
                    r.try_get("sub_sha256")?,
                    r.try_get("cutoff")?,
                ))
            })
            .collect()
    }

    /// Revoke every refresh token of a subject (logout everywhere).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_subject_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        sub_sha256: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND sub_sha256 = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(app_id)
            .bind(sub_sha256)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Revoke every refresh token of an app (flush, emergency rotation).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_app_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(app_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Revoke the refresh tokens issued alongside access tokens that `kid` signed (a
    /// revoked key's sessions end with it).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_key_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        kid: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL \
             AND jti IN (SELECT jti FROM tokens WHERE kid = $3)",
        )
        .bind(now)
        .bind(app_id)
        .bind(kid)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected())
    }

    /// Lock every row of a refresh family for the rest of `tx`, then report whether the
    /// token `token_sha256` (of that family) is still unrevoked.
    ///
    /// A refresh exchange calls this before storing its new refresh token, and reuse
    /// detection calls it before revoking the family, so the two serialise on the family's
    /// rows: the revocation (a later statement, with a later snapshot) sees the new token,
    /// or the exchange sees the revocation. On SQLite, `BEGIN IMMEDIATE` already
    /// serialises writers.
    ///
    /// # Errors
    /// Database failures.
    pub async fn lock_refresh_family(
        &self,
        tx: &mut Tx,
        family: &str,
        token_sha256: &str,
    ) -> Result<bool, StoreError> {
        sqlx::query("UPDATE refresh_tokens SET used_at = used_at WHERE family = $1")
            .bind(family)
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query(
            "SELECT 1 AS live FROM refresh_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(token_sha256)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.is_some())
    }

    /// Store a new refresh token.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_refresh(&self, tx: &mut Tx, r: &RefreshRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
        )
        .bind(&r.token_sha256)
        .bind(&r.app_id)
        .bind(&r.family)
        .bind(&r.jti)
        .bind(&r.sub_sha256)
        .bind(&r.claims)
        .bind(r.exp)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A refresh token by digest.
    ///
    /// # Errors
    /// Database failures.
    pub async fn refresh(
        &self,
        tx: &mut Tx,
        token_sha256: &str,
    ) -> Result<Option<RefreshRow>, StoreError> {
        let row = sqlx::query(
            "SELECT token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at \
             FROM refresh_tokens WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| {
            Ok(RefreshRow {
                token_sha256: r.try_get("token_sha256")?,
                app_id: r.try_get("app_id")?,
                family: r.try_get("family")?,
                jti: r.try_get("jti")?,
                sub_sha256: r.try_get("sub_sha256")?,
                claims: r.try_get("claims")?,
                exp: r.try_get("exp")?,
                used_at: opt_i64(&r, "used_at")?,
                revoked_at: opt_i64(&r, "revoked_at")?,
            })
        })
        .transpose()
    }

    /// Mark a refresh token used, if it was not yet (compare-and-swap).
    ///
    /// # Errors
    /// Database failures.
    pub async fn use_refresh(
        &self,
        tx: &mut Tx,
        token_sha256: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .bind(token_sha256)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Undo [`Self::use_refresh`] when no new pair could be issued.
    ///
    /// # Errors
    /// Database failures.
    pub async fn unuse_refresh(&self, token_sha256: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE refresh_tokens SET used_at = NULL WHERE token_sha256 = $1 AND revoked_at IS NULL")
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revoke a whole refresh family; returns the access-token jtis issued in it with their
    /// expiry, so the caller can deny them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_family(
        &self,
        tx: &mut Tx,
        family: &str,
        now: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family)
        .execute(&mut **tx)
        .await?;
        let rows = sqlx::query("SELECT jti, exp FROM tokens WHERE family = $1 AND exp > $2")
            .bind(family)
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("exp")?)))
            .collect()
    }

    /// Delete ledger, deny-list, refresh and cut-off rows past their expiry; returns the
    /// number of rows removed.
    ///
    /// Rows go in batches of `PURGE_BATCH` (5,000), each its own short statement: one `DELETE` of
    /// a million expired rows would hold SQLite's write lock (and grow the WAL) for seconds,
    /// stalling every issuance's ledger write behind it.
    ///
    /// # Errors
    /// Database failures (batches already deleted stay deleted).
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for (table, key, expired) in [
            (
                "tokens",
                "jti",
                "exp <= $1 AND COALESCE(refresh_exp, 0) <= $1",
            ),
            ("denied_jti", "jti", "exp <= $1"),
            ("refresh_tokens", "token_sha256", "exp <= $1"),
            ("subject_cutoffs", "app_id, sub_sha256", "expires_at <= $1"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {expired} LIMIT $2)"
            );
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                n += deleted;
                if deleted < u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) {
                    break;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{LedgerRow, PURGE_BATCH};
    use crate::store::Store;

    fn row(i: i64, exp: i64, refresh_exp: Option<i64>) -> LedgerRow {
        LedgerRow {
            jti: format!("01J{i:023}"),
            app_id: "app".into(),
            kid: "kid".into(),
            sub_sha256: Some(format!("{:064x}", i % 7)),
            iat: exp - 3600,
            exp,
            family: None,
            refresh_exp,
            meta: None,
        }
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        use sqlx::Row as _;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    /// More expired rows than several batches: every expired row goes, in batches, and
    /// nothing live (or still refreshable) is touched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_removes_every_expired_row_in_batches_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/p.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        let now = 2_000_000_000;
        let expired = 2 * PURGE_BATCH + 123;
        let mut rows: Vec<LedgerRow> = (0..expired)
            .map(|i| row(i, now - 1 - i % 50, None))
            .collect();
        // Live, expiring exactly at `now` + 1, and expired but with a live refresh token.
        rows.extend((0..300).map(|i| row(expired + i, now + 1 + i, None)));
        rows.extend((0..40).map(|i| row(expired + 300 + i, now - 5, Some(now + 60))));
        store.insert_ledger(&rows).await.unwrap();
        // A row expiring exactly now is expired (`exp <= now`).
        store
            .insert_ledger(&[row(9_999_999, now, None)])
            .await
            .unwrap();
        for i in 0..3 {
            sqlx::query("INSERT INTO denied_jti (jti, app_id, exp) VALUES ($1, 'app', $2)")
                .bind(format!("d{i}"))
                .bind(now - 1 + i)
                .execute(store.pool())
                .await
                .unwrap();
        }

        let purged = store.purge_expired(now).await.unwrap();
        assert_eq!(purged, u64::try_from(expired + 1 + 2).unwrap());
        assert_eq!(count(&store, "SELECT COUNT(*) FROM tokens").await, 340);
        assert_eq!(
            count(
                &store,
                &format!("SELECT COUNT(*) FROM tokens WHERE exp <= {now} AND refresh_exp IS NULL")
            )
            .await,
            0
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM denied_jti").await, 1);
        // Nothing left to purge: a second pass deletes nothing.
        assert_eq!(store.purge_expired(now).await.unwrap(), 0);
    }
}
