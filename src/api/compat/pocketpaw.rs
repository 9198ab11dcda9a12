//! PocketPaw: `POST /api/token/regenerate` (and `/api/v1/...`). Bearer app token;
//! failures `{"detail": "..."}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ApiError;
use crate::api::auth::token_app;
use crate::api::error::{Dialect, PeerHeaders};
use crate::api::extract::Credential;
use crate::api::openapi::TAG_POCKETPAW;
use crate::app::AppState;

/// PocketPaw's error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PpErrorBody {
    /// Human sentence (`Unauthorized` for a 401).
    detail: String,
}

/// `POST /api/token/regenerate`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PpToken {
    /// The new access token (`pk_...`); the old one stopped working.
    token: String,
}

/// The error responses of the PocketPaw routes.
pub(crate) struct PpErrorResponses;

impl utoipa::IntoResponses for PpErrorResponses {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        crate::api::openapi::family_errors(
            "PpErrorBody",
            &[
                (401, "Missing or invalid access token"),
                (
                    429,
                    "Too many invalid tokens from this address (`Too many requests`, with `Retry-After`)",
                ),
                (500, "Store failure"),
                (503, "HSM unavailable"),
            ],
        )
    }
}

/// An [`ApiError`] in PocketPaw's shape.
pub(crate) struct PpError(ApiError);

impl From<ApiError> for PpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// PocketPaw's error dialect.
struct PocketPaw;

impl Dialect for PocketPaw {
    type Body = PpErrorBody;
    /// PocketPaw's rate limiter sends `Retry-After` with its 429; its 401 is a bare JSON
    /// response, without `WWW-Authenticate`.
    const HEADERS: PeerHeaders = PeerHeaders {
        retry_after: true,
        www_authenticate: false,
    };
    fn body(e: &ApiError) -> PpErrorBody {
        // PocketPaw's own sentences for what it answers itself.
        let detail = match e.status_code() {
            StatusCode::UNAUTHORIZED => "Unauthorized".to_owned(),
            StatusCode::TOO_MANY_REQUESTS => "Too many requests".to_owned(),
            _ => e.public_message(),
        };
        PpErrorBody { detail }
    }
}

impl IntoResponse for PpError {
    fn into_response(self) -> Response {
        self.0.render::<PocketPaw>()
    }
}

/// New access token; the old one stops working and every session token (JWT) of the app
/// issued before now is rejected.
#[utoipa::path(post, path = "/api/token/regenerate", tag = TAG_POCKETPAW,
    security(("app_token" = [])),
    responses((status = 200, description = "The new access token", body = PpToken), PpErrorResponses))]
async fn regenerate_route(state: State<AppState>, cred: Credential) -> Result<Response, PpError> {
    regenerate(state, cred).await
}

/// `regenerate` under `/api/v1`.
#[utoipa::path(post, path = "/api/v1/token/regenerate", tag = TAG_POCKETPAW,
    security(("app_token" = [])),
    responses((status = 200, description = "The new access token", body = PpToken), PpErrorResponses))]
async fn regenerate_v1(state: State<AppState>, cred: Credential) -> Result<Response, PpError> {
    regenerate(state, cred).await
}

/// New access token; the old one dies at once and every session token (JWT) of the app
/// issued before now is rejected.
async fn regenerate(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Response, PpError> {
    // PocketPaw answers 401 to a missing or invalid token, and 429 (`Too many requests`,
    // `Retry-After`) to a client over its limit: a source over its budget of invalid
    // tokens gets the latter. A valid token is never limited.
    let Some(c) = cred.as_deref() else {
        return Err(ApiError::Unauthorized.into());
    };
    let Some(app) = token_app(&state, c).await? else {
        return Err(crate::api::auth::invalid(&state, c, None).await.into());
    };
    crate::audit::set_actor(&format!("app:{}", app.id));
    let token = state
        .keys
        .regenerate_access_token(&app.id, true)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(PpToken {
            token: token.expose().to_owned(),
        }),
    )
        .into_response())
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(regenerate_route))
        .routes(routes!(regenerate_v1))
}
