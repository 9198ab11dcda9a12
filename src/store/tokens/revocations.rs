//! The jti deny-list, cut-offs from the database's clock, and subject cut-offs.

use sqlx::Row as _;

use crate::store::{Store, StoreError, Tx};

impl Store {
    /// A revocation cut-off taken from the database's clock inside `tx` (flush, logout,
    /// emergency rotation): every token id stamped up to this millisecond sorts below it.
    /// Replicas stamp token ids on the database's clock too
    /// ([`crate::clock::DatabaseClock`]), so which tokens it ends does not depend on the
    /// clock of the replica that sets it or of the ones that issued them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn cutoff_in(&self, tx: &mut Tx) -> Result<ulid::Ulid, StoreError> {
        let ms = self.clock_ms_in(tx).await?;
        let ms = u64::try_from(ms.saturating_add(1)).unwrap_or(0);
        Ok(ulid::Ulid::from_parts(ms, 0))
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
}
