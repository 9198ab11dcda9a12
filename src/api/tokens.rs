//! Native token routes: issue, refresh, introspect (RFC 7662), revoke (RFC 7009),
//! sessions, flush.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{require_app, require_root_or_app};
use super::extract::{Credential, Later};
use super::openapi::{AppId, NativeErrors, TAG_TOKENS};
use super::wire::{
    self, Flushed, Introspection, IssuedToken, Session, Sessions, Status, TokenRevoked,
};
use super::{ApiError, Resource};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::jwt::Issued;
use crate::jwt::service::{IssueOptions, OnReuse, RefreshFormat};

/// `POST /apps/{id}/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    /// Caller claims (`sub`, `aud`, custom); the service sets `iss iat nbf exp jti`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// Lifetime in seconds, at most the app's `token_ttl`.
    #[serde(default)]
    pub ttl: Option<i64>,
}

/// `POST /apps/{id}/tokens/refresh` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    /// The refresh token.
    pub refresh_token: String,
}

/// RFC 7662 / 7009 body (JSON or `application/x-www-form-urlencoded`).
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct TokenParam {
    /// The token.
    pub token: String,
    /// RFC 7662 §2.1 hint; accepted and not needed (the token says what it is).
    #[serde(default, rename = "token_type_hint")]
    #[schema(rename = "token_type_hint")]
    _hint: Option<String>,
}

/// `?sub=` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SubQuery {
    /// Subject (1 to 1024 bytes).
    pub sub: String,
}

pub(crate) fn issued_body(i: &Issued) -> IssuedToken {
    IssuedToken::new(i)
}

fn native_opts(state: &AppState, app_id: &str, ttl: Option<i64>) -> IssueOptions {
    IssueOptions {
        issuer: state.issuer(app_id),
        ttl,
        with_jid: false,
        refresh: RefreshFormat::Opaque,
        meta: None,
    }
}

/// Issue a JWT signed by the app's current key (and a refresh token when the app has
/// `refresh_ttl` > 0).
#[utoipa::path(post, path = "/apps/{id}/tokens", tag = TAG_TOKENS,
    params(AppId),
    request_body = IssueRequest,
    security(("app_token" = [])),
    responses((status = 201, description = "The token", body = IssuedToken), NativeErrors))]
async fn issue(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let req: IssueRequest = body.json().await?;
    let issued = state
        .tokens
        .issue(&app, req.claims, &native_opts(&state, &id, req.ttl))
        .await?;
    super::layers::record_kid(&issued.kid);
    Ok((
        StatusCode::CREATED,
        super::no_store(),
        Json(issued_body(&issued)),
    ))
}

/// Exchange a refresh token (single use) for a new pair. A spent one presented again
/// revokes its family, unless it is a retry within `refresh_reuse_grace` whose successor
/// was never used: then a fresh pair, and that successor is revoked.
#[utoipa::path(post, path = "/apps/{id}/tokens/refresh", tag = TAG_TOKENS,
    params(AppId),
    request_body(content(
        (RefreshRequest = "application/json"),
        (RefreshRequest = "application/x-www-form-urlencoded"),
    )),
    security(("app_token" = [])),
    responses((status = 200, description = "The new pair", body = IssuedToken), NativeErrors))]
async fn refresh(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let req: RefreshRequest = body.json_or_form().await?;
    let issued = state
        .tokens
        .refresh(
            &app,
            &req.refresh_token,
            &native_opts(&state, &id, None),
            OnReuse::RevokeFamily {
                grace: state.settings.refresh_reuse_grace,
            },
        )
        .await?;
    super::layers::record_kid(&issued.kid);
    Ok((
        StatusCode::OK,
        super::no_store(),
        Json(issued_body(&issued)),
    ))
}

/// RFC 7662 introspection: `{"active": false}`, or `active: true` with the token's claims.
#[utoipa::path(post, path = "/apps/{id}/tokens/introspect", tag = TAG_TOKENS,
    params(AppId),
    request_body(content(
        (TokenParam = "application/x-www-form-urlencoded"),
        (TokenParam = "application/json"),
    )),
    security(("app_token" = [])),
    responses((status = 200, description = "Whether the token is active, with its claims", body = Introspection), NativeErrors))]
async fn introspect(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<impl IntoResponse, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let req: TokenParam = body.json_or_form().await?;
    let body = match state.tokens.verify(&app, state.issuers(), &req.token).await {
        Ok(mut claims) => {
            // `active` and `token_type` are ours, whatever the token carries.
            claims.remove("active");
            claims.remove("token_type");
            Introspection {
                active: true,
                token_type: Some("access_token".into()),
                claims,
            }
        }
        Err(why) => {
            tracing::debug!(?why, "token inactive");
            Introspection {
                active: false,
                token_type: None,
                claims: Map::new(),
            }
        }
    };
    Ok((super::no_store(), Json(body)))
}

/// RFC 7009 revocation: deny-list one token.
#[utoipa::path(post, path = "/apps/{id}/tokens/revoke", tag = TAG_TOKENS,
    params(AppId),
    request_body(content(
        (TokenParam = "application/x-www-form-urlencoded"),
        (TokenParam = "application/json"),
    )),
    security(("app_token" = [])),
    responses((status = 200, description = "Revoked (also for an unknown token)", body = TokenRevoked), NativeErrors))]
async fn revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<Json<TokenRevoked>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let req: TokenParam = body.json_or_form().await?;
    state
        .tokens
        .revoke(&app, state.issuers(), &req.token)
        .await?;
    Ok(Json(TokenRevoked { revoked: true }))
}

/// Reject every token of the app issued so far (the app's cut-off moves to now).
#[utoipa::path(post, path = "/apps/{id}/tokens/flush", tag = TAG_TOKENS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The new cut-off", body = Flushed), NativeErrors))]
async fn flush(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Flushed>, ApiError> {
    let (_, app) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    state.tokens.flush(&app).await?;
    let app = state
        .registry
        .app(&id)
        .ok_or(ApiError::NotFound(Resource::App))?;
    Ok(Json(Flushed {
        status: "ok".into(),
        cutoff_at: rfc3339(wire::ulid_time(app.cutoff.as_deref()).unwrap_or(0)),
    }))
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

/// A subject's live tokens.
#[utoipa::path(get, path = "/apps/{id}/sessions", tag = TAG_TOKENS,
    params(AppId, SubQuery),
    security(("app_token" = [])),
    responses((status = 200, description = "The subject's live tokens", body = Sessions), NativeErrors))]
async fn sessions(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    query: Later,
) -> Result<Json<Sessions>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let q: SubQuery = query.query().await?;
    check_sub(&q.sub)?;
    let rows = state.tokens.sessions(&app, &q.sub).await?;
    Ok(Json(Sessions {
        sessions: rows
            .iter()
            .map(|r| Session {
                jti: r.jti.clone(),
                kid: r.kid.clone(),
                iat: r.iat,
                exp: r.exp,
                refresh_expires_at: r.refresh_exp,
            })
            .collect(),
    }))
}

/// Log a subject out everywhere: every live token of theirs is rejected.
#[utoipa::path(delete, path = "/apps/{id}/sessions", tag = TAG_TOKENS,
    params(AppId, SubQuery),
    security(("app_token" = [])),
    responses((status = 200, description = "Logged out", body = Status), NativeErrors))]
async fn logout(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    query: Later,
) -> Result<Json<Status>, ApiError> {
    let app = require_app(&state, cred.as_deref(), &id).await?;
    let q: SubQuery = query.query().await?;
    check_sub(&q.sub)?;
    state.tokens.logout_subject(&app, &q.sub).await?;
    Ok(Json(Status::ok()))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue))
        .routes(routes!(refresh))
        .routes(routes!(introspect))
        .routes(routes!(revoke))
        .routes(routes!(flush))
        .routes(routes!(sessions, logout))
}
