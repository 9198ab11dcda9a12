//! `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]).
//!
//! Unauthenticated, like every Prometheus target; SPEC §3.2 asks that in production the
//! service listen on a private address (or that a proxy keep `/metrics` inside).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;

/// Refresh the gauges read at scrape time, then render every metric.
async fn scrape(State(state): State<AppState>) -> Response {
    crate::metrics::set_hsm_pool(state.hsm.pool_size(), state.hsm.pool_in_use());
    match state.store.spare_counts().await {
        Ok(counts) => crate::metrics::set_spare_keys(&counts),
        Err(e) => tracing::warn!(error = %e, "cannot read spare key counts for /metrics"),
    }
    let body = crate::metrics::render(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

/// The metrics route.
pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}
