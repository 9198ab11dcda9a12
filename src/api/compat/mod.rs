//! Compatibility families: JWTPlus, Auth0 connection keys and PocketPaw token regeneration.
//!
//! Each module speaks its peer's dialect (paths, auth header, field names, status codes and
//! error bodies) and delegates to the same services as the native API; none holds logic
//! of its own beyond translation. docs/compat.md summarises what each peer does that this
//! code relies on, and which of the peers' bugs are deliberately not copied.

pub(crate) mod auth0;
pub(crate) mod jwtplus;
pub(crate) mod pocketpaw;

use axum::http::header::RETRY_AFTER;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Carry what the peer's error body does not hold from our error's native response to the
/// peer-shaped one: the cause of a 5xx (for the logging middleware) and `Retry-After`.
pub(crate) fn carry(native: &Response, peer: &mut Response) {
    if let Some(c) = native
        .extensions()
        .get::<crate::api::error::ErrorCause>()
        .cloned()
    {
        peer.extensions_mut().insert(c);
    }
    if let Some(v) = native.headers().get(RETRY_AFTER) {
        peer.headers_mut().insert(RETRY_AFTER, v.clone());
    }
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(jwtplus::router())
        .merge(auth0::router())
        .merge(pocketpaw::router())
}
