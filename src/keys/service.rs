//! The key lifecycle: apps and their keys, graceful, emergency and per-key rotation.
//!
//! Every change is one store transaction that moves key states by compare-and-swap, with
//! the partial unique indexes (one `current`, one `next` per app) as the last guard; HSM
//! objects are destroyed only after the transaction that revoked or retired them commits,
//! and a failed destroy is retried by the reconciler (`destroyed_at` stays NULL).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Mutex;
use tracing::{info, instrument, warn};

use super::registry::Registry;
use super::spares::SparePool;
use super::{KeyState, Kid, monotonic_ulid};
use crate::alg::KeySpec;
use crate::auth::{ACCESS_PREFIX, Secret};
use crate::clock::Clock;
use crate::hsm::{Hsm, HsmError};
use crate::store::{AppPolicy, AppRow, KeyRow, Store, StoreError, Tx};

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No such app.
    #[error("app not found")]
    AppNotFound,
    /// No such key in this app.
    #[error("key not found")]
    KeyNotFound,
    /// The key's state does not allow the operation.
    #[error("{0}")]
    InvalidState(String),
    /// The `next` key has not been published long enough for verifiers to have it.
    #[error(
        "the next key was published {age} s ago; verifiers cache the JWKS for {min} s, so it may sign in {retry_after} s"
    )]
    TooSoon {
        /// Seconds since the next key was published.
        age: i64,
        /// The JWKS max-age.
        min: i64,
        /// Seconds until rotation is allowed.
        retry_after: i64,
    },
    /// The app lost its keys in a way rotation cannot repair on its own.
    #[error("{0}")]
    Inconsistent(String),
    /// A key to import does not fit (see [`super::import`]).
    #[error(transparent)]
    Import(#[from] super::import::ImportError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HSM failure.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// Result of a graceful rotation.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new current key.
    pub current: KeyRow,
    /// The new next key.
    pub next: KeyRow,
    /// Previous keys (still verifying), newest first.
    pub previous: Vec<KeyRow>,
}

/// Result of revoking keys.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The keys revoked.
    pub revoked: Vec<KeyRow>,
    /// The app's keys after the change (current and next).
    pub current: Option<KeyRow>,
    /// Next key after the change.
    pub next: Option<KeyRow>,
    /// Live tokens those keys had signed (from the ledger).
    pub revoked_tokens: i64,
    /// Distinct subjects of those tokens.
    pub affected_subjects: i64,
    /// When.
    pub revoked_at: i64,
}

/// Result of an emergency rotation: what it cut off and the keys that sign from now on.
#[derive(Debug, Clone)]
pub struct EmergencyRotation {
    /// Every key revoked (its HSM objects destroyed, or left to the reconciler).
    pub revoked: Vec<KeyRow>,
    /// The new current key.
    pub current: KeyRow,
    /// The new next key.
    pub next: KeyRow,
    /// Live tokens the revoked keys had signed (from the ledger), now rejected.
    pub revoked_tokens: i64,
    /// Distinct subjects of those tokens.
    pub affected_subjects: i64,
    /// When (the app's cut-off: every token issued before is rejected).
    pub revoked_at: i64,
}

/// A new app with its first keys and its access token (shown once).
#[derive(Debug)]
pub struct CreatedApp {
    /// The app.
    pub app: AppRow,
    /// Its access token.
    pub access_token: Secret,
    /// Its current and next keys.
    pub keys: Vec<KeyRow>,
}

/// Why a graceful rotation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationKind {
    /// Asked for through the API.
    Manual,
    /// Due by the app's rotation period.
    Scheduled,
    /// The reconciler replacing a current key whose HSM object is gone: the next key
    /// signs at once, however young, because the current one cannot sign at all.
    Repair,
}

/// What a graceful rotation does when the `next` key may not sign yet (some verifier may
/// still cache a JWKS without it; see [`super::policy::signs_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// Refuse with [`KeyError::TooSoon`] (the native API by default, the scheduler).
    Refuse,
    /// Carry it out and audit it as early, with the promoted key's age. The string names
    /// who accepted the risk: `force` (the native override) or a compat family whose peer
    /// never refuses a rotation (`auth0`).
    Allow(&'static str),
}

struct Inner {
    store: Store,
    hsm: Hsm,
    audit: crate::audit::Audit,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    spares: SparePool,
    /// A `next` key signs only after it has been published this long (the JWKS max-age).
    min_next_age: i64,
    /// An imported key's app rotates at most this long after the import
    /// (`imported_key_max_life`).
    imported_max_life: i64,
    app_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Per app, the last second this process recorded a JWKS serve in the store.
    served: std::sync::RwLock<HashMap<String, Arc<AtomicI64>>>,
}

/// The lifecycle service. Cheap to clone.
#[derive(Clone)]
pub struct KeyService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyService")
    }
}

/// How many times a transaction is retried when a spare it counted on was taken meanwhile.
const ATTEMPTS: usize = 4;

fn find(keys: &[KeyRow], state: KeyState) -> Option<&KeyRow> {
    keys.iter().find(|k| k.state == state)
}

impl KeyService {
    /// A service over these parts.
    pub fn new(
        store: Store,
        hsm: Hsm,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        spare_target: usize,
        min_next_age: i64,
        imported_max_life: i64,
    ) -> Self {
        let audit = crate::audit::Audit::new(store.clone(), clock.clone());
        let spares = SparePool::new(
            store.clone(),
            hsm.clone(),
            clock.clone(),
            spare_target,
            audit.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                store,
                hsm,
                audit,
                registry,
                clock,
                spares,
                min_next_age,
                imported_max_life,
                app_locks: Mutex::new(HashMap::new()),
                served: std::sync::RwLock::default(),
            }),
        }
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::audit::Audit {
        &self.inner.audit
    }

    /// The spare-key pool.
    pub fn spares(&self) -> &SparePool {
        &self.inner.spares
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Now, by the service's clock.
    pub fn clock_now(&self) -> i64 {
        self.now()
    }

    /// The HSM.
    pub fn hsm(&self) -> &Hsm {
        &self.inner.hsm
    }

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

    /// Serialise lifecycle changes of one app inside this process (the store's
    /// compare-and-swap guards across processes).
    pub(super) async fn lock_app(&self, app_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.inner.app_locks.lock().await;
            locks.entry(app_id.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }

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
        for attempt in 0..ATTEMPTS {
            // The claim keeps this process's other requests off the spares counted here;
            // another replica can still take them: each retry asks for one more.
            let claim = self.inner.spares.claim(spec).await;
            self.inner.spares.ensure(spec, 2 + attempt).await?;
            let now = self.now();
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
            drop(claim);
            self.finish(&app.id, Vec::new()).await;
            info!(app_id = %app.id, current = %current.kid, next = %next.kid, "app created");
            let keys = self.inner.store.app_keys(&app.id).await?;
            return Ok(CreatedApp {
                app,
                access_token: token,
                keys: keys
                    .into_iter()
                    .filter(|k| k.kid == current.kid || k.kid == next.kid)
                    .collect(),
            });
        }
        Err(KeyError::Inconsistent(
            "spare keys kept running out; retry".into(),
        ))
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

    /// Graceful rotation: next → current, current → previous, a spare → next.
    ///
    /// # Errors
    /// [`KeyError::AppNotFound`]; store or HSM failures.
    pub async fn rotate(&self, app_id: &str, kind: RotationKind) -> Result<Rotation, KeyError> {
        self.rotate_with(app_id, kind, None, Early::Refuse).await
    }

    /// From when `next` may sign without a verifier lacking it (Unix seconds).
    pub fn signs_from(&self, next: &KeyRow) -> i64 {
        super::policy::signs_from(
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
    /// [`super::policy::served_record_every`] per app by this process: the JWKS route is
    /// public and serves tens of thousands of requests a second, so it must not write each
    /// one. The write is awaited, so a client that saw the response can rely on the
    /// record; other serves in between return without waiting for it
    /// ([`super::policy::served_slack`] covers them).
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
        let every = super::policy::served_record_every(self.inner.min_next_age);
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
        for attempt in 0..ATTEMPTS {
            let claim = self.inner.spares.claim(spec).await;
            self.inner.spares.ensure(spec, 1 + attempt).await?;
            let now = self.now();
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
            drop(claim);
            crate::metrics::rotation(metric);
            self.finish(app_id, Vec::new()).await;
            info!(app_id, current = %outcome.0, next = %outcome.1, ?kind, "rotated");
            return self.rotation_view(app_id).await;
        }
        Err(KeyError::Inconsistent(
            "spare keys kept running out; retry".into(),
        ))
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

    /// Post-commit work of a key change, in a task of its own so that a client going away
    /// cannot cancel it half-way (the request still waits for it): registry and
    /// certificates ([`Self::after_change`]), then the HSM objects of `destroy`.
    async fn finish(&self, app_id: &str, destroy: Vec<Kid>) {
        let this = self.clone();
        let app_id = app_id.to_owned();
        let task = tokio::spawn(crate::audit::carry(async move {
            this.after_change(&app_id).await;
            this.destroy_objects(&destroy).await;
        }));
        if let Err(e) = task.await {
            warn!(error = %e, "post-commit work of a key change failed; the reconciler finishes it");
        }
    }

    /// After a committed key change: the registry first (so a key that stopped signing
    /// stops at once), then certificates for new keys (HSM signatures), then the registry
    /// again if any certificate was made.
    pub(super) async fn after_change(&self, app_id: &str) {
        self.inner.registry.app_changed(app_id).await;
        if self.certify(app_id).await {
            self.inner.registry.app_changed(app_id).await;
        }
        self.inner.spares.wake();
    }

    /// Give every published key of the app that lacks one its self-signed certificate,
    /// signed in the HSM by the key itself. Failures are logged and retried on the next
    /// change or reconciler pass: a key without a certificate still signs and verifies.
    /// Returns whether any certificate was stored.
    pub async fn certify(&self, app_id: &str) -> bool {
        let (app, keys) = match (
            self.inner.store.app(app_id).await,
            self.inner.store.app_keys(app_id).await,
        ) {
            (Ok(Some(a)), Ok(k)) => (a, k),
            _ => return false,
        };
        let mut stored = false;
        let now = self.now();
        for k in keys
            .iter()
            .filter(|k| k.state.verifies() && k.cert.is_none())
        {
            let Some(spki) = &k.spki else { continue };
            let req = crate::x509::CertRequest {
                kid: k.kid,
                alg: k.algorithm,
                spki_der: spki,
                subject_dn: &app.subject_dn,
                not_before: k.published_at.unwrap_or(now).min(now) - 60,
                // Covers the key's whole life: up to a period as next, one as current, then
                // the verification window, with a day of margin.
                not_after: now + 2 * app.rotation_period + app.verification_ttl + 86_400,
            };
            match crate::x509::self_signed(&self.inner.hsm, &req).await {
                Ok(der) => match self.inner.store.set_cert(k.kid, &der).await {
                    Ok(()) => stored = true,
                    Err(e) => warn!(kid = %k.kid, error = %e, "could not store certificate"),
                },
                Err(e) => warn!(kid = %k.kid, error = %e, "could not make certificate"),
            }
        }
        stored
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
        for attempt in 0..ATTEMPTS {
            let claim = self.inner.spares.claim(spec).await;
            self.inner.spares.ensure(spec, 1 + attempt).await?;
            let now = self.now();
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
            drop(claim);
            self.inner.registry.withdraw(&[kid]);
            crate::metrics::revocation("key");
            self.finish(app_id, vec![kid]).await;
            warn!(app_id, %kid, revoked_tokens, "key revoked");
            let view = store.app_keys(app_id).await?;
            return Ok(Revocation {
                revoked: view.iter().filter(|k| k.kid == kid).cloned().collect(),
                current: find(&view, KeyState::Current).cloned(),
                next: find(&view, KeyState::Next).cloned(),
                revoked_tokens,
                affected_subjects,
                revoked_at: now,
            });
        }
        Err(KeyError::Inconsistent(
            "spare keys kept running out; retry".into(),
        ))
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
        for attempt in 0..ATTEMPTS {
            // The claim keeps this process's other requests off the spares counted here;
            // another replica can still take them: each retry asks for one more.
            let claim = self.inner.spares.claim(spec).await;
            self.inner.spares.ensure(spec, 2 + attempt).await?;
            let now = self.now();
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
            let cutoff = monotonic_ulid().to_string();
            store.set_cutoff(&mut tx, app_id, &cutoff).await?;
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
            drop(claim);
            self.inner.registry.withdraw(&revoked);
            self.inner
                .registry
                .patch_app(app_id, |a| a.cutoff = Some(cutoff.clone()));
            crate::metrics::rotation("emergency");
            self.finish(app_id, revoked.clone()).await;
            warn!(
                app_id,
                revoked = revoked.len(),
                revoked_tokens,
                "emergency rotation"
            );
            let view = store.app_keys(app_id).await?;
            return Ok(EmergencyRotation {
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
            });
        }
        Err(KeyError::Inconsistent(
            "spare keys kept running out; retry".into(),
        ))
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
        let cutoff = flush.then(|| monotonic_ulid().to_string());
        if let Some(c) = &cutoff {
            store.set_cutoff(&mut tx, app_id, c).await?;
            store.revoke_app_refresh(&mut tx, app_id, now).await?;
        }
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
        let digest = token.digest();
        self.inner.registry.patch_app(app_id, |a| {
            a.access_token_sha256 = digest;
            if cutoff.is_some() {
                a.cutoff = cutoff;
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
        let setting = super::registry::ROOT_SETTING;
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

    /// Destroy HSM objects of keys that left the live states, recording `destroyed_at`.
    /// Failures are logged; the reconciler retries them.
    pub async fn destroy_objects(&self, kids: &[Kid]) {
        for &kid in kids {
            match self.inner.hsm.destroy(kid).await {
                Ok(existed) => {
                    if let Err(e) = self.inner.store.mark_destroyed(kid, self.now()).await {
                        warn!(%kid, error = %e, "destroyed key objects but could not record it");
                    }
                    self.inner
                        .audit
                        .record(
                            "key.destroy",
                            &kid.to_string(),
                            "ok",
                            serde_json::json!({"objects_found": existed}),
                        )
                        .await;
                }
                Err(e) => {
                    warn!(%kid, error = %e, "could not destroy key objects; the reconciler will retry")
                }
            }
        }
    }
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}
