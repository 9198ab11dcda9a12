//! Auth0 connection keys: `POST /connections/{id}/keys/rotate` and
//! `GET /connections/{id}/keys`, also under `/api/v2/`. A connection is an app. Bearer root
//! key or the app's access token; failures in Auth0's error shape.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::alg::Algorithm;
use crate::api::ApiError;
use crate::api::auth::require_root_or_app;
use crate::api::extract::Credential;
use crate::api::wire::cert_fingerprints;
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::keys::KeyState;
use crate::store::{AppPolicy, KeyRow};

/// An [`ApiError`] in Auth0's shape: `{"statusCode", "error", "message", "errorCode"}`.
pub(crate) struct A0Error(ApiError);

impl From<ApiError> for A0Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for A0Error {
    fn into_response(self) -> Response {
        let status = self.0.status_code();
        let error_code = match status {
            StatusCode::UNAUTHORIZED => "invalid_token",
            StatusCode::FORBIDDEN => "insufficient_scope",
            StatusCode::NOT_FOUND => "inexistent_connection",
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => self.0.code(),
        };
        let body = json!({
            "statusCode": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": self.0.public_message(),
            "errorCode": error_code,
        });
        let cause = self
            .0
            .into_response()
            .extensions()
            .get::<crate::api::error::ErrorCause>()
            .cloned();
        let mut res = (status, Json(body)).into_response();
        if let Some(c) = cause {
            res.extensions_mut().insert(c);
        }
        res
    }
}

/// The Auth0 key shape of one key (its certificate must exist).
pub(crate) fn key_shape(k: &KeyRow, subject_dn: &str) -> Result<Value, ApiError> {
    let cert = k.cert.as_deref().ok_or_else(|| ApiError::Unavailable {
        code: "certificate_pending",
        message: "the key's certificate is being made; retry".into(),
    })?;
    let pem = crate::x509::cert_pem(cert).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let pkcs = crate::x509::pkcs7_pem(cert).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let (fingerprint, thumbprint) = cert_fingerprints(cert);
    let mut v = json!({
        "kid": k.kid.to_string(),
        "cert": pem,
        "fingerprint": fingerprint,
        "thumbprint": thumbprint,
        "pkcs": pkcs,
        "next": k.state == KeyState::Next,
        "current": k.state == KeyState::Current,
        "previous": k.state == KeyState::Previous,
        "algorithm": k.algorithm.as_str(),
        "key_use": "signing",
        "subject_dn": subject_dn,
        "revoked": k.state == KeyState::Revoked,
    });
    let m = v
        .as_object_mut()
        .ok_or_else(|| ApiError::Internal("key shape".into()))?;
    if let Some(t) = k.activated_at {
        m.insert("current_since".into(), rfc3339(t).into());
    }
    if let Some(t) = k
        .deactivated_at
        .or(k.revoked_at.filter(|_| k.activated_at.is_some()))
    {
        m.insert("current_until".into(), rfc3339(t).into());
    }
    if let Some(t) = k.revoked_at {
        m.insert("revoked_at".into(), rfc3339(t).into());
    }
    Ok(v)
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

async fn rotate(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, A0Error> {
    let (_, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    let alg = parse_signing_alg(&body)?;
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
    });
    let r = state
        .keys
        .rotate_with(&id, crate::keys::RotationKind::Manual, policy.as_ref())
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&r.current.kid);
    Ok((
        StatusCode::CREATED,
        Json(key_shape(&r.next, &app.subject_dn)?),
    )
        .into_response())
}

async fn list(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, A0Error> {
    let (_, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    let mut keys = state.store.app_keys(&id).await.map_err(ApiError::from)?;
    if keys.iter().any(|k| k.state.published() && k.cert.is_none()) {
        state.keys.certify(&id).await;
        keys = state.store.app_keys(&id).await.map_err(ApiError::from)?;
    }
    let shapes: Result<Vec<Value>, ApiError> = keys
        .iter()
        .filter(|k| k.state.published())
        .map(|k| key_shape(k, &app.subject_dn))
        .collect();
    Ok(Json(Value::Array(shapes?)))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/connections/{id}/keys/rotate", post(rotate))
        .route("/api/v2/connections/{id}/keys/rotate", post(rotate))
        .route("/connections/{id}/keys", get(list))
        .route("/api/v2/connections/{id}/keys", get(list))
}
