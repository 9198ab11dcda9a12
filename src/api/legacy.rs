//! Credentials carried over from JWTPlus by `hsm-rotator migrate jwtplus` (issue 23).
//!
//! JWTPlus keeps the lowercase hex SHA-512 of its root key and of each app key; the
//! migration keeps those digests (setting `root_key_legacy_sha512`, column
//! `apps.legacy_key_sha512`, migration 0012). A presented credential of JWTPlus's shape (128
//! characters of `[A-Za-z0-9+/]`, no `rk_`/`pk_` prefix) is hashed with SHA-512 and
//! compared, in constant time, with them. Each is dropped when the credential is rotated:
//! the root key by `/root/rotate` or `POST /root-key/rotate`, an app key by any new access
//! token (`/root/{id}/rotate/key`, `POST /apps/{id}/access-token`). Both lookups ask the
//! store, so a rotation on one replica ends the old credential on all of them at once.

use std::sync::Arc;

use sha2::{Digest as _, Sha512};

use crate::app::AppState;
use crate::auth::digests_equal;
use crate::pubkey::hex;
use crate::store::{AppRow, LEGACY_ROOT_SETTING};

use super::ApiError;

/// Whether `cred` has the shape of a JWTPlus key (`GenRandomString(128)`).
pub(crate) fn shaped(cred: &str) -> bool {
    cred.len() == 128
        && cred
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// SHA-512, lowercase hex: the digest JWTPlus stores.
pub(crate) fn sha512_hex(s: &str) -> String {
    hex(&Sha512::digest(s.as_bytes()))
}

/// Whether `cred` is the JWTPlus root key kept by the migration (not yet rotated).
pub(crate) async fn is_root(state: &AppState, cred: &str) -> Result<bool, ApiError> {
    if !shaped(cred) {
        return Ok(false);
    }
    let Some(kept) = state.store.setting(LEGACY_ROOT_SETTING).await? else {
        return Ok(false);
    };
    Ok(digests_equal(&kept, &sha512_hex(cred)))
}

/// The app whose JWTPlus app key `cred` is, while the app has not had a new access token.
pub(crate) async fn app(state: &AppState, cred: &str) -> Result<Option<Arc<AppRow>>, ApiError> {
    if !shaped(cred) {
        return Ok(None);
    }
    let Some(id) = state.store.app_by_legacy_key(&sha512_hex(cred)).await? else {
        return Ok(None);
    };
    Ok(Some(super::auth::existing_app(state, &id).await?))
}

/// The root-key digest a rotation swaps out: the presented key's for our own root key, the
/// current one when the caller used the JWTPlus root key (the rotation drops that too).
pub(crate) fn rotation_digest(state: &AppState, cred: &str) -> String {
    if super::auth::is_root(state, cred) {
        crate::auth::digest(cred)
    } else {
        state.registry.root_digest().unwrap_or_default()
    }
}
