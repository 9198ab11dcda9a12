//! Carrying out a [`Plan`](super::plan::Plan): per app, the HSM objects first (imported,
//! checked by a test signature), then one store transaction (the app, its keys, a fresh
//! generated `next`, its sessions, its legacy app-key digest and the `migrate.app` audit
//! record). A failure before the commit destroys the objects made for the app; a crash in
//! between leaves `pending` imported rows, which the reconciler undoes and a new run
//! replaces.

use serde_json::json;

use super::plan::AppPlan;
use crate::app::AppState;
use crate::keys::{KeyError, KeyState, Kid};

/// What was done for one app.
#[derive(Debug)]
pub struct Migrated {
    /// Imported kids with their state.
    pub imported: Vec<(Kid, KeyState)>,
    /// Generated kids with their state.
    pub generated: Vec<(Kid, KeyState)>,
}

/// Migrate one app (see the module documentation).
///
/// # Errors
/// HSM or store failures; nothing of the app is left behind then.
pub async fn app(state: &AppState, mut p: AppPlan) -> anyhow::Result<Migrated> {
    let keys = &state.keys;
    let mut staged: Vec<Kid> = Vec::new();
    let result = async {
        for k in &p.keys {
            // A pending row of an interrupted run: undo it first.
            if keys.store().key(k.kid).await?.is_some() {
                keys.unstage_import(k.kid).await;
            }
        }
        let mut checked = Vec::new();
        for k in std::mem::take(&mut p.keys) {
            let held = keys.stage_import(k.kid, k.spec, k.material).await?;
            staged.push(k.kid);
            let spki = keys
                .check_staged(k.kid, p.row.signing_alg, &k.declared, &held)
                .await?;
            checked.push(Checked {
                kid: k.kid,
                state: k.state,
                spki,
            });
        }
        commit(state, &p, &checked).await
    }
    .await;
    match result {
        Ok(m) => {
            let id = &p.row.id;
            keys.registry().app_changed(id).await;
            if keys.certify(id).await {
                keys.registry().app_changed(id).await;
            }
            keys.spares().wake();
            Ok(m)
        }
        Err(e) => {
            for kid in &staged {
                keys.unstage_import(*kid).await;
            }
            keys.audit()
                .record(
                    "migrate.app",
                    &p.row.id,
                    "failed",
                    json!({"from": "jwtplus", "name": p.row.name, "error": e.to_string(),
                        "imported_then_destroyed": staged.iter().map(ToString::to_string).collect::<Vec<_>>()}),
                )
                .await;
            Err(anyhow::anyhow!("app {} ({:?}): {e}", p.row.id, p.row.name))
        }
    }
}

/// An imported key whose test signature passed.
struct Checked {
    kid: Kid,
    state: KeyState,
    /// SPKI DER and fingerprint.
    spki: (Vec<u8>, String),
}

/// The app's one transaction.
async fn commit(state: &AppState, p: &AppPlan, checked: &[Checked]) -> Result<Migrated, KeyError> {
    let (row, sessions, refresh) = (&p.row, &p.sessions, &p.refresh);
    let keys = &state.keys;
    let store = keys.store();
    let spec = crate::alg::KeySpec::new(row.signing_alg, row.rsa_bits);
    let has_current = checked.iter().any(|c| c.state == KeyState::Current);
    let wanted = if has_current { 1 } else { 2 };
    let claim = keys.spares().claim(spec).await;
    keys.spares().ensure(spec, wanted).await?;
    let now = keys.clock_now();
    let mut tx = store.begin().await?;
    store.insert_app(&mut tx, row).await?;
    for c in checked {
        let (spki, fingerprint) = &c.spki;
        if !store
            .place_imported(&mut tx, c.kid, &row.id, c.state, (spki, fingerprint), now)
            .await?
        {
            return Err(KeyError::Inconsistent(format!(
                "the pending row of {} disappeared during the migration",
                c.kid
            )));
        }
    }
    let mut generated = Vec::new();
    let fresh = if has_current {
        vec![KeyState::Next]
    } else {
        vec![KeyState::Current, KeyState::Next]
    };
    for st in fresh {
        let k = store
            .take_spare(&mut tx, spec, &row.id, st, now)
            .await?
            .ok_or_else(|| KeyError::Inconsistent("spare keys ran out; run again".into()))?;
        generated.push((k.kid, st));
    }
    store
        .set_legacy_app_key(&mut tx, &row.id, &p.legacy_key_sha512)
        .await?;
    store.insert_ledger_tx(&mut tx, sessions).await?;
    for r in refresh {
        store.insert_refresh(&mut tx, r).await?;
    }
    let imported: Vec<(Kid, KeyState)> = checked.iter().map(|c| (c.kid, c.state)).collect();
    keys.audit()
        .record_in(
            &mut tx,
            "migrate.app",
            &row.id,
            "ok",
            json!({
                "from": "jwtplus",
                "name": row.name,
                "algorithm": row.signing_alg.as_str(),
                "imported": imported.iter().map(|(k, s)| json!({"kid": k.to_string(), "state": s.as_str(), "origin": "imported"})).collect::<Vec<_>>(),
                "generated": generated.iter().map(|(k, s)| json!({"kid": k.to_string(), "state": s.as_str()})).collect::<Vec<_>>(),
                "skipped_keys": p.skipped_keys.iter().map(|(k, why)| json!({"kid": k, "reason": why})).collect::<Vec<_>>(),
                "sessions": sessions.len(),
                "refresh_tokens": refresh.len(),
                "dropped_sessions": p.dropped_sessions,
                "sessions_without_subject": p.unmatched_subjects,
                "legacy_app_key": true,
            }),
        )
        .await?;
    tx.commit().await?;
    keys.audit().committed();
    drop(claim);
    Ok(Migrated {
        imported,
        generated,
    })
}

/// Keep the JWTPlus root key as a legacy credential, and remember that it was kept.
///
/// # Errors
/// Store failures.
pub async fn root_key(state: &AppState, sha512_hex: &str) -> Result<(), KeyError> {
    let keys = &state.keys;
    let store = keys.store();
    let mut tx = store.begin().await?;
    store.set_legacy_root_key(&mut tx, sha512_hex).await?;
    keys.audit()
        .record_in(
            &mut tx,
            "migrate.root_key",
            "root",
            "ok",
            json!({"from": "jwtplus", "legacy_root_key": true}),
        )
        .await?;
    tx.commit().await?;
    keys.audit().committed();
    Ok(())
}
