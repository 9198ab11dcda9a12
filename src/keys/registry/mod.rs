//! The in-memory view that the hot paths read: apps, access-token digests, live public
//! keys with their verifiers, and revocation state (deny-listed jtis, subject cut-offs).
//!
//! Introspection and issuance read only this (and the HSM for signing); the store is
//! consulted on a miss. Every write path updates it after its transaction commits, by
//! re-reading the rows it changed, so it never holds state the store does not.
//!
//! Keys are trusted only as the HSM holds them: see [`verify`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ulid::Ulid;

mod verify;

use verify::Checked;
pub use verify::Refused;

use super::{KeyState, Kid};
use crate::audit::Audit;
use crate::hsm::Hsm;
use crate::jwt::verify::Verifier;
use crate::pubkey::PublicKey;
use crate::store::{AppRow, Change, ChangeListener, Heard, KeyRow, Store, StoreError};

/// A published key (next, current or previous) ready to verify.
#[derive(Debug)]
pub struct LiveKey {
    /// Its row.
    pub row: KeyRow,
    /// Its public half.
    pub public: PublicKey,
    /// Its verifier.
    pub verifier: Verifier,
}

/// Deny-listed jtis remembered for the status list publisher before it gives up naming
/// them and rebuilds every app instead.
const MAX_REVOKED_JTIS: usize = 100_000;

/// What may have revoked tokens since the status list publisher last looked (see
/// [`Registry::take_revoked`]): only the apps named here need their lists rebuilt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Every app (a full reload, or too many jtis to name).
    pub all: bool,
    /// Apps whose cut-offs, keys or row changed.
    pub apps: HashSet<String>,
    /// Deny-listed jtis (their app is in the ledger; the notice does not carry it).
    pub jtis: Vec<String>,
}

impl Revoked {
    /// Whether nothing was revoked.
    pub fn is_empty(&self) -> bool {
        !self.all && self.apps.is_empty() && self.jtis.is_empty()
    }

    /// Add `other` (a pass that failed puts back what it took).
    pub fn merge(&mut self, other: Self) {
        self.all |= other.all;
        self.apps.extend(other.apps);
        self.jtis.extend(other.jtis);
        if self.jtis.len() > MAX_REVOKED_JTIS {
            self.all = true;
            self.jtis = Vec::new();
        }
    }
}

/// What one revocation touched.
enum Grain<'a> {
    All,
    App(&'a str),
    Jti(&'a str),
}

#[derive(Default)]
struct Inner {
    root_digest: Option<String>,
    apps: HashMap<String, Arc<AppRow>>,
    by_token: HashMap<String, String>,
    keys: HashMap<Kid, Arc<LiveKey>>,
    app_keys: HashMap<String, Vec<Kid>>,
    denied: HashMap<String, i64>,
    subjects: HashMap<(String, String), Ulid>,
    /// Live key rows held back because the HSM did not confirm them (see [`Refused`]).
    refused: HashMap<Kid, Refused>,
}

/// Reads a reload retries when changes land while it reads.
const RELOAD_ATTEMPTS: usize = 5;

/// Background retries of a reload that failed after a committed change (with back-off
/// up to 30 s: about an hour in all).
const RELOAD_RETRIES: usize = 130;

/// Setting key of the root-key digest.
pub const ROOT_SETTING: &str = "root_key_sha256";

/// In-memory state shared by every request.
pub struct Registry {
    store: Store,
    hsm: Hsm,
    audit: Audit,
    /// SHA-256 of the SPKI the HSM confirmed, per kid: a reload trusts a row whose SPKI is
    /// unchanged without asking the token again. Only confirmations are kept.
    confirmed: Mutex<HashMap<Kid, [u8; 32]>>,
    /// Mismatches this process has already counted and audited.
    reported: Mutex<HashSet<Kid>>,
    inner: RwLock<Inner>,
    /// Bumped by every change to `inner`. A reload that read the store while a change was
    /// applied would install older state over newer, so it retries instead.
    epoch: std::sync::atomic::AtomicU64,
    /// Every change that may revoke tokens (deny-list, cut-offs, key states, an app
    /// reloaded) since the status list publisher last took them.
    revocations: Mutex<Revoked>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn live_key(row: KeyRow) -> Result<LiveKey, StoreError> {
    let spki = row
        .spki
        .as_deref()
        .ok_or_else(|| StoreError::corrupt(format!("key {} has no public key", row.kid)))?;
    let public = PublicKey::from_spki_der(spki).map_err(|e| StoreError::corrupt(e.to_string()))?;
    let verifier =
        Verifier::new(&public, row.algorithm).map_err(|e| StoreError::corrupt(e.to_string()))?;
    Ok(LiveKey {
        row,
        public,
        verifier,
    })
}

impl Registry {
    /// Load everything from the store, each live key checked against `hsm` (mismatches are
    /// audited through `audit`).
    ///
    /// # Errors
    /// Store failures.
    pub async fn load(store: Store, hsm: Hsm, audit: Audit, now: i64) -> Result<Self, StoreError> {
        let r = Self {
            store,
            hsm,
            audit,
            confirmed: Mutex::default(),
            reported: Mutex::default(),
            inner: RwLock::new(Inner::default()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            revocations: Mutex::default(),
        };
        r.reload_all(now).await?;
        Ok(r)
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        let guard = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Take what may have revoked tokens since the last call (the status list publisher's
    /// work for its next pass).
    pub fn take_revoked(&self) -> Revoked {
        std::mem::take(
            &mut *self
                .revocations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Give back what [`Self::take_revoked`] returned when it could not all be handled.
    pub fn put_back_revoked(&self, r: Revoked) {
        self.revocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .merge(r);
    }

    /// Something that may revoke tokens was applied: note what it touched for the status
    /// list publisher, and, when `here`, mark the request being served as a revocation (it
    /// is told when the status lists will show it).
    fn revoked(&self, grain: Grain<'_>, here: bool) {
        let mut r = Revoked::default();
        match grain {
            Grain::All => r.all = true,
            Grain::App(a) => {
                r.apps.insert(a.to_owned());
            }
            Grain::Jti(j) => r.jtis.push(j.to_owned()),
        }
        self.put_back_revoked(r);
        if here {
            crate::statuslist::note_revocation();
        }
    }

    /// Write access for a reload that read the store at `epoch`: `None` if something
    /// changed since (the caller reads again), unless it has retried enough.
    fn write_if_unchanged(
        &self,
        epoch: u64,
        attempt: usize,
    ) -> Option<RwLockWriteGuard<'_, Inner>> {
        let guard = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.epoch() != epoch && attempt < RELOAD_ATTEMPTS {
            return None;
        }
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(guard)
    }

    /// Re-read the whole state (start-up, and after a lost change notification).
    ///
    /// # Errors
    /// Store failures.
    pub async fn reload_all(&self, now: i64) -> Result<(), StoreError> {
        for attempt in 1.. {
            let epoch = self.epoch();
            let (inner, mismatched) = self.read_all(now).await?;
            let installed = match self.write_if_unchanged(epoch, attempt) {
                Some(mut guard) => {
                    // Confirmations of keys no longer live are dropped with them.
                    lock(&self.confirmed).retain(|kid, _| inner.keys.contains_key(kid));
                    *guard = inner;
                    true
                }
                None => false,
            };
            if installed {
                self.revoked(Grain::All, false);
                self.report(mismatched).await;
                return Ok(());
            }
        }
        Ok(())
    }

    async fn read_all(&self, now: i64) -> Result<(Inner, Vec<(KeyRow, Refused)>), StoreError> {
        let root = self.store.setting(ROOT_SETTING).await?;
        let apps = self.store.apps().await?;
        let keys = self.store.live_keys().await?;
        let denied = self.store.denied_jtis(now).await?;
        let subjects = self.store.subject_cutoffs(now).await?;
        let mut inner = Inner {
            root_digest: root,
            ..Inner::default()
        };
        for a in apps {
            inner
                .by_token
                .insert(a.access_token_sha256.clone(), a.id.clone());
            inner.apps.insert(a.id.clone(), Arc::new(a));
        }
        let mut parsed = Vec::with_capacity(keys.len());
        for k in keys {
            if k.app_id.is_none() {
                continue;
            }
            let kid = k.kid;
            match live_key(k) {
                Ok(l) => parsed.push(l),
                Err(e) => tracing::error!(%kid, error = %e, "skipping unreadable key row"),
            }
        }
        let checked = self.check(parsed).await;
        for l in checked.live {
            let Some(app) = l.row.app_id.clone() else {
                continue;
            };
            let kid = l.row.kid;
            inner.keys.insert(kid, Arc::new(l));
            inner.app_keys.entry(app).or_default().push(kid);
        }
        let mut mismatched = Vec::new();
        for (row, why) in checked.refused {
            inner.refused.insert(row.kid, why.clone());
            if why.mismatch {
                mismatched.push((row, why));
            }
        }
        for v in inner.app_keys.values_mut() {
            v.sort_unstable_by(|a, b| b.cmp(a));
        }
        for (jti, _, exp) in denied {
            inner.denied.insert(jti, exp);
        }
        for (app, sub, cutoff) in subjects {
            if let Ok(c) = Ulid::from_string(&cutoff) {
                inner.subjects.insert((app, sub), c);
            }
        }
        Ok((inner, mismatched))
    }

    /// Re-read one app and its keys (after a change to either).
    ///
    /// # Errors
    /// Store failures.
    pub async fn reload_app(&self, app_id: &str) -> Result<(), StoreError> {
        for attempt in 1.. {
            let epoch = self.epoch();
            let app = self.store.app(app_id).await?;
            let keys = match &app {
                Some(_) => self.store.app_keys(app_id).await?,
                None => Vec::new(),
            };
            let mut parsed = Vec::new();
            for k in keys.into_iter().filter(|k| k.state.verifies()) {
                parsed.push(live_key(k)?);
            }
            let Checked { live, refused } = self.check(parsed).await;
            let Some(mismatched) = self.install_app(epoch, attempt, app_id, app, live, refused)
            else {
                continue;
            };
            self.revoked(Grain::App(app_id), false);
            self.report(mismatched).await;
            return Ok(());
        }
        Ok(())
    }

    /// Replace one app and its keys in memory, unless the registry changed since `epoch`
    /// (then `None`: read again). Returns the mismatches to report.
    fn install_app(
        &self,
        epoch: u64,
        attempt: usize,
        app_id: &str,
        app: Option<AppRow>,
        live: Vec<LiveKey>,
        refused: Vec<(KeyRow, Refused)>,
    ) -> Option<Vec<(KeyRow, Refused)>> {
        let mut inner = self.write_if_unchanged(epoch, attempt)?;
        if let Some(old) = inner.apps.remove(app_id) {
            inner.by_token.remove(&old.access_token_sha256);
        }
        for kid in inner.app_keys.remove(app_id).unwrap_or_default() {
            inner.keys.remove(&kid);
        }
        inner.refused.retain(|_, r| r.app_id != app_id);
        let mut mismatched = Vec::new();
        if app.is_some() {
            for (row, why) in refused {
                inner.refused.insert(row.kid, why.clone());
                if why.mismatch {
                    mismatched.push((row, why));
                }
            }
        }
        if let Some(a) = app {
            inner
                .by_token
                .insert(a.access_token_sha256.clone(), a.id.clone());
            let mut kids: Vec<Kid> = live.iter().map(|l| l.row.kid).collect();
            kids.sort_unstable_by(|a, b| b.cmp(a));
            for l in live {
                inner.keys.insert(l.row.kid, Arc::new(l));
            }
            inner.app_keys.insert(a.id.clone(), kids);
            inner.apps.insert(a.id.clone(), Arc::new(a));
        }
        Some(mismatched)
    }

    /// The audit log writer (shared with the key service).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Whether a live key row of the store is held back (see [`Refused`]).
    pub fn refused(&self, kid: &Kid) -> Option<Refused> {
        self.read().refused.get(kid).cloned()
    }

    /// Live key rows whose HSM object holds a different public key, with why, by kid.
    pub fn mismatched(&self) -> Vec<(Kid, Refused)> {
        let mut v: Vec<(Kid, Refused)> = self
            .read()
            .refused
            .iter()
            .filter(|(_, r)| r.mismatch)
            .map(|(k, r)| (*k, r.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// The app's `current` key when the HSM refused it (signing then fails clearly).
    pub fn refused_current(&self, app_id: &str) -> Option<Kid> {
        self.read()
            .refused
            .iter()
            .find(|(_, r)| r.app_id == app_id && r.state == KeyState::Current && r.mismatch)
            .map(|(k, _)| *k)
    }

    /// An app.
    pub fn app(&self, id: &str) -> Option<Arc<AppRow>> {
        self.read().apps.get(id).cloned()
    }

    /// Every app.
    pub fn apps(&self) -> Vec<Arc<AppRow>> {
        self.read().apps.values().cloned().collect()
    }

    /// The app whose access token has this digest; the store is asked on a miss.
    ///
    /// # Errors
    /// Store failures.
    pub async fn app_by_token(&self, digest: &str) -> Result<Option<Arc<AppRow>>, StoreError> {
        if let Some(app) = {
            let inner = self.read();
            inner
                .by_token
                .get(digest)
                .and_then(|id| inner.apps.get(id))
                .cloned()
        } {
            return Ok(Some(app));
        }
        match self.store.app_by_token(digest).await? {
            Some(a) => {
                let id = a.id.clone();
                self.reload_app(&id).await?;
                Ok(self.app(&id))
            }
            None => Ok(None),
        }
    }

    /// The digest of the root key, if one was set.
    pub fn root_digest(&self) -> Option<String> {
        self.read().root_digest.clone()
    }

    /// Replace the root-key digest held in memory.
    pub fn set_root_digest(&self, digest: String) {
        self.write().root_digest = Some(digest);
    }

    /// A published key.
    pub fn key(&self, kid: &Kid) -> Option<Arc<LiveKey>> {
        self.read().keys.get(kid).cloned()
    }

    /// A published key; the store is asked on a miss (a key made by another replica).
    ///
    /// # Errors
    /// Store failures.
    pub async fn key_or_load(&self, kid: &Kid) -> Result<Option<Arc<LiveKey>>, StoreError> {
        if let Some(k) = self.key(kid) {
            return Ok(Some(k));
        }
        // Held back at the last reload: asked again at the next one, not per request (a
        // token naming such a kid must not make each request read the store and the HSM).
        if self.read().refused.contains_key(kid) {
            return Ok(None);
        }
        match self.store.key(*kid).await? {
            Some(row) if row.state.verifies() => {
                if let Some(app) = row.app_id.clone() {
                    self.reload_app(&app).await?;
                }
                Ok(self.key(kid))
            }
            _ => Ok(None),
        }
    }

    /// An app's published keys, newest first.
    pub fn published(&self, app_id: &str) -> Vec<Arc<LiveKey>> {
        let inner = self.read();
        inner
            .app_keys
            .get(app_id)
            .map(|kids| {
                kids.iter()
                    .filter_map(|k| inner.keys.get(k).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The app's `current` key.
    pub fn current(&self, app_id: &str) -> Option<Arc<LiveKey>> {
        self.published(app_id)
            .into_iter()
            .find(|k| k.row.state == KeyState::Current)
    }

    /// Whether `jti` is deny-listed.
    pub fn is_denied(&self, jti: &str) -> bool {
        self.read().denied.contains_key(jti)
    }

    /// Deny-list `jti` until `exp` (after the store has it).
    pub fn deny(&self, jti: String, exp: i64) {
        self.write().denied.insert(jti.clone(), exp);
        self.revoked(Grain::Jti(&jti), true);
    }

    /// The cut-off of a subject, if it logged out.
    pub fn subject_cutoff(&self, app_id: &str, sub_sha256: &str) -> Option<Ulid> {
        self.read()
            .subjects
            .get(&(app_id.to_owned(), sub_sha256.to_owned()))
            .copied()
    }

    /// Record a subject's logout (after the store has it).
    pub fn set_subject_cutoff(&self, app_id: &str, sub_sha256: &str, cutoff: Ulid) {
        self.write()
            .subjects
            .insert((app_id.to_owned(), sub_sha256.to_owned()), cutoff);
        self.revoked(Grain::App(app_id), true);
    }

    /// An app or its keys changed here (the transaction has committed): reload it and tell
    /// the other replicas.
    ///
    /// The change cannot be undone any more, so a failed reload is not the caller's error:
    /// it is logged and retried in the background until it succeeds (a store outage), and
    /// the other replicas are told either way. Callers that take keys or tokens out of
    /// service apply that in memory first ([`Self::withdraw`], [`Self::patch_app`]), so
    /// nothing that must stop working keeps working while the reload is pending.
    pub async fn app_changed(self: &Arc<Self>, app_id: &str) {
        if let Err(e) = self.reload_app(app_id).await {
            tracing::warn!(app_id, error = %e, "reload after a committed change failed; retrying in the background");
            let this = Arc::clone(self);
            let app = app_id.to_owned();
            tokio::spawn(async move {
                let mut delay = std::time::Duration::from_millis(250);
                for _ in 0..RELOAD_RETRIES {
                    tokio::time::sleep(delay).await;
                    match this.reload_app(&app).await {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(app_id = %app, error = %e, "reload still failing"),
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
                tracing::error!(app_id = %app, "gave up reloading an app; restart the service to resync");
            });
        }
        self.store.publish(&Change::App(app_id.to_owned())).await;
    }

    /// Take keys out of service at once (revocation, deletion): they stop signing and
    /// verifying here before the store is re-read, so a failed reload cannot leave a revoked
    /// key usable.
    pub fn withdraw(&self, kids: &[Kid]) {
        let mut inner = self.write();
        let mut apps = HashSet::new();
        for kid in kids {
            let Some(k) = inner.keys.remove(kid) else {
                continue;
            };
            if let Some(app) = &k.row.app_id
                && let Some(v) = inner.app_keys.get_mut(app)
            {
                v.retain(|x| x != kid);
                apps.insert(app.clone());
            }
        }
        drop(inner);
        for app in &apps {
            self.revoked(Grain::App(app), true);
        }
        if apps.is_empty() && !kids.is_empty() {
            // Not in memory here; the reload that follows marks the app.
            crate::statuslist::note_revocation();
        }
    }

    /// Apply a committed change to an app's row in memory, ahead of the reload that
    /// [`Self::app_changed`] does: a new cut-off (flush, emergency rotation) or access-token
    /// digest (the old token stops working at once).
    pub fn patch_app(&self, app_id: &str, patch: impl FnOnce(&mut AppRow)) {
        let mut guard = self.write();
        let inner = &mut *guard;
        let Some(a) = inner.apps.get_mut(app_id) else {
            return;
        };
        let mut row = (**a).clone();
        patch(&mut row);
        let cut = row.cutoff != a.cutoff;
        if row.access_token_sha256 != a.access_token_sha256 {
            inner.by_token.remove(&a.access_token_sha256);
            inner
                .by_token
                .insert(row.access_token_sha256.clone(), row.id.clone());
        }
        *a = Arc::new(row);
        drop(guard);
        if cut {
            self.revoked(Grain::App(app_id), true);
        }
    }

    /// A token id was deny-listed here (after the store has it): apply and publish.
    pub async fn denied(&self, jti: String, exp: i64) {
        self.deny(jti.clone(), exp);
        self.store.publish(&Change::Jti(jti, exp)).await;
    }

    /// A subject logged out here (after the store has it): apply and publish.
    pub async fn subject_logged_out(&self, app_id: &str, sub_sha256: &str, cutoff: Ulid) {
        self.set_subject_cutoff(app_id, sub_sha256, cutoff);
        self.store
            .publish(&Change::Subject(
                app_id.to_owned(),
                sub_sha256.to_owned(),
                cutoff.to_string(),
            ))
            .await;
    }

    /// The root key changed here: apply and publish.
    pub async fn root_changed(&self, digest: String) {
        self.set_root_digest(digest);
        self.store.publish(&Change::Root).await;
    }

    /// Apply a change another replica published.
    ///
    /// # Errors
    /// Store failures.
    pub async fn apply(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::App(id) => self.reload_app(&id).await,
            Change::Jti(jti, exp) => {
                self.deny(jti, exp);
                Ok(())
            }
            Change::Subject(app, sub, cutoff) => {
                if let Ok(c) = Ulid::from_string(&cutoff) {
                    self.set_subject_cutoff(&app, &sub, c);
                }
                Ok(())
            }
            Change::Root => {
                if let Some(d) = self.store.setting(ROOT_SETTING).await? {
                    self.set_root_digest(d);
                }
                Ok(())
            }
        }
    }

    /// Follow other replicas' changes until the process ends: apply each one; reload
    /// everything after a reconnection (changes may have been missed) and every
    /// `full_reload` (a bound on staleness even if a notification is lost).
    pub async fn follow(
        self: Arc<Self>,
        url: String,
        clock: Arc<dyn crate::clock::Clock>,
        full_reload: std::time::Duration,
    ) {
        let mut listener = ChangeListener::new(&url);
        let mut last_full = std::time::Instant::now();
        loop {
            let heard = tokio::time::timeout(full_reload, listener.next()).await;
            let result = match heard {
                Ok(Ok(Heard::Change(c))) => self.apply(c).await,
                Ok(Ok(Heard::Reconnected)) => {
                    last_full = std::time::Instant::now();
                    self.reload_all(clock.now()).await
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "change listener lost the database; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    Ok(())
                }
                Err(_) => Ok(()),
            };
            if last_full.elapsed() >= full_reload {
                last_full = std::time::Instant::now();
                if let Err(e) = self.reload_all(clock.now()).await {
                    tracing::warn!(error = %e, "periodic reload failed; will retry");
                }
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not apply a change; the next reload will");
            }
        }
    }

    /// Drop deny-list entries past their expiry, and subject cut-offs that no live token
    /// can fall under any more (older than the app's longest token or refresh lifetime), or
    /// whose app is gone.
    pub fn purge(&self, now: i64) {
        let mut guard = self.write();
        let inner = &mut *guard;
        inner.denied.retain(|_, exp| *exp > now);
        let apps = &inner.apps;
        inner.subjects.retain(|(app, _), cutoff| {
            apps.get(app).is_some_and(|a| {
                let since = i64::try_from(cutoff.timestamp_ms() / 1000).unwrap_or(i64::MAX);
                since.saturating_add(a.token_ttl.max(a.refresh_ttl)) > now
            })
        });
    }

    /// Numbers for metrics and health: (apps, live keys, denied jtis).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let i = self.read();
        (i.apps.len(), i.keys.len(), i.denied.len())
    }
}
