//! Compatibility families: JWTPlus, Auth0 connection keys and PocketPaw token regeneration.
//!
//! Each module speaks its peer's dialect (paths, auth header, field names, status codes and
//! error bodies) and delegates to the same services as the native API; none holds logic
//! of its own beyond translation. docs/compat.md summarises what each peer does that this
//! code relies on, and which of the peers' bugs are deliberately not copied.
//!
//! Errors raised by the shared code ([`ApiError`](crate::api::ApiError)) reach a peer's
//! client through [`ApiError::render`](crate::api::ApiError::render) with the family's
//! [`Dialect`](crate::api::error::Dialect): its body, and the headers its peer also sends.

pub(crate) mod auth0;
pub(crate) mod jwtplus;
pub(crate) mod pocketpaw;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(jwtplus::router())
        .merge(auth0::router())
        .merge(pocketpaw::router())
}
