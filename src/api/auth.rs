//! Authorisation of native routes: the root key, or an app's access token.
//!
//! RFC 9110: 401 with `WWW-Authenticate: Bearer` for a missing, unknown or invalid
//! credential; 403 for a valid credential without the right (another app's token, an
//! app's token on a root route, the root key on a route only the app's token may call).
//!
//! The credential is always checked first, so a valid one is never refused because of
//! failures from the same address (a shared proxy or NAT). Only invalid or misplaced
//! credentials are counted against their source ([`AuthLimiter`](super::AuthLimiter));
//! over its budget, further invalid ones are answered 429. Failures are counted in the
//! metrics and audited in aggregate: one record when a source's window opens (carrying the
//! previous window's total) and one when it goes over budget.

use std::sync::Arc;
use std::time::Instant;

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

/// The sentence of a 429 for a source over its budget of invalid credentials.
const AUTH_THROTTLED: &str = "too many invalid credentials from this address; retry later";
/// The sentence of a 429 for an app over its budget of key changes.
const KEY_CHANGES_THROTTLED: &str =
    "too many key changes by this app; retry later (the root key is not limited)";

/// Whether `cred` is the root key.
pub(crate) fn is_root(state: &AppState, cred: &str) -> bool {
    state
        .registry
        .root_digest()
        .is_some_and(|d| digests_equal(&d, &digest(cred)))
}

/// Whether `cred` is the root key, or the JWTPlus root key a migration kept (see
/// [`super::legacy`]).
pub(crate) async fn is_root_or_legacy(state: &AppState, cred: &str) -> Result<bool, ApiError> {
    Ok(is_root(state, cred) || super::legacy::is_root(state, cred).await?)
}

/// What kind of credential an invalid one looked like (for metrics and the audit trail;
/// a bounded set, never the value).
pub(crate) fn kind(cred: &str) -> &'static str {
    if cred.starts_with(ROOT_PREFIX) {
        "root_key"
    } else if cred.starts_with(ACCESS_PREFIX) {
        "access_token"
    } else {
        "unrecognised"
    }
}

/// The audit target of a source: its address, or its IPv6 /64.
fn source_label(source: std::net::IpAddr) -> String {
    match source {
        std::net::IpAddr::V6(_) => format!("{source}/64"),
        std::net::IpAddr::V4(_) => source.to_string(),
    }
}

/// Count an invalid or misplaced credential (`what`, from a bounded set) against the
/// client's source, and audit it when it opens the source's window or takes it over
/// budget. `app_id` is recorded only when it is a well-formed id. Returns the seconds to
/// wait when the source is now over its budget.
pub(crate) async fn auth_failed(
    state: &AppState,
    what: &'static str,
    app_id: Option<&str>,
) -> Option<u64> {
    let f = state.limiter.failed(crate::audit::client(), Instant::now());
    crate::metrics::auth_failure(what);
    if !f.audit {
        tracing::debug!(
            credential = what,
            failures = f.in_window,
            "authentication failed"
        );
        return f.throttled;
    }
    let source = source_label(f.source);
    tracing::info!(credential = what, %source, failures = f.in_window, "authentication failed");
    let app_id = app_id.filter(|a| crate::keys::parse_ulid(a).is_ok());
    let mut details = serde_json::json!({
        "credential": what,
        "source": source,
        "failures_in_window": f.in_window,
        "window_seconds": super::layers::WINDOW.as_secs(),
        "budget": super::layers::MAX_FAILURES,
    });
    if let Some(p) = f.previous_window {
        details["previous_window_failures"] = p.into();
    }
    if let Some(a) = app_id {
        details["app_id"] = a.into();
    }
    let outcome = if f.throttled.is_some() {
        "throttled"
    } else {
        "denied"
    };
    state
        .keys
        .audit()
        .record("auth.failure", &source, outcome, details)
        .await;
    f.throttled
}

/// The answer to an invalid credential: 401, or 429 once its source is over budget.
pub(crate) async fn invalid(state: &AppState, cred: &str, app_id: Option<&str>) -> ApiError {
    match auth_failed(state, kind(cred), app_id).await {
        Some(retry_after) => {
            crate::metrics::rate_limited("auth_failures");
            ApiError::TooManyRequests {
                retry_after,
                message: AUTH_THROTTLED,
            }
        }
        None => ApiError::Unauthorized,
    }
}

/// The answer to a valid credential without the right: always 403 (counted and audited
/// like a failure, never throttled: the credential is good).
async fn misplaced(
    state: &AppState,
    what: &'static str,
    app_id: Option<&str>,
    message: &str,
) -> ApiError {
    let _ = auth_failed(state, what, app_id).await;
    ApiError::Forbidden(message.into())
}

/// Require the root key: 401 without a valid credential, 403 for an app's token.
pub(crate) async fn require_root(state: &AppState, cred: Option<&str>) -> Result<(), ApiError> {
    let Some(c) = cred else {
        return Err(ApiError::Unauthorized);
    };
    if is_root_or_legacy(state, c).await? {
        crate::audit::set_actor("root");
        return Ok(());
    }
    if token_app(state, c).await?.is_some() {
        return Err(misplaced(
            state,
            "app_token_on_root_route",
            None,
            "this route needs the root key; an app's access token cannot call it",
        )
        .await);
    }
    Err(invalid(state, c, None).await)
}

/// The app an access token (or a JWTPlus app key a migration kept) belongs to, if any.
pub(crate) async fn token_app(
    state: &AppState,
    cred: &str,
) -> Result<Option<Arc<AppRow>>, ApiError> {
    if !cred.starts_with(ACCESS_PREFIX) {
        return super::legacy::app(state, cred).await;
    }
    Ok(state.registry.app_by_token(&digest(cred)).await?)
}

/// Require `app_id`'s access token: 401 without a valid credential, 403 for another
/// app's token or the root key.
pub(crate) async fn require_app(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<Arc<AppRow>, ApiError> {
    let Some(c) = cred else {
        return Err(ApiError::Unauthorized);
    };
    match token_app(state, c).await? {
        Some(app) if app.id == app_id => {
            crate::audit::set_actor(&format!("app:{}", app.id));
            Ok(app)
        }
        Some(_) => Err(misplaced(
            state,
            "access_token_of_another_app",
            Some(app_id),
            "this access token belongs to another app",
        )
        .await),
        None if is_root_or_legacy(state, c).await? => Err(misplaced(
            state,
            "root_key_on_app_route",
            Some(app_id),
            "this route takes the app's own access token, not the root key",
        )
        .await),
        None => Err(invalid(state, c, Some(app_id)).await),
    }
}

/// Require the root key or `app_id`'s access token; returns the caller and the app (404
/// for an unknown app, once the caller is known to be the root).
pub(crate) async fn require_root_or_app(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<(Actor, Arc<AppRow>), ApiError> {
    let Some(c) = cred else {
        return Err(ApiError::Unauthorized);
    };
    if is_root_or_legacy(state, c).await? {
        crate::audit::set_actor("root");
        let app = existing_app(state, app_id).await?;
        return Ok((Actor::Root, app));
    }
    match token_app(state, c).await? {
        Some(app) if app.id == app_id => {
            crate::audit::set_actor(&format!("app:{}", app.id));
            Ok((Actor::App(app.id.clone()), app))
        }
        Some(_) => Err(misplaced(
            state,
            "access_token_of_another_app",
            Some(app_id),
            "this access token belongs to another app",
        )
        .await),
        None => Err(invalid(state, c, Some(app_id)).await),
    }
}

/// Take one key-changing call (rotate, revoke, emergency rotation) from the budget of the
/// app that makes it with its own token: 429 with `Retry-After` once it is spent. The root
/// key is never limited.
pub(crate) fn key_change_allowed(state: &AppState, actor: &Actor) -> Result<(), ApiError> {
    let Actor::App(id) = actor else {
        return Ok(());
    };
    state
        .key_changes
        .take(id, Instant::now())
        .map_err(|retry_after| {
            crate::metrics::rate_limited("key_changes");
            tracing::info!(app_id = %id, retry_after, "key change refused: the app's budget is spent");
            ApiError::TooManyRequests {
                retry_after,
                message: KEY_CHANGES_THROTTLED,
            }
        })
}

/// The app, or 404 (also for ids that are not ULIDs).
pub(crate) async fn existing_app(state: &AppState, app_id: &str) -> Result<Arc<AppRow>, ApiError> {
    if crate::keys::parse_ulid(app_id).is_err() {
        return Err(ApiError::NotFound(super::Resource::App));
    }
    if let Some(a) = state.registry.app(app_id) {
        return Ok(a);
    }
    state.registry.reload_app(app_id).await?;
    state
        .registry
        .app(app_id)
        .ok_or(ApiError::NotFound(super::Resource::App))
}
