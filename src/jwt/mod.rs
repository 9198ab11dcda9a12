//! JWTs: building and signing compact JWS in the HSM, parsing and verifying them, JWKS.

pub mod issuer;
pub mod jwks;
pub(crate) mod legacy;
pub mod service;
pub mod verify;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

pub use issuer::Issuers;
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

/// Split and decode a compact JWS of at most [`MAX_TOKEN_LEN`] bytes; `None` if it is not
/// one.
pub fn parse(token: &str) -> Option<Compact<'_>> {
    parse_bounded(token, MAX_TOKEN_LEN)
}

/// [`parse`] for a JWS of at most `max` bytes (a status list token is far larger than an
/// access token).
pub fn parse_bounded(token: &str, max: usize) -> Option<Compact<'_>> {
    if token.len() > max {
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

    /// A stable stand-in for a fuzzer (cargo-fuzz needs a nightly toolchain): mutate valid
    /// and random tokens many times over and feed them to the parser and to a verifier.
    /// Nothing may panic, and nothing but the original may verify.
    #[test]
    fn the_parser_and_verifier_survive_mutated_and_random_tokens() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let point: Vec<u8> = {
            // The P-256 generator: a valid public point to build a verifier with.
            let x = [
                0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4,
                0x40, 0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45,
                0xd8, 0x98, 0xc2, 0x96,
            ];
            let y = [
                0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f,
                0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68,
                0x37, 0xbf, 0x51, 0xf5,
            ];
            [vec![4u8], x.to_vec(), y.to_vec()].concat()
        };
        let pk = crate::pubkey::PublicKey::Ec {
            curve: crate::alg::Curve::P256,
            point,
        };
        let verifier = verify::Verifier::new(&pk, crate::alg::Algorithm::ES256).expect("verifier");
        let seed = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256","typ":"JWT","kid":"01ARZ3NDEKTSV4RRFFQ69G5FAV"}"#),
            b64(br#"{"sub":"a","exp":9999999999,"jti":"01ARZ3NDEKTSV4RRFFQ69G5FAV"}"#),
            b64(&[7u8; 64])
        );
        let alphabet = b"ABCxyz019-_.=+/ {}\"\\:,\x00\xff";
        for i in 0..100_000 {
            let mut t: Vec<u8> = if i % 4 == 0 {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random::<u8>())
                    .collect()
            } else {
                seed.clone().into_bytes()
            };
            for _ in 0..rng.random_range(1..8) {
                if t.is_empty() {
                    break;
                }
                let at = rng.random_range(0..t.len());
                match rng.random_range(0..4) {
                    0 => t[at] = alphabet[rng.random_range(0..alphabet.len())],
                    1 => {
                        t.remove(at);
                    }
                    2 => t.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => t.truncate(at),
                }
            }
            let text = String::from_utf8_lossy(&t);
            if let Some(c) = parse(&text) {
                assert!(
                    !verifier.verify(c.signing_input.as_bytes(), &c.signature),
                    "a mutated token verified: {text}"
                );
            }
        }
    }

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
