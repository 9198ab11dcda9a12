//! The PKCS#11 context, the logged-in session pool, the handle cache and the recovery loop.
//!
//! Everything here is blocking. On a multi-threaded runtime a call runs on its worker thread
//! after `block_in_place` has moved that worker's tasks elsewhere, or simply in place for a
//! fast signature; otherwise on tokio's blocking pool (see [`super::Hsm`]).
//! One *anchor* session stays logged in for the life of the process: when every session of
//! an application closes, the token logs the application out and, on SoftHSM, every cached
//! object handle dies. Pooled sessions are opened lazily, returned after each call, and
//! dropped when they fail or belong to an older module generation.
//!
//! Every call on a pooled session holds the *module gate* shared; re-initialising (which
//! calls `C_Finalize`) and starting a new generation hold it exclusively. PKCS#11 leaves
//! `C_Finalize` undefined while another thread is inside the module, and SoftHSM2 frees the
//! sessions under it: a signature racing a re-initialisation killed the process. Sessions of
//! an older generation are never closed either: after `C_Initialize` the module numbers its
//! sessions afresh, so closing an old handle could close a new session (the anchor even).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::HsmConfig;
use super::error::{HsmError, Recovery, map, recovery};
use super::mechanisms::Mechanisms;
use crate::keys::Kid;

/// Both halves of a key pair, as handles valid in the current module generation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handles {
    pub(crate) private: Option<ObjectHandle>,
    pub(crate) public: Option<ObjectHandle>,
}

/// Error of one attempt: a PKCS#11 failure (candidate for recovery) or a final error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    #[error(transparent)]
    Ck(CkError),
    #[error(transparent)]
    Final(HsmError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

impl From<HsmError> for OpError {
    fn from(e: HsmError) -> Self {
        Self::Final(e)
    }
}

struct Ctx {
    pkcs11: Pkcs11,
    slot: Slot,
    anchor: Session,
    generation: u64,
}

struct Pooled {
    session: Session,
    generation: u64,
}

/// Give up a session of an older generation without calling `C_CloseSession`: its module
/// state is gone (finalised) or about to be replaced, and its handle may already name a
/// session of the new generation. The leak is one small struct per session per recovery.
fn abandon(session: Session) {
    std::mem::forget(session);
}

/// The blocking core shared by every clone of [`super::Hsm`].
pub(crate) struct Core {
    cfg: HsmConfig,
    /// The module gate (see the module docs): shared per call, exclusive to change generation.
    gate: RwLock<()>,
    ctx: Mutex<Option<Ctx>>,
    idle: Mutex<Vec<Pooled>>,
    cache: RwLock<HashMap<Kid, Handles>>,
    /// Kids in `cache` whose objects carry the legacy label (no store id yet).
    legacy: Mutex<std::collections::HashSet<Kid>>,
    /// Objects of other stores in the last listing (left alone).
    foreign: std::sync::atomic::AtomicUsize,
    generation: AtomicU64,
    last_init_attempt: Mutex<Option<Instant>>,
    last_forced: Mutex<Option<Instant>>,
    /// Wait before the next forced re-initialisation may run (doubles while they do not help).
    forced_interval: Mutex<Duration>,
    /// The token's mechanisms, asked once at connect.
    mechanisms: Mechanisms,
    /// Handles of the audit MAC key and high-water mark (see [`super::mac`]).
    audit: super::mac::AuditObjects,
    /// Searches (exclusive) against objects being made (shared): see [`Core::searching`].
    objects: RwLock<()>,
}

/// A checked-out session and the generation it belongs to.
pub(crate) struct Lease<'a> {
    pub(crate) session: Session,
    generation: u64,
    core: &'a Core,
}

impl Lease<'_> {
    /// Hand the session back to the pool.
    fn release(self) {
        self.core.checkin(self.session, self.generation);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another blocking call panicked; the data is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Minimum time between two forced re-initialisations.
const FORCED_REINIT_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait between forced re-initialisations that keep not helping.
const FORCED_REINIT_MAX: Duration = Duration::from_secs(300);

/// Minimum time between two attempts to bring an unreachable module back.
const REINIT_BACKOFF: Duration = Duration::from_millis(500);

impl Core {
    /// Load the module, find the token, log in the anchor session and load the handle cache.
    pub(crate) fn connect(cfg: HsmConfig) -> Result<Self, HsmError> {
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| {
            HsmError::Config(format!(
                "cannot load PKCS#11 module {}: {e}",
                cfg.module.display()
            ))
        })?;
        let mut core = Self {
            cfg,
            gate: RwLock::new(()),
            ctx: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            cache: RwLock::new(HashMap::new()),
            legacy: Mutex::new(std::collections::HashSet::new()),
            foreign: std::sync::atomic::AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            last_init_attempt: Mutex::new(None),
            last_forced: Mutex::new(None),
            forced_interval: Mutex::new(FORCED_REINIT_INTERVAL),
            mechanisms: Mechanisms::default(),
            audit: super::mac::AuditObjects::default(),
            objects: RwLock::new(()),
        };
        let ctx = core.open_ctx(pkcs11, 1)?;
        core.mechanisms = Mechanisms::query(&ctx.pkcs11, ctx.slot).map_err(map)?;
        for m in core.mechanisms.missing() {
            warn!(alg = %m.alg, reason = %m.reason, "algorithm unavailable on this token; apps cannot use it");
        }
        core.generation.store(1, Ordering::SeqCst);
        *lock(&core.ctx) = Some(ctx);
        core.reload_cache()?;
        Ok(core)
    }

    fn open_ctx(&self, pkcs11: Pkcs11, generation: u64) -> Result<Ctx, HsmError> {
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(map(e)),
        }
        let slot = self.find_slot(&pkcs11)?;
        let anchor = pkcs11.open_rw_session(slot).map_err(map)?;
        self.login(&anchor)?;
        Ok(Ctx {
            pkcs11,
            slot,
            anchor,
            generation,
        })
    }

    fn find_slot(&self, pkcs11: &Pkcs11) -> Result<Slot, HsmError> {
        for slot in pkcs11.get_slots_with_initialized_token().map_err(map)? {
            let info = pkcs11.get_token_info(slot).map_err(map)?;
            if info.label().trim_end() == self.cfg.token_label {
                return Ok(slot);
            }
        }
        Err(HsmError::Unavailable(CkError::Pkcs11(
            RvError::TokenNotPresent,
            cryptoki::context::Function::GetTokenInfo,
        )))
        .inspect_err(
            |_| warn!(token_label = %self.cfg.token_label, "no initialised token with this label"),
        )
    }

    fn login(&self, session: &Session) -> Result<(), HsmError> {
        let pin = cryptoki::types::AuthPin::from(self.cfg.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(map(e)),
        }
    }

    /// Current module generation (bumped on every re-initialisation or anchor reopen).
    pub(crate) fn current_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Take an idle session of the current generation, or open a new one.
    pub(crate) fn checkout(&self) -> Result<Lease<'_>, HsmError> {
        let generation = self.current_generation();
        loop {
            let Some(p) = lock(&self.idle).pop() else {
                break;
            };
            if p.generation == generation {
                return Ok(Lease {
                    session: p.session,
                    generation,
                    core: self,
                });
            }
        }
        let mut ctx = lock(&self.ctx);
        if ctx.is_none() {
            drop(ctx);
            self.reinitialise(generation)?;
            ctx = lock(&self.ctx);
        }
        let c = ctx.as_ref().ok_or_else(unavailable)?;
        let session = c.pkcs11.open_rw_session(c.slot).map_err(map)?;
        Ok(Lease {
            session,
            generation: c.generation,
            core: self,
        })
    }

    fn checkin(&self, session: Session, generation: u64) {
        if generation == self.current_generation() {
            lock(&self.idle).push(Pooled {
                session,
                generation,
            });
        } else {
            abandon(session);
        }
    }

    /// Shared hold on the module gate: no re-initialisation while it lives.
    fn enter(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exclusive hold on the module gate: waits for every call in flight to return.
    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `op` with a pooled session, recovering once from a lost session, a stale handle
    /// or a module that lost its state. `kid` names the key whose cached handles `op` uses.
    pub(crate) fn run<T>(
        &self,
        kid: Option<Kid>,
        mut op: impl FnMut(&Self, &Session) -> Result<T, OpError>,
    ) -> Result<T, HsmError> {
        let mut retried = false;
        loop {
            // Checkout may itself re-initialise, so the gate is entered after it; a
            // generation change in between leaves the lease stale, and it is abandoned.
            let lease = self.checkout()?;
            let gate = self.enter();
            let generation = lease.generation;
            if generation != self.current_generation() {
                abandon(lease.session);
                continue;
            }
            let result = op(self, &lease.session);
            let how = match result {
                Ok(v) => {
                    lease.release();
                    return Ok(v);
                }
                Err(OpError::Final(e)) => {
                    lease.release();
                    return Err(e);
                }
                Err(OpError::Ck(e)) => {
                    let how = recovery(&e);
                    // A session outlives a failed call or a stale handle; a lost one is
                    // closed here, while the gate still makes it this generation's.
                    if matches!(how, Recovery::None | Recovery::Handle) {
                        lease.release();
                    } else {
                        drop(lease);
                    }
                    if retried
                        || how == Recovery::None
                        || (how == Recovery::Handle && kid.is_none())
                    {
                        return Err(map(e));
                    }
                    super::error::count(&e);
                    warn!(error = %e, ?how, "PKCS#11 call failed; recovering and retrying once");
                    how
                }
            };
            drop(gate);
            retried = true;
            match how {
                Recovery::Handle => {
                    if let Some(k) = kid {
                        self.forget(&k);
                    }
                }
                Recovery::Session => self.recover_session(generation)?,
                Recovery::Reinitialise => self.reinitialise(generation)?,
                Recovery::None => {}
            }
        }
    }

    /// Log in again; if the anchor itself is gone, reopen it and start a new generation.
    fn recover_session(&self, seen: u64) -> Result<(), HsmError> {
        let gate = self.exclusive();
        let mut guard = lock(&self.ctx);
        let Some(ctx) = guard.as_mut() else {
            drop(guard);
            drop(gate);
            return self.reinitialise(seen);
        };
        let anchor_ok = matches!(
            ctx.anchor.get_session_info().map(|i| i.session_state()),
            Ok(SessionState::RwUser | SessionState::RwPublic)
        );
        if !anchor_ok {
            match ctx.pkcs11.open_rw_session(ctx.slot) {
                Ok(s) => ctx.anchor = s,
                Err(e) if recovery(&e) == Recovery::Reinitialise => {
                    drop(guard);
                    drop(gate);
                    return self.reinitialise(seen);
                }
                Err(e) => return Err(map(e)),
            }
        }
        self.login(&ctx.anchor)?;
        // Handles may have died with the login; a new generation drops every idle session
        // and the cache, which is reloaded in one listing pass.
        if ctx.generation == seen {
            // Idle sessions are closed while the module still knows them.
            lock(&self.idle).clear();
            ctx.generation += 1;
            self.generation.store(ctx.generation, Ordering::SeqCst);
            self.cache_write().clear();
        }
        drop(guard);
        drop(gate);
        self.reload_cache()
    }

    /// Finalise and initialise the module again, unless another thread already did since
    /// generation `seen`.
    pub(crate) fn reinitialise(&self, seen: u64) -> Result<(), HsmError> {
        let gate = self.exclusive();
        let mut guard = lock(&self.ctx);
        if guard.as_ref().is_some_and(|c| c.generation != seen) {
            return Ok(());
        }
        {
            let mut last = lock(&self.last_init_attempt);
            if guard.is_none() && last.is_some_and(|t| t.elapsed() < REINIT_BACKOFF) {
                return Err(unavailable());
            }
            *last = Some(Instant::now());
        }
        let generation = self.current_generation() + 1;
        let pkcs11 = match guard.take() {
            Some(old) => {
                let Ctx { pkcs11, anchor, .. } = old;
                // No call is in flight (the gate is ours): close what the module still
                // knows, then finalise. Leases checked out but not yet inside the gate
                // belong to the old generation now and are abandoned, never closed.
                lock(&self.idle).clear();
                drop(anchor);
                let _ = pkcs11.clone().finalize();
                pkcs11
            }
            None => Pkcs11::new(&self.cfg.module).map_err(map)?,
        };
        self.generation.store(generation, Ordering::SeqCst);
        self.cache_write().clear();
        let ctx = self.open_ctx(pkcs11, generation)?;
        *guard = Some(ctx);
        drop(guard);
        drop(gate);
        info!(generation, "PKCS#11 module re-initialised");
        self.reload_cache()
    }

    /// Re-initialise the module although no call reported a lost module: `kid`, a key the
    /// store says exists, was not found. Some modules (SoftHSM2) rescan their storage only at
    /// `C_Initialize`, so a token directory that went away and came back looks empty until
    /// then; others (kryoptic, on a shared database) see changes live, and for them this
    /// cannot help. Which kind the module is shows in the result: while re-initialising does
    /// not bring the key back, the wait before the next forced one doubles (from
    /// [`FORCED_REINIT_INTERVAL`] up to [`FORCED_REINIT_MAX`]), so a module where it is useless
    /// is not torn down over and over; once it helps, the wait is short again. Returns whether
    /// it ran.
    pub(crate) fn force_reinitialise(&self, kid: &Kid) -> Result<bool, HsmError> {
        {
            let mut last = lock(&self.last_forced);
            let interval = *lock(&self.forced_interval);
            if last.is_some_and(|t| t.elapsed() < interval) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        warn!(%kid, "a key the store knows is missing from the token; re-initialising the module");
        self.reinitialise(self.current_generation())?;
        let found = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(kid);
        let mut interval = lock(&self.forced_interval);
        *interval = if found {
            FORCED_REINIT_INTERVAL
        } else {
            (*interval * 2).min(FORCED_REINIT_MAX)
        };
        if !found {
            info!(%kid, wait_s = interval.as_secs(), "re-initialising did not bring the key back; waiting longer before the next try");
        }
        Ok(true)
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Kid, Handles>> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn forget(&self, kid: &Kid) {
        self.cache_write().remove(kid);
    }

    pub(crate) fn remember(&self, kid: Kid, handles: Handles) {
        self.cache_write().insert(kid, handles);
    }

    /// Cached handles for `kid`, or a search by `CKA_ID` on a miss (then cached).
    pub(crate) fn handles(&self, session: &Session, kid: &Kid) -> Result<Handles, OpError> {
        if let Some(h) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
        {
            return Ok(*h);
        }
        let find = |class| -> Result<Option<ObjectHandle>, CkError> {
            let found = super::object::find(
                self,
                session,
                &[
                    Attribute::Class(class),
                    Attribute::Id(kid.cka_id().to_vec()),
                ],
            )?;
            Ok(found.first().copied())
        };
        let handles = Handles {
            private: find(ObjectClass::PRIVATE_KEY)?,
            public: find(ObjectClass::PUBLIC_KEY)?,
        };
        if handles.private.is_none() && handles.public.is_none() {
            return Err(OpError::Final(HsmError::KeyNotFound(*kid)));
        }
        self.remember(*kid, handles);
        Ok(handles)
    }

    /// This handle's store id (what new objects' labels carry).
    pub(crate) fn store_id(&self) -> Result<&str, HsmError> {
        self.cfg.store_id.as_deref().ok_or_else(|| {
            HsmError::Config("this HSM handle has no store id, so it cannot make objects".into())
        })
    }

    /// Whether an object with this owner is ours to cache and use: our store's, or a
    /// legacy one (adopted by the store that knows its kid). Without a store id (tools),
    /// every object is.
    fn owns(&self, owner: Option<&crate::keys::LabelOwner>) -> Option<bool> {
        use crate::keys::LabelOwner;
        match (owner, self.cfg.store_id.as_deref()) {
            (None, _) => None,
            (Some(LabelOwner::Legacy), _) => Some(true),
            (Some(LabelOwner::Store(_)), None) => Some(false),
            (Some(LabelOwner::Store(s)), Some(mine)) => Some(s == mine),
        }
        .map(|ours| ours || self.cfg.store_id.is_none())
    }

    /// `kid`'s objects now carry our store id.
    pub(crate) fn adopted(&self, kid: &Kid) {
        lock(&self.legacy).remove(kid);
    }

    /// Kids whose cached objects still carry the legacy label.
    pub(crate) fn legacy(&self) -> std::collections::HashSet<Kid> {
        lock(&self.legacy).clone()
    }

    /// Objects of other stores in the last listing.
    pub(crate) fn foreign(&self) -> usize {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Rebuild the handle cache in one listing pass over our objects (this store's and
    /// legacy ones; other stores' objects are counted, never cached).
    pub(crate) fn reload_cache(&self) -> Result<(), HsmError> {
        let started = Instant::now();
        // The generation the listing ran in (inside the gate it cannot change): handles are
        // only good in it.
        let (listed_in, objects) = self.run(None, |core, s| {
            Ok((core.current_generation(), super::object::list_in(core, s)?))
        })?;
        let mut map: HashMap<Kid, Handles> = HashMap::with_capacity(objects.len() / 2 + 1);
        let mut legacy = std::collections::HashSet::new();
        let mut foreign = 0;
        for o in objects {
            let Some(kid) = o.kid else { continue };
            match self.owns(o.owner.as_ref()) {
                Some(true) => {}
                Some(false) => {
                    foreign += 1;
                    continue;
                }
                None => continue,
            }
            if o.owner == Some(crate::keys::LabelOwner::Legacy) {
                legacy.insert(kid);
            }
            let e = map.entry(kid).or_insert(Handles {
                private: None,
                public: None,
            });
            if o.private {
                e.private = Some(o.handle);
            } else {
                e.public = Some(o.handle);
            }
        }
        if self.cfg.store_id.is_some()
            && let Err(e) = self.run(None, super::mac::prime_in)
        {
            warn!(error = %e, "could not find the audit objects in the token; the sealer will");
        }
        let n = map.len();
        {
            // A re-initialisation since the listing renumbered the objects (SoftHSM2 counts
            // handles afresh at every C_Initialize): these handles would name other keys'
            // objects, so a sign or a destroy would hit the wrong key. The new generation
            // bumps the counter before it clears the cache and reloads it itself, so the
            // check under the cache lock is enough.
            let mut cache = self.cache_write();
            if self.current_generation() != listed_in {
                info!(
                    listed_in,
                    "a re-initialisation overtook this handle-cache reload; its listing is dropped"
                );
                return Ok(());
            }
            *cache = map;
        }
        *lock(&self.legacy) = legacy;
        self.foreign.store(foreign, Ordering::Relaxed);
        info!(
            keys = n,
            other_stores_objects = foreign,
            ms = started.elapsed().as_millis(),
            "HSM handle cache loaded"
        );
        Ok(())
    }

    /// Which halves the handle cache holds, per kid.
    pub(crate) fn cached_halves(&self) -> HashMap<Kid, (bool, bool)> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(kid, h)| (*kid, (h.private.is_some(), h.public.is_some())))
            .collect()
    }

    /// Number of key pairs in the handle cache.
    pub(crate) fn cached(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Held while this process searches the token: no object of ours is being made then.
    ///
    /// SoftHSM2 before 2.7.0 (Debian 12 ships 2.6.1; its issue 573) reads every object
    /// while a search runs, and one whose file another session has created but not yet
    /// written is marked invalid for good, so that session's `C_GenerateKeyPair` or
    /// `C_CreateObject` fails with `CKR_GENERAL_ERROR`. Searches are rare (a handle-cache
    /// miss, a listing, the audit objects' first use), so they wait for objects being made
    /// and the other way round; object making never waits for another object being made.
    /// Another process is not covered: [`super::keygen`] checks every new pair and retries
    /// once.
    pub(crate) fn searching(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while this process makes a token object (see [`Core::searching`]).
    pub(crate) fn making(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the audit MAC key's and mark's handles are kept.
    pub(crate) fn audit_objects(&self) -> &super::mac::AuditObjects {
        &self.audit
    }

    /// The token's mechanisms, as asked at connect.
    pub(crate) fn mechanisms(&self) -> &Mechanisms {
        &self.mechanisms
    }

    /// The token label this core was configured with.
    pub(crate) fn token_label(&self) -> &str {
        &self.cfg.token_label
    }

    /// Log out and close everything (best effort, at shutdown).
    pub(crate) fn close(&self) {
        lock(&self.idle).clear();
        if let Some(ctx) = lock(&self.ctx).take() {
            let _ = ctx.anchor.logout();
        }
    }
}

fn unavailable() -> HsmError {
    HsmError::Unavailable(CkError::Pkcs11(
        RvError::CryptokiNotInitialized,
        cryptoki::context::Function::Initialize,
    ))
}
