//! The reconciler: makes the store and the HSM agree after a crash or a fault.
//!
//! It finishes or undoes `pending` keys (row written, object maybe made), destroys objects
//! with our label prefix that no row knows (orphans), replaces a `current` or `next` key
//! whose object is missing, retries destroys that failed, and gives certificates to keys
//! that lack one. It runs at start-up and on the scheduler's timer; `hsm-rotator reconcile
//! --dry-run` shows what it would do.

use std::collections::HashMap;

use serde::Serialize;
use tracing::{info, warn};

use super::{KeyError, KeyService, KeyState, Kid, RotationKind};
use crate::hsm::Hsm;

/// What one pass found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReconcileReport {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Pending keys whose object existed: made spare.
    pub pending_finished: Vec<String>,
    /// Pending keys whose object was missing or partial: row removed.
    pub pending_undone: Vec<String>,
    /// Objects with our label that no row knows: destroyed.
    pub orphans_destroyed: Vec<String>,
    /// Rows whose objects are missing, with their state.
    pub missing: Vec<(String, String)>,
    /// Current or next keys replaced because their object was missing.
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
        n("missing", self.missing.len());
        n("replaced", self.replaced.len());
        n("destroy_retried", self.destroys_retried.len());
        n("certified", self.certified_apps.len());
    }

    /// Number of actions (or, in a dry run, findings).
    pub fn actions(&self) -> usize {
        self.pending_finished.len()
            + self.pending_undone.len()
            + self.orphans_destroyed.len()
            + self.missing.len()
            + self.replaced.len()
            + self.destroys_retried.len()
            + self.certified_apps.len()
    }
}

/// One reconciliation pass. Pending rows younger than `min_pending_age` seconds are left
/// alone (another request or replica may still be generating them).
///
/// # Errors
/// Store or HSM failures (the pass stops; the next one continues).
pub async fn reconcile(
    keys: &KeyService,
    hsm: &Hsm,
    dry_run: bool,
    min_pending_age: i64,
) -> Result<ReconcileReport, KeyError> {
    reconcile_with_progress(keys, hsm, dry_run, min_pending_age, &|_, _, _| {}).await
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
    min_pending_age: i64,
) -> Result<ReconcileReport, KeyError> {
    let listed = hsm.cached_halves();
    let listed = (!listed.is_empty()).then_some(listed);
    pass(keys, hsm, false, min_pending_age, &|_, _, _| {}, listed).await
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
    dry_run: bool,
    min_pending_age: i64,
    progress: Progress<'_>,
) -> Result<ReconcileReport, KeyError> {
    pass(keys, hsm, dry_run, min_pending_age, progress, None).await
}

/// One pass; `listed`: the token's objects (halves per kid) when the caller has a listing.
async fn pass(
    keys: &KeyService,
    hsm: &Hsm,
    dry_run: bool,
    min_pending_age: i64,
    progress: Progress<'_>,
    listed: Option<HashMap<Kid, (bool, bool)>>,
) -> Result<ReconcileReport, KeyError> {
    progress("listing the token", 0, 1);
    let store = keys.store();
    let now = keys.clock_now();
    let mut report = ReconcileReport {
        dry_run,
        ..ReconcileReport::default()
    };
    // Rows are read before the token is listed: a row that should have objects had them
    // before this read, so a listing taken after it cannot miss them unless they are gone.
    let rows_with_objects = store.keys_with_objects().await?;
    // Halves present in the token, per kid.
    let (mut objects, fresh) = match listed {
        Some(halves) => (halves, Vec::new()),
        None => (HashMap::new(), hsm.list().await?),
    };
    for o in fresh {
        if let Some(kid) = o.kid {
            let e = objects.entry(kid).or_default();
            if o.private {
                e.0 = true;
            } else {
                e.1 = true;
            }
        } else {
            warn!(label = %o.label, "object with our label prefix but no 16-byte id; left alone");
        }
    }

    // 1. Pending rows.
    let pending = store.keys_in_state(KeyState::Pending).await?;
    let total = pending.len();
    for (i, row) in pending.into_iter().enumerate() {
        progress("pending keys", i, total);
        if now - row.created_at < min_pending_age {
            continue;
        }
        let complete = objects.get(&row.kid) == Some(&(true, true));
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

    // 2. Orphans: objects no row knows.
    let mut known = store.all_kids().await?;
    if let Some(audit_kid) = crate::audit::Audit::audit_kid(store).await? {
        known.insert(audit_kid);
    }
    for kid in objects.keys().filter(|k| !known.contains(k)) {
        report.orphans_destroyed.push(kid.to_string());
        if !dry_run {
            hsm.destroy(*kid).await?;
        }
    }

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
