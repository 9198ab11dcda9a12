//! Refresh tokens and their families: storing, exchanging, undoing and revoking them.

use sqlx::Row as _;

use crate::store::{Store, StoreError, Tx, opt_i64};

/// A subject's refresh tokens.
pub(super) const SUBJECT_REFRESH_REVOKE: &str = "UPDATE refresh_tokens SET revoked_at = $1 \
    WHERE app_id = $2 AND sub_sha256 = $3 AND revoked_at IS NULL";

/// An app's refresh tokens.
pub(super) const APP_REFRESH_REVOKE: &str =
    "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL";

/// Refresh tokens issued with the access tokens one key of an app signed.
pub(super) const KEY_REFRESH_REVOKE: &str = concat!(
    "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL \
    AND jti IN (SELECT jti FROM tokens WHERE slot IN ",
    ledger_slots!("$1"),
    " AND app_key = ",
    app_key_of!("$2"),
    " AND app_id = $2 AND kid = $3)"
);

/// Unexpired access tokens of a refresh family.
pub(super) const FAMILY_TOKENS: &str = "SELECT jti, exp FROM tokens WHERE family = $1 AND exp > $2";

/// Give a spent refresh token back (its exchange failed or was never delivered), unless a
/// successor of it lives: then it was answered after all (by a retry), and stays spent.
const GIVE_BACK: &str = "UPDATE refresh_tokens SET used_at = NULL WHERE token_sha256 = $1 \
    AND revoked_at IS NULL AND NOT EXISTS (SELECT 1 FROM refresh_tokens c \
    WHERE c.parent_sha256 = $1 AND c.revoked_at IS NULL)";

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
    /// When it was revoked (with its family, a logout, a flush, or superseded).
    pub revoked_at: Option<i64>,
    /// The refresh token it was exchanged from (none for a family's first).
    pub parent_sha256: Option<String>,
    /// When a retry of its parent within the reuse grace replaced it, unused.
    pub superseded_at: Option<i64>,
}

/// A refresh token exchanged from another, not revoked: what a retry of the parent
/// supersedes when it was never used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshChild {
    /// SHA-256 (hex) of the token.
    pub token_sha256: String,
    /// The access token issued with it.
    pub jti: String,
    /// Its access token's expiry (the refresh token's when the ledger has no row).
    pub exp: i64,
    /// Whether it has been exchanged in turn.
    pub used: bool,
}

impl Store {
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
        sqlx::query(SUBJECT_REFRESH_REVOKE)
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
        sqlx::query(APP_REFRESH_REVOKE)
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
        let r = sqlx::query(KEY_REFRESH_REVOKE)
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
            "INSERT INTO refresh_tokens (token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at, parent_sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8)",
        )
        .bind(&r.token_sha256)
        .bind(&r.app_id)
        .bind(&r.family)
        .bind(&r.jti)
        .bind(&r.sub_sha256)
        .bind(&r.claims)
        .bind(r.exp)
        .bind(&r.parent_sha256)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The unrevoked refresh tokens exchanged from `parent_sha256`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn refresh_children(
        &self,
        tx: &mut Tx,
        parent_sha256: &str,
    ) -> Result<Vec<RefreshChild>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.token_sha256, r.jti, r.used_at, COALESCE(t.exp, r.exp) AS exp \
             FROM refresh_tokens r LEFT JOIN tokens t ON t.jti = r.jti \
             WHERE r.parent_sha256 = $1 AND r.revoked_at IS NULL",
        )
        .bind(parent_sha256)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RefreshChild {
                    token_sha256: r.try_get("token_sha256")?,
                    jti: r.try_get("jti")?,
                    exp: r.try_get("exp")?,
                    used: opt_i64(r, "used_at")?.is_some(),
                })
            })
            .collect()
    }

    /// Revoke an unused refresh token that a retry of its parent replaces, marking it
    /// superseded (presented later, it is reuse). Returns whether it was still live.
    ///
    /// # Errors
    /// Database failures.
    pub async fn supersede_refresh(
        &self,
        tx: &mut Tx,
        token_sha256: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1, superseded_at = $1 \
             WHERE token_sha256 = $2 AND revoked_at IS NULL AND used_at IS NULL",
        )
        .bind(now)
        .bind(token_sha256)
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
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
            "SELECT token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at, \
             parent_sha256, superseded_at FROM refresh_tokens WHERE token_sha256 = $1",
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
                parent_sha256: r.try_get("parent_sha256")?,
                superseded_at: opt_i64(&r, "superseded_at")?,
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
        self.unuse_refresh_on(&self.pool, token_sha256).await
    }

    /// Undo an exchange whose answer never reached the client: the new refresh token
    /// (`new_sha256`) is revoked and its access token denied, and the old one
    /// (`old_sha256`) can be used again, in one transaction, so the client's retry with
    /// the old token is an ordinary exchange, not a reuse that revokes the family.
    ///
    /// # Errors
    /// Database failures.
    pub async fn undo_exchange(
        &self,
        old_sha256: &str,
        new_sha256: Option<&str>,
        new_jti: &str,
        app_id: &str,
        new_exp: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if let Some(n) = new_sha256 {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE token_sha256 = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        self.deny_jti(&mut tx, new_jti, app_id, new_exp).await?;
        sqlx::query(GIVE_BACK)
            .bind(old_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unuse_refresh_on(
        &self,
        pool: &sqlx::AnyPool,
        token_sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(GIVE_BACK)
            .bind(token_sha256)
            .execute(pool)
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
        let rows = sqlx::query(FAMILY_TOKENS)
            .bind(family)
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("exp")?)))
            .collect()
    }
}
