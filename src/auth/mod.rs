//! Credentials: the root key and app access tokens.
//!
//! Both are 256 random bits, base64url, with a prefix that says what they are (`rk_`,
//! `pk_`). Only their SHA-256 digests are stored, and comparisons are constant-time on
//! digests. A credential is a [`Secret`], whose `Debug` never shows it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::pubkey::hex;

pub mod proxies;

/// Prefix of the root key.
pub const ROOT_PREFIX: &str = "rk_";
/// Prefix of app access tokens.
pub const ACCESS_PREFIX: &str = "pk_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "rt_";

/// A secret credential: shown once, never logged.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// A fresh credential: `prefix` + 43 base64url characters (256 random bits).
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(format!(
            "{prefix}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_ref())
        )))
    }

    /// Wrap a credential made elsewhere (a refresh JWT).
    pub fn from_string(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The credential itself, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256, hex: what the store keeps.
    pub fn digest(&self) -> String {
        digest(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// SHA-256 (hex) of a presented credential or subject.
pub fn digest(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Constant-time equality of two hex digests.
pub fn digests_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `s` looks like a credential with `prefix` (prefix + 43 base64url characters).
pub fn well_formed(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The credential in an `Authorization` header value: `Bearer <x>` or the raw value.
pub fn credential(header: &str) -> &str {
    let h = header.trim();
    match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_have_the_documented_shape() {
        let s = Secret::generate(ROOT_PREFIX);
        assert!(well_formed(s.expose(), ROOT_PREFIX));
        assert_eq!(s.expose().len(), 46);
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(digests_equal(&s.digest(), &digest(s.expose())));
        assert!(!well_formed("rk_short", ROOT_PREFIX));
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(credential("Bearer abc"), "abc");
        assert_eq!(credential("bearer  abc "), "abc");
        assert_eq!(credential("rk_xyz"), "rk_xyz");
    }
}
