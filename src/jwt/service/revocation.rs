//! Revocation: one token (RFC 7009), a subject's logout, an app's flush, and sessions.

use serde_json::Value;
use ulid::Ulid;

use super::{TokenError, TokenService};
use crate::auth::digest;
use crate::jwt::Issuers;
use crate::keys::token_ulid_after;
use crate::store::{AppRow, SessionRow};

impl TokenService {
    /// RFC 7009: deny-list a token of `app` (a refresh token revokes its family). Unknown or
    /// invalid tokens are ignored, as the RFC says.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke(
        &self,
        app: &AppRow,
        issuers: &Issuers,
        token: &str,
    ) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let now = self.now();
        let hash = digest(token.trim());
        let verified = self.verify(app, issuers, token).await;
        let mut tx = store.begin().await?;
        if let Some(r) = store.refresh(&mut tx, &hash).await?
            && r.app_id == app.id
        {
            let denied = store.revoke_family(&mut tx, &r.family, now).await?;
            for (jti, exp) in &denied {
                store.deny_jti(&mut tx, jti, &app.id, *exp).await?;
            }
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "token.revoke",
                    &app.id,
                    "ok",
                    serde_json::json!({"refresh_family": r.family}),
                )
                .await?;
            self.commit_denials(tx, denied).await?;
            crate::metrics::revocation("token");
            return Ok(());
        }
        let Ok(claims) = verified else {
            return Ok(());
        };
        let (Some(jti), Some(exp)) = (
            claims.get("jti").and_then(Value::as_str),
            claims.get("exp").and_then(Value::as_i64),
        ) else {
            return Ok(());
        };
        store.deny_jti(&mut tx, jti, &app.id, exp).await?;
        self.inner
            .audit
            .record_in(
                &mut tx,
                "token.revoke",
                &app.id,
                "ok",
                serde_json::json!({"jti": jti}),
            )
            .await?;
        self.commit_denials(tx, vec![(jti.to_owned(), exp)]).await?;
        crate::metrics::revocation("token");
        Ok(())
    }

    /// Log a subject out everywhere: every token of `sub` issued so far is rejected and its
    /// refresh tokens revoked. "So far" is read from the database's clock (see
    /// [`crate::store::Store::cutoff_in`]), the same for every replica.
    ///
    /// # Errors
    /// Store failures.
    pub async fn logout_subject(&self, app: &AppRow, sub: &str) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let now = self.now();
        let sub_hash = digest(sub);
        let until = now + app.token_ttl.max(app.refresh_ttl) + 1;
        let mut tx = store.begin().await?;
        let cutoff = store.cutoff_in(&mut tx).await?;
        store
            .set_subject_cutoff(&mut tx, &app.id, &sub_hash, &cutoff.to_string(), until)
            .await?;
        store
            .revoke_subject_refresh(&mut tx, &app.id, &sub_hash, now)
            .await?;
        self.inner
            .audit
            .record_in(
                &mut tx,
                "subject.logout",
                &app.id,
                "ok",
                serde_json::json!({"sub_sha256": sub_hash}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        token_ulid_after(cutoff);
        self.inner
            .registry
            .subject_logged_out(&app.id, &sub_hash, cutoff)
            .await;
        crate::metrics::revocation("subject");
        Ok(())
    }

    /// Reject every token of the app issued so far.
    ///
    /// # Errors
    /// Store failures.
    pub async fn flush(&self, app: &AppRow) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let mut tx = store.begin().await?;
        let cutoff = store.cutoff_in(&mut tx).await?;
        store
            .set_cutoff(&mut tx, &app.id, &cutoff.to_string())
            .await?;
        store
            .revoke_app_refresh(&mut tx, &app.id, self.now())
            .await?;
        self.inner
            .audit
            .record_in(&mut tx, "app.flush", &app.id, "ok", serde_json::json!({}))
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        token_ulid_after(cutoff);
        self.inner
            .registry
            .patch_app(&app.id, |a| a.cutoff = Some(cutoff.to_string()));
        crate::metrics::revocation("app");
        let registry = self.inner.registry.clone();
        let id = app.id.clone();
        let _ = tokio::spawn(async move { registry.app_changed(&id).await }).await;
        Ok(())
    }

    /// A subject's live sessions, from the ledger, without revoked ones.
    ///
    /// # Errors
    /// Store failures.
    pub async fn sessions(&self, app: &AppRow, sub: &str) -> Result<Vec<SessionRow>, TokenError> {
        let sub_hash = digest(sub);
        let rows = self
            .inner
            .store
            .sessions(&app.id, &sub_hash, self.now())
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| {
                Ulid::from_string(&r.jti).is_ok_and(|j| !self.cut_off(app, Some(&sub_hash), j))
                    && !self.inner.registry.is_denied(&r.jti)
            })
            .collect())
    }

    /// Log one session out: deny-list its access token and revoke its refresh family.
    ///
    /// # Errors
    /// Store failures.
    pub async fn end_session(&self, app: &AppRow, jti: &str) -> Result<bool, TokenError> {
        let store = &self.inner.store;
        let Some(row) = store.ledger_row(jti).await? else {
            return Ok(false);
        };
        if row.app_id != app.id {
            return Ok(false);
        }
        let now = self.now();
        let mut tx = store.begin().await?;
        store.deny_jti(&mut tx, &row.jti, &app.id, row.exp).await?;
        let mut denied = vec![(row.jti.clone(), row.exp)];
        if let Some(f) = &row.family {
            for (j, e) in store.revoke_family(&mut tx, f, now).await? {
                store.deny_jti(&mut tx, &j, &app.id, e).await?;
                denied.push((j, e));
            }
        }
        self.inner
            .audit
            .record_in(
                &mut tx,
                "session.end",
                &app.id,
                "ok",
                serde_json::json!({"jti": jti}),
            )
            .await?;
        self.commit_denials(tx, denied).await?;
        crate::metrics::revocation("token");
        Ok(true)
    }
}
