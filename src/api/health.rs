//! Liveness and readiness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// `GET /readyz` when not ready (503). Which dependency failed, never why: the reason goes
/// to the log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NotReady {
    /// `not_ready`.
    status: String,
    /// `not_ready`.
    error: String,
    /// Human sentence.
    message: String,
    /// `ok` or `unavailable`.
    hsm: String,
    /// `ok` or `unavailable`.
    store: String,
}

/// How long a "ready" result is reused (unless the token fails or recovers meanwhile).
pub(crate) const READY_FRESH: Duration = Duration::from_secs(5);
/// How long a "not ready" result is reused (unless the token recovers meanwhile).
pub(crate) const NOT_READY_FRESH: Duration = Duration::from_secs(1);

/// The last readiness probe, shared by every `GET /readyz`: one probe at a time (callers
/// that arrive during it wait for its result), and its result reused while fresh, so that
/// an unauthenticated caller cannot make the HSM sign (and take a session from issuance)
/// at will.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Last>,
}

#[derive(Debug, Default)]
struct Last {
    probe: Option<Probe>,
    /// The failure last logged (so a lasting one is logged once).
    logged: Option<String>,
}

#[derive(Debug, Clone)]
struct Probe {
    at: Instant,
    /// [`crate::hsm::Hsm::health_changes`] before the probe ran.
    hsm_changes: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Ready { spares: BTreeMap<String, usize> },
    NotReady { hsm: bool, store: bool },
}

impl Probe {
    fn fresh(&self, hsm_changes: u64) -> bool {
        let ttl = match self.outcome {
            Outcome::Ready { .. } => READY_FRESH,
            Outcome::NotReady { .. } => NOT_READY_FRESH,
        };
        self.hsm_changes == hsm_changes && self.at.elapsed() < ttl
    }
}

impl Readiness {
    async fn get(&self, state: &AppState) -> Outcome {
        let mut last = self.last.lock().await;
        let changes = state.hsm.health_changes();
        if let Some(p) = &last.probe
            && p.fresh(changes)
        {
            return p.outcome.clone();
        }
        let (outcome, failure) = probe(state).await;
        match (&failure, &last.logged) {
            (Some(f), Some(l)) if f == l => {}
            (Some(f), _) => tracing::warn!(reason = %f, "not ready"),
            (None, Some(_)) => tracing::info!("ready again"),
            (None, None) => {}
        }
        last.logged = failure;
        last.probe = Some(Probe {
            at: Instant::now(),
            hsm_changes: changes,
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// "Ready" means a signature can be made now: sign a probe with an app's current key
/// (or, before any app exists, check that a pooled session is logged in), and the store
/// answers. Returns the outcome and, when not ready, the reasons (for the log only).
async fn probe(state: &AppState) -> (Outcome, Option<String>) {
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
            (Outcome::Ready { spares }, None)
        }
        (h, s) => {
            let mut reasons = Vec::new();
            if let Err(e) = &h {
                reasons.push(format!("HSM: {e}"));
            }
            if let Err(e) = &s {
                reasons.push(format!("store: {e}"));
            }
            let outcome = Outcome::NotReady {
                hsm: h.is_ok(),
                store: s.is_ok(),
            };
            (outcome, Some(reasons.join("; ")))
        }
    }
}

/// Liveness: 200 while the process lives.
#[utoipa::path(get, path = "/healthz", tag = TAG_HEALTH,
    responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status::ok())
}

/// Readiness: 200 only while a pooled HSM session can sign and the store answers. The
/// probe's result is reused for a few seconds (1 s when not ready), and for no longer than
/// the token keeps behaving as it did; concurrent calls share one probe.
#[utoipa::path(get, path = "/readyz", tag = TAG_HEALTH,
    responses(
        (status = 200, description = "Ready to sign", body = Ready),
        (status = 503, description = "Cannot sign now", body = NotReady),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    match state.readiness.get(&state).await {
        Outcome::Ready { spares } => Json(Ready {
            status: "ready".into(),
            hsm: "ok".into(),
            store: "ok".into(),
            spares,
            pool: Pool {
                size: state.hsm.pool_size(),
                in_use: state.hsm.pool_in_use(),
            },
        })
        .into_response(),
        Outcome::NotReady { hsm, store } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady {
                status: "not_ready".into(),
                error: "not_ready".into(),
                message: "the service cannot sign right now".into(),
                hsm: word(hsm),
                store: word(store),
            }),
        )
            .into_response(),
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
