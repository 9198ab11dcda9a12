//! Who may call a JWTPlus route: the root key on `/root/*`, the app's access token on
//! `/app/{app_id}/*`. The checks are `api::auth`'s (so a change of how credentials are
//! recognised reaches these routes too); only the answers are JWTPlus's.

use std::sync::Arc;

use super::errors::{JpError, JpErrorBody};
use crate::api::ApiError;
use crate::api::auth::{existing_app, require_app, require_root};
use crate::app::AppState;
use crate::auth::ROOT_PREFIX;
use crate::keys::parse_ulid;
use crate::store::AppRow;

/// `api::auth`'s refusal as JWTPlus says it: every refused credential is a 403 with
/// `sentence`, because JWTPlus has no 401 and no 429. The refusal was already counted and
/// audited by `api::auth` (a source over its budget is counted as throttled there, though
/// JWTPlus still answers 403). A store failure stays one.
fn refused(e: ApiError, sentence: &'static str) -> JpError {
    if e.status_code().is_client_error() {
        JpError::Auth(sentence)
    } else {
        JpError::Api(e)
    }
}

/// Require the root key; returns its digest (what a root-key rotation swaps). JWTPlus
/// tells a credential that is not a root key (`invalid root token`) from a wrong one
/// (`invalid root key`).
pub(super) async fn root_guard(state: &AppState, cred: Option<&str>) -> Result<String, JpError> {
    let sentence = match cred {
        // Ours (`rk_`), or shaped like the JWTPlus root key a migration kept (`api::legacy`).
        Some(c) if c.starts_with(ROOT_PREFIX) || crate::api::legacy::shaped(c) => {
            "invalid root key"
        }
        _ => "invalid root token",
    };
    require_root(state, cred)
        .await
        .map_err(|e| refused(e, sentence))?;
    // `require_root` accepted it, so it is there.
    cred.map(|c| crate::api::legacy::rotation_digest(state, c))
        .ok_or(JpError::Auth(sentence))
}

/// Require `app_id`'s access token: `invalid app id` for an id that is not a ULID, else
/// one sentence for every refusal (no credential, a wrong one, another app's, the root key).
pub(super) async fn app_guard(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<Arc<AppRow>, JpError> {
    if parse_ulid(app_id).is_err() {
        return Err(JpError::Auth("invalid app id"));
    }
    require_app(state, cred, app_id)
        .await
        .map_err(|e| refused(e, "invalid app key or id"))
}

/// The app of a `/root/{app_id}` route: 400 for a bad id, 404 for an unknown one.
pub(super) async fn root_app(state: &AppState, app_id: &str) -> Result<Arc<AppRow>, JpError> {
    if parse_ulid(app_id).is_err() {
        return Err(JpError::BadId);
    }
    existing_app(state, app_id).await.map_err(|e| match e {
        ApiError::NotFound(_) => JpError::NotFound(JpErrorBody::text("app not found")),
        e => JpError::Api(e),
    })
}
