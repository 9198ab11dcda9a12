//! PocketPaw: `POST /api/token/regenerate` (and `/api/v1/...`). Bearer app token;
//! failures `{"detail": "..."}`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::api::ApiError;
use crate::api::auth::token_app;
use crate::api::extract::Credential;
use crate::app::AppState;

/// An [`ApiError`] in PocketPaw's shape.
pub(crate) struct PpError(ApiError);

impl From<ApiError> for PpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PpError {
    fn into_response(self) -> Response {
        let status = self.0.status_code();
        let detail = match status {
            StatusCode::UNAUTHORIZED => "Unauthorized".to_owned(),
            _ => self.0.public_message(),
        };
        // Keep the cause for the logging middleware.
        let mut res = (status, Json(json!({"detail": detail}))).into_response();
        if let Some(c) = self
            .0
            .into_response()
            .extensions()
            .get::<crate::api::error::ErrorCause>()
            .cloned()
        {
            res.extensions_mut().insert(c);
        }
        res
    }
}

/// New access token; the old one dies at once and every session token (JWT) of the app
/// issued before now is rejected.
async fn regenerate(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Response, PpError> {
    crate::api::auth::not_rate_limited(&state)?;
    let app = match cred.as_deref() {
        Some(c) => token_app(&state, c).await?,
        None => None,
    };
    let Some(app) = app else {
        crate::api::auth::auth_failed(&state, "access token", "pocketpaw").await;
        return Err(ApiError::Unauthorized.into());
    };
    crate::audit::set_actor(&format!("app:{}", app.id));
    let token = state
        .keys
        .regenerate_access_token(&app.id, true)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(json!({"token": token.expose()})),
    )
        .into_response())
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/token/regenerate", post(regenerate))
        .route("/api/v1/token/regenerate", post(regenerate))
}
