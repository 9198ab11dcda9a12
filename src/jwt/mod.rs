//! JWTs: building and signing compact JWS in the HSM, parsing and verifying them, JWKS.

pub mod jwks;
pub mod service;
pub mod verify;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

pub use service::{Issued, Rejection, TokenService};

/// Claims the service sets; a request that sets any of them is refused.
pub const RESERVED_CLAIMS: [&str; 6] = ["iss", "iat", "nbf", "exp", "jti", "jid"];

/// Largest token accepted for verification, bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The JOSE header fields we read.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// Algorithm.
    pub alg: String,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Type (`JWT` for access tokens, `refresh+jwt` for refresh tokens).
    #[serde(default)]
    pub typ: Option<String>,
    /// Critical extensions: we understand none, so any makes the token invalid.
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
}

/// A compact JWS split into its parts.
#[derive(Debug)]
pub struct Compact<'a> {
    /// `header.payload`, the signing input.
    pub signing_input: &'a str,
    /// Decoded header.
    pub header: Header,
    /// Decoded payload claims.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Decoded signature.
    pub signature: Vec<u8>,
}

/// Split and decode a compact JWS; `None` if it is not one.
pub fn parse(token: &str) -> Option<Compact<'_>> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some(Compact {
        signing_input: &token[..h.len() + 1 + p.len()],
        header,
        claims,
        signature,
    })
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_non_jws() {
        assert!(parse("a.b").is_none());
        assert!(parse("a.b.c.d").is_none());
        assert!(parse(&"x".repeat(MAX_TOKEN_LEN + 1)).is_none());
        let h = b64(br#"{"alg":"none"}"#);
        let p = b64(br#"{"sub":"x"}"#);
        let t = format!("{h}.{p}.");
        let c = parse(&t).expect("parses");
        assert_eq!(c.header.alg, "none");
        assert!(c.signature.is_empty());
        assert_eq!(c.signing_input, format!("{h}.{p}"));
    }
}
