//! Native token routes: issue, refresh, introspect (RFC 7662), revoke (RFC 7009),
//! sessions, flush.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::{require_app, require_root_or_app};
use super::extract::{ApiJson, Credential, HostHeader, JsonOrForm};
use super::{ApiError, wire};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::jwt::Issued;
use crate::jwt::service::{IssueOptions, RefreshFormat};

/// `POST /apps/{id}/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    /// Caller claims (`sub`, `aud`, custom); the service sets `iss iat nbf exp jti`.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Lifetime in seconds, at most the app's `token_ttl`.
    #[serde(default)]
    pub ttl: Option<i64>,
}

/// `POST /apps/{id}/tokens/refresh` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    /// The refresh token.
    pub refresh_token: String,
}

/// RFC 7662 / 7009 body.
#[derive(Debug, Deserialize)]
pub(super) struct TokenParam {
    /// The token.
    pub token: String,
    /// RFC 7662 §2.1 hint; accepted and not needed (the token says what it is).
    #[serde(default, rename = "token_type_hint")]
    _hint: Option<String>,
}

/// `?sub=` query.
#[derive(Debug, Deserialize)]
pub(super) struct SubQuery {
    /// Subject.
    pub sub: String,
}

pub(crate) fn issued_body(i: &Issued) -> Value {
    wire::issued(i)
}

fn native_opts(
    state: &AppState,
    host: &HostHeader,
    app_id: &str,
    ttl: Option<i64>,
) -> IssueOptions {
    IssueOptions {
        issuer: state.issuer(host, app_id),
        ttl,
        with_jid: false,
        refresh: RefreshFormat::Opaque,
        meta: None,
    }
}

async fn issue(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<IssueRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let issued = state
        .tokens
        .issue(&app, req.claims, &native_opts(&state, &host, &id, req.ttl))
        .await?;
    super::layers::record_kid(&issued.kid);
    Ok((
        StatusCode::CREATED,
        super::no_store(),
        Json(issued_body(&issued)),
    ))
}

async fn refresh(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
    JsonOrForm(req): JsonOrForm<RefreshRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let issued = state
        .tokens
        .refresh(
            &app,
            &req.refresh_token,
            &native_opts(&state, &host, &id, None),
        )
        .await?;
    super::layers::record_kid(&issued.kid);
    Ok((
        StatusCode::OK,
        super::no_store(),
        Json(issued_body(&issued)),
    ))
}

async fn introspect(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
    JsonOrForm(req): JsonOrForm<TokenParam>,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let body = match state
        .tokens
        .verify(&app, &state.issuer(&host, &id), &req.token)
        .await
    {
        Ok(mut claims) => {
            claims.insert("active".into(), true.into());
            claims.insert("token_type".into(), "access_token".into());
            Value::Object(claims)
        }
        Err(why) => {
            tracing::debug!(?why, "token inactive");
            json!({"active": false})
        }
    };
    Ok((super::no_store(), Json(body)))
}

async fn revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
    JsonOrForm(req): JsonOrForm<TokenParam>,
) -> Result<Json<Value>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    state
        .tokens
        .revoke(&app, &state.issuer(&host, &id), &req.token)
        .await?;
    Ok(Json(json!({"revoked": true})))
}

async fn flush(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    state.tokens.flush(&app).await?;
    let app = state.registry.app(&id).ok_or(ApiError::NotFound("app"))?;
    Ok(Json(
        json!({"status": "ok", "cutoff_at": rfc3339(wire::ulid_time(app.cutoff.as_deref()).unwrap_or(0))}),
    ))
}

fn check_sub(sub: &str) -> Result<(), ApiError> {
    if sub.is_empty() || sub.len() > 1024 {
        return Err(ApiError::bad_request(
            "invalid_sub",
            "sub must be 1 to 1024 bytes",
        ));
    }
    Ok(())
}

async fn sessions(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    Query(q): Query<SubQuery>,
) -> Result<Json<Value>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    check_sub(&q.sub)?;
    let rows = state.tokens.sessions(&app, &q.sub).await?;
    Ok(Json(json!({"sessions": rows.iter().map(|r| json!({
        "jti": r.jti,
        "kid": r.kid,
        "iat": r.iat,
        "exp": r.exp,
        "refresh_expires_at": r.refresh_exp,
    })).collect::<Vec<_>>()})))
}

async fn logout(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    Query(q): Query<SubQuery>,
) -> Result<Json<Value>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    check_sub(&q.sub)?;
    state.tokens.logout_subject(&app, &q.sub).await?;
    Ok(Json(json!({"status": "ok"})))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{id}/tokens", post(issue))
        .route("/apps/{id}/tokens/refresh", post(refresh))
        .route("/apps/{id}/tokens/introspect", post(introspect))
        .route("/apps/{id}/tokens/revoke", post(revoke))
        .route("/apps/{id}/tokens/flush", post(flush))
        .route("/apps/{id}/sessions", get(sessions).delete(logout))
}
