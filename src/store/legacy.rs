//! Credentials carried over from JWTPlus (migration 0012): the SHA-512 digests of the root
//! key and of each app's key, accepted until the credential is rotated, then dropped.

use sqlx::Row as _;

use super::{Store, StoreError, Tx};

/// Setting holding the SHA-512 (hex) of the JWTPlus root key, until the root key rotates.
pub const LEGACY_ROOT_SETTING: &str = "root_key_legacy_sha512";
/// Setting recording the JWTPlus root-key digest a migration kept (never dropped), so that
/// a second run does not bring back a key rotated since.
pub const MIGRATED_ROOT_SETTING: &str = "migrated_jwtplus_root_sha512";

impl Store {
    /// The app whose JWTPlus app key has this SHA-512 (hex) digest, while it is accepted.
    ///
    /// # Errors
    /// Database failures.
    pub async fn app_by_legacy_key(&self, sha512_hex: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT id FROM apps WHERE legacy_key_sha512 = $1")
            .bind(sha512_hex)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Keep an app's JWTPlus app-key digest as a legacy credential (inside `tx`).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_legacy_app_key(
        &self,
        tx: &mut Tx,
        app_id: &str,
        sha512_hex: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE apps SET legacy_key_sha512 = $1 WHERE id = $2")
            .bind(sha512_hex)
            .bind(app_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Keep the JWTPlus root-key digest as a legacy credential (inside `tx`), replacing
    /// any earlier one, and record that it was kept ([`MIGRATED_ROOT_SETTING`]).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_legacy_root_key(
        &self,
        tx: &mut Tx,
        sha512_hex: &str,
    ) -> Result<(), StoreError> {
        for key in [LEGACY_ROOT_SETTING, MIGRATED_ROOT_SETTING] {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(sha512_hex)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Stop accepting the JWTPlus root key (inside the root-key rotation's `tx`). Returns
    /// whether there was one.
    ///
    /// # Errors
    /// Database failures.
    pub async fn drop_legacy_root_key(&self, tx: &mut Tx) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(LEGACY_ROOT_SETTING)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_store_refuses_a_mysql_url_without_connecting() {
        let e = Store::connect("mysql://jp:s3cret@127.0.0.1:1/jwtplus")
            .await
            .expect_err("MySQL is not a store engine");
        let m = e.to_string();
        assert!(matches!(e, StoreError::Unsupported(_)), "{m}");
        assert!(
            m.contains("migrate jwtplus") && !m.contains("s3cret"),
            "{m}"
        );
    }
}
