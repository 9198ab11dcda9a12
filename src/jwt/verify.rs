//! Signature verification with public keys held in memory (never the HSM).
//!
//! jsonwebtoken (aws-lc-rs) checks RS*, PS*, ES256, ES384 and EdDSA; it has no ES512, so
//! the `p521` crate checks that one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::alg::Algorithm;
use crate::pubkey::PublicKey;

/// A ready-to-use verifier for one key.
pub enum Verifier {
    /// jsonwebtoken's decoding key and algorithm.
    Jwt(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm),
    /// P-521 (ES512).
    P521(Box<p521::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwt(_, a) => write!(f, "Verifier({a:?})"),
            Self::P521(_) => f.write_str("Verifier(ES512)"),
        }
    }
}

/// The key does not fit the algorithm.
#[derive(Debug, thiserror::Error)]
#[error("public key does not fit algorithm {0}")]
pub struct KeyMismatch(pub Algorithm);

impl Verifier {
    /// A verifier for `pk` under `alg`.
    ///
    /// # Errors
    /// [`KeyMismatch`] if the key type does not match the algorithm.
    pub fn new(pk: &PublicKey, alg: Algorithm) -> Result<Self, KeyMismatch> {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mismatch = || KeyMismatch(alg);
        if alg == Algorithm::ES512 {
            // jsonwebtoken has no ES512.
            return match pk {
                PublicKey::Ec {
                    curve: crate::alg::Curve::P521,
                    point,
                } => p521::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map(|vk| Self::P521(Box::new(vk)))
                    .map_err(|_| mismatch()),
                _ => Err(mismatch()),
            };
        }
        let jalg: jsonwebtoken::Algorithm = alg.as_str().parse().map_err(|_| mismatch())?;
        match (pk, alg.family()) {
            (PublicKey::Rsa { n, e }, crate::alg::KeyFamily::Rsa) => Ok(Self::Jwt(
                jsonwebtoken::DecodingKey::from_rsa_raw_components(n, e),
                jalg,
            )),
            (PublicKey::Ec { curve, point }, crate::alg::KeyFamily::Ec(c)) if *curve == c => {
                if alg == Algorithm::ES512 {
                    let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(point)
                        .map_err(|_| mismatch())?;
                    return Ok(Self::P521(Box::new(vk)));
                }
                let l = c.field_len();
                let (x, y) = (point.get(1..1 + l), point.get(1 + l..));
                let (Some(x), Some(y)) = (x, y) else {
                    return Err(mismatch());
                };
                Ok(Self::Jwt(
                    jsonwebtoken::DecodingKey::from_ec_components(&b64(x), &b64(y))
                        .map_err(|_| mismatch())?,
                    jalg,
                ))
            }
            (PublicKey::Ed25519(x), crate::alg::KeyFamily::Ed(_)) => Ok(Self::Jwt(
                jsonwebtoken::DecodingKey::from_ed_components(&b64(x)).map_err(|_| mismatch())?,
                jalg,
            )),
            _ => Err(mismatch()),
        }
    }

    /// Whether `sig` (JWS encoding) is a valid signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::Jwt(key, alg) => {
                jsonwebtoken::crypto::verify(&URL_SAFE_NO_PAD.encode(sig), message, key, *alg)
                    .unwrap_or(false)
            }
            Self::P521(vk) => {
                use p521::ecdsa::signature::Verifier as _;
                p521::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|s| vk.verify(message, &s).is_ok())
            }
        }
    }
}

/// Check the signature of `c` with the key its `kid` names in the JWK Set `jwks` (as a
/// verifier that never calls us does): the key must exist, carry the token's `alg` when it
/// names one, fit that algorithm, and verify the signature. A `crit` header fails.
///
/// # Errors
/// [`Rejection::UnknownKey`] when no key of `jwks` has the `kid` (a caller may fetch the set
/// again), [`Rejection::Critical`], [`Rejection::Algorithm`], [`Rejection::Signature`].
pub fn check_with_jwks(
    c: &super::Compact<'_>,
    jwks: &serde_json::Value,
) -> Result<(), super::Rejection> {
    use super::Rejection;
    if c.header.crit.is_some() {
        return Err(Rejection::Critical);
    }
    let alg: Algorithm = c.header.alg.parse().map_err(|_| Rejection::Algorithm)?;
    let kid = c.header.kid.as_deref().ok_or(Rejection::UnknownKey)?;
    let jwk = jwks
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .and_then(|keys| {
            keys.iter()
                .filter_map(serde_json::Value::as_object)
                .find(|k| k.get("kid").and_then(serde_json::Value::as_str) == Some(kid))
        })
        .ok_or(Rejection::UnknownKey)?;
    if jwk
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|a| a != alg.as_str())
    {
        return Err(Rejection::Algorithm);
    }
    let pk = PublicKey::from_jwk(jwk).map_err(|_| Rejection::UnknownKey)?;
    let verifier = Verifier::new(&pk, alg).map_err(|_| Rejection::Algorithm)?;
    if verifier.verify(c.signing_input.as_bytes(), &c.signature) {
        Ok(())
    } else {
        Err(Rejection::Signature)
    }
}
