//! Apps: policy, access-token digest, cut-off.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, Tx, opt_i64};
use crate::alg::Algorithm;

/// An app as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    /// ULID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text (JWTPlus `description`).
    pub description: String,
    /// Algorithm of future keys.
    pub signing_alg: Algorithm,
    /// RSA modulus bits of future keys (0 for non-RSA).
    pub rsa_bits: u32,
    /// Seconds between scheduled rotations.
    pub rotation_period: i64,
    /// Seconds a key keeps verifying after it stopped signing.
    pub verification_ttl: i64,
    /// Longest access-token lifetime, seconds.
    pub token_ttl: i64,
    /// Seconds from issuance to `nbf` (JWTPlus `token_notbefore`).
    pub token_nbf: i64,
    /// Refresh-token lifetime, seconds (0: no refresh tokens).
    pub refresh_ttl: i64,
    /// Seconds from issuance until a refresh token may be used.
    pub refresh_nbf: i64,
    /// Certificate subject.
    pub subject_dn: String,
    /// Creation time.
    pub created_at: i64,
    /// Last policy change.
    pub updated_at: i64,
    /// Tokens whose jti sorts below this ULID are rejected.
    pub cutoff: Option<String>,
    /// Last rotation of any kind.
    pub last_rotated_at: Option<i64>,
    /// SHA-256 (hex) of the current access token.
    pub access_token_sha256: String,
    /// New tokens carry a Token Status List `status` claim (issue 24).
    pub status_list: bool,
    /// Migrated from JWTPlus: the app's name there, the `iss` of the tokens JWTPlus issued
    /// (see [`crate::jwt::legacy`]).
    pub legacy_issuer: Option<String>,
}

/// A policy change (every field replaced).
#[derive(Debug, Clone)]
pub struct AppPolicy {
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Algorithm of future keys.
    pub signing_alg: Algorithm,
    /// RSA bits of future keys.
    pub rsa_bits: u32,
    /// Rotation period.
    pub rotation_period: i64,
    /// Verification TTL.
    pub verification_ttl: i64,
    /// Token TTL.
    pub token_ttl: i64,
    /// Token nbf offset.
    pub token_nbf: i64,
    /// Refresh TTL.
    pub refresh_ttl: i64,
    /// Refresh nbf offset.
    pub refresh_nbf: i64,
    /// Certificate subject.
    pub subject_dn: String,
    /// New tokens carry a `status` claim.
    pub status_list: bool,
}

macro_rules! app_cols {
    () => {
        "id, name, description, signing_alg, rsa_bits, rotation_period, verification_ttl, token_ttl, token_nbf, refresh_ttl, refresh_nbf, subject_dn, created_at, updated_at, cutoff, last_rotated_at, access_token_sha256, status_list, legacy_issuer"
    };
}

fn app_from_row(r: &AnyRow) -> Result<AppRow, StoreError> {
    let alg: String = r.try_get("signing_alg")?;
    Ok(AppRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        signing_alg: alg
            .parse()
            .map_err(|_| StoreError::corrupt(format!("app algorithm {alg:?}")))?,
        rsa_bits: u32::try_from(r.try_get::<i64, _>("rsa_bits")?).unwrap_or(0),
        rotation_period: r.try_get("rotation_period")?,
        verification_ttl: r.try_get("verification_ttl")?,
        token_ttl: r.try_get("token_ttl")?,
        token_nbf: r.try_get("token_nbf")?,
        refresh_ttl: r.try_get("refresh_ttl")?,
        refresh_nbf: r.try_get("refresh_nbf")?,
        subject_dn: r.try_get("subject_dn")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        cutoff: r.try_get("cutoff")?,
        last_rotated_at: opt_i64(r, "last_rotated_at")?,
        access_token_sha256: r.try_get("access_token_sha256")?,
        status_list: r.try_get::<i64, _>("status_list")? != 0,
        legacy_issuer: r.try_get("legacy_issuer")?,
    })
}

impl Store {
    /// Insert a new app (inside the caller's transaction).
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_app(&self, tx: &mut Tx, a: &AppRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO apps (id, name, description, signing_alg, rsa_bits, rotation_period, \
             verification_ttl, token_ttl, token_nbf, refresh_ttl, refresh_nbf, subject_dn, \
             access_token_sha256, created_at, updated_at, cutoff, last_rotated_at, status_list, \
             legacy_issuer) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.description)
        .bind(a.signing_alg.as_str())
        .bind(i64::from(a.rsa_bits))
        .bind(a.rotation_period)
        .bind(a.verification_ttl)
        .bind(a.token_ttl)
        .bind(a.token_nbf)
        .bind(a.refresh_ttl)
        .bind(a.refresh_nbf)
        .bind(&a.subject_dn)
        .bind(&a.access_token_sha256)
        .bind(a.created_at)
        .bind(a.updated_at)
        .bind(&a.cutoff)
        .bind(a.last_rotated_at)
        .bind(i64::from(a.status_list))
        .bind(&a.legacy_issuer)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One app.
    ///
    /// # Errors
    /// Database failures.
    pub async fn app(&self, id: &str) -> Result<Option<AppRow>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", app_cols!(), " FROM apps WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(app_from_row).transpose()
    }

    /// Every app, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn apps(&self) -> Result<Vec<AppRow>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", app_cols!(), " FROM apps ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(app_from_row).collect()
    }

    /// The app whose access token has this SHA-256 (hex).
    ///
    /// # Errors
    /// Database failures.
    pub async fn app_by_token(&self, sha256_hex: &str) -> Result<Option<AppRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            app_cols!(),
            " FROM apps WHERE access_token_sha256 = $1"
        ))
        .bind(sha256_hex)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(app_from_row).transpose()
    }

    /// Replace an app's policy; returns whether the app exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn update_app(
        &self,
        tx: &mut Tx,
        id: &str,
        p: &AppPolicy,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE apps SET name = $1, description = $2, signing_alg = $3, rsa_bits = $4, \
             rotation_period = $5, verification_ttl = $6, token_ttl = $7, token_nbf = $8, \
             refresh_ttl = $9, refresh_nbf = $10, subject_dn = $11, updated_at = $12, \
             status_list = $14 WHERE id = $13",
        )
        .bind(&p.name)
        .bind(&p.description)
        .bind(p.signing_alg.as_str())
        .bind(i64::from(p.rsa_bits))
        .bind(p.rotation_period)
        .bind(p.verification_ttl)
        .bind(p.token_ttl)
        .bind(p.token_nbf)
        .bind(p.refresh_ttl)
        .bind(p.refresh_nbf)
        .bind(&p.subject_dn)
        .bind(now)
        .bind(id)
        .bind(i64::from(p.status_list))
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Replace an app's access-token digest; returns whether the app exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_access_token(
        &self,
        tx: &mut Tx,
        id: &str,
        sha256_hex: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r =
            // A new access token also ends the app key it had in JWTPlus (migration 0012).
            sqlx::query("UPDATE apps SET access_token_sha256 = $1, updated_at = $2, legacy_key_sha512 = NULL WHERE id = $3")
                .bind(sha256_hex)
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Set an app's cut-off (every token whose jti sorts below it is rejected).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_cutoff(
        &self,
        tx: &mut Tx,
        id: &str,
        cutoff: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE apps SET cutoff = $1 WHERE id = $2")
            .bind(cutoff)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record a rotation time.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_rotated(&self, tx: &mut Tx, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE apps SET last_rotated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Record that the app's JWKS was served at `at` (never moves the record back).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_jwks_served(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE apps SET jwks_served_at = $1 WHERE id = $2 AND (jwks_served_at IS NULL OR jwks_served_at < $1)",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Delete an app row and its ledger, refresh and deny-list rows (its keys were revoked
    /// by the caller in the same transaction and keep their rows for the audit trail).
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_app(&self, tx: &mut Tx, id: &str) -> Result<bool, StoreError> {
        for sql in [
            concat!(
                "DELETE FROM tokens WHERE slot IN ",
                ledger_slots!(),
                " AND app_key = ",
                app_key_of!("$1"),
                " AND app_id = $1"
            ),
            "DELETE FROM refresh_tokens WHERE app_id = $1",
            "DELETE FROM denied_jti WHERE app_id = $1",
            "DELETE FROM subject_cutoffs WHERE app_id = $1",
            "DELETE FROM status_lists WHERE app_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut **tx).await?;
        }
        let r = sqlx::query("DELETE FROM apps WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
