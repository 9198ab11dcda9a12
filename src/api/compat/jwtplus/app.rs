//! JWTPlus app routes (`/app/{app_id}/*`, the app's access token): the app, its keys,
//! tokens (sign, verify, renew, logout) and sessions; and `/ping`, `/health`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::errors::{JpError, JpErrorBody, JpErrorResponses};
use super::guards::app_guard;
use super::validation::{Check, body_object, client_meta};
use super::wire::*;
use super::{JpResult, ok_status};
use crate::api::ApiError;
use crate::api::extract::Credential;
use crate::api::openapi::{JpAppId, TAG_JWTPLUS};
use crate::api::wire::Status;
use crate::app::AppState;
use crate::jwt::service::{IssueOptions, RefreshFormat};
use crate::keys::{KeyState, Kid};

/// The app (JWTPlus shape).
#[utoipa::path(get, path = "/app/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The app", body = JpAppInfo), JpErrorResponses))]
async fn app_info(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    Ok(Json(JpAppInfo {
        app: app_json(&app),
    })
    .into_response())
}

/// The app's public keys.
#[utoipa::path(get, path = "/app/{app_id}/pub-keys", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "Every key of the app", body = JpPubKeys), JpErrorResponses))]
async fn app_pub_keys(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let keys = state
        .store
        .app_keys(&app.id)
        .await
        .map_err(ApiError::from)?;
    // A live key the HSM did not confirm is not the app's to show (see `keys::Registry`).
    let out: Vec<JpPubKey> = keys
        .iter()
        .filter(|k| state.registry.refused(&k.kid).is_none())
        .map(|k| {
            let exp_time = match k.state {
                KeyState::Current => k.activated_at.unwrap_or(k.created_at) + app.rotation_period,
                _ => k
                    .deactivated_at
                    .or(k.revoked_at)
                    .or(k.retired_at)
                    .unwrap_or(0),
            };
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
            JpPubKey {
                key_id: k.kid.to_string(),
                public_key: public_key_b64(k),
                key_type: key_type(k.algorithm).to_owned(),
                key_algo: k.algorithm.as_str().to_owned(),
                exp_time,
                is_expired: yes_no(matches!(k.state, KeyState::Previous | KeyState::Retired)),
                is_revoked: yes_no(k.state == KeyState::Revoked),
                state: k.state.as_str().to_owned(),
            }
        })
        .collect();
    Ok(Json(JpPubKeys { keys: out }).into_response())
}

fn opts(state: &AppState, app_id: &str, meta: Option<Value>) -> IssueOptions {
    IssueOptions {
        issuer: state.issuer(app_id),
        ttl: None,
        with_jid: true,
        refresh: RefreshFormat::Jwt,
        meta,
    }
}

/// A token pair with its signing key (`sign`, `renew`).
fn pair_body(state: &AppState, kid: Kid, issued: &crate::jwt::Issued) -> JpPair {
    let spki = state
        .registry
        .key(&kid)
        .and_then(|k| k.public.to_spki_der().ok());
    JpPair {
        key_id: kid.to_string(),
        public_key: spki_b64(spki.as_deref()),
        auth_token: issued.token.clone(),
        refresh_token: issued.refresh_token.as_ref().map(|r| r.expose().to_owned()),
    }
}

/// Issue an access and refresh token pair; other top-level members become claims.
#[utoipa::path(post, path = "/app/{app_id}/sign", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpSignBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The token pair", body = JpPair), JpErrorResponses))]
async fn app_sign(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    c.string(&m, "sub", true)?;
    c.string(&m, "aud", true)?;
    let meta = client_meta(&m, &mut c)?;
    c.done()?;
    // Every top-level body key becomes a claim, as in JWTPlus; reserved ones are refused.
    let issued = state
        .tokens
        .issue(&app, m, &opts(&state, &app.id, meta))
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&issued.kid);
    Ok((
        crate::api::no_store(),
        Json(pair_body(&state, issued.kid, &issued)),
    )
        .into_response())
}

/// Whether an access token verifies now.
#[utoipa::path(post, path = "/app/{app_id}/verify", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpTokenBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The verdict", body = JpVerified), JpErrorResponses))]
async fn app_verify(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let token = c.jwt(&m, "token")?;
    c.done()?;
    let verified = match token {
        Some(t) => state.tokens.verify(&app, state.issuers(), &t).await.is_ok(),
        None => false,
    };
    Ok(Json(JpVerified { verified }).into_response())
}

/// Exchange a refresh token (single use) for a new pair.
#[utoipa::path(post, path = "/app/{app_id}/renew", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpRenewBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The new pair", body = JpPair), JpErrorResponses))]
async fn app_renew(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let rt = c.jwt(&m, "refresh_token")?;
    let meta = client_meta(&m, &mut c)?;
    c.done()?;
    let Some(rt) = rt else {
        return Err(JpError::Empty);
    };
    match state
        .tokens
        .refresh(
            &app,
            &rt,
            &opts(&state, &app.id, meta),
            crate::jwt::service::OnReuse::AuditOnly,
        )
        .await
    {
        Ok(issued) => {
            crate::api::layers::record_kid(&issued.kid);
            Ok((
                crate::api::no_store(),
                Json(pair_body(&state, issued.kid, &issued)),
            )
                .into_response())
        }
        Err(
            crate::jwt::service::TokenError::InvalidRefresh
            | crate::jwt::service::TokenError::RefreshReused,
        ) => Err(JpError::NotFound(JpErrorBody::message(
            "invalid refresh token",
        ))),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// A subject's live sessions.
#[utoipa::path(post, path = "/app/{app_id}/get-session", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpSubBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The sessions (null when none)", body = JpSessions), JpErrorResponses))]
async fn app_get_session(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let sub = c.string(&m, "sub", true)?;
    c.done()?;
    let Some(sub) = sub else {
        return Err(JpError::Empty);
    };
    let rows = state
        .tokens
        .sessions(&app, &sub)
        .await
        .map_err(ApiError::from)?;
    if rows.is_empty() {
        return Ok(Json(JpSessions { sessions: None }).into_response());
    }
    let sessions: Vec<JpSession> = rows
        .iter()
        .map(|r| {
            let meta: Value = r
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or(Value::Null);
            JpSession {
                token_id: r.jti.clone(),
                key_id: r.kid.clone(),
                auth_token_iat: r.iat,
                auth_token_nbf: r.iat + app.token_nbf,
                auth_token_exp: r.exp,
                refresh_token_iat: r.iat,
                refresh_token_nbf: r.iat + app.refresh_nbf,
                refresh_token_exp: r.refresh_exp.unwrap_or(0),
                ip_address: meta.get("ip").cloned().unwrap_or(Value::from("")),
                user_agent: meta.get("useragent").cloned().unwrap_or(Value::from("")),
            }
        })
        .collect();
    Ok(Json(JpSessions {
        sessions: Some(sessions),
    })
    .into_response())
}

/// End the session of one access token (always 200, as in JWTPlus).
#[utoipa::path(post, path = "/app/{app_id}/logout", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpTokenBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "Done", body = Status), JpErrorResponses))]
async fn app_logout(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let token = c.jwt(&m, "token")?;
    c.done()?;
    // Ends that one session pair; always 200, as in JWTPlus.
    if let Some(t) = token
        && let Ok(claims) = state.tokens.verify(&app, state.issuers(), &t).await
        && let Some(jti) = claims.get("jti").and_then(Value::as_str)
    {
        state
            .tokens
            .end_session(&app, jti)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(ok_status())
}

/// JWTPlus liveness: `pong`.
#[utoipa::path(get, path = "/ping", tag = TAG_JWTPLUS,
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn ping() -> &'static str {
    "pong"
}

/// JWTPlus health: whether the store answers.
#[utoipa::path(get, path = "/health", tag = TAG_JWTPLUS,
    responses(
        (status = 200, description = "The store answers", body = JpHealth),
        (status = 503, description = "The store does not answer", body = JpHealth),
    ))]
async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(JpHealth {
            message: "ok".into(),
        })
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(JpHealth {
                message: "db-down".into(),
            }),
        )
            .into_response(),
    }
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .routes(routes!(health))
        .routes(routes!(app_info))
        .routes(routes!(app_pub_keys))
        .routes(routes!(app_sign))
        .routes(routes!(app_verify))
        .routes(routes!(app_renew))
        .routes(routes!(app_get_session))
        .routes(routes!(app_logout))
}
