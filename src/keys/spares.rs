//! The spare-key pool: key pairs generated ahead of need, so creating an app or rotating
//! never waits for key generation (RSA-4096 takes seconds).
//!
//! A spare is made crash-safely: its row is written (`pending`) before the HSM object,
//! then marked `spare` with its public key. A background task keeps `target` spares per
//! key spec in use; a request that finds the pool empty generates one itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::Kid;
use crate::alg::{Algorithm, KeySpec};
use crate::clock::Clock;
use crate::hsm::Hsm;
use crate::store::Store;

use super::service::KeyError;

/// The spec new apps get by default.
pub const DEFAULT_SPEC: KeySpec = KeySpec {
    alg: Algorithm::RS256,
    rsa_bits: 2048,
};

/// Handle on the pool.
#[derive(Clone)]
pub struct SparePool {
    store: Store,
    hsm: Hsm,
    clock: Arc<dyn Clock>,
    target: usize,
    wake: Arc<Notify>,
    audit: crate::audit::Audit,
    /// One refill at a time: the wake-up loop and the scheduler's tick would otherwise both
    /// see the pool short and both fill it.
    refilling: Arc<tokio::sync::Mutex<()>>,
    /// Per spec: held by a request from counting the spares it needs until its transaction
    /// has taken them, so that requests of one process never take each other's spares.
    claims: Arc<std::sync::Mutex<HashMap<KeySpec, Arc<tokio::sync::Mutex<()>>>>>,
    /// Set at shutdown: background refills stop between two keys (an RSA-4096 generation
    /// takes seconds; a refill of several kept SIGTERM waiting for 16 s).
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl SparePool {
    pub(crate) fn new(
        store: Store,
        hsm: Hsm,
        clock: Arc<dyn Clock>,
        target: usize,
        audit: crate::audit::Audit,
    ) -> Self {
        Self {
            store,
            hsm,
            clock,
            target,
            wake: Arc::new(Notify::new()),
            audit,
            refilling: Arc::default(),
            claims: Arc::default(),
            stopped: Arc::default(),
        }
    }

    /// Stop background refills (at shutdown): no new key is started; one in flight ends.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Spares kept per spec.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Ask the refill task to top up now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Make one spare of `spec`: row first, then the HSM object, then the public key.
    ///
    /// # Errors
    /// Store or HSM failures (a failed generation leaves no row and no object);
    /// [`crate::hsm::HsmError::Algorithm`] when the token cannot make `spec` at all.
    pub async fn generate(&self, spec: KeySpec) -> Result<Kid, KeyError> {
        self.hsm.check(spec).map_err(crate::hsm::HsmError::from)?;
        let kid = Kid::generate();
        self.store
            .insert_pending_key(kid, spec, self.clock.now())
            .await?;
        let public = match self.hsm.generate(kid, spec).await {
            Ok(p) => p,
            Err(e) => {
                let _ = self.store.delete_pending_key(kid).await;
                return Err(e.into());
            }
        };
        let spki = public
            .to_spki_der()
            .map_err(|e| KeyError::Inconsistent(format!("public key of {kid}: {e}")))?;
        let fingerprint = crate::pubkey::hex(&<sha2::Sha256 as sha2::Digest>::digest(&spki));
        let recorded = self.store.mark_spare(kid, &spki, &fingerprint).await;
        if matches!(recorded, Ok(true)) {
            self.audit
                .record(
                    "key.create",
                    &kid.to_string(),
                    "ok",
                    serde_json::json!({"spec": spec.to_string(), "fingerprint": fingerprint}),
                )
                .await;
            return Ok(kid);
        }
        // Compensate: the object must not outlive a row that does not describe it. If the
        // store is down this may fail too; the reconciler then finishes the pending row.
        let _ = self.hsm.destroy(kid).await;
        let _ = self.store.delete_pending_key(kid).await;
        match recorded {
            Err(e) => Err(e.into()),
            _ => Err(KeyError::Inconsistent(format!(
                "spare {kid} could not be recorded"
            ))),
        }
    }

    /// Wait for the right to take spares of `spec`: hold the guard from [`Self::ensure`] until
    /// the transaction that takes them commits. Without it, concurrent requests counted the
    /// same spares and all but one came up short, again on every retry (seen filling the
    /// scale bench with eight concurrent clients: answers "spare keys kept running out").
    /// Requests in other replicas can still take them; the callers' retries cover that.
    pub async fn claim(&self, spec: KeySpec) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(spec)
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Make sure at least `n` spares of `spec` exist, generating the missing ones now.
    ///
    /// # Errors
    /// Store or HSM failures.
    pub async fn ensure(&self, spec: KeySpec, n: usize) -> Result<(), KeyError> {
        let have = self.count(spec).await?;
        for _ in have..n {
            warn!(%spec, "spare pool empty; generating on the request path");
            self.generate(spec).await?;
        }
        Ok(())
    }

    async fn count(&self, spec: KeySpec) -> Result<usize, KeyError> {
        Ok(self
            .store
            .spare_counts()
            .await?
            .into_iter()
            .find(|(s, _)| *s == spec)
            .map_or(0, |(_, n)| n))
    }

    /// Top up every spec in use (and the default) to the target. Returns keys made.
    ///
    /// # Errors
    /// Store or HSM failures.
    pub async fn refill(&self) -> Result<usize, KeyError> {
        let _one_at_a_time = self.refilling.lock().await;
        let mut specs: HashSet<KeySpec> = self.store.specs_in_use().await?.into_iter().collect();
        specs.insert(DEFAULT_SPEC);
        let counts = self.store.spare_counts().await?;
        let mut made = 0;
        for spec in specs {
            // An app's algorithm the token lacks (logged at start-up, refused on change):
            // asking again on every refill would fail the same way every time.
            if self.hsm.check(spec).is_err() {
                debug!(%spec, "no spares: the token cannot make these keys");
                continue;
            }
            let have = counts
                .iter()
                .find(|(s, _)| *s == spec)
                .map_or(0, |(_, n)| *n);
            for _ in have..self.target {
                if self.is_stopped() {
                    return Ok(made);
                }
                self.generate(spec).await?;
                made += 1;
            }
        }
        if made > 0 {
            info!(made, "spare keys generated");
        }
        Ok(made)
    }

    /// Refill now, then on every wake-up (a spare was taken) until the process ends. The
    /// scheduler's tick refills too, so a failed refill here is retried there.
    pub async fn run(self) {
        while !self.is_stopped() {
            if let Err(e) = self.refill().await {
                warn!(error = %e, "spare refill failed; will retry");
            }
            self.wake.notified().await;
        }
    }
}
