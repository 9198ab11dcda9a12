//! The HSM: the only module that touches `cryptoki`.
//!
//! [`Hsm`] is a cheap, cloneable async facade. Each operation waits (asynchronously) for a
//! permit of the session pool, then runs its PKCS#11 calls with a pooled, logged-in
//! session on the calling worker thread after handing its task queue to another worker
//! (`block_in_place`; tokio's blocking pool without a multi-threaded runtime), except
//! signatures the token answers fast, which run in place (see [`FastPath`]). Keys are named by
//! [`Kid`] (their `CKA_ID`); object handles never leave this module. The handle cache is
//! filled in one listing pass at start, kept current on generate and destroy, and dropped
//! when sessions are reopened, so the signing path never searches the token.

pub mod diagnose;
mod error;
mod import;
mod keygen;
mod mac;
mod mechanisms;
mod object;
mod pool;
mod sign;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use secrecy::SecretString;
use tokio::sync::Semaphore;
use tracing::instrument;

pub use error::HsmError;
pub use import::KeyMaterial;
pub use mechanisms::Unsupported;
pub use object::{PrivateKeyFlags, TokenObject};

use crate::alg::{Algorithm, KeySpec};
use crate::keys::Kid;
use crate::pubkey::PublicKey;
use pool::Core;

/// What the token holds as the public half of one key (see [`Hsm::public_keys`]).
#[derive(Debug)]
pub enum PublicHalf {
    /// Read and decoded for the algorithm asked.
    Found(PublicKey),
    /// No public object with this kid, after a fresh search: not known yet (another
    /// replica's key whose objects this process has not seen) or missing (the reconciler's
    /// business). Never a verdict on the key.
    Absent,
    /// An object with this kid exists but does not read as a key of the algorithm asked.
    Unreadable(HsmError),
}

/// Default PKCS#11 module: Debian's SoftHSM2.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// How to reach the token.
#[derive(Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token to use (slot ids are not stable, labels are).
    pub token_label: String,
    /// User PIN.
    pub pin: SecretString,
    /// Pooled sessions (and so concurrent PKCS#11 calls).
    pub sessions: usize,
    /// Id of the store whose objects this handle owns (see [`crate::store::Store::store_id`]):
    /// new objects carry it in their label, and only objects that carry it (or the legacy
    /// label of objects made before store ids) are cached and used. `None` (tools that
    /// open the token without a store): nothing can be generated.
    pub store_id: Option<String>,
}

impl std::fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("sessions", &self.sessions)
            .field("store_id", &self.store_id)
            .finish()
    }
}

/// Async handle on the token. Clones share one pool.
#[derive(Clone)]
pub struct Hsm {
    core: Arc<Core>,
    permits: Arc<Semaphore>,
    sessions: usize,
    health: Arc<Health>,
    fast: Arc<FastPath>,
}

/// Longest typical signature (the running mean per algorithm) that runs in place on the
/// executor's worker thread: a fast ECDSA or EdDSA signature (60-300 µs on SoftHSM2) or an
/// RSA-2048 one (~0.5 ms). Slower ones (RSA-4096, a network HSM) leave the executor.
const IN_PLACE_MAX_US: u64 = 1_000;

/// While in-place calls are running, another may start only if one returned this recently:
/// a token that stops answering holds at most the calls that started within this window.
const IN_PLACE_STALL_US: u64 = 2_000;

/// Whether a signature may run in place, on the worker thread that asked for it.
///
/// `block_in_place` hands the worker's task queue to another thread for every call (a
/// blocking-pool wake and a hand-back each time); for a signature of 60 µs that costs about
/// a quarter of the raw signing rate. A signature whose algorithm has been fast on this
/// token runs in place instead, like any short computation, as long as the token keeps
/// answering: at most one in-place call per worker, none while the running ones have seen
/// no call return for [`IN_PLACE_STALL_US`], and none for an algorithm whose running mean
/// is over [`IN_PLACE_MAX_US`] (or still unknown: the first signature of each algorithm
/// leaves the executor and sets the mean).
#[derive(Debug)]
struct FastPath {
    /// Running mean of the signature time per algorithm (in [`crate::alg::ALL`]'s order), µs;
    /// 0 until the first signature.
    mean_us: [AtomicU64; crate::alg::ALL.len()],
    /// In-place calls running now.
    running: AtomicUsize,
    /// When an in-place call last returned, µs after `epoch`.
    last_done_us: AtomicU64,
    epoch: Instant,
}

/// Whether a signature may run in place: `mean_us` its algorithm's running mean, `running`
/// the in-place calls running now on `workers` worker threads, `since_done_us` the time
/// since one last returned.
fn may_run_in_place(mean_us: u64, running: usize, workers: usize, since_done_us: u64) -> bool {
    (1..=IN_PLACE_MAX_US).contains(&mean_us)
        && running < workers
        && (running == 0 || since_done_us <= IN_PLACE_STALL_US)
}

/// Leaves the in-place count when the call returns (or unwinds).
struct InPlace<'a>(&'a FastPath);

impl Drop for InPlace<'_> {
    fn drop(&mut self) {
        let f = self.0;
        f.last_done_us.store(f.now_us(), Ordering::Relaxed);
        f.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FastPath {
    fn new() -> Self {
        Self {
            mean_us: std::array::from_fn(|_| AtomicU64::new(0)),
            running: AtomicUsize::new(0),
            last_done_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn index(alg: Algorithm) -> usize {
        crate::alg::ALL
            .iter()
            .position(|a| *a == alg)
            .unwrap_or_default()
    }

    /// Note one signature's time (a mean over about the last eight).
    fn observe(&self, alg: Algorithm, elapsed: std::time::Duration) {
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mean = &self.mean_us[Self::index(alg)];
        let old = mean.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        mean.store(new.max(1), Ordering::Relaxed);
    }

    /// Enter the in-place path for a signature with `alg` on a runtime of `workers` worker
    /// threads, if it may.
    fn enter(&self, alg: Algorithm, workers: usize) -> Option<InPlace<'_>> {
        let mean = self.mean_us[Self::index(alg)].load(Ordering::Relaxed);
        let mut running = self.running.load(Ordering::Acquire);
        loop {
            let since = self
                .now_us()
                .saturating_sub(self.last_done_us.load(Ordering::Relaxed));
            if !may_run_in_place(mean, running, workers, since) {
                return None;
            }
            match self.running.compare_exchange_weak(
                running,
                running + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(InPlace(self)),
                Err(now) => running = now,
            }
        }
    }
}

/// Whether the token's last call succeeded, and how often that has changed.
#[derive(Debug, Default)]
struct Health {
    failing: AtomicBool,
    changes: AtomicU64,
}

impl Health {
    fn record<T>(&self, result: &Result<T, HsmError>) {
        let failing = match result {
            Ok(_) => false,
            Err(e) if e.is_fault() => true,
            Err(_) => return,
        };
        // Read first: the common case (no change) writes nothing to the shared line.
        if self.failing.load(Ordering::Relaxed) != failing
            && self.failing.swap(failing, Ordering::Relaxed) != failing
        {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.core.token_label())
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl Hsm {
    /// Load the module, log in, and load the handle cache.
    ///
    /// # Errors
    /// [`HsmError::Config`] if the module cannot be loaded; [`HsmError::Login`] for a wrong
    /// PIN; [`HsmError::Unavailable`] if no token has the label.
    pub async fn connect(cfg: HsmConfig) -> Result<Self, HsmError> {
        let sessions = cfg.sessions.max(1);
        let core = tokio::task::spawn_blocking(move || Core::connect(cfg))
            .await
            .map_err(|_| HsmError::Worker)??;
        Ok(Self {
            core: Arc::new(core),
            permits: Arc::new(Semaphore::new(sessions)),
            sessions,
            health: Arc::default(),
            fast: Arc::new(FastPath::new()),
        })
    }

    /// Run `f` off the async executor once a pool permit is free, and note whether the
    /// token failed (see [`Self::health_changes`]).
    ///
    /// On a multi-threaded runtime the call runs in place (`block_in_place`): this worker
    /// thread leaves the executor, whose other tasks move to another worker, so the
    /// PKCS#11 call starts at once instead of waiting for a blocking thread to wake (on a
    /// small VM two thread hand-offs per call cost more than an ES256 signature). Elsewhere
    /// it runs on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let result = self.blocking_inner(None, f).await;
        self.health.record(&result);
        result
    }

    /// [`Self::blocking`] without the health note. `fast`: the algorithm of a signature,
    /// which may run in place (see [`FastPath`]).
    async fn blocking_inner<T: Send + 'static>(
        &self,
        fast: Option<Algorithm>,
        f: impl FnOnce(&Core) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        let asked = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HsmError::Worker)?;
        crate::metrics::hsm_pool_wait(asked.elapsed().as_secs_f64());
        let workers = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .map(|h| h.metrics().num_workers());
        if let (Some(alg), Some(workers)) = (fast, workers)
            && let Some(_in_place) = self.fast.enter(alg, workers)
        {
            let result = f(&self.core);
            drop(permit);
            // In place, a signature is a computation that returns ready: count it against
            // the task's cooperative budget, so that a caller signing in a loop (a status
            // list pass, a benchmark) yields now and then instead of holding its worker.
            tokio::task::consume_budget().await;
            return result;
        }
        let core = self.core.clone();
        if workers.is_some() {
            let result = tokio::task::block_in_place(|| f(&core));
            drop(permit);
            return result;
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&core)
        })
        .await
        .map_err(|_| HsmError::Worker)?
    }

    /// Generate a key pair for `spec` under `kid`; returns its public half.
    ///
    /// # Errors
    /// Token failures; [`HsmError::Algorithm`] if the token lacks a mechanism or key size
    /// `spec` needs (nothing is sent to the token then).
    #[instrument(skip(self), fields(kid = %kid, spec = %spec))]
    pub async fn generate(&self, kid: Kid, spec: KeySpec) -> Result<PublicKey, HsmError> {
        self.check(spec)?;
        self.blocking(move |core| {
            core.run(None, |core, s| keygen::generate_in(core, s, &kid, spec))
        })
        .await
    }

    /// Import an existing private key (and its declared public half) under `kid`, sensitive
    /// and not extractable from now on; returns the public half as the token holds it. The
    /// caller checks, by a test signature, that the private half matches the public one.
    ///
    /// # Errors
    /// Token failures (nothing is left in the token then); [`HsmError::Config`] without a
    /// store id.
    #[instrument(skip(self, material), fields(kid = %kid))]
    pub async fn import(&self, kid: Kid, material: KeyMaterial) -> Result<PublicKey, HsmError> {
        self.blocking(move |core| {
            core.run(None, |core, s| import::import_in(core, s, &kid, &material))
        })
        .await
    }

    /// Sign `data` (a JWS signing input, or a TBS certificate) with `kid` for `alg`, in JWS
    /// signature encoding (ECDSA as raw `r || s`).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if the key is gone; [`HsmError::Unavailable`] if the token
    /// cannot be reached; [`HsmError::Algorithm`] if the token cannot sign with `alg`.
    pub async fn sign(&self, kid: Kid, alg: Algorithm, data: Vec<u8>) -> Result<Vec<u8>, HsmError> {
        self.core.mechanisms().check_sign(alg)?;
        let fast = self.fast.clone();
        let result = self
            .blocking_inner(Some(alg), move |core| {
                let started = Instant::now();
                let sig = core.run(Some(kid), |core, s| {
                    sign::sign_in(core, s, &kid, alg, &data)
                });
                let elapsed = started.elapsed();
                if sig.is_ok() {
                    fast.observe(alg, elapsed);
                }
                crate::metrics::hsm_sign(alg, elapsed.as_secs_f64());
                sig
            })
            .await;
        self.health.record(&result);
        result
    }

    /// Sign synchronously on the calling (blocking) thread; for benchmarks and the CLI.
    ///
    /// # Errors
    /// As [`Self::sign`].
    pub fn sign_blocking(
        &self,
        kid: Kid,
        alg: Algorithm,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let started = Instant::now();
        let sig = self
            .core
            .run(Some(kid), |core, s| sign::sign_in(core, s, &kid, alg, data));
        crate::metrics::hsm_sign(alg, started.elapsed().as_secs_f64());
        self.health.record(&sig);
        sig
    }

    /// How many times the token has gone from answering to failing or back (a call
    /// failing because of the token, then one succeeding). Cached readiness is stale once
    /// this moves.
    pub fn health_changes(&self) -> u64 {
        self.health.changes.load(Ordering::Relaxed)
    }

    /// Read `kid`'s public half.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if the key is gone.
    pub async fn public_key(&self, kid: Kid, alg: Algorithm) -> Result<PublicKey, HsmError> {
        self.blocking(move |core| {
            core.run(Some(kid), |core, s| {
                object::public_key_in(core, s, &kid, alg)
            })
        })
        .await
    }

    /// The public halves of `keys` as the token holds them, in order, read in one blocking
    /// call from cached handles (a kid the cache lacks is searched once; see
    /// [`PublicHalf::Absent`]). The key registry compares them with the store's copies.
    ///
    /// # Errors
    /// Token failures that concern the token as a whole (unreachable, logged out).
    pub async fn public_keys(
        &self,
        keys: Vec<(Kid, Algorithm)>,
    ) -> Result<Vec<PublicHalf>, HsmError> {
        self.blocking(move |core| core.run(None, |core, s| object::public_keys_in(core, s, &keys)))
            .await
    }

    /// HMAC-SHA256 of each of `messages` with this store's audit MAC key, a secret that
    /// never leaves the token; with `create`, the key is made first when the token has none.
    /// `Ok(None)`: no key and `create` not set. The flag: whether this call made the key.
    ///
    /// # Errors
    /// Token failures; [`HsmError::Config`] without a store id.
    pub async fn audit_macs(
        &self,
        messages: Vec<Vec<u8>>,
        create: bool,
    ) -> Result<Option<mac::Macs>, HsmError> {
        self.blocking(move |core| {
            core.run(None, |core, s| mac::macs_in(core, s, &messages, create))
        })
        .await
    }

    /// The values of the audit high-water mark kept in the token (see [`crate::audit`]):
    /// none before the first seal, one normally, two for a moment while it moves.
    ///
    /// # Errors
    /// Token failures; [`HsmError::Config`] without a store id.
    pub async fn audit_mark(&self) -> Result<Vec<Vec<u8>>, HsmError> {
        self.blocking(|core| core.run(None, mac::mark_in)).await
    }

    /// Replace the audit high-water mark kept in the token.
    ///
    /// # Errors
    /// Token failures; [`HsmError::Config`] without a store id.
    pub async fn set_audit_mark(&self, value: Vec<u8>) -> Result<(), HsmError> {
        self.blocking(move |core| core.run(None, |core, s| mac::set_mark_in(core, s, &value)))
            .await
    }

    /// Destroy both halves of `kid`. `Ok(false)` if neither existed.
    ///
    /// # Errors
    /// Token failures.
    #[instrument(skip(self), fields(kid = %kid))]
    pub async fn destroy(&self, kid: Kid) -> Result<bool, HsmError> {
        self.blocking(move |core| core.run(Some(kid), |core, s| object::destroy_in(core, s, &kid)))
            .await
    }

    /// Every object with our label prefix in the token, of every store (each says its
    /// owner), read fresh from the token.
    ///
    /// # Errors
    /// Token failures.
    pub async fn list(&self) -> Result<Vec<TokenObject>, HsmError> {
        self.blocking(|core| core.run(None, |core, s| Ok(object::list_in(core, s)?)))
            .await
    }

    /// Adopt `kid`'s objects made before store ids existed (legacy label): relabel both
    /// halves with this store's id. The caller has checked that this store knows the kid.
    ///
    /// # Errors
    /// Token failures; [`HsmError::Config`] without a store id.
    pub async fn adopt(&self, kid: Kid) -> Result<(), HsmError> {
        self.blocking(move |core| core.run(Some(kid), |core, s| object::adopt_in(core, s, &kid)))
            .await
    }

    /// Kids in the handle cache whose objects still carry the legacy label (made before
    /// store ids; see [`Self::adopt`]).
    pub fn cached_legacy(&self) -> std::collections::HashSet<Kid> {
        self.core.legacy()
    }

    /// Objects of other stores seen in the last listing (never used or touched here).
    pub fn foreign_objects(&self) -> usize {
        self.core.foreign()
    }

    /// Whether `kid`'s private and public halves exist, searched fresh in the token (not
    /// from the handle cache): for the reconciler, which must not act on a stale view.
    ///
    /// # Errors
    /// Token failures.
    pub async fn halves(&self, kid: Kid) -> Result<(bool, bool), HsmError> {
        self.blocking(move |core| core.run(None, |core, s| Ok(object::halves_in(core, s, &kid)?)))
            .await
    }

    /// Protection flags of `kid`'s private half.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if the key is gone.
    pub async fn private_key_flags(&self, kid: Kid) -> Result<PrivateKeyFlags, HsmError> {
        self.blocking(move |core| {
            core.run(Some(kid), |core, s| object::private_flags_in(core, s, &kid))
        })
        .await
    }

    /// Whether a pooled session is logged in and usable now.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] (with the reason) when it is not.
    pub async fn ready(&self) -> Result<(), HsmError> {
        self.blocking(|core| {
            core.run(None, |_, s| {
                let info = s.get_session_info()?;
                match info.session_state() {
                    cryptoki::session::SessionState::RwUser
                    | cryptoki::session::SessionState::RoUser => Ok(()),
                    _ => Err(cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::UserNotLoggedIn,
                        cryptoki::context::Function::GetSessionInfo,
                    )
                    .into()),
                }
            })
        })
        .await
    }

    /// Re-initialise the module because `kid`, a key that must exist, was not found
    /// (rate-limited, backing off while it does not help; returns whether it ran). Callers
    /// retry their operation once after it.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] while the token is still unreachable.
    pub async fn recover(&self, kid: Kid) -> Result<bool, HsmError> {
        self.blocking(move |core| core.force_reinitialise(&kid))
            .await
    }

    /// Whether the token can generate and sign with keys of `spec`, from the mechanism list
    /// it gave at start-up.
    ///
    /// # Errors
    /// [`Unsupported`], naming the algorithm and what the token lacks.
    pub fn check(&self, spec: KeySpec) -> Result<(), Unsupported> {
        self.core.mechanisms().check(spec)
    }

    /// Whether the token can sign with `alg` (keys that already exist).
    pub fn signs(&self, alg: Algorithm) -> bool {
        self.core.mechanisms().check_sign(alg).is_ok()
    }

    /// Reload the handle cache from the token in one listing pass.
    ///
    /// # Errors
    /// Token failures.
    pub async fn reload_cache(&self) -> Result<(), HsmError> {
        self.blocking(|core| core.reload_cache()).await
    }

    /// The halves present per kid as the handle cache knows them: right after
    /// [`Hsm::connect`] or [`Hsm::reload_cache`], the same as a fresh listing, without
    /// another pass over the token (about 10 s at 30,000 pairs on SoftHSM2).
    pub fn cached_halves(&self) -> std::collections::HashMap<Kid, (bool, bool)> {
        self.core.cached_halves()
    }

    /// Key pairs currently in the handle cache.
    pub fn cached_keys(&self) -> usize {
        self.core.cached()
    }

    /// Size of the session pool.
    pub fn pool_size(&self) -> usize {
        self.sessions
    }

    /// Sessions in use right now.
    pub fn pool_in_use(&self) -> usize {
        self.sessions - self.permits.available_permits()
    }

    /// Log out and close sessions (at shutdown).
    pub async fn close(&self) {
        let core = self.core.clone();
        let _ = tokio::task::spawn_blocking(move || core.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn fast_signatures_run_in_place_while_the_token_keeps_answering() {
        // Unknown mean (first signature of the algorithm): off the executor.
        assert!(!may_run_in_place(0, 0, 2, 0));
        // Nothing in place: a fast algorithm goes in place, however long ago the last returned.
        assert!(may_run_in_place(60, 0, 2, 10_000_000));
        assert!(may_run_in_place(60, 1, 2, 100));
        // At most one per worker thread.
        assert!(!may_run_in_place(60, 2, 2, 100));
        // The running call has not returned for too long: the token may hang; keep away.
        assert!(!may_run_in_place(60, 1, 2, IN_PLACE_STALL_US + 1));
        // A slow algorithm (RSA-4096, a network HSM) leaves the executor.
        assert!(!may_run_in_place(IN_PLACE_MAX_US + 1, 0, 2, 0));
    }

    #[test]
    fn the_mean_follows_the_token_and_in_place_calls_are_counted() {
        let f = FastPath::new();
        assert!(f.enter(Algorithm::ES256, 2).is_none(), "no mean yet");
        f.observe(Algorithm::ES256, Duration::from_micros(80));
        let a = f.enter(Algorithm::ES256, 2);
        let b = f.enter(Algorithm::ES256, 2);
        assert!(a.is_some() && b.is_some());
        assert!(
            f.enter(Algorithm::ES256, 2).is_none(),
            "both workers in place"
        );
        drop(a);
        assert!(
            f.enter(Algorithm::ES256, 2).is_some(),
            "a returned call frees its place"
        );
        drop(b);
        assert_eq!(f.running.load(Ordering::Relaxed), 0);
        // A token that turns slow moves its signatures off the executor; other algorithms
        // keep their own mean.
        for _ in 0..40 {
            f.observe(Algorithm::ES256, Duration::from_millis(5));
        }
        assert!(f.enter(Algorithm::ES256, 2).is_none());
        assert!(f.enter(Algorithm::EdDSA, 2).is_none(), "no mean yet");
        f.observe(Algorithm::EdDSA, Duration::from_micros(200));
        assert!(f.enter(Algorithm::EdDSA, 2).is_some());
    }
}
