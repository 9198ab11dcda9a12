//! `GET /audit` (root): page through the audit log, oldest first, or filter it newest
//! first; `GET /audit/verify` (root): check the hash chain and the HSM seals.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::require_root;
use super::extract::{Credential, Later};
use super::openapi::{NativeErrors, TAG_AUDIT};
use crate::app::AppState;
use crate::store::audit::{AuditFilter, AuditRow};

/// The page asked for.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Oldest first: records after this sequence number (default 0: from the start).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// At most this many records, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `asc` (default: oldest first, paged by `after`) or `desc` (newest first, paged by
    /// `before`).
    #[serde(default)]
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// Newest first: records with `seq` below this (0 or absent: from the newest).
    #[serde(default)]
    #[param(minimum = 0)]
    before: i64,
    /// Only records about this app or one of its keys.
    #[serde(default)]
    #[param(max_length = 200)]
    app: Option<String>,
    /// Only records by this actor (`root`, `app:<id>`, `scheduler`, ...).
    #[serde(default)]
    #[param(max_length = 200)]
    actor: Option<String>,
    /// Only records of this action (`key.revoke`, ...).
    #[serde(default)]
    #[param(max_length = 200)]
    action: Option<String>,
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Records, in the order asked for.
    records: Vec<AuditRow>,
    /// Oldest first: `after` for the next page (null when this page is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<Option<i64>>,
    /// Newest first: `before` for the next page (null when this page is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<Option<i64>>,
}

/// The first record or seal that fails verification.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Broken {
    /// Its sequence number.
    seq: i64,
    /// What is wrong with it.
    what: String,
}

/// `GET /audit/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChainStatus {
    /// Whether the whole chain and every seal verify.
    ok: bool,
    /// Records checked.
    records: i64,
    /// Records whose HSM seal (HMAC) verified.
    seals: usize,
    /// Newest records not sealed yet (younger than `audit_seal_max_lag`).
    unsealed: i64,
    /// The newest sealed record as the HSM's high-water mark says (null: no mark yet).
    hsm_mark: Option<i64>,
    /// The first failure, if any.
    broken: Option<Broken>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Page through the hash-chained audit log: oldest first (paged by `after`), or newest
/// first with `order=desc` (paged by `before`); `app` (the app or any of its keys is the
/// target), `actor` and `action` (exact) narrow the result.
#[utoipa::path(get, path = "/audit", tag = TAG_AUDIT,
    params(Page),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "One page of records", body = AuditPage), NativeErrors))]
async fn page(
    State(state): State<AppState>,
    Credential(cred): Credential,
    query: Later,
) -> Result<Json<AuditPage>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let p: Page = query.query().await?;
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
    let records = if !desc && !filtered {
        state.store.audit_page(p.after, limit).await?
    } else {
        state
            .store
            .audit_search(&filter, desc, if desc { p.before } else { p.after }, limit)
            .await?
    };
    let next = records.last().map(|r| r.seq);
    Ok(Json(AuditPage {
        records,
        next_after: (!desc).then_some(next),
        next_before: desc.then_some(next),
    }))
}

/// Walk the whole hash chain and check every HSM seal, as `hsm-rotator audit verify`
/// does. A broken chain is a result (200, `ok: false`), not an error.
#[utoipa::path(get, path = "/audit/verify", tag = TAG_AUDIT,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The chain's verification status", body = ChainStatus), NativeErrors))]
async fn verify(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Json<ChainStatus>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let v = crate::audit::verify(
        &state.store,
        &state.hsm,
        state.settings.audit_seal_max_lag,
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        crate::audit::AuditError::Store(s) => ApiError::from(s),
        crate::audit::AuditError::Hsm(h) => ApiError::from(h),
        other @ crate::audit::AuditError::Corrupt(_) => ApiError::Internal(Box::new(other)),
    })?;
    Ok(Json(ChainStatus {
        ok: v.broken.is_none(),
        records: v.records,
        seals: v.seals,
        unsealed: v.unsealed,
        hsm_mark: v.hsm_mark,
        broken: v.broken.map(|(seq, what)| Broken { seq, what }),
    }))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(verify))
}
