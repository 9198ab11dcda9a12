//! App CRUD and credentials: creating an app with its first keys, changing its policy,
//! deleting it, and replacing its access token or the root key.

use tracing::{info, instrument, warn};

use super::{CreatedApp, KeyError, KeyService};
use crate::alg::KeySpec;
use crate::auth::{ACCESS_PREFIX, Secret};
use crate::hsm::HsmError;
use crate::keys::{KeyState, Kid, token_ulid_after};
use crate::store::{AppPolicy, AppRow};

impl KeyService {
    /// Create an app with a current and a next key from the spare pool.
    ///
    /// # Errors
    /// Store or HSM failures.
    #[instrument(skip(self, app), fields(name = %app.name))]
    pub async fn create_app(&self, mut app: AppRow) -> Result<CreatedApp, KeyError> {
        let spec = KeySpec::new(app.signing_alg, app.rsa_bits);
        // Refused before anything is written: the token cannot make these keys.
        self.inner.hsm.check(spec).map_err(HsmError::from)?;
        let token = Secret::generate(ACCESS_PREFIX);
        app.access_token_sha256 = token.digest();
        let mut tries = self.spare_tries(spec, 2);
        let (current, next) = loop {
            let now = tries.next().await?;
            app.created_at = now;
            app.updated_at = now;
            app.last_rotated_at = Some(now);
            let mut tx = self.inner.store.begin().await?;
            self.inner.store.insert_app(&mut tx, &app).await?;
            let Some(current) = self
                .inner
                .store
                .take_spare(&mut tx, spec, &app.id, KeyState::Current, now)
                .await?
            else {
                continue;
            };
            let Some(next) = self
                .inner
                .store
                .take_spare(&mut tx, spec, &app.id, KeyState::Next, now)
                .await?
            else {
                continue;
            };
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "app.create",
                    &app.id,
                    "ok",
                    serde_json::json!({"name": app.name, "signing_alg": app.signing_alg.as_str(), "current": current.kid.to_string(), "next": next.kid.to_string()}),
                )
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            break tries.done((current, next));
        };
        self.finish(&app.id, Vec::new()).await;
        info!(app_id = %app.id, current = %current.kid, next = %next.kid, "app created");
        let keys = self.inner.store.app_keys(&app.id).await?;
        Ok(CreatedApp {
            app,
            access_token: token,
            keys: keys
                .into_iter()
                .filter(|k| k.kid == current.kid || k.kid == next.kid)
                .collect(),
        })
    }

    /// Replace an app's policy.
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; [`HsmError::Algorithm`] when the key spec changes to one
    /// the token cannot make; store failures.
    pub async fn update_app(&self, app_id: &str, policy: &AppPolicy) -> Result<AppRow, KeyError> {
        let spec = KeySpec::new(policy.signing_alg, policy.rsa_bits);
        let unchanged = self
            .inner
            .registry
            .app(app_id)
            .is_some_and(|a| KeySpec::new(a.signing_alg, a.rsa_bits) == spec);
        if !unchanged {
            self.inner.hsm.check(spec).map_err(HsmError::from)?;
        }
        let mut tx = self.inner.store.begin().await?;
        if !self
            .inner
            .store
            .update_app(&mut tx, app_id, policy, self.now())
            .await?
        {
            return Err(KeyError::AppNotFound);
        }
        tx.commit().await?;
        self.inner.registry.app_changed(app_id).await;
        self.inner.spares.wake();
        self.inner
            .registry
            .app(app_id)
            .map(|a| (*a).clone())
            .ok_or(KeyError::AppNotFound)
    }

    /// Delete an app: every key revoked and destroyed, its tokens rejected.
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; store failures.
    #[instrument(skip(self))]
    pub async fn delete_app(&self, app_id: &str) -> Result<Vec<Kid>, KeyError> {
        let _guard = self.lock_app(app_id).await;
        let store = &self.inner.store;
        let now = self.now();
        let mut tx = store.begin().await?;
        if !store.lock_app(&mut tx, app_id).await? {
            return Err(KeyError::AppNotFound);
        }
        let keys = store.app_keys_tx(&mut tx, app_id).await?;
        let mut revoked = Vec::new();
        for k in keys.iter().filter(|k| k.state.verifies()) {
            store
                .transition_key(&mut tx, k.kid, k.state, KeyState::Revoked, now)
                .await?;
            revoked.push(k.kid);
        }
        store.delete_app(&mut tx, app_id).await?;
        self.inner
            .audit
            .record_in(&mut tx, "app.delete", app_id, "ok", serde_json::json!({"revoked_kids": revoked.iter().map(ToString::to_string).collect::<Vec<_>>()}))
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        self.inner.registry.withdraw(&revoked);
        self.finish(app_id, revoked.clone()).await;
        self.inner.app_locks.lock().await.remove(app_id);
        if let Ok(mut m) = self.inner.served.write() {
            m.remove(app_id);
        }
        warn!(app_id, revoked = revoked.len(), "app deleted");
        Ok(revoked)
    }

    /// New access token for an app; the old one stops working at once. With `flush`, every
    /// token issued so far is rejected too (PocketPaw's regenerate).
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; store failures.
    pub async fn regenerate_access_token(
        &self,
        app_id: &str,
        flush: bool,
    ) -> Result<Secret, KeyError> {
        let token = Secret::generate(ACCESS_PREFIX);
        let store = &self.inner.store;
        let now = self.now();
        let mut tx = store.begin().await?;
        if !store
            .set_access_token(&mut tx, app_id, &token.digest(), now)
            .await?
        {
            return Err(KeyError::AppNotFound);
        }
        let cutoff = if flush {
            let c = store.cutoff_in(&mut tx).await?;
            store.set_cutoff(&mut tx, app_id, &c.to_string()).await?;
            store.revoke_app_refresh(&mut tx, app_id, now).await?;
            Some(c)
        } else {
            None
        };
        self.inner
            .audit
            .record_in(
                &mut tx,
                "app.access_token_regenerate",
                app_id,
                "ok",
                serde_json::json!({"sessions_rejected": flush}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        if let Some(c) = cutoff {
            token_ulid_after(c);
        }
        let digest = token.digest();
        self.inner.registry.patch_app(app_id, |a| {
            a.access_token_sha256 = digest;
            if let Some(c) = cutoff {
                a.cutoff = Some(c.to_string());
            }
        });
        let registry = self.inner.registry.clone();
        let id = app_id.to_owned();
        let _ = tokio::spawn(async move { registry.app_changed(&id).await }).await;
        info!(app_id, flush, "access token regenerated");
        Ok(token)
    }

    /// Replace the root key; the old one stops working at once. `old_digest` is the digest
    /// the caller authenticated with, so two concurrent rotations cannot both win.
    ///
    /// # Errors
    /// [`KeyError::InvalidState`] if the root key changed meanwhile; store failures.
    pub async fn rotate_root_key(&self, old_digest: &str) -> Result<Secret, KeyError> {
        let new = Secret::generate(crate::auth::ROOT_PREFIX);
        let setting = crate::keys::registry::ROOT_SETTING;
        let mut tx = self.inner.store.begin().await?;
        if !self
            .inner
            .store
            .swap_setting_tx(&mut tx, setting, old_digest, &new.digest())
            .await?
        {
            return Err(KeyError::InvalidState(
                "the root key changed meanwhile".into(),
            ));
        }
        // The JWTPlus root key carried over by `migrate jwtplus` ends here too.
        let legacy = self.inner.store.drop_legacy_root_key(&mut tx).await?;
        self.inner
            .audit
            .record_in(
                &mut tx,
                "root.rotate",
                "root",
                "ok",
                serde_json::json!({"legacy_key_dropped": legacy}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        let registry = self.inner.registry.clone();
        let digest = new.digest();
        let _ = tokio::spawn(async move { registry.root_changed(digest).await }).await;
        warn!("root key rotated");
        Ok(new)
    }
}
