//! Publication: JWKS and OpenID discovery, both unauthenticated.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::auth::existing_app;
use super::openapi::{AppId, PublicErrors, TAG_PUBLICATION};
use crate::alg::ALL;
use crate::app::AppState;

/// One public key (RFC 7517), built by `jwt::jwks`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JwkDoc {
    /// Key id.
    kid: String,
    /// `RSA`, `EC` or `OKP`.
    kty: String,
    /// JWS algorithm.
    alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    #[schema(rename = "use")]
    use_: String,
    /// RSA modulus (base64url).
    n: Option<String>,
    /// RSA exponent (base64url).
    e: Option<String>,
    /// Curve (`P-256`, `P-384`, `P-521`, `Ed25519`).
    crv: Option<String>,
    /// Public point x (base64url).
    x: Option<String>,
    /// Public point y (base64url, EC only).
    y: Option<String>,
    /// The key's certificate chain (base64 DER).
    x5c: Option<Vec<String>>,
    /// SHA-1 thumbprint of the certificate (base64url).
    x5t: Option<String>,
    /// SHA-256 thumbprint of the certificate (base64url).
    #[serde(rename = "x5t#S256")]
    #[schema(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// A JWK Set: the `next`, `current` and `previous` keys of an app.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JwksDoc {
    /// The keys.
    keys: Vec<JwkDoc>,
}

/// OpenID discovery document of an app (RFC 8414 / OpenID Connect Discovery fields).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Discovery {
    /// `<base>/apps/{id}`: the `iss` of every token of the app.
    issuer: String,
    /// The JWKS.
    jwks_uri: String,
    /// RFC 7662 endpoint.
    introspection_endpoint: String,
    /// RFC 7009 endpoint.
    revocation_endpoint: String,
    /// Issuance endpoint.
    token_endpoint: String,
    /// The app's algorithm and those of its published keys.
    id_token_signing_alg_values_supported: Vec<String>,
    /// `client_secret_basic`.
    token_endpoint_auth_methods_supported: Vec<String>,
    /// `bearer`.
    introspection_endpoint_auth_methods_supported: Vec<String>,
    /// `bearer`.
    revocation_endpoint_auth_methods_supported: Vec<String>,
    /// `token`.
    response_types_supported: Vec<String>,
    /// `public`.
    subject_types_supported: Vec<String>,
    /// `refresh_token`.
    grant_types_supported: Vec<String>,
    /// Registered claims the tokens carry.
    claims_supported: Vec<String>,
    /// This API's documentation (`/docs`).
    service_documentation: String,
    /// draft-ietf-oauth-status-list: the app's Status List Aggregation (the URIs of its
    /// Token Status Lists), present when the app's tokens carry a `status` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_list_aggregation_endpoint: Option<String>,
    /// Every algorithm the service can sign with.
    #[serde(rename = "x-supported-algorithms")]
    #[schema(rename = "x-supported-algorithms")]
    x_supported_algorithms: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The app's JWKS: `next`, `current` and `previous` keys.
#[utoipa::path(get, path = "/apps/{id}/.well-known/jwks.json", tag = TAG_PUBLICATION,
    params(AppId),
    responses((status = 200, description = "JWK Set; `Cache-Control: public, max-age=...`", body = JwksDoc), PublicErrors))]
async fn jwks(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    existing_app(&state, &id).await?;
    let keys = state.registry.published(&id);
    // The rotation guard needs to know when a JWKS was last handed out (at most one store
    // write per app per second).
    state.keys.jwks_served(&id).await;
    let mut res = Json(crate::jwt::jwks::jwks(&keys)).into_response();
    // Short enough that a verifier sees a new `next` key before it signs: the service never
    // promotes a key while a JWKS served without it may still be cached.
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.settings.jwks_max_age))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

/// The app's OpenID discovery document.
#[utoipa::path(get, path = "/apps/{id}/.well-known/openid-configuration", tag = TAG_PUBLICATION,
    params(AppId),
    responses((status = 200, description = "Discovery document", body = Discovery), PublicErrors))]
async fn discovery(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let app = existing_app(&state, &id).await?;
    let issuer = state.issuer(&id);
    let mut algs: Vec<String> = vec![app.signing_alg.as_str().to_owned()];
    for k in state.registry.published(&id) {
        let a = k.row.algorithm.as_str();
        if !algs.iter().any(|x| x == a) {
            algs.push(a.to_owned());
        }
    }
    let body = Discovery {
        status_list_aggregation_endpoint: app.status_list.then(|| format!("{issuer}/statuslists")),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        introspection_endpoint: format!("{issuer}/tokens/introspect"),
        revocation_endpoint: format!("{issuer}/tokens/revoke"),
        token_endpoint: format!("{issuer}/tokens"),
        issuer,
        id_token_signing_alg_values_supported: algs,
        token_endpoint_auth_methods_supported: strings(&["client_secret_basic"]),
        introspection_endpoint_auth_methods_supported: strings(&["bearer"]),
        revocation_endpoint_auth_methods_supported: strings(&["bearer"]),
        response_types_supported: strings(&["token"]),
        subject_types_supported: strings(&["public"]),
        grant_types_supported: strings(&["refresh_token"]),
        claims_supported: strings(&["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]),
        service_documentation: format!("{}/docs", state.base_url()),
        x_supported_algorithms: ALL.iter().map(|a| a.as_str().to_owned()).collect(),
    };
    let mut res = Json(body).into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.settings.jwks_max_age))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(discovery))
}
