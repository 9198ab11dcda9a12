//! JOSE signing algorithms (RFC 7518) and the key pair each one needs.
//!
//! This is the one place that knows which curve, modulus size and digest belong to an
//! algorithm; the HSM layer maps it to PKCS#11 mechanisms, the JWT layer to verifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A JWS algorithm the service can sign with (also its OpenAPI schema).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[allow(clippy::upper_case_acronyms)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    PS256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    PS384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// ECDSA on P-521 with SHA-512.
    ES512,
    /// EdDSA on Ed25519.
    EdDSA,
}

/// Elliptic curves used by the EC algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// Edwards 25519.
    Ed25519,
}

/// Digest used by an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// Family of key an algorithm signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// RSA, with a modulus size.
    Rsa,
    /// Weierstrass-curve ECDSA.
    Ec(Curve),
    /// Edwards-curve EdDSA.
    Ed(Curve),
}

/// Every supported algorithm, in a stable order.
pub const ALL: [Algorithm; 10] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::ES512,
    Algorithm::EdDSA,
];

/// RSA modulus sizes the service generates.
pub const RSA_BITS: [u32; 3] = [2048, 3072, 4096];

impl Algorithm {
    /// The JOSE name (`RS256`, `EdDSA`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Key family (and curve) this algorithm signs with.
    pub fn family(self) -> KeyFamily {
        match self {
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyFamily::Rsa
            }
            Self::ES256 => KeyFamily::Ec(Curve::P256),
            Self::ES384 => KeyFamily::Ec(Curve::P384),
            Self::ES512 => KeyFamily::Ec(Curve::P521),
            Self::EdDSA => KeyFamily::Ed(Curve::Ed25519),
        }
    }

    /// Whether the algorithm is RSA-based (and so takes a modulus size).
    pub fn is_rsa(self) -> bool {
        self.family() == KeyFamily::Rsa
    }

    /// Message digest, where the algorithm has one of its own (EdDSA hashes internally).
    pub fn digest(self) -> Digest {
        match self {
            Self::RS256 | Self::PS256 | Self::ES256 | Self::EdDSA => Digest::Sha256,
            Self::RS384 | Self::PS384 | Self::ES384 => Digest::Sha384,
            Self::RS512 | Self::PS512 | Self::ES512 => Digest::Sha512,
        }
    }

    /// JWK `kty` of the algorithm's keys.
    pub fn kty(self) -> &'static str {
        match self.family() {
            KeyFamily::Rsa => "RSA",
            KeyFamily::Ec(_) => "EC",
            KeyFamily::Ed(_) => "OKP",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was not a supported algorithm.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported signing algorithm (supported: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA)"
)]
pub struct UnknownAlgorithm;

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownAlgorithm)
    }
}

impl Curve {
    /// JWK `crv` name.
    pub fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
            Self::Ed25519 => "Ed25519",
        }
    }

    /// Bytes in one field element (one coordinate; `r` or `s` of a signature).
    pub fn field_len(self) -> usize {
        match self {
            Self::P256 | Self::Ed25519 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// DER of the curve's OBJECT IDENTIFIER (what `CKA_EC_PARAMS` holds).
    pub fn oid_der(self) -> &'static [u8] {
        match self {
            // 1.2.840.10045.3.1.7
            Self::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            // 1.3.132.0.34
            Self::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            // 1.3.132.0.35
            Self::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            // 1.3.101.112
            Self::Ed25519 => &[0x06, 0x03, 0x2b, 0x65, 0x70],
        }
    }

    /// Length of the raw public point: uncompressed `04 || x || y`, or the 32-byte Ed25519 key.
    pub fn point_len(self) -> usize {
        match self {
            Self::Ed25519 => 32,
            c => 1 + 2 * c.field_len(),
        }
    }
}

/// What to generate for a new key: the algorithm plus, for RSA, the modulus size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// Signing algorithm.
    pub alg: Algorithm,
    /// RSA modulus bits (ignored, and normalised to 0, for EC and EdDSA).
    pub rsa_bits: u32,
}

impl KeySpec {
    /// A spec, with `rsa_bits` normalised (0 for non-RSA).
    pub fn new(alg: Algorithm, rsa_bits: u32) -> Self {
        Self {
            alg,
            rsa_bits: if alg.is_rsa() { rsa_bits } else { 0 },
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.alg.is_rsa() {
            write!(f, "{}/{}", self.alg, self.rsa_bits)
        } else {
            write!(f, "{}", self.alg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in ALL {
            assert_eq!(a.as_str().parse::<Algorithm>().ok(), Some(a));
        }
        assert!("none".parse::<Algorithm>().is_err());
        assert!("HS256".parse::<Algorithm>().is_err());
        assert!("rs256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn non_rsa_specs_drop_bits() {
        assert_eq!(KeySpec::new(Algorithm::ES256, 4096).rsa_bits, 0);
        assert_eq!(KeySpec::new(Algorithm::PS512, 4096).rsa_bits, 4096);
    }
}
