//! Revocation: one key, or every key of an app at once (emergency rotation), with the
//! tokens they signed cut off.

use tracing::{instrument, warn};

use super::{EmergencyRotation, KeyError, KeyService, Revocation, find};
use crate::alg::KeySpec;
use crate::keys::{KeyState, Kid, token_ulid_after};
use crate::store::KeyRow;

impl KeyService {
    /// Revoke one key. Revoking `current` promotes `next`; a spare becomes the new `next`.
    ///
    /// # Errors
    /// [`KeyError::KeyNotFound`], [`KeyError::InvalidState`] for a retired or revoked key.
    #[instrument(skip(self), fields(kid = %kid))]
    pub async fn revoke_key(&self, app_id: &str, kid: Kid) -> Result<Revocation, KeyError> {
        let _guard = self.lock_app(app_id).await;
        let app = self
            .inner
            .store
            .app(app_id)
            .await?
            .ok_or(KeyError::AppNotFound)?;
        let spec = KeySpec::new(app.signing_alg, app.rsa_bits);
        let store = &self.inner.store;
        let mut tries = self.spare_tries(spec, 1);
        let (revoked_tokens, affected_subjects, now) = loop {
            let now = tries.next().await?;
            let (revoked_tokens, affected_subjects) = store
                .live_token_counts(app_id, &[kid.to_string()], now)
                .await?;
            let mut tx = store.begin().await?;
            if !store.lock_app(&mut tx, app_id).await? {
                return Err(KeyError::AppNotFound);
            }
            let keys = store.app_keys_tx(&mut tx, app_id).await?;
            let target = keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or(KeyError::KeyNotFound)?
                .clone();
            if !target.state.verifies() {
                return Err(KeyError::InvalidState(format!(
                    "key is already {}",
                    target.state
                )));
            }
            // Revoking the signing key promotes `next` however young (the key being revoked
            // must stop signing now); the audit record says when that was early.
            let promoted_early = match (target.state, find(&keys, KeyState::Next)) {
                (KeyState::Current, Some(n)) if now < self.signs_from(n) => {
                    Some(now - n.published_at.unwrap_or(n.created_at))
                }
                _ => None,
            };
            store
                .transition_key(&mut tx, kid, target.state, KeyState::Revoked, now)
                .await?;
            store
                .revoke_key_refresh(&mut tx, app_id, &kid.to_string(), now)
                .await?;
            let refilled = match target.state {
                KeyState::Current => {
                    let promoted = match find(&keys, KeyState::Next) {
                        Some(n) => {
                            store
                                .transition_key(
                                    &mut tx,
                                    n.kid,
                                    KeyState::Next,
                                    KeyState::Current,
                                    now,
                                )
                                .await?
                        }
                        None => store
                            .take_spare(&mut tx, spec, app_id, KeyState::Current, now)
                            .await?
                            .is_some(),
                    };
                    promoted
                        && store
                            .take_spare(&mut tx, spec, app_id, KeyState::Next, now)
                            .await?
                            .is_some()
                }
                KeyState::Next => store
                    .take_spare(&mut tx, spec, app_id, KeyState::Next, now)
                    .await?
                    .is_some(),
                _ => true,
            };
            if !refilled {
                continue;
            }
            store.set_rotated(&mut tx, app_id, now).await?;
            let mut details = serde_json::json!({"app_id": app_id, "was": target.state.as_str(), "revoked_tokens": revoked_tokens, "affected_subjects": affected_subjects});
            if let Some(age) = promoted_early {
                details["early"] = true.into();
                details["promoted_age"] = age.into();
            }
            self.inner
                .audit
                .record_in(&mut tx, "key.revoke", &kid.to_string(), "ok", details)
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            break tries.done((revoked_tokens, affected_subjects, now));
        };
        self.inner.registry.withdraw(&[kid]);
        crate::metrics::revocation("key");
        self.finish(app_id, vec![kid]).await;
        warn!(app_id, %kid, revoked_tokens, "key revoked");
        let view = store.app_keys(app_id).await?;
        Ok(Revocation {
            revoked: view.iter().filter(|k| k.kid == kid).cloned().collect(),
            current: find(&view, KeyState::Current).cloned(),
            next: find(&view, KeyState::Next).cloned(),
            revoked_tokens,
            affected_subjects,
            revoked_at: now,
        })
    }

    /// Emergency rotation: every key of the app revoked and destroyed, new current and
    /// next keys, and a cut-off so that every token issued so far is rejected.
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; store or HSM failures.
    #[instrument(skip(self))]
    pub async fn emergency_rotate(&self, app_id: &str) -> Result<EmergencyRotation, KeyError> {
        let _guard = self.lock_app(app_id).await;
        let app = self
            .inner
            .store
            .app(app_id)
            .await?
            .ok_or(KeyError::AppNotFound)?;
        let spec = KeySpec::new(app.signing_alg, app.rsa_bits);
        let store = &self.inner.store;
        let mut tries = self.spare_tries(spec, 2);
        let (revoked, current, next, cutoff, revoked_tokens, affected_subjects, now) = loop {
            let now = tries.next().await?;
            let live: Vec<KeyRow> = store
                .app_keys(app_id)
                .await?
                .into_iter()
                .filter(|k| k.state.verifies())
                .collect();
            let kid_strings: Vec<String> = live.iter().map(|k| k.kid.to_string()).collect();
            let (revoked_tokens, affected_subjects) =
                store.live_token_counts(app_id, &kid_strings, now).await?;
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
            let Some(current) = store
                .take_spare(&mut tx, spec, app_id, KeyState::Current, now)
                .await?
            else {
                continue;
            };
            let Some(next) = store
                .take_spare(&mut tx, spec, app_id, KeyState::Next, now)
                .await?
            else {
                continue;
            };
            let cutoff = store.cutoff_in(&mut tx).await?;
            store
                .set_cutoff(&mut tx, app_id, &cutoff.to_string())
                .await?;
            store.revoke_app_refresh(&mut tx, app_id, now).await?;
            store.set_rotated(&mut tx, app_id, now).await?;
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "key.emergency_rotate",
                    app_id,
                    "ok",
                    serde_json::json!({"revoked_kids": revoked.iter().map(ToString::to_string).collect::<Vec<_>>(), "revoked_tokens": revoked_tokens, "affected_subjects": affected_subjects, "current": current.kid.to_string(), "next": next.kid.to_string()}),
                )
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            break tries.done((
                revoked,
                current,
                next,
                cutoff,
                revoked_tokens,
                affected_subjects,
                now,
            ));
        };
        token_ulid_after(cutoff);
        self.inner.registry.withdraw(&revoked);
        self.inner
            .registry
            .patch_app(app_id, |a| a.cutoff = Some(cutoff.to_string()));
        crate::metrics::rotation("emergency");
        self.finish(app_id, revoked.clone()).await;
        warn!(
            app_id,
            revoked = revoked.len(),
            revoked_tokens,
            "emergency rotation"
        );
        let view = store.app_keys(app_id).await?;
        Ok(EmergencyRotation {
            revoked: view
                .iter()
                .filter(|k| revoked.contains(&k.kid))
                .cloned()
                .collect(),
            current,
            next,
            revoked_tokens,
            affected_subjects,
            revoked_at: now,
        })
    }
}
