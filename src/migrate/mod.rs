//! `hsm-rotator migrate jwtplus --from mysql://...` (issue 23): move a JWTPlus deployment in
//! without logging anyone out.
//!
//! [`source`] reads JWTPlus's tables (`peer-apis.md` A.5) with sqlx's MySQL driver; [`plan`]
//! decides and checks everything before anything is written (a key that cannot be
//! imported stops the run with nothing changed); [`apply`] carries it out app by app: the
//! keys imported into the HSM, then one store transaction per app. Apps already in the
//! store (from an earlier run) are left alone, so a second run changes nothing and a run
//! that died half way can simply be run again. `--dry-run` prints the plan only.
//!
//! What keeps working after the move, and how, is in docs/migrating.md: JWTPlus's root and
//! app keys ([`crate::api::legacy`]), its tokens (`jid`, `iss` = app name:
//! [`crate::jwt::legacy`]), its sessions (ledger rows keyed by the SHA-256 of the subject
//! read back from each token) and refresh tokens.

pub mod apply;
pub mod plan;
pub mod source;

use serde_json::{Value, json};

use crate::app::AppState;

/// What a run did (or, with `dry_run`, would do), as JSON.
///
/// `progress` is told the number of apps to migrate, then once per app done.
///
/// # Errors
/// The JWTPlus database unreachable or not JWTPlus's; a key that cannot be imported (nothing
/// changed then); an app whose migration failed (apps before it stay migrated, it and the
/// ones after it are not; run again).
pub async fn jwtplus(
    state: &AppState,
    from: &str,
    dry_run: bool,
    progress: &dyn Fn(Progress<'_>),
) -> anyhow::Result<Value> {
    let pool = source::connect(from).await?;
    let now = state.keys.clock_now();
    let src = source::read(&pool, now).await;
    pool.close().await;
    let src = src?;
    if let Some(v) = src.version.as_deref().filter(|v| *v != "1.1") {
        tracing::warn!(
            version = v,
            "JWTPlus APP-VERSION is not 1.1; reading it as 1.1"
        );
    }
    let plan = plan::plan(src, state.keys.store(), now).await?;
    let mut report = json!({
        "dry_run": dry_run,
        "root_key": match (&plan.root_key_sha512, plan.root_done) {
            (None, _) => "none in JWTPlus",
            (Some(_), true) => "already kept",
            (Some(_), false) => if dry_run { "would be kept as a legacy credential" } else { "kept as a legacy credential" },
        },
        "apps": plan.apps.iter().map(plan::AppPlan::summary).collect::<Vec<_>>(),
    });
    if dry_run {
        return Ok(report);
    }
    if let (Some(d), false) = (&plan.root_key_sha512, plan.root_done) {
        apply::root_key(state, d).await?;
    }
    let todo = plan.apps.iter().filter(|a| !a.done).count();
    progress(Progress::Start(todo));
    let mut done = Vec::new();
    for a in plan.apps.into_iter().filter(|a| !a.done) {
        let (id, name) = (a.row.id.clone(), a.row.name.clone());
        progress(Progress::App(&name));
        let m = apply::app(state, a).await?;
        done.push(json!({
            "app_id": id,
            "imported": m.imported.iter().map(|(k, s)| json!({"kid": k.to_string(), "state": s.as_str()})).collect::<Vec<_>>(),
            "generated": m.generated.iter().map(|(k, s)| json!({"kid": k.to_string(), "state": s.as_str()})).collect::<Vec<_>>(),
        }));
        progress(Progress::Done);
    }
    report["migrated"] = done.into();
    Ok(report)
}

/// Progress of a run.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// This many apps to migrate.
    Start(usize),
    /// Working on this app.
    App(&'a str),
    /// One app done.
    Done,
}
