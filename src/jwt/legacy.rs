//! Tokens issued by JWTPlus before `hsm-rotator migrate jwtplus` (issue 23).
//!
//! JWTPlus names its token id `jid` (not `jti`) and sets `iss` to the app's name. A token of
//! a migrated app (one with [`AppRow::legacy_issuer`]) is taken as a JWTPlus token when a key
//! imported from JWTPlus (`origin: imported`) signed it and its `iss` is the app's JWTPlus
//! name: that `iss` is then accepted as an alias of the app's issuer, and its `jid` is its
//! token id (copied into `jti` of the verified claims, so introspection, revocation and
//! logout see the id the ledger holds). Tokens issued here never carry that `iss` (reserved
//! claims cannot be set by callers), and the imported keys leave within
//! `imported_key_max_life`, so the alias ends with them.

use serde_json::{Map, Value};

use super::service::Rejection;
use crate::store::{AppRow, KeyOrigin, KeyRow};

/// Whether `claims` (signed by `key`) are a JWTPlus access token of `app`; if so, `jti` =
/// `jid`. A JWTPlus refresh token (`"type": "refresh"`, header `typ: JWT` like an access
/// token) is refused: it never verified in JWTPlus either.
pub(crate) fn jwtplus_token(
    app: &AppRow,
    key: &KeyRow,
    claims: &mut Map<String, Value>,
) -> Result<bool, Rejection> {
    let Some(name) = app.legacy_issuer.as_deref() else {
        return Ok(false);
    };
    if key.origin != KeyOrigin::Imported || claims.get("iss").and_then(Value::as_str) != Some(name)
    {
        return Ok(false);
    }
    if claims.get("type").and_then(Value::as_str) == Some("refresh") {
        return Err(Rejection::WrongType);
    }
    if let Some(jid) = claims.get("jid").filter(|v| v.is_string()).cloned() {
        claims.insert("jti".into(), jid);
    }
    Ok(true)
}
