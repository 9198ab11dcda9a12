//! Verification: signature against the registry's in-memory keys, then expiry, issuer,
//! deny-list and cut-offs, never touching the HSM.

use serde_json::{Map, Value};
use ulid::Ulid;

use super::{Rejection, TokenService};
use crate::alg::Algorithm;
use crate::auth::digest;
use crate::jwt::{Issuers, parse};
use crate::keys::{KeyState, Kid};
use crate::store::AppRow;

impl TokenService {
    /// Whether a token with this jti (and subject digest) falls before a cut-off.
    pub(super) fn cut_off(&self, app: &AppRow, sub_sha256: Option<&str>, jti: Ulid) -> bool {
        if app
            .cutoff
            .as_deref()
            .and_then(|c| Ulid::from_string(c).ok())
            .is_some_and(|c| jti < c)
        {
            return true;
        }
        sub_sha256
            .and_then(|s| self.inner.registry.subject_cutoff(&app.id, s))
            .is_some_and(|c| jti < c)
    }

    /// Verify `token` for `app`: its claims if active now, else why not.
    pub async fn verify(
        &self,
        app: &AppRow,
        issuers: &Issuers,
        token: &str,
    ) -> Result<Map<String, Value>, Rejection> {
        let c = parse(token.trim()).ok_or(Rejection::Malformed)?;
        if c.header.crit.is_some() {
            return Err(Rejection::Critical);
        }
        if c.header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT") && !t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err(Rejection::WrongType);
        }
        let alg: Algorithm = c.header.alg.parse().map_err(|_| Rejection::Algorithm)?;
        let kid: Kid = c
            .header
            .kid
            .as_deref()
            .and_then(|k| k.parse().ok())
            .ok_or(Rejection::UnknownKey)?;
        let key = self
            .inner
            .registry
            .key_or_load(&kid)
            .await
            .ok()
            .flatten()
            .ok_or(Rejection::UnknownKey)?;
        if key.row.app_id.as_deref() != Some(app.id.as_str()) {
            return Err(Rejection::UnknownKey);
        }
        if key.row.algorithm != alg {
            return Err(Rejection::Algorithm);
        }
        let now = self.now();
        match key.row.state {
            KeyState::Next | KeyState::Current => {}
            KeyState::Previous => {
                let until = key.row.deactivated_at.unwrap_or(0) + app.verification_ttl;
                if now >= until {
                    return Err(Rejection::KeyInactive);
                }
            }
            _ => return Err(Rejection::KeyInactive),
        }
        if !key
            .verifier
            .verify(c.signing_input.as_bytes(), &c.signature)
        {
            return Err(Rejection::Signature);
        }
        let mut claims = c.claims;
        let jwtplus = crate::jwt::legacy::jwtplus_token(app, &key.row, &mut claims)?;
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        match num("exp") {
            Some(exp) if exp > now => {}
            _ => return Err(Rejection::Expired),
        }
        if num("nbf").is_some_and(|nbf| nbf > now) {
            return Err(Rejection::NotYetValid);
        }
        if !jwtplus
            && !claims
                .get("iss")
                .and_then(Value::as_str)
                .is_some_and(|iss| issuers.accepts(&app.id, iss))
        {
            return Err(Rejection::Issuer);
        }
        let jti_str = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or(Rejection::NoJti)?;
        let jti = Ulid::from_string(jti_str).map_err(|_| Rejection::NoJti)?;
        if self.inner.registry.is_denied(jti_str) {
            return Err(Rejection::Revoked);
        }
        let sub = claims.get("sub").and_then(Value::as_str).map(digest);
        if app
            .cutoff
            .as_deref()
            .and_then(|c| Ulid::from_string(c).ok())
            .is_some_and(|c| jti < c)
        {
            return Err(Rejection::CutOff);
        }
        if sub
            .as_deref()
            .and_then(|s| self.inner.registry.subject_cutoff(&app.id, s))
            .is_some_and(|c| jti < c)
        {
            return Err(Rejection::LoggedOut);
        }
        let mut out = claims;
        out.insert("kid".into(), kid.to_string().into());
        Ok(out)
    }
}
