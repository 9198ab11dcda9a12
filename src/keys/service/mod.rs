//! The key lifecycle: apps and their keys, graceful, emergency and per-key rotation.
//!
//! Every change is one store transaction that moves key states by compare-and-swap, with
//! the partial unique indexes (one `current`, one `next` per app) as the last guard; HSM
//! objects are destroyed only after the transaction that revoked or retired them commits,
//! and a failed destroy is retried by the reconciler (`destroyed_at` stays NULL).
//!
//! This file holds the service, its result types and the post-commit steps every change
//! shares; `apps` (CRUD and credentials), `rotation` and `revocation` each add one
//! `impl KeyService` block.

mod apps;
mod revocation;
mod rotation;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{info, warn};

use super::registry::Registry;
use super::spares::SparePool;
use super::{KeyState, Kid};
use crate::alg::KeySpec;
use crate::auth::Secret;
use crate::clock::Clock;
use crate::hsm::{Hsm, HsmError};
use crate::store::{AppRow, KeyRow, Store, StoreError};

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

/// The tries of one key change that takes spare keys (create, rotate, revoke, emergency
/// rotation), so that each of them shows only its state moves:
///
/// ```text
/// let mut tries = self.spare_tries(spec, 2);
/// let outcome = loop {
///     let now = tries.next().await?;
///     // transaction; a spare missing: `continue` (the rollback gives back what it took)
///     break tries.done(outcome); // after the commit
/// };
/// // post-commit work, the claim released
/// ```
struct SpareTries<'a> {
    service: &'a KeyService,
    spec: KeySpec,
    /// Spares the change takes.
    needed: usize,
    /// Tries started.
    started: usize,
    /// The claim of the try under way.
    claim: Option<OwnedMutexGuard<()>>,
}

impl SpareTries<'_> {
    /// Start a try: release the previous try's claim, take a new one and make sure the pool
    /// holds the spares needed. The claim keeps this process's other requests off the
    /// spares counted here; another replica can still take them: each retry asks for one
    /// more. Returns the try's `now`.
    ///
    /// # Errors
    /// Store or HSM failures topping up the pool; [`KeyError::Inconsistent`] once
    /// [`ATTEMPTS`] tries came up short.
    async fn next(&mut self) -> Result<i64, KeyError> {
        self.claim = None;
        if self.started == ATTEMPTS {
            return Err(KeyError::Inconsistent(
                "spare keys kept running out; retry".into(),
            ));
        }
        let spares = &self.service.inner.spares;
        let claim = spares.claim(self.spec).await;
        spares.ensure(self.spec, self.needed + self.started).await?;
        self.claim = Some(claim);
        self.started += 1;
        Ok(self.service.now())
    }

    /// The try committed: release the claim (before the post-commit work) and pass on its
    /// outcome.
    fn done<T>(self, outcome: T) -> T {
        outcome
    }
}

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
        let audit = registry.audit().clone();
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

    /// The tries of a change that takes `needed` spare keys of `spec` (see [`SpareTries`]).
    fn spare_tries(&self, spec: KeySpec, needed: usize) -> SpareTries<'_> {
        SpareTries {
            service: self,
            spec,
            needed,
            started: 0,
            claim: None,
        }
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

    /// Destroy HSM objects of keys that left the live states, recording `destroyed_at`.
    /// Failures are logged; the reconciler retries them.
    pub async fn destroy_objects(&self, kids: &[Kid]) {
        for &kid in kids {
            match self.inner.hsm.destroy(kid).await {
                Ok(existed) => {
                    info!(%kid, objects_found = existed, "key objects destroyed");
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
