//! Auth0 connection keys: `POST /connections/{id}/keys/rotate` and
//! `GET /connections/{id}/keys`, also under `/api/v2/`. A connection is an app. Bearer root
//! key or the app's access token; failures in Auth0's error shape.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::alg::Algorithm;
use crate::api::ApiError;
use crate::api::auth::{Actor, key_change_allowed, require_root_or_app};
use crate::api::error::{Dialect, PeerHeaders};
use crate::api::extract::Credential;
use crate::api::openapi::{AppId, TAG_AUTH0};
use crate::api::wire::cert_fingerprints;
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::keys::KeyState;
use crate::store::{AppPolicy, KeyRow};

/// Auth0's error body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct A0ErrorBody {
    /// The HTTP status.
    status_code: u16,
    /// Its reason phrase.
    error: String,
    /// Human sentence.
    message: String,
    /// `invalid_token`, `insufficient_scope`, `inexistent_connection`, `invalid_body`, ...
    error_code: String,
}

/// The error responses of the Auth0 routes.
pub(crate) struct A0ErrorResponses;

impl utoipa::IntoResponses for A0ErrorResponses {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        crate::api::openapi::family_errors(
            "A0ErrorBody",
            &[
                (400, "Bad body (`invalid_body`)"),
                (401, "No credential or an unknown one (`invalid_token`)"),
                (
                    403,
                    "A credential that may not do this (`insufficient_scope`)",
                ),
                (404, "No such connection (`inexistent_connection`)"),
                (413, "Body over 64 KiB"),
                (422, "Not acceptable (`invalid_body`)"),
                (
                    429,
                    "Too many invalid credentials from this address, or too many rotations by this app's token (`too_many_requests`, with `Retry-After`)",
                ),
                (500, "Store failure"),
                (503, "HSM unavailable, or a certificate still being made"),
            ],
        )
    }
}

/// `POST .../keys/rotate` body (optional).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct A0RotateBody {
    /// Algorithm of the new keys: RS256 RS384 RS512 PS256 PS384 ES256 ES384 (also PS512
    /// ES512 EdDSA).
    #[schema(example = "RS256")]
    signing_alg: Option<String>,
}

/// An [`ApiError`] in Auth0's shape: `{"statusCode", "error", "message", "errorCode"}`.
pub(crate) struct A0Error(ApiError);

impl From<ApiError> for A0Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// Auth0's error dialect.
struct Auth0;

impl Dialect for Auth0 {
    type Body = A0ErrorBody;
    /// The Management API's 401 carries its JSON body only, so no `WWW-Authenticate`;
    /// `Retry-After` is kept on a 429 because it is the only place the wait is said (the
    /// body has no field for it).
    const HEADERS: PeerHeaders = PeerHeaders {
        retry_after: true,
        www_authenticate: false,
    };
    fn body(e: &ApiError) -> A0ErrorBody {
        let status = e.status_code();
        let error_code = match status {
            StatusCode::UNAUTHORIZED => "invalid_token",
            StatusCode::FORBIDDEN => "insufficient_scope",
            StatusCode::NOT_FOUND => "inexistent_connection",
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            _ => e.code(),
        };
        A0ErrorBody {
            status_code: status.as_u16(),
            error: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: e.public_message(),
            error_code: error_code.to_owned(),
        }
    }
}

impl IntoResponse for A0Error {
    fn into_response(self) -> Response {
        self.0.render::<Auth0>()
    }
}

/// The Auth0 key shape.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct A0Key {
    /// Key id.
    kid: String,
    /// PEM X.509 certificate, self-signed inside the HSM by this key.
    cert: String,
    /// SHA-1 of the DER certificate, upper-case hex pairs joined by `:`.
    fingerprint: String,
    /// The same without colons.
    thumbprint: String,
    /// PEM PKCS#7 certs-only SignedData holding the certificate.
    pkcs: String,
    /// Whether this is the next key.
    next: bool,
    /// Whether this is the signing key.
    current: bool,
    /// Whether this key stopped signing and still verifies.
    previous: bool,
    /// JWS algorithm.
    algorithm: String,
    /// `signing`.
    key_use: String,
    /// Certificate subject.
    subject_dn: String,
    /// Whether the key is revoked.
    revoked: bool,
    /// RFC 3339, when it began signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    current_since: Option<String>,
    /// RFC 3339, when it stopped signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    current_until: Option<String>,
    /// RFC 3339, when it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
}

/// The Auth0 key shape of one key (its certificate must exist).
pub(crate) fn key_shape(k: &KeyRow, subject_dn: &str) -> Result<A0Key, ApiError> {
    let cert = k.cert.as_deref().ok_or_else(|| ApiError::Unavailable {
        code: "certificate_pending",
        message: "the key's certificate is being made; retry".into(),
    })?;
    let pem = crate::x509::cert_pem(cert).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let pkcs = crate::x509::pkcs7_pem(cert).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let (fingerprint, thumbprint) = cert_fingerprints(cert);
    Ok(A0Key {
        kid: k.kid.to_string(),
        cert: pem,
        fingerprint,
        thumbprint,
        pkcs,
        next: k.state == KeyState::Next,
        current: k.state == KeyState::Current,
        previous: k.state == KeyState::Previous,
        algorithm: k.algorithm.as_str().to_owned(),
        key_use: "signing".into(),
        subject_dn: subject_dn.to_owned(),
        revoked: k.state == KeyState::Revoked,
        current_since: k.activated_at.map(rfc3339),
        current_until: k
            .deactivated_at
            .or(k.revoked_at.filter(|_| k.activated_at.is_some()))
            .map(rfc3339),
        revoked_at: k.revoked_at.map(rfc3339),
    })
}

/// Auth0 takes these (we also take PS512, ES512 and EdDSA).
fn parse_signing_alg(body: &Bytes) -> Result<Option<Algorithm>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request("invalid_body", "Invalid request payload JSON format")
    })?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::bad_request(
            "invalid_body",
            "Payload validation error: 'Expected type object'.",
        )
    })?;
    if let Some(extra) = obj.keys().find(|k| *k != "signing_alg") {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("Payload validation error: 'Additional properties not allowed: {extra}'."),
        ));
    }
    match obj.get("signing_alg") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_body",
                format!("Payload validation error: 'No enum match for: \"{}\"' on property signing_alg (Selected Signing Algorithm).", s.chars().take(40).collect::<String>()),
            )
        }),
        Some(_) => Err(ApiError::bad_request("invalid_body", "Payload validation error: 'Expected type string' on property signing_alg.")),
    }
}

/// What Auth0 says to a token without the scope a call needs.
const NEEDS_ROOT_FOR_ALG: &str = "Insufficient scope: changing a connection's signing_alg needs the root key (an app's access token may rotate keys, not change their algorithm)";

/// Graceful rotation of a connection's keys (optionally to a new algorithm, which only the
/// root key may ask for: it changes the app's policy, as native `PATCH /apps/{id}` does).
#[utoipa::path(post, path = "/connections/{id}/keys/rotate", tag = TAG_AUTH0,
    params(AppId),
    request_body(content = Option<A0RotateBody>, content_type = "application/json"),
    security(("root_bearer" = []), ("app_token" = [])),
    responses((status = 201, description = "The new `next` key", body = A0Key), A0ErrorResponses))]
async fn rotate(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, A0Error> {
    let (actor, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    let alg = parse_signing_alg(&body)?;
    if matches!(actor, Actor::App(_)) && alg.is_some_and(|a| a != app.signing_alg) {
        return Err(ApiError::Forbidden(NEEDS_ROOT_FOR_ALG.into()).into());
    }
    key_change_allowed(&state, &actor)?;
    // A new algorithm is applied inside the rotation: a refused rotation changes nothing.
    let policy = alg.filter(|a| *a != app.signing_alg).map(|alg| AppPolicy {
        name: app.name.clone(),
        description: app.description.clone(),
        signing_alg: alg,
        rsa_bits: match (alg.is_rsa(), app.rsa_bits) {
            (false, _) => 0,
            (true, 0) => 2048,
            (true, bits) => bits,
        },
        rotation_period: app.rotation_period,
        verification_ttl: app.verification_ttl,
        token_ttl: app.token_ttl,
        token_nbf: app.token_nbf,
        refresh_ttl: app.refresh_ttl,
        refresh_nbf: app.refresh_nbf,
        subject_dn: app.subject_dn.clone(),
        status_list: app.status_list,
    });
    let r = state
        .keys
        // Auth0 never refuses a rotation for timing: an early one is carried out and
        // audited as early, so a script that rotates in a loop works as it does there.
        .rotate_with(
            &id,
            crate::keys::RotationKind::Manual,
            policy.as_ref(),
            crate::keys::Early::Allow("auth0"),
        )
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&r.current.kid);
    Ok((
        StatusCode::CREATED,
        Json(key_shape(&r.next, &app.subject_dn)?),
    )
        .into_response())
}

/// A connection's published keys.
#[utoipa::path(get, path = "/connections/{id}/keys", tag = TAG_AUTH0,
    params(AppId),
    security(("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The published keys", body = Vec<A0Key>), A0ErrorResponses))]
async fn list(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Vec<A0Key>>, A0Error> {
    let (_, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    let mut keys = state.store.app_keys(&id).await.map_err(ApiError::from)?;
    if keys.iter().any(|k| k.state.published() && k.cert.is_none()) {
        state.keys.certify(&id).await;
        keys = state.store.app_keys(&id).await.map_err(ApiError::from)?;
    }
    // A key the HSM did not confirm is not the app's to show (see `keys::Registry`).
    let shapes: Result<Vec<A0Key>, ApiError> = keys
        .iter()
        .filter(|k| k.state.published() && state.registry.refused(&k.kid).is_none())
        .map(|k| key_shape(k, &app.subject_dn))
        .collect();
    Ok(Json(shapes?))
}

/// `rotate` under `/api/v2`.
#[utoipa::path(post, path = "/api/v2/connections/{id}/keys/rotate", tag = TAG_AUTH0,
    params(AppId),
    request_body(content = Option<A0RotateBody>, content_type = "application/json"),
    security(("root_bearer" = []), ("app_token" = [])),
    responses((status = 201, description = "The new `next` key", body = A0Key), A0ErrorResponses))]
async fn rotate_v2(
    state: State<AppState>,
    cred: Credential,
    id: Path<String>,
    body: Bytes,
) -> Result<Response, A0Error> {
    rotate(state, cred, id, body).await
}

/// `list` under `/api/v2`.
#[utoipa::path(get, path = "/api/v2/connections/{id}/keys", tag = TAG_AUTH0,
    params(AppId),
    security(("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The published keys", body = Vec<A0Key>), A0ErrorResponses))]
async fn list_v2(
    state: State<AppState>,
    cred: Credential,
    id: Path<String>,
) -> Result<Json<Vec<A0Key>>, A0Error> {
    list(state, cred, id).await
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rotate))
        .routes(routes!(rotate_v2))
        .routes(routes!(list))
        .routes(routes!(list_v2))
}
