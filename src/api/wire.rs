//! Wire shapes of the native API (SPEC §3.3). Domain rows never go out as they are.

use serde::Serialize;
use serde_json::{Value, json};
use sha1::{Digest as _, Sha1};

use crate::clock::rfc3339;
use crate::jwt::Issued;
use crate::keys::KeyState;
use crate::store::AppRow;
use crate::store::KeyRow;

fn time(t: Option<i64>) -> Value {
    t.map_or(Value::Null, |t| rfc3339(t).into())
}

/// Seconds since the epoch of a ULID cut-off.
pub(crate) fn ulid_time(u: Option<&str>) -> Option<i64> {
    let u = ulid::Ulid::from_string(u?).ok()?;
    i64::try_from(u.timestamp_ms() / 1000).ok()
}

/// SHA-1 of a certificate DER as upper-case hex pairs joined by `:` (Auth0's
/// `fingerprint`), and the same without colons (`thumbprint`).
pub fn cert_fingerprints(cert: &[u8]) -> (String, String) {
    let d = Sha1::digest(cert);
    let pairs: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    (pairs.join(":"), pairs.concat())
}

/// The App object.
pub fn app(a: &AppRow, issuer: &str) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "signing_alg": a.signing_alg.as_str(),
        "rsa_bits": if a.signing_alg.is_rsa() { json!(a.rsa_bits) } else { Value::Null },
        "rotation_period": a.rotation_period,
        "verification_ttl": a.verification_ttl,
        "token_ttl": a.token_ttl,
        "refresh_ttl": a.refresh_ttl,
        "subject_dn": a.subject_dn,
        "issuer": issuer,
        "created_at": rfc3339(a.created_at),
        "updated_at": rfc3339(a.updated_at),
        "cutoff_at": time(ulid_time(a.cutoff.as_deref())),
    })
}

/// The Key object.
pub fn key(k: &KeyRow) -> Value {
    let (fingerprint, thumbprint) = match &k.cert {
        Some(c) => {
            let (f, t) = cert_fingerprints(c);
            (Value::from(f), Value::from(t))
        }
        None => (Value::Null, Value::Null),
    };
    json!({
        "kid": k.kid.to_string(),
        "app_id": k.app_id,
        "algorithm": k.algorithm.as_str(),
        "state": k.state.as_str(),
        "created_at": rfc3339(k.created_at),
        "published_at": time(k.published_at),
        "activated_at": time(k.activated_at),
        "deactivated_at": time(k.deactivated_at),
        "retired_at": time(k.retired_at),
        "revoked_at": time(k.revoked_at),
        "destroyed_at": time(k.destroyed_at),
        "fingerprint": fingerprint,
        "thumbprint": thumbprint,
    })
}

/// The key summary shown with an app: `current` and `next` kids, `previous` newest first.
pub fn key_summary<'a>(keys: impl IntoIterator<Item = &'a KeyRow>) -> Value {
    let (mut current, mut next, mut previous) = (None, None, Vec::new());
    for k in keys {
        match k.state {
            KeyState::Current => current = Some(k.kid.to_string()),
            KeyState::Next => next = Some(k.kid.to_string()),
            KeyState::Previous => previous.push(k.kid),
            _ => {}
        }
    }
    previous.sort_unstable_by(|a, b| b.cmp(a));
    json!({
        "current": current,
        "next": next,
        "previous": previous.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// The answer to an issuance or a refresh: `{token, token_type, kid, expires_at,
/// refresh_token?, refresh_expires_at?}`.
pub fn issued(i: &Issued) -> Value {
    let mut m = json!({
        "token": i.token,
        "token_type": "Bearer",
        "kid": i.kid.to_string(),
        "expires_at": rfc3339(i.exp),
    });
    if let (Some(rt), Value::Object(m)) = (&i.refresh_token, &mut m) {
        m.insert("refresh_token".into(), rt.expose().into());
        m.insert(
            "refresh_expires_at".into(),
            i.refresh_exp.map(rfc3339).into(),
        );
    }
    m
}

/// `{"status": ...}`-style small replies.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Status word.
    pub status: &'static str,
}
