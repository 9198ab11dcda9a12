//! `GET /audit?after=&limit=` (root): page through the audit log, oldest first.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::require_root;
use super::extract::{ApiQuery, Credential};
use super::openapi::{NativeErrors, TAG_AUDIT};
use crate::app::AppState;
use crate::store::audit::AuditRow;

/// The page asked for.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Records after this sequence number (default 0: from the start).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// At most this many records, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Records, oldest first.
    records: Vec<AuditRow>,
    /// `after` for the next page (null when this page is empty).
    next_after: Option<i64>,
}

/// Page through the hash-chained audit log, oldest first.
#[utoipa::path(get, path = "/audit", tag = TAG_AUDIT,
    params(Page),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "One page of records", body = AuditPage), NativeErrors))]
async fn page(
    State(state): State<AppState>,
    Credential(cred): Credential,
    ApiQuery(p): ApiQuery<Page>,
) -> Result<Json<AuditPage>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || p.after < 0 {
        return Err(ApiError::bad_request(
            "invalid_page",
            "limit must be 1 to 1000 and after at least 0",
        ));
    }
    let records = state.store.audit_page(p.after, limit).await?;
    let next_after = records.last().map(|r| r.seq);
    Ok(Json(AuditPage {
        records,
        next_after,
    }))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(page))
}
