//! Rotation: graceful (manual, scheduled, repair) rotation and its guard on young `next`
//! keys, the schedule, and retiring `previous` keys whose verification window closed.

use std::sync::atomic::Ordering;

use tracing::{info, instrument, warn};

use super::{Early, KeyError, KeyService, Rotation, RotationKind, find};
use crate::alg::KeySpec;
use crate::hsm::HsmError;
use crate::keys::{KeyState, Kid};
use crate::store::{AppPolicy, KeyRow, Tx};

impl KeyService {
    /// Retire every `previous` key whose verification window has closed: state `retired`,
    /// objects destroyed. Returns the kids retired.
    ///
    /// # Errors
    /// Store failures.
    pub async fn retire_expired(&self) -> Result<Vec<Kid>, KeyError> {
        let now = self.now();
        let due = self.inner.store.previous_keys_due(now).await?;
        let mut retired = Vec::new();
        for (app_id, kid) in due {
            let _guard = self.lock_app(&app_id).await;
            let mut tx = self.inner.store.begin().await?;
            let moved = self
                .inner
                .store
                .transition_key(&mut tx, kid, KeyState::Previous, KeyState::Retired, now)
                .await?;
            if moved {
                self.inner
                    .audit
                    .record_in(
                        &mut tx,
                        "key.retire",
                        &kid.to_string(),
                        "ok",
                        serde_json::json!({"app_id": app_id}),
                    )
                    .await?;
            }
            tx.commit().await?;
            if moved {
                self.inner.audit.committed();
                self.inner.registry.app_changed(&app_id).await;
                self.destroy_objects(&[kid]).await;
                info!(app_id, %kid, "key retired");
                retired.push(kid);
            }
        }
        Ok(retired)
    }

    /// Apps whose current key has served its rotation period (or, imported, its
    /// `imported_key_max_life`).
    pub fn apps_due(&self) -> Vec<String> {
        let now = self.now();
        self.inner
            .registry
            .apps()
            .iter()
            .filter(|app| self.next_rotation_at(&app.id).is_some_and(|t| t <= now))
            .map(|app| app.id.clone())
            .collect()
    }

    /// When the app's next scheduled rotation is due: its current key's activation plus
    /// the rotation period, brought forward for an imported current key to its import plus
    /// `imported_key_max_life`, so that software-born keys leave on their own. `None`
    /// without a current key.
    pub fn next_rotation_at(&self, app_id: &str) -> Option<i64> {
        let app = self.inner.registry.app(app_id)?;
        let cur = self.inner.registry.current(app_id)?;
        let activated = cur.row.activated_at.unwrap_or_else(|| self.now());
        let due = activated.saturating_add(app.rotation_period);
        Some(match cur.row.origin {
            crate::store::KeyOrigin::Imported => due.min(
                cur.row
                    .created_at
                    .saturating_add(self.inner.imported_max_life),
            ),
            crate::store::KeyOrigin::Generated => due,
        })
    }

    /// Graceful rotation: next → current, current → previous, a spare → next.
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; store or HSM failures.
    pub async fn rotate(&self, app_id: &str, kind: RotationKind) -> Result<Rotation, KeyError> {
        self.rotate_with(app_id, kind, None, Early::Refuse).await
    }

    /// From when `next` may sign without a verifier lacking it (Unix seconds).
    pub fn signs_from(&self, next: &KeyRow) -> i64 {
        crate::keys::policy::signs_from(
            next.published_at.unwrap_or(next.created_at),
            next.served_at_publish,
            self.inner.min_next_age,
        )
    }

    /// From when the app's `next` key may sign, by the in-memory registry (`None`: the app
    /// has no `next` key). A time in the past means a rotation is safe now.
    pub fn rotation_safe_at(&self, app_id: &str) -> Option<i64> {
        self.inner
            .registry
            .published(app_id)
            .iter()
            .find(|k| k.row.state == KeyState::Next)
            .map(|k| self.signs_from(&k.row))
    }

    /// Note that the app's JWKS was served now. The store keeps the time (the rotation
    /// guard reads it when a key is published, on any replica), written at most once per
    /// [`crate::keys::policy::served_record_every`] per app by this process: the JWKS route is
    /// public and serves tens of thousands of requests a second, so it must not write each
    /// one. The write is awaited, so a client that saw the response can rely on the
    /// record; other serves in between return without waiting for it
    /// ([`crate::keys::policy::served_slack`] covers them).
    pub async fn jwks_served(&self, app_id: &str) {
        let now = self.now();
        let known = self
            .inner
            .served
            .read()
            .ok()
            .and_then(|m| m.get(app_id).cloned());
        let slot = match known {
            Some(s) => s,
            None => match self.inner.served.write() {
                Ok(mut m) => m.entry(app_id.to_owned()).or_default().clone(),
                Err(_) => return,
            },
        };
        let last = slot.load(Ordering::Acquire);
        let every = crate::keys::policy::served_record_every(self.inner.min_next_age);
        if now < last.saturating_add(every)
            || slot
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.inner.store.set_jwks_served(app_id, now).await {
            // Unrecorded, a later publication could be judged safe too soon: retry on the
            // next serve.
            let _ = slot.compare_exchange(now, last, Ordering::AcqRel, Ordering::Acquire);
            warn!(app_id, error = %e, "could not record a JWKS serve");
        }
    }

    /// Graceful rotation that first gives the app a new policy (Auth0's `signing_alg`:
    /// the new `next` key is of the new algorithm), in the rotation's transaction: a
    /// refused rotation leaves the policy as it was. `early` says what to do when the
    /// `next` key may not sign yet.
    ///
    /// # Errors
    /// As [`Self::rotate`]; [`KeyError::TooSoon`] only with [`Early::Refuse`].
    #[instrument(skip(self, policy))]
    pub async fn rotate_with(
        &self,
        app_id: &str,
        kind: RotationKind,
        policy: Option<&AppPolicy>,
        early: Early,
    ) -> Result<Rotation, KeyError> {
        let _guard = self.lock_app(app_id).await;
        let app = self
            .inner
            .store
            .app(app_id)
            .await?
            .ok_or(KeyError::AppNotFound)?;
        let spec = match policy {
            Some(p) => KeySpec::new(p.signing_alg, p.rsa_bits),
            None => KeySpec::new(app.signing_alg, app.rsa_bits),
        };
        // Refused whether or not a spare is left: a spare made before the token lost the
        // algorithm could not sign either.
        self.inner.hsm.check(spec).map_err(HsmError::from)?;
        let mut tries = self.spare_tries(spec, 1);
        let (outcome, metric) = loop {
            let now = tries.next().await?;
            let mut tx = self.inner.store.begin().await?;
            if !self.inner.store.lock_app(&mut tx, app_id).await? {
                return Err(KeyError::AppNotFound);
            }
            let keys = self.inner.store.app_keys_tx(&mut tx, app_id).await?;
            // Set when a young `next` key is promoted anyway: what the audit record says.
            let mut promoted_early = None;
            if kind != RotationKind::Repair
                && let Some(next) = find(&keys, KeyState::Next)
            {
                let age = now - next.published_at.unwrap_or(next.created_at);
                let safe_at = self.signs_from(next);
                if now < safe_at {
                    match early {
                        Early::Refuse => {
                            return Err(KeyError::TooSoon {
                                age,
                                min: self.inner.min_next_age,
                                retry_after: safe_at - now,
                            });
                        }
                        Early::Allow(by) => promoted_early = Some((age, safe_at - now, by)),
                    }
                }
            }
            if let Some(p) = policy {
                self.inner.store.update_app(&mut tx, app_id, p, now).await?;
            }
            let Some(outcome) = self.rotate_in(&mut tx, app_id, spec, &keys, now).await? else {
                continue;
            };
            self.inner.store.set_rotated(&mut tx, app_id, now).await?;
            let (action, metric) = match kind {
                RotationKind::Manual => ("key.rotate", "graceful"),
                RotationKind::Scheduled => ("key.rotate_scheduled", "scheduled"),
                RotationKind::Repair => ("key.rotate_repair", "repair"),
            };
            let mut details = serde_json::json!({"current": outcome.0.to_string(), "next": outcome.1.to_string()});
            if let Some((age, safe_in, by)) = promoted_early {
                warn!(
                    app_id,
                    promoted_age = age,
                    safe_in,
                    allowed_by = by,
                    "early rotation: verifiers may not have the new signing key yet"
                );
                details["early"] = true.into();
                details["promoted_age"] = age.into();
                details["safe_in"] = safe_in.into();
                details["allowed_by"] = by.into();
            }
            self.inner
                .audit
                .record_in(&mut tx, action, app_id, "ok", details)
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            break tries.done((outcome, metric));
        };
        crate::metrics::rotation(metric);
        self.finish(app_id, Vec::new()).await;
        info!(app_id, current = %outcome.0, next = %outcome.1, ?kind, "rotated");
        self.rotation_view(app_id).await
    }

    /// The state moves of a rotation inside `tx`; `None` if no spare was left.
    async fn rotate_in(
        &self,
        tx: &mut Tx,
        app_id: &str,
        spec: KeySpec,
        keys: &[KeyRow],
        now: i64,
    ) -> Result<Option<(Kid, Kid)>, KeyError> {
        let store = &self.inner.store;
        if let Some(cur) = find(keys, KeyState::Current)
            && !store
                .transition_key(tx, cur.kid, KeyState::Current, KeyState::Previous, now)
                .await?
        {
            return Err(KeyError::Inconsistent(
                "current key changed during rotation".into(),
            ));
        }
        let new_current = match find(keys, KeyState::Next) {
            Some(next) => {
                if !store
                    .transition_key(tx, next.kid, KeyState::Next, KeyState::Current, now)
                    .await?
                {
                    return Err(KeyError::Inconsistent(
                        "next key changed during rotation".into(),
                    ));
                }
                next.kid
            }
            None => match store
                .take_spare(tx, spec, app_id, KeyState::Current, now)
                .await?
            {
                Some(k) => k.kid,
                None => return Ok(None),
            },
        };
        let Some(new_next) = store
            .take_spare(tx, spec, app_id, KeyState::Next, now)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((new_current, new_next.kid)))
    }

    /// Current, next and previous keys of an app.
    ///
    /// # Errors
    /// Store failures; [`KeyError::Inconsistent`] if the app lacks a current or next key.
    pub async fn rotation_view(&self, app_id: &str) -> Result<Rotation, KeyError> {
        let keys = self.inner.store.app_keys(app_id).await?;
        let current = find(&keys, KeyState::Current).cloned();
        let next = find(&keys, KeyState::Next).cloned();
        let previous = keys
            .iter()
            .filter(|k| k.state == KeyState::Previous)
            .cloned()
            .collect();
        match (current, next) {
            (Some(current), Some(next)) => Ok(Rotation {
                current,
                next,
                previous,
            }),
            _ => Err(KeyError::Inconsistent(
                "app has no current or next key".into(),
            )),
        }
    }
}
