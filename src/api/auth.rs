//! Authorisation of native routes: the root key, or an app's access token.

use std::sync::Arc;

use crate::app::AppState;
use crate::auth::{ACCESS_PREFIX, ROOT_PREFIX, digest, digests_equal};
use crate::store::AppRow;

use super::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The operator, with the root key.
    Root,
    /// An app, with its access token.
    App(String),
}

impl Actor {
    /// For logs and the audit trail.
    pub fn label(&self) -> String {
        match self {
            Self::Root => "root".into(),
            Self::App(id) => format!("app:{id}"),
        }
    }
}

/// Whether `cred` is the root key.
pub(crate) fn is_root(state: &AppState, cred: &str) -> bool {
    state
        .registry
        .root_digest()
        .is_some_and(|d| digests_equal(&d, &digest(cred)))
}

/// Record an authentication failure: counted against the client's address, audited.
pub(crate) async fn auth_failed(state: &AppState, what: &str, target: &str) {
    let client = crate::audit::client();
    state.limiter.failed(client);
    tracing::info!(what, "authentication failed");
    state
        .keys
        .audit()
        .record(
            "auth.failure",
            target,
            "denied",
            serde_json::json!({"credential": what, "client": client.map(|c| c.to_string())}),
        )
        .await;
}

/// 429 while the client's address is over its failure limit.
pub(crate) fn not_rate_limited(state: &AppState) -> Result<(), ApiError> {
    state.limiter.check(crate::audit::client())
}

/// Require the root key: 401 without a credential, 403 with a wrong one.
pub(crate) async fn require_root(state: &AppState, cred: Option<&str>) -> Result<(), ApiError> {
    not_rate_limited(state)?;
    match cred {
        None => Err(ApiError::Unauthorized),
        Some(c) if is_root(state, c) => {
            crate::audit::set_actor("root");
            Ok(())
        }
        Some(_) => {
            auth_failed(state, "root key", "root").await;
            Err(ApiError::Forbidden("invalid root key".into()))
        }
    }
}

/// The app an access token belongs to, if any.
pub(crate) async fn token_app(
    state: &AppState,
    cred: &str,
) -> Result<Option<Arc<AppRow>>, ApiError> {
    if !cred.starts_with(ACCESS_PREFIX) {
        return Ok(None);
    }
    Ok(state.registry.app_by_token(&digest(cred)).await?)
}

/// Require `app_id`'s access token: 401 if missing or unknown, 403 for another app's.
pub(crate) async fn require_app(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<Arc<AppRow>, ApiError> {
    not_rate_limited(state)?;
    let Some(c) = cred else {
        return Err(ApiError::Unauthorized);
    };
    match token_app(state, c).await? {
        Some(app) if app.id == app_id => {
            crate::audit::set_actor(&format!("app:{}", app.id));
            Ok(app)
        }
        Some(other) => {
            auth_failed(state, &format!("access token of app {}", other.id), app_id).await;
            Err(ApiError::Forbidden(
                "this access token belongs to another app".into(),
            ))
        }
        None => {
            auth_failed(state, "access token", app_id).await;
            Err(ApiError::Unauthorized)
        }
    }
}

/// Require the root key or `app_id`'s access token; returns the caller and the app.
pub(crate) async fn require_root_or_app(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<(Actor, Arc<AppRow>), ApiError> {
    not_rate_limited(state)?;
    let Some(c) = cred else {
        return Err(ApiError::Unauthorized);
    };
    if c.starts_with(ROOT_PREFIX) || !c.starts_with(ACCESS_PREFIX) {
        if is_root(state, c) {
            crate::audit::set_actor("root");
            let app = existing_app(state, app_id).await?;
            return Ok((Actor::Root, app));
        }
        auth_failed(state, "root key", app_id).await;
        if c.starts_with(ROOT_PREFIX) {
            return Err(ApiError::Forbidden("invalid root key".into()));
        }
        return Err(ApiError::Unauthorized);
    }
    let app = require_app(state, Some(c), app_id).await?;
    Ok((Actor::App(app.id.clone()), app))
}

/// The app, or 404 (also for ids that are not ULIDs).
pub(crate) async fn existing_app(state: &AppState, app_id: &str) -> Result<Arc<AppRow>, ApiError> {
    if crate::keys::parse_ulid(app_id).is_err() {
        return Err(ApiError::NotFound("app"));
    }
    if let Some(a) = state.registry.app(app_id) {
        return Ok(a);
    }
    state.registry.reload_app(app_id).await?;
    state.registry.app(app_id).ok_or(ApiError::NotFound("app"))
}
