//! The reconciler: makes the store and the HSM agree after a crash or a fault.
//!
//! It finishes or undoes `pending` keys (row written, object maybe made), replaces a
//! `current` or `next` key whose object is missing or whose stored public key differs from
//! the object's (found by the key registry), retries destroys that failed, and gives
//! certificates to keys that lack one. It runs at start-up and on the scheduler's timer;
//! `hsm-rotator reconcile --dry-run` shows what it would do.
//!
//! Objects are destroyed with care (issue 25: one start on the wrong store used to destroy
//! every key of the token). It only ever touches objects whose label carries this store's
//! id; objects of other stores are counted and left alone. Objects from before store ids
//! (legacy labels) are adopted by the store that knows their kid and otherwise reported,
//! never destroyed unless the operator asks (`--destroy-legacy`). An orphan of this store
//! (no row knows it) is destroyed only after it was seen in [`ORPHAN_MIN_PASSES`] passes
//! over [`Options::orphan_grace`] seconds, at most [`ORPHANS_PER_PASS`] a pass (unless
//! `--force`), never while the store has no keys at all, and each destruction is audited.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tracing::{info, warn};

use super::{KeyError, KeyService, KeyState, Kid, LabelOwner, RotationKind};
use crate::hsm::Hsm;

/// Passes an orphan must have been seen in before it may be destroyed.
pub const ORPHAN_MIN_PASSES: i64 = 3;

/// Orphans destroyed per pass at most (without `--force`).
pub const ORPHANS_PER_PASS: usize = 3;

/// Default of [`Options::orphan_grace`]: a day, time to notice a store restored from an
/// older backup before the keys made since are destroyed.
pub const DEFAULT_ORPHAN_GRACE: i64 = 86_400;

/// How a pass treats what it finds.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Only report; change nothing.
    pub dry_run: bool,
    /// Pending rows younger than this many seconds are left alone (another request or
    /// replica may still be generating them).
    pub min_pending_age: i64,
    /// Seconds an orphan of this store must have been known to the reconciler before it is
    /// destroyed.
    pub orphan_grace: i64,
    /// Destroy this store's orphans at once and without the per-pass limit.
    pub force: bool,
    /// Also destroy objects with the legacy label that no row knows.
    pub destroy_legacy: bool,
}

impl Options {
    /// A pass with the default orphan rules.
    pub fn new(dry_run: bool, min_pending_age: i64) -> Self {
        Self {
            dry_run,
            min_pending_age,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            force: false,
            destroy_legacy: false,
        }
    }
}

/// What one pass found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReconcileReport {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Pending keys whose object existed: made spare.
    pub pending_finished: Vec<String>,
    /// Pending keys whose object was missing or partial, or imports that did not finish:
    /// objects destroyed, row removed.
    pub pending_undone: Vec<String>,
    /// Objects of this store that no row knows, destroyed (seen long enough, or forced).
    pub orphans_destroyed: Vec<String>,
    /// Objects of this store that no row knows, kept until they have been seen in enough
    /// passes over the grace period (each with its first sighting, Unix seconds).
    pub orphans_waiting: Vec<(String, i64)>,
    /// Objects with the legacy label (from before store ids) that this store knows:
    /// relabelled with its id.
    pub adopted: Vec<String>,
    /// Objects with the legacy label that no row of this store knows: reported, kept
    /// (another deployment's, or lost rows); `--destroy-legacy` destroys them.
    pub legacy_unknown: Vec<String>,
    /// Objects of other stores on the token: never touched.
    pub foreign_objects: usize,
    /// Rows whose objects are missing, with their state.
    pub missing: Vec<(String, String)>,
    /// Live keys (next, current, previous) whose stored public key differs from the HSM's
    /// object for their kid, with their state: refused by the key registry (not
    /// published, not trusted, not used to sign). A current one is rotated away and a next
    /// one revoked and replaced (see `replaced`); a previous one stays refused until it
    /// retires.
    pub hsm_mismatch: Vec<(String, String)>,
    /// Current or next keys replaced because their object was missing or did not match.
    pub replaced: Vec<String>,
    /// Retired or revoked keys whose objects were destroyed on retry.
    pub destroys_retried: Vec<String>,
    /// Apps whose keys got certificates.
    pub certified_apps: Vec<String>,
}

impl ReconcileReport {
    /// Add this pass's repairs to `hsm_rotator_reconciler_actions_total`.
    fn count(&self) {
        use crate::metrics::reconciler_actions as n;
        n("pending_finished", self.pending_finished.len());
        n("pending_undone", self.pending_undone.len());
        n("orphan_destroyed", self.orphans_destroyed.len());
        n("adopted", self.adopted.len());
        n("missing", self.missing.len());
        n("hsm_mismatch", self.hsm_mismatch.len());
        n("replaced", self.replaced.len());
        n("destroy_retried", self.destroys_retried.len());
        n("certified", self.certified_apps.len());
    }

    /// Number of actions (or, in a dry run, findings); objects kept on purpose (waiting
    /// orphans, unknown legacy objects, other stores') are findings only in a dry run.
    pub fn actions(&self) -> usize {
        let kept = if self.dry_run {
            self.orphans_waiting.len() + self.legacy_unknown.len()
        } else {
            0
        };
        kept + self.pending_finished.len()
            + self.pending_undone.len()
            + self.orphans_destroyed.len()
            + self.adopted.len()
            + self.missing.len()
            + self.hsm_mismatch.len()
            + self.replaced.len()
            + self.destroys_retried.len()
            + self.certified_apps.len()
    }
}

/// One reconciliation pass.
///
/// # Errors
/// Store or HSM failures (the pass stops; the next one continues).
pub async fn reconcile(
    keys: &KeyService,
    hsm: &Hsm,
    opts: Options,
) -> Result<ReconcileReport, KeyError> {
    reconcile_with_progress(keys, hsm, opts, &|_, _, _| {}).await
}

/// The pass at start-up: like [`reconcile`], but the token's objects are taken from the
/// handle cache that [`Hsm::connect`] has just filled by listing the token, instead of
/// listing it a second time (at 30,000 key pairs on SoftHSM2 a listing takes about 10 s:
/// see BENCHMARKS.md). That listing predates the rows read here; a later one is not
/// needed, because a row is written before its objects (so every object listed has its row
/// by now, unless it was undone, and then destroying it again is harmless) and a row whose
/// objects look missing is checked against the token afresh before anything is done.
///
/// # Errors
/// As [`reconcile`].
pub async fn reconcile_at_start(
    keys: &KeyService,
    hsm: &Hsm,
    opts: Options,
) -> Result<ReconcileReport, KeyError> {
    let halves = hsm.cached_halves();
    let listed = (!halves.is_empty()).then(|| Listing {
        halves,
        legacy: hsm.cached_legacy(),
        foreign: hsm.foreign_objects(),
    });
    pass(keys, hsm, opts, &|_, _, _| {}, listed).await
}

/// Reports how far a pass is: `(phase, items done, items in the phase)`.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// [`reconcile`], calling `progress` as it goes (the CLI draws a bar from it).
///
/// # Errors
/// As [`reconcile`].
pub async fn reconcile_with_progress(
    keys: &KeyService,
    hsm: &Hsm,
    opts: Options,
    progress: Progress<'_>,
) -> Result<ReconcileReport, KeyError> {
    pass(keys, hsm, opts, progress, None).await
}

/// The token's objects as a pass sees them.
struct Listing {
    /// Halves per kid, of this store's and legacy objects.
    halves: HashMap<Kid, (bool, bool)>,
    /// Kids whose objects carry the legacy label.
    legacy: HashSet<Kid>,
    /// Objects of other stores.
    foreign: usize,
}

impl Listing {
    /// Read the token afresh, keeping only what this store may touch.
    async fn read(hsm: &Hsm, store_id: &str) -> Result<Self, KeyError> {
        let mut out = Self {
            halves: HashMap::new(),
            legacy: HashSet::new(),
            foreign: 0,
        };
        for o in hsm.list().await? {
            let Some(kid) = o.kid else {
                warn!(label = %o.label, "object with our label prefix but no 16-byte id; left alone");
                continue;
            };
            match &o.owner {
                Some(LabelOwner::Store(s)) if s == store_id => {}
                Some(LabelOwner::Legacy) => {
                    out.legacy.insert(kid);
                }
                Some(LabelOwner::Store(_)) => {
                    out.foreign += 1;
                    continue;
                }
                None => {
                    warn!(label = %o.label, "object with our label prefix in no known form; left alone");
                    continue;
                }
            }
            let e = out.halves.entry(kid).or_default();
            if o.private {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
        Ok(out)
    }
}

/// One pass; `listed`: the token's objects when the caller has a listing.
async fn pass(
    keys: &KeyService,
    hsm: &Hsm,
    opts: Options,
    progress: Progress<'_>,
    listed: Option<Listing>,
) -> Result<ReconcileReport, KeyError> {
    let dry_run = opts.dry_run;
    progress("listing the token", 0, 1);
    let store = keys.store();
    let store_id = store.store_id().await?;
    let now = keys.clock_now();
    let mut report = ReconcileReport {
        dry_run,
        ..ReconcileReport::default()
    };
    // Rows are read before the token is listed: a row that should have objects had them
    // before this read, so a listing taken after it cannot miss them unless they are gone.
    let rows_with_objects = store.keys_with_objects().await?;
    let listing = match listed {
        Some(l) => l,
        None => Listing::read(hsm, &store_id).await?,
    };
    report.foreign_objects = listing.foreign;
    let Listing {
        halves: mut objects,
        legacy,
        ..
    } = listing;

    // 1. Pending rows.
    let pending = store.keys_in_state(KeyState::Pending).await?;
    let total = pending.len();
    for (i, row) in pending.into_iter().enumerate() {
        progress("pending keys", i, total);
        if now - row.created_at < opts.min_pending_age {
            objects.remove(&row.kid);
            continue;
        }
        // An import that did not finish is undone, never made a spare: a software-born key
        // must not be handed to some app later.
        let complete = objects.get(&row.kid) == Some(&(true, true))
            && row.origin == crate::store::KeyOrigin::Generated;
        if complete {
            report.pending_finished.push(row.kid.to_string());
            if !dry_run {
                let public = hsm.public_key(row.kid, row.algorithm).await?;
                let spki = public
                    .to_spki_der()
                    .map_err(|e| KeyError::Inconsistent(e.to_string()))?;
                let fp = crate::pubkey::hex(&<sha2::Sha256 as sha2::Digest>::digest(&spki));
                store.mark_spare(row.kid, &spki, &fp).await?;
            }
        } else {
            report.pending_undone.push(row.kid.to_string());
            if !dry_run {
                if objects.contains_key(&row.kid) {
                    hsm.destroy(row.kid).await?;
                }
                store.delete_pending_key(row.kid).await?;
            }
        }
        objects.remove(&row.kid);
    }

    // 2. Objects no row knows, and legacy objects to adopt.
    let known = store.all_kids().await?;
    let store_has_no_keys = known.is_empty();
    let mut adopt: Vec<Kid> = legacy
        .iter()
        .filter(|k| known.contains(k))
        .copied()
        .collect();
    adopt.sort();
    for kid in adopt {
        report.adopted.push(kid.to_string());
        if !dry_run {
            hsm.adopt(kid).await?;
        }
    }
    let mut unknown: Vec<Kid> = objects
        .keys()
        .filter(|k| !known.contains(k))
        .copied()
        .collect();
    unknown.sort();
    let (unknown_legacy, orphans): (Vec<Kid>, Vec<Kid>) =
        unknown.into_iter().partition(|k| legacy.contains(k));
    for kid in unknown_legacy {
        if opts.destroy_legacy {
            destroy_orphan(
                keys,
                hsm,
                &mut report,
                kid,
                "legacy object no row knows; --destroy-legacy",
            )
            .await?;
        } else {
            warn!(%kid, "object with the legacy label that no row of this store knows; kept (reconcile --destroy-legacy removes it)");
            report.legacy_unknown.push(kid.to_string());
        }
    }
    orphan_pass(
        keys,
        hsm,
        opts,
        &mut report,
        &orphans,
        store_has_no_keys,
        now,
    )
    .await?;

    // 3. Rows whose objects are missing.
    let total = rows_with_objects.len();
    for (i, row) in rows_with_objects.into_iter().enumerate() {
        progress("checking keys against the token", i, total);
        if objects.get(&row.kid) == Some(&(true, true)) {
            continue;
        }
        // Confirm against the store and the token as they are now: the key may have moved
        // on (revoked and destroyed) since the snapshot.
        let Some(row) = store.key(row.kid).await?.filter(|r| r.state.has_object()) else {
            continue;
        };
        if hsm.halves(row.kid).await? == (true, true) {
            continue;
        }
        report
            .missing
            .push((row.kid.to_string(), row.state.to_string()));
        warn!(kid = %row.kid, state = %row.state, "key row without its HSM objects");
        if dry_run {
            continue;
        }
        match (row.state, row.app_id.as_deref()) {
            (KeyState::Spare, _) => {
                store.discard_spare(row.kid, now).await?;
            }
            // It cannot sign: the next key takes over now; as `previous` the old key keeps
            // verifying from its public half, so no token stops verifying.
            (KeyState::Current, Some(app)) => {
                keys.rotate(app, RotationKind::Repair).await?;
                report.replaced.push(row.kid.to_string());
            }
            // It never signed: revoke it and publish a new next key.
            (KeyState::Next, Some(app)) => {
                keys.revoke_key(app, row.kid).await?;
                report.replaced.push(row.kid.to_string());
            }
            // A previous key only verifies, from its public half; nothing to do.
            _ => {}
        }
    }

    // 3b. Rows whose public key differs from the HSM's (found by the key registry when it
    // loaded them). The HSM's object is the truth: the row cannot be trusted.
    for (kid, why) in keys.registry().mismatched() {
        report
            .hsm_mismatch
            .push((kid.to_string(), why.state.to_string()));
        if dry_run {
            continue;
        }
        // Act on the row as it is now (it may have moved on since the registry loaded it).
        let Some(row) = store.key(kid).await?.filter(|r| r.state == why.state) else {
            continue;
        };
        match (row.state, row.app_id.as_deref()) {
            // It must not sign: the next key, published in advance, takes over now; the
            // refused key, now previous, stays out of the JWKS.
            (KeyState::Current, Some(app)) => {
                keys.rotate(app, RotationKind::Repair).await?;
                report.replaced.push(kid.to_string());
            }
            // Never signed: revoke it (its object is destroyed) and publish a new next key.
            (KeyState::Next, Some(app)) => {
                keys.revoke_key(app, kid).await?;
                report.replaced.push(kid.to_string());
            }
            _ => {}
        }
    }

    // 4. Destroys that failed earlier.
    let dead = store.undestroyed_dead_keys().await?;
    let total = dead.len();
    for (i, row) in dead.into_iter().enumerate() {
        progress("retrying destroys", i, total);
        report.destroys_retried.push(row.kid.to_string());
        if !dry_run {
            hsm.destroy(row.kid).await?;
            store.mark_destroyed(row.kid, now).await?;
        }
    }

    // 5. Certificates.
    let mut apps: Vec<String> = store
        .keys_with_objects()
        .await?
        .into_iter()
        .filter(|k| k.state.published() && k.cert.is_none())
        .filter_map(|k| k.app_id)
        .collect();
    apps.sort();
    apps.dedup();
    let total = apps.len();
    for (i, app) in apps.into_iter().enumerate() {
        progress("certificates", i, total);
        if !dry_run && keys.certify(&app).await {
            keys.registry().app_changed(&app).await;
        }
        report.certified_apps.push(app);
    }

    if report.actions() > 0 {
        info!(
            dry_run,
            actions = report.actions(),
            ?report,
            "reconciler pass"
        );
        if !dry_run {
            report.count();
            let details = serde_json::to_value(&report).unwrap_or_default();
            keys.audit().record("reconcile", "hsm", "ok", details).await;
        }
    }
    Ok(report)
}

/// Orphans of this store: count this pass's sightings, destroy those seen long enough
/// (at most [`ORPHANS_PER_PASS`]), report the rest. Nothing is destroyed while the store
/// has no keys at all: that is a store that lost its rows (or a wrong one), not orphans.
async fn orphan_pass(
    keys: &KeyService,
    hsm: &Hsm,
    opts: Options,
    report: &mut ReconcileReport,
    orphans: &[Kid],
    store_has_no_keys: bool,
    now: i64,
) -> Result<(), KeyError> {
    let store = keys.store();
    let sightings = if opts.dry_run {
        HashMap::new()
    } else {
        store.sight_orphans(orphans, now).await?
    };
    let mut destroyed = 0;
    for &kid in orphans {
        let (first_seen, passes) = sightings.get(&kid).copied().unwrap_or((now, 1));
        let due = passes >= ORPHAN_MIN_PASSES && now - first_seen >= opts.orphan_grace;
        let allowed = opts.force || (due && destroyed < ORPHANS_PER_PASS);
        if store_has_no_keys || !allowed {
            report.orphans_waiting.push((kid.to_string(), first_seen));
            continue;
        }
        let reason = if opts.force {
            "orphan of this store; reconcile --force".to_owned()
        } else {
            format!(
                "orphan of this store, seen in {passes} passes over {} s",
                now - first_seen
            )
        };
        destroy_orphan(keys, hsm, report, kid, &reason).await?;
        destroyed += 1;
    }
    if store_has_no_keys && !orphans.is_empty() {
        warn!(
            objects = orphans.len(),
            "the store has no keys but the token has objects of its id; none destroyed"
        );
    } else if !report.orphans_waiting.is_empty() {
        info!(
            waiting = report.orphans_waiting.len(),
            grace_s = opts.orphan_grace,
            "objects of this store that no row knows; destroyed once seen long enough"
        );
    }
    Ok(())
}

/// Destroy one object no row knows, and audit it with the reason.
async fn destroy_orphan(
    keys: &KeyService,
    hsm: &Hsm,
    report: &mut ReconcileReport,
    kid: Kid,
    reason: &str,
) -> Result<(), KeyError> {
    report.orphans_destroyed.push(kid.to_string());
    if report.dry_run {
        return Ok(());
    }
    hsm.destroy(kid).await?;
    keys.store().forget_orphan(kid).await?;
    warn!(%kid, reason, "destroyed an HSM object no row knows");
    keys.audit()
        .record(
            "hsm.orphan_destroyed",
            &kid.to_string(),
            "ok",
            serde_json::json!({"kid": kid.to_string(), "reason": reason}),
        )
        .await;
    Ok(())
}
