//! Liveness and readiness.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::require_root;
use super::extract::Credential;
use super::openapi::{NativeErrors, TAG_HEALTH};
use super::wire::Status;
use crate::app::AppState;

/// The HSM session pool.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Pool {
    /// Sessions in the pool.
    size: usize,
    /// Sessions lent out now.
    in_use: usize,
}

/// `GET /readyz` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Ready {
    /// `ready`.
    status: String,
    /// `ok`.
    hsm: String,
    /// `ok`.
    store: String,
    /// Spare keys waiting in the HSM, by key spec (`RS256-2048`, `ES256`, ...).
    spares: BTreeMap<String, usize>,
    /// The HSM session pool.
    pool: Pool,
}

/// `GET /readyz` when not ready (503).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotReady {
    /// `not_ready`.
    status: String,
    /// `not_ready`.
    error: String,
    /// Human sentence.
    message: String,
    /// `ok` or why the HSM cannot sign.
    hsm: String,
    /// `ok` or why the store does not answer.
    store: String,
}

/// Liveness: 200 while the process lives.
#[utoipa::path(get, path = "/healthz", tag = TAG_HEALTH,
    responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status::ok())
}

/// Readiness: 200 only while a pooled HSM session can sign and the store answers.
#[utoipa::path(get, path = "/readyz", tag = TAG_HEALTH,
    responses(
        (status = 200, description = "Ready to sign", body = Ready),
        (status = 503, description = "Cannot sign now", body = NotReady),
    ))]
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
            let spares = state
                .store
                .spare_counts()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(spec, n)| (spec.to_string(), n))
                .collect();
            Json(Ready {
                status: "ready".into(),
                hsm: "ok".into(),
                store: "ok".into(),
                spares,
                pool: Pool {
                    size: state.hsm.pool_size(),
                    in_use: state.hsm.pool_in_use(),
                },
            })
            .into_response()
        }
        (h, s) => {
            let reason = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(NotReady {
                    status: "not_ready".into(),
                    error: "not_ready".into(),
                    message: "the service cannot sign right now".into(),
                    hsm: reason(h.map_err(|e| e.to_string())),
                    store: reason(s),
                }),
            )
                .into_response()
        }
    }
}

/// `GET /status`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplicaStatus {
    /// This process's id (a ULID made at start).
    replica_id: String,
    /// What its scheduler last did.
    scheduler: SchedulerView,
}

/// The scheduler part of [`ReplicaStatus`].
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SchedulerView {
    /// Whether this replica held the scheduler lease at its last tick (with SQLite
    /// always, once a tick ran; with PostgreSQL one replica at a time).
    leader: bool,
    /// When its last tick ran (RFC 3339).
    last_tick_at: Option<String>,
}

/// Which replica answered and what its scheduler last did (the console's health strip;
/// HSM, store, spares and pool come from `/readyz`).
#[utoipa::path(get, path = "/status", tag = TAG_HEALTH,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "This replica and its scheduler", body = ReplicaStatus), NativeErrors))]
async fn status(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Json<ReplicaStatus>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let s = &state.scheduler;
    Ok(Json(ReplicaStatus {
        replica_id: s.replica_id().to_string(),
        scheduler: SchedulerView {
            leader: s.leader(),
            last_tick_at: s.last_tick_at().map(crate::clock::rfc3339),
        },
    }))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(status))
}
