//! JWTPlus root routes (`/root/*`, the root key): apps, the root key, an app's access
//! token, emergency rotation, revocation and flush.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::errors::{JpError, JpErrorBody, JpErrorResponses};
use super::guards::{root_app, root_guard};
use super::validation::{Check, ONEOF, body_object, policy_fields};
use super::wire::*;
use super::{JpResult, ok_status};
use crate::alg::Algorithm;
use crate::api::ApiError;
use crate::api::apps::{CreateApp, new_app_row};
use crate::api::extract::Credential;
use crate::api::openapi::{JpAppId, TAG_JWTPLUS};
use crate::api::wire::Status;
use crate::app::AppState;
use crate::keys::{KeyState, Kid, parse_ulid, policy};
use crate::store::AppPolicy;

/// List every app (JWTPlus shape).
#[utoipa::path(get, path = "/root/list", tag = TAG_JWTPLUS,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Every app", body = JpAppList), JpErrorResponses))]
async fn root_list(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let apps = state.store.apps().await.map_err(ApiError::from)?;
    Ok(Json(JpAppList {
        apps: apps.iter().map(app_json).collect(),
    })
    .into_response())
}

/// New root key; the old one stops working at once.
#[utoipa::path(method(get, post), path = "/root/rotate", tag = TAG_JWTPLUS,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new root key", body = JpNewRootKey), JpErrorResponses))]
async fn root_rotate(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    let old = root_guard(&state, cred.as_deref()).await?;
    let new = state
        .keys
        .rotate_root_key(&old)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(JpNewRootKey {
            new_key: new.expose().to_owned(),
        }),
    )
        .into_response())
}

/// Create an app with its first keys.
#[utoipa::path(post, path = "/root/create", tag = TAG_JWTPLUS,
    request_body = JpCreateBody,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The app, its access token and current public key", body = JpCreated), JpErrorResponses))]
async fn root_create(
    State(state): State<AppState>,
    Credential(cred): Credential,
    body: Bytes,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let fields = policy_fields(&m, &mut c)?;
    let kt = c.string(&m, "key_type", true)?;
    let algo = c.string(&m, "algo", true)?;
    let alg = algo.as_deref().and_then(|a| a.parse::<Algorithm>().ok());
    if algo.is_some() && alg.is_none() {
        c.fail("algo", ONEOF);
    }
    if let Some(kt) = &kt {
        match alg {
            _ if !matches!(kt.as_str(), "RSA" | "ECDSA" | "EdDSA") => c.fail("key_type", ONEOF),
            Some(a) if key_type(a) != kt => c.fail("key_type", ONEOF),
            _ => {}
        }
    }
    c.done()?;
    let (Some(f), Some(alg)) = (fields, alg) else {
        return Err(JpError::Syntax("invalid json data type"));
    };
    // JWTPlus gives RS512 and PS512 keys RSA-4096, the rest RSA-2048.
    let rsa_bits = if matches!(alg, Algorithm::RS512 | Algorithm::PS512) {
        4096
    } else {
        2048
    };
    let req = CreateApp {
        name: f.name,
        signing_alg: Some(alg.as_str().to_owned()),
        rsa_bits: Some(rsa_bits),
        rotation_period: Some(f.rotation_period),
        verification_ttl: Some(policy::default_verification_ttl(f.token_expire)),
        token_ttl: Some(f.token_expire),
        refresh_ttl: Some(f.refresh_expire),
        subject_dn: None,
        status_list: None,
    };
    let row = new_app_row(req, f.description, f.token_notbefore, f.refresh_notbefore)?;
    let created = state.keys.create_app(row).await.map_err(ApiError::from)?;
    let current = created.keys.iter().find(|k| k.state == KeyState::Current);
    Ok((
        crate::api::no_store(),
        Json(JpCreated {
            app_id: created.app.id.clone(),
            app_key: created.access_token.expose().to_owned(),
            public_key: current.map(public_key_b64).unwrap_or_default(),
            algo: created.app.signing_alg.as_str().to_owned(),
            kid: current.map(|k| k.kid.to_string()),
        }),
    )
        .into_response())
}

/// Change an app's policy (every field sent).
#[utoipa::path(patch, path = "/root/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpPatchBody,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Changed", body = Status), JpErrorResponses))]
async fn root_patch(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let fields = policy_fields(&m, &mut c)?;
    c.done()?;
    let Some(f) = fields else {
        return Err(JpError::Syntax("invalid json data type"));
    };
    let verification_ttl = app
        .verification_ttl
        .max(policy::default_verification_ttl(f.token_expire));
    let p = policy::Policy {
        signing_alg: app.signing_alg,
        rsa_bits: app.rsa_bits,
        rotation_period: f.rotation_period,
        verification_ttl,
        token_ttl: f.token_expire,
        token_nbf: f.token_notbefore,
        refresh_ttl: f.refresh_expire,
        refresh_nbf: f.refresh_notbefore,
    };
    policy::validate(&p).map_err(ApiError::from)?;
    policy::validate_name(&f.name).map_err(ApiError::from)?;
    state
        .keys
        .update_app(
            &app.id,
            &AppPolicy {
                name: f.name,
                description: f.description,
                signing_alg: p.signing_alg,
                rsa_bits: p.rsa_bits,
                rotation_period: p.rotation_period,
                verification_ttl: p.verification_ttl,
                token_ttl: p.token_ttl,
                token_nbf: p.token_nbf,
                refresh_ttl: p.refresh_ttl,
                refresh_nbf: p.refresh_nbf,
                subject_dn: app.subject_dn.clone(),
                status_list: app.status_list,
            },
        )
        .await
        .map_err(ApiError::from)?;
    Ok(ok_status())
}

/// Delete an app: every key revoked and destroyed, every token rejected.
#[utoipa::path(delete, path = "/root/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Deleted", body = Status), JpErrorResponses))]
async fn root_delete(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    state
        .keys
        .delete_app(&app.id)
        .await
        .map_err(ApiError::from)?;
    Ok(ok_status())
}

/// New access token for the app.
#[utoipa::path(get, path = "/root/{app_id}/rotate/key", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new access token", body = JpAppKey), JpErrorResponses))]
async fn root_rotate_key(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let token = state
        .keys
        .regenerate_access_token(&app.id, false)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(JpAppKey {
            app_id: app.id.clone(),
            app_key: token.expose().to_owned(),
        }),
    )
        .into_response())
}

/// Emergency rotation: every key revoked and destroyed, new keys, every JWT of the app rejected.
#[utoipa::path(method(get, post), path = "/root/{app_id}/rotate/pki", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new key and what was revoked", body = JpPki), JpErrorResponses))]
async fn root_rotate_pki(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let r = state
        .keys
        .emergency_rotate(&app.id)
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&r.current.kid);
    Ok(Json(JpPki {
        app_id: app.id.clone(),
        new_public_key: public_key_b64(&r.current),
        algo: app.signing_alg.as_str().to_owned(),
        kid: Some(r.current.kid.to_string()),
        revoked_kids: r.revoked.iter().map(|k| k.kid.to_string()).collect(),
        revoked_at: crate::clock::rfc3339(r.revoked_at),
        revoked_tokens: r.revoked_tokens,
        affected_subjects: r.affected_subjects,
    })
    .into_response())
}

/// Revoke one key (its tokens rejected, its HSM object destroyed).
#[utoipa::path(delete, path = "/root/{app_id}/revoke/{key_id}", tag = TAG_JWTPLUS,
    params(JpAppId, ("key_id" = String, Path, description = "Key id")),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Revoked", body = Status), JpErrorResponses))]
async fn root_revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path((app_id, key_id)): Path<(String, String)>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let (Ok(_), Ok(kid)) = (parse_ulid(&app_id), key_id.parse::<Kid>()) else {
        return Err(JpError::Auth("invalid app or key id"));
    };
    let app = root_app(&state, &app_id).await?;
    match state.keys.revoke_key(&app.id, kid).await {
        Ok(_) => Ok(ok_status()),
        Err(crate::keys::KeyError::KeyNotFound) => {
            Err(JpError::NotFound(JpErrorBody::text("key not found")))
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// Reject every token of the app issued so far.
#[utoipa::path(delete, path = "/root/{app_id}/flush", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Flushed", body = Status), JpErrorResponses))]
async fn root_flush(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    state.tokens.flush(&app).await.map_err(ApiError::from)?;
    Ok(ok_status())
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(root_list))
        .routes(routes!(root_rotate))
        .routes(routes!(root_create))
        .routes(routes!(root_patch, root_delete))
        .routes(routes!(root_rotate_key))
        .routes(routes!(root_rotate_pki))
        .routes(routes!(root_revoke))
        .routes(routes!(root_flush))
}
