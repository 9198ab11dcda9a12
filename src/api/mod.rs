//! HTTP API: one router per resource, merged here. Handlers, extractors and errors live
//! only here; outside `api`, axum appears only where the router is assembled ([`crate::app`])
//! and served ([`crate::listener`]).

pub(crate) mod apps;
pub(crate) mod auth;
mod compat;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod legacy;

mod audit;
mod console;
mod credentials;
mod health;
mod jwks;
mod layers;
mod metrics;
pub(crate) mod openapi;
mod statuslists;
mod tokens;
pub mod wire;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{from_fn, from_fn_with_state};
use utoipa_axum::router::OpenApiRouter;

pub use auth::Actor;
pub use error::{ApiError, Resource, error_chain};
pub use health::Readiness;
pub use layers::{AuthLimiter, KeyChangeLimiter};

use crate::app::AppState;

/// Largest request body accepted, bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// `Cache-Control: no-store`, for every response that carries a secret.
pub(crate) fn no_store() -> [(HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

async fn not_found() -> ApiError {
    ApiError::NotFound(Resource::Route)
}

/// Every documented route with its OpenAPI operations: the route table and the document
/// come from the same `routes!` calls, so they cannot drift.
fn documented() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (main, doc) = OpenApiRouter::new()
        .merge(health::router())
        .merge(apps::router())
        .merge(credentials::router())
        .merge(tokens::router())
        .merge(jwks::router())
        .merge(statuslists::router())
        .merge(compat::router())
        .split_for_parts();
    let (audit, audit_doc) = audit::router().split_for_parts();
    let mut doc = doc;
    doc.merge(audit_doc);
    (main, audit, openapi::finish(doc, true))
}

/// The OpenAPI document of the whole HTTP surface (what `GET /openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    documented().2
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let (main, audit, doc) = documented();
    main.merge(openapi::routes(doc))
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .merge(audit)
        .merge(metrics::router())
        .layer(from_fn(error::log_errors))
        .layer(from_fn_with_state(state.clone(), layers::request_context))
        .with_state(state)
}
