//! Publication: JWKS and OpenID discovery, both unauthenticated.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::ApiError;
use super::auth::existing_app;
use super::extract::HostHeader;
use crate::alg::ALL;
use crate::app::AppState;

async fn jwks(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    existing_app(&state, &id).await?;
    let keys = state.registry.published(&id);
    let mut res = Json(crate::jwt::jwks::jwks(&keys)).into_response();
    // Short enough that a verifier sees a new `next` key before it signs: the service never
    // promotes a key published less than this long ago.
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.settings.jwks_max_age))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

async fn discovery(
    State(state): State<AppState>,
    host: HostHeader,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let app = existing_app(&state, &id).await?;
    let issuer = state.issuer(&host, &id);
    let mut algs: Vec<&str> = vec![app.signing_alg.as_str()];
    for k in state.registry.published(&id) {
        let a = k.row.algorithm.as_str();
        if !algs.contains(&a) {
            algs.push(a);
        }
    }
    let body = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/tokens/introspect"),
        "revocation_endpoint": format!("{issuer}/tokens/revoke"),
        "token_endpoint": format!("{issuer}/tokens"),
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["bearer"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "grant_types_supported": ["refresh_token"],
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"],
        "service_documentation": format!("{}/docs", state.base_url(&host)),
        "x-supported-algorithms": ALL.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
    });
    let mut res = Json(body).into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.settings.jwks_max_age))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{id}/.well-known/jwks.json", get(jwks))
        .route(
            "/apps/{id}/.well-known/openid-configuration",
            get(discovery),
        )
}
