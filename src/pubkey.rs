//! Public keys as the token hands them out, and their standard encodings.
//!
//! The service only ever holds public halves. They come from the HSM as RSA `(n, e)` or an
//! EC/Ed25519 point, are stored as SubjectPublicKeyInfo DER, and are published as JWKs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use der::asn1::{AnyRef, BitString, ObjectIdentifier, UintRef};
use der::{Decode, Encode};
use sha2::Digest as _;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};

use crate::alg::Curve;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// A public key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and public exponent, big-endian without leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// A Weierstrass point, uncompressed (`04 || x || y`).
    Ec {
        /// Curve.
        curve: Curve,
        /// Uncompressed point.
        point: Vec<u8>,
    },
    /// An Ed25519 public key (32 bytes).
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa { n, .. } => write!(f, "PublicKey::Rsa({} bits)", n.len() * 8),
            Self::Ec { curve, .. } => write!(f, "PublicKey::Ec({curve:?})"),
            Self::Ed25519(_) => f.write_str("PublicKey::Ed25519"),
        }
    }
}

/// The DER could not be read as a supported public key.
#[derive(Debug, thiserror::Error)]
#[error("malformed or unsupported public key: {0}")]
pub struct BadPublicKey(pub String);

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let first = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    b[first..].to_vec()
}

impl PublicKey {
    /// An RSA key from big-endian components (leading zeros are removed).
    pub fn rsa(n: &[u8], e: &[u8]) -> Self {
        Self::Rsa {
            n: strip_zeros(n),
            e: strip_zeros(e),
        }
    }

    /// SubjectPublicKeyInfo DER.
    ///
    /// # Errors
    /// Only if a component cannot be DER-encoded (it cannot for keys the token made).
    pub fn to_spki_der(&self) -> Result<Vec<u8>, BadPublicKey> {
        let bad = |e: der::Error| BadPublicKey(e.to_string());
        let (algorithm, key) = match self {
            Self::Rsa { n, e } => {
                let rsa = pkcs1::RsaPublicKey {
                    modulus: UintRef::new(n).map_err(bad)?,
                    public_exponent: UintRef::new(e).map_err(bad)?,
                };
                let params = der::Any::from(AnyRef::NULL);
                (
                    AlgorithmIdentifierOwned {
                        oid: RSA_ENCRYPTION,
                        parameters: Some(params),
                    },
                    rsa.to_der().map_err(bad)?,
                )
            }
            Self::Ec { curve, point } => {
                let curve_oid = match curve {
                    Curve::P256 => P256,
                    Curve::P384 => P384,
                    Curve::P521 => P521,
                    Curve::Ed25519 => return Err(BadPublicKey("Ed25519 is not an EC key".into())),
                };
                (
                    AlgorithmIdentifierOwned {
                        oid: EC_PUBLIC_KEY,
                        parameters: Some(der::Any::encode_from(&curve_oid).map_err(bad)?),
                    },
                    point.clone(),
                )
            }
            Self::Ed25519(x) => (
                AlgorithmIdentifierOwned {
                    oid: ED25519,
                    parameters: None,
                },
                x.clone(),
            ),
        };
        SubjectPublicKeyInfoOwned {
            algorithm,
            subject_public_key: BitString::from_bytes(&key).map_err(bad)?,
        }
        .to_der()
        .map_err(bad)
    }

    /// Parse SubjectPublicKeyInfo DER.
    ///
    /// # Errors
    /// [`BadPublicKey`] for malformed DER or an algorithm the service does not use.
    pub fn from_spki_der(der_bytes: &[u8]) -> Result<Self, BadPublicKey> {
        let bad = |e: der::Error| BadPublicKey(e.to_string());
        let spki = SubjectPublicKeyInfoRef::from_der(der_bytes).map_err(bad)?;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| BadPublicKey("unaligned bit string".into()))?;
        match spki.algorithm.oid {
            RSA_ENCRYPTION => {
                let rsa = pkcs1::RsaPublicKey::from_der(key).map_err(bad)?;
                Ok(Self::rsa(
                    rsa.modulus.as_bytes(),
                    rsa.public_exponent.as_bytes(),
                ))
            }
            EC_PUBLIC_KEY => {
                let params = spki
                    .algorithm
                    .parameters
                    .ok_or_else(|| BadPublicKey("EC key without curve".into()))?;
                let oid: ObjectIdentifier = params.decode_as().map_err(bad)?;
                let curve = match oid {
                    P256 => Curve::P256,
                    P384 => Curve::P384,
                    P521 => Curve::P521,
                    other => return Err(BadPublicKey(format!("unsupported curve {other}"))),
                };
                Ok(Self::Ec {
                    curve,
                    point: key.to_vec(),
                })
            }
            ED25519 => Ok(Self::Ed25519(key.to_vec())),
            other => Err(BadPublicKey(format!("unsupported key algorithm {other}"))),
        }
    }

    /// Read a public JWK (the members [`Self::jwk_members`] writes: `kty` RSA with `n e`,
    /// EC with `crv x y`, OKP Ed25519 with `x`), as a verifier finds it in a JWKS.
    ///
    /// # Errors
    /// [`BadPublicKey`] naming the missing or malformed member, or the unsupported type.
    pub fn from_jwk(
        jwk: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, BadPublicKey> {
        let member = |name: &str| -> Result<Vec<u8>, BadPublicKey> {
            let s = jwk
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| BadPublicKey(format!("the JWK has no {name:?} member")))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| BadPublicKey(format!("the JWK member {name:?} is not base64url")))
        };
        let crv = jwk
            .get("crv")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        match jwk.get("kty").and_then(serde_json::Value::as_str) {
            Some("RSA") => Ok(Self::rsa(&member("n")?, &member("e")?)),
            Some("EC") => {
                let curve = match crv {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    "P-521" => Curve::P521,
                    other => return Err(BadPublicKey(format!("unsupported curve {other:?}"))),
                };
                let (x, y) = (member("x")?, member("y")?);
                let len = curve.field_len();
                if x.len() != len || y.len() != len {
                    return Err(BadPublicKey(format!(
                        "x and y must be {len} bytes each on {crv}"
                    )));
                }
                Ok(Self::Ec {
                    curve,
                    point: [&[4u8][..], &x, &y].concat(),
                })
            }
            Some("OKP") if crv == "Ed25519" => {
                let x = member("x")?;
                if x.len() != 32 {
                    return Err(BadPublicKey("an Ed25519 key is 32 bytes".into()));
                }
                Ok(Self::Ed25519(x))
            }
            Some(other) => Err(BadPublicKey(format!(
                "unsupported JWK kty {other:?}{}",
                if crv.is_empty() {
                    String::new()
                } else {
                    format!(" crv {crv:?}")
                }
            ))),
            None => Err(BadPublicKey("the JWK has no \"kty\"".into())),
        }
    }

    /// SHA-256 of the SPKI DER, hex: a stable fingerprint of the key itself.
    ///
    /// # Errors
    /// As [`Self::to_spki_der`].
    pub fn spki_sha256_hex(&self) -> Result<String, BadPublicKey> {
        Ok(hex(&sha2::Sha256::digest(self.to_spki_der()?)))
    }

    /// RSA modulus size in bits (0 for other keys).
    pub fn rsa_bits(&self) -> u32 {
        match self {
            Self::Rsa { n, .. } => {
                let lead = n.first().map_or(0, |b| b.leading_zeros());
                u32::try_from(n.len() * 8).unwrap_or(0).saturating_sub(lead)
            }
            _ => 0,
        }
    }

    /// JWK members for the key material (`kty` and `n e` or `crv x y`), base64url.
    pub fn jwk_members(&self) -> serde_json::Map<String, serde_json::Value> {
        let b64 = |b: &[u8]| serde_json::Value::String(URL_SAFE_NO_PAD.encode(b));
        let mut m = serde_json::Map::new();
        match self {
            Self::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64(n));
                m.insert("e".into(), b64(e));
            }
            Self::Ec { curve, point } => {
                let l = curve.field_len();
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), curve.jwk_name().into());
                m.insert("x".into(), b64(point.get(1..1 + l).unwrap_or_default()));
                m.insert("y".into(), b64(point.get(1 + l..).unwrap_or_default()));
            }
            Self::Ed25519(x) => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64(x));
            }
        }
        m
    }
}

/// Lower-case hex. By table, not `format!` per byte: every authenticated request hex-encodes
/// its credential's digest.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
    }

    #[test]
    fn spki_round_trips() {
        let keys = [
            PublicKey::rsa(&[0, 0xc1, 2, 3, 4], &[1, 0, 1]),
            PublicKey::Ec {
                curve: Curve::P256,
                point: [vec![4u8], vec![7u8; 64]].concat(),
            },
            PublicKey::Ed25519(vec![9u8; 32]),
        ];
        for k in keys {
            let der = k.to_spki_der().expect("encode");
            assert_eq!(PublicKey::from_spki_der(&der).expect("decode"), k);
        }
    }

    /// What `jwk_members` writes, `from_jwk` reads back; a short coordinate is refused.
    #[test]
    fn public_jwks_round_trip() {
        let keys = [
            PublicKey::rsa(&[0xc1, 2, 3, 4], &[1, 0, 1]),
            PublicKey::Ec {
                curve: Curve::P384,
                point: [vec![4u8], vec![7u8; 96]].concat(),
            },
            PublicKey::Ed25519(vec![9u8; 32]),
        ];
        for k in keys {
            assert_eq!(PublicKey::from_jwk(&k.jwk_members()).expect("decode"), k);
        }
        let mut short = PublicKey::Ec {
            curve: Curve::P256,
            point: [vec![4u8], vec![7u8; 64]].concat(),
        }
        .jwk_members();
        short.insert("x".into(), "AAAA".into());
        assert!(PublicKey::from_jwk(&short).is_err());
    }

    #[test]
    fn rsa_bits_counts_the_modulus() {
        let mut n = vec![0x80u8];
        n.extend([0u8; 255]);
        assert_eq!(PublicKey::rsa(&n, &[1, 0, 1]).rsa_bits(), 2048);
    }
}
