//! `GET /audit` (root): page through the audit log, oldest first, or filter it newest
//! first; `GET /audit/verify` (root): check the hash chain and the HSM seals.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::require_root;
use super::extract::Credential;
use crate::app::AppState;
use crate::store::audit::AuditFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<i64>,
    /// `asc` (default: oldest first, paged by `after`) or `desc` (newest first, paged by
    /// `before`).
    #[serde(default)]
    order: Option<String>,
    /// With `order=desc`: records with `seq` below this (0 or absent: from the newest).
    #[serde(default)]
    before: i64,
    /// Only records about this app or one of its keys.
    #[serde(default)]
    app: Option<String>,
    /// Only records by this actor (`root`, `app:<id>`, `scheduler`, ...).
    #[serde(default)]
    actor: Option<String>,
    /// Only records of this action (`key.revoke`, ...).
    #[serde(default)]
    action: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `GET /audit?after=&limit=&order=&before=&app=&actor=&action=` (root).
///
/// Without `order` (or `order=asc`): records with `seq > after`, oldest first, answer
/// `{"records": [Record, ...], "next_after": seq | null}`. With `order=desc`: records with
/// `seq < before` (all when 0), newest first, answer `{"records": [...], "next_before":
/// seq | null}`. Either way the filters `app` (the app or any of its keys is the
/// target), `actor` and `action` (exact) narrow the result, and `limit` is 1 to 1000
/// (default 100). A Record is `{"seq", "id", "at", "actor", "action", "target",
/// "outcome", "request_id", "details", "prev_hash", "hash"}`. 400 for a bad page or
/// filter.
async fn page(
    State(state): State<AppState>,
    Credential(cred): Credential,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let Query(p) = query.map_err(|e| ApiError::bad_request("invalid_page", e.body_text()))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || p.after < 0 || p.before < 0 {
        return Err(ApiError::bad_request(
            "invalid_page",
            "limit must be 1 to 1000, after and before at least 0",
        ));
    }
    let desc = match p.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_page",
                "order must be asc or desc",
            ));
        }
    };
    let filter = AuditFilter {
        app: nonempty(p.app),
        actor: nonempty(p.actor),
        action: nonempty(p.action),
    };
    for v in [&filter.app, &filter.actor, &filter.action]
        .into_iter()
        .flatten()
    {
        if v.len() > 200 || v.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_filter",
                "app, actor and action must be at most 200 printable characters",
            ));
        }
    }
    let filtered = filter.app.is_some() || filter.actor.is_some() || filter.action.is_some();
    if !desc && !filtered {
        let rows = state.store.audit_page(p.after, limit).await?;
        let next = rows.last().map(|r| r.seq);
        return Ok(Json(json!({"records": rows, "next_after": next})));
    }
    let rows = state
        .store
        .audit_search(&filter, desc, if desc { p.before } else { p.after }, limit)
        .await?;
    let next = rows.last().map(|r| r.seq);
    Ok(Json(if desc {
        json!({"records": rows, "next_before": next})
    } else {
        json!({"records": rows, "next_after": next})
    }))
}

/// `GET /audit/verify` (root): walk the whole hash chain and check every HSM seal, as
/// `hsm-rotator audit verify` does.
///
/// Response 200: `{"ok": bool, "records": n, "seals": n, "broken": null | {"seq", "what"}}`
/// (`broken` names the first record or seal that fails). A broken chain is a result
/// (200, `ok: false`), not an error.
async fn verify(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let v = crate::audit::verify(&state.store)
        .await
        .map_err(|e| match e {
            crate::audit::AuditError::Store(s) => ApiError::from(s),
            crate::audit::AuditError::Hsm(h) => ApiError::from(h),
            other @ crate::audit::AuditError::Corrupt(_) => ApiError::Internal(Box::new(other)),
        })?;
    Ok(Json(json!({
        "ok": v.broken.is_none(),
        "records": v.records,
        "seals": v.seals,
        "broken": v.broken.map(|(seq, what)| json!({"seq": seq, "what": what})),
    })))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/audit", get(page))
        .route("/audit/verify", get(verify))
}
