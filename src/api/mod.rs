//! HTTP API: one router per resource, merged here. Only this module imports axum.

mod error;
mod health;

use axum::Router;
use axum::middleware;

pub use error::{ApiError, error_chain};

use crate::app::AppState;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .layer(middleware::from_fn(error::log_errors))
        .with_state(state)
}
