//! Liveness and readiness.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::ApiError;
use super::auth::require_root;
use super::extract::Credential;
use crate::app::AppState;

/// `GET /healthz`: 200 while the process lives.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 only while a pooled HSM session can sign and the store answers.
async fn readyz(State(state): State<AppState>) -> Response {
    // "Ready" means a signature can be made now: sign a probe with an app's current key
    // (or, before any app exists, check that a pooled session is logged in).
    let hsm = match state.tokens.probe().await {
        Ok(true) => Ok(()),
        Ok(false) => state.hsm.ready().await,
        Err(e) => Err(e),
    };
    let store = state.store_ready().await;
    match (hsm, store) {
        (Ok(()), Ok(())) => {
            let spares: serde_json::Map<String, serde_json::Value> = state
                .store
                .spare_counts()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(spec, n)| (spec.to_string(), n.into()))
                .collect();
            Json(json!({
                "status": "ready",
                "hsm": "ok",
                "store": "ok",
                "spares": spares,
                "pool": {"size": state.hsm.pool_size(), "in_use": state.hsm.pool_in_use()},
            }))
            .into_response()
        }
        (h, s) => {
            let reason = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not_ready",
                    "error": "not_ready",
                    "message": "the service cannot sign right now",
                    "hsm": reason(h.map_err(|e| e.to_string())),
                    "store": reason(s),
                })),
            )
                .into_response()
        }
    }
}

/// `GET /status` (root): which replica answered and what its scheduler last did, for the
/// console's health strip (HSM, store, spares and pool come from `/readyz`).
///
/// Response 200: `{"replica_id": ULID, "scheduler": {"leader": bool, "last_tick_at":
/// RFC 3339 | null}}`. `replica_id` is made at process start; `leader` says whether this
/// replica held the scheduler lease at its last tick (with SQLite always, once a tick ran;
/// with PostgreSQL exactly one replica at a time).
async fn status(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let s = &state.scheduler;
    Ok(Json(json!({
        "replica_id": s.replica_id(),
        "scheduler": {
            "leader": s.leader(),
            "last_tick_at": s.last_tick_at().map(crate::clock::rfc3339),
        },
    })))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
}
