//! Native credential routes: a new access token for an app (`POST /apps/{id}/access-token`)
//! and a new root key (`POST /root-key/rotate`). Each secret is shown once, with
//! `Cache-Control: no-store`; only its digest is kept, and the old one stops working at
//! once. The compat families (JWTPlus `/root/{id}/rotate/key` and `/root/rotate`, PocketPaw
//! `/api/token/regenerate`) call the same service functions and only translate.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::{existing_app, require_root};
use super::extract::Credential;
use super::openapi::{AppId, NativeErrors, TAG_APPS, TAG_ROOT_KEY};
use super::wire;
use crate::app::AppState;
use crate::keys::KeyError;

/// A new access token for the app, shown this once; the old one stops working at once.
/// The app's session tokens (JWTs) stay valid: `POST /apps/{id}/tokens/flush` rejects them.
#[utoipa::path(post, path = "/apps/{id}/access-token", tag = TAG_APPS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new access token (shown this once)", body = wire::AccessToken), NativeErrors))]
async fn access_token(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let app = existing_app(&state, &id).await?;
    let token = state.keys.regenerate_access_token(&app.id, false).await?;
    Ok((
        super::no_store(),
        Json(wire::AccessToken {
            app_id: app.id.clone(),
            access_token: token.expose().to_owned(),
        }),
    ))
}

/// A new root key, shown this once; the old one stops working at once (on every replica).
/// Two rotations racing with the same old key: one wins, the other gets 409
/// `root_key_changed`.
#[utoipa::path(post, path = "/root-key/rotate", tag = TAG_ROOT_KEY,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new root key (shown this once)", body = wire::RootKey), NativeErrors))]
async fn rotate_root_key(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<impl IntoResponse, ApiError> {
    let cred = cred.as_deref();
    require_root(&state, cred).await?;
    // The digest `require_root` matched: the swap fails if another rotation won meanwhile.
    let old = cred
        .map(|c| super::legacy::rotation_digest(&state, c))
        .ok_or(ApiError::Unauthorized)?;
    let new = state
        .keys
        .rotate_root_key(&old)
        .await
        .map_err(|e| match e {
            KeyError::InvalidState(m) => ApiError::conflict("root_key_changed", m),
            e => e.into(),
        })?;
    Ok((
        super::no_store(),
        Json(wire::RootKey {
            root_key: new.expose().to_owned(),
        }),
    ))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(access_token))
        .routes(routes!(rotate_root_key))
}
