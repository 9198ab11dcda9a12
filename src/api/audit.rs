//! `GET /audit?after=&limit=` (root): page through the audit log, oldest first.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::auth::require_root;
use super::extract::Credential;
use crate::app::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<i64>,
}

async fn page(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Query(p): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || p.after < 0 {
        return Err(ApiError::bad_request(
            "invalid_page",
            "limit must be 1 to 1000 and after at least 0",
        ));
    }
    let rows = state.store.audit_page(p.after, limit).await?;
    let next = rows.last().map(|r| r.seq);
    Ok(Json(json!({"records": rows, "next_after": next})))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/audit", get(page))
}
