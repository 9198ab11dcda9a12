//! `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]).
//!
//! Unauthenticated, like every Prometheus target; in production the service should listen
//! on a private address (or a proxy keep `/metrics` inside): docs/metrics.md.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;

/// Spares per spec, with a 0 for every spec an app uses that has none left (a series that
/// vanished at zero could not be alerted on).
async fn spare_counts(
    state: &AppState,
) -> Result<Vec<(crate::alg::KeySpec, usize)>, crate::store::StoreError> {
    let mut counts = state.store.spare_counts().await?;
    for spec in state.store.specs_in_use().await? {
        if !counts.iter().any(|(s, _)| *s == spec) {
            counts.push((spec, 0));
        }
    }
    Ok(counts)
}

/// Refresh the gauges read at scrape time, then render every metric.
async fn scrape(State(state): State<AppState>) -> Response {
    crate::metrics::set_hsm_pool(state.hsm.pool_size(), state.hsm.pool_in_use());
    match spare_counts(&state).await {
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
