//! Importing an existing private key into the token (issue 23).
//!
//! Both halves are made with `C_CreateObject`, with the protection of a generated key: the
//! private half private, sensitive, not extractable and usable only to sign, both with
//! `CKA_ID = kid` and `CKA_LABEL = hsm-rotator/<store id>/<kid>`. The token itself records
//! that the key was born outside it: `CKA_LOCAL` and `CKA_NEVER_EXTRACTABLE` are false on an
//! imported key and true on a generated one. The secret attribute values are copies that
//! are zeroised once the call returns; [`KeyMaterial`] zeroises its own on drop.

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;
use zeroize::{Zeroize as _, Zeroizing};

use super::pool::{Core, OpError};
use crate::alg::{Algorithm, Curve};
use crate::keys::Kid;
use crate::pubkey::PublicKey;

/// A private key to import, as the token takes it, with the public half that goes with
/// it. Secret parts are zeroised when dropped; `Debug` never shows them.
pub enum KeyMaterial {
    /// RSA with its CRT parameters (big-endian, no leading zeros needed).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
        /// Private exponent.
        d: Zeroizing<Vec<u8>>,
        /// First prime.
        p: Zeroizing<Vec<u8>>,
        /// Second prime.
        q: Zeroizing<Vec<u8>>,
        /// `d mod (p - 1)`.
        dp: Zeroizing<Vec<u8>>,
        /// `d mod (q - 1)`.
        dq: Zeroizing<Vec<u8>>,
        /// `q^-1 mod p`.
        qi: Zeroizing<Vec<u8>>,
    },
    /// An ECDSA key on a NIST curve.
    Ec {
        /// Curve.
        curve: Curve,
        /// Private scalar, big-endian, the curve's field length.
        d: Zeroizing<Vec<u8>>,
        /// The public point as declared with the key (uncompressed `04 || x || y`).
        point: Vec<u8>,
    },
    /// An Ed25519 key.
    Ed25519 {
        /// The 32-byte seed.
        seed: Zeroizing<Vec<u8>>,
        /// The 32-byte public key as declared with the key.
        public: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMaterial({:?}, <redacted>)", self.public())
    }
}

impl KeyMaterial {
    /// The public half declared with the key (checked against the private half by a test
    /// signature once both are in the token).
    pub fn public(&self) -> PublicKey {
        match self {
            Self::Rsa { n, e, .. } => PublicKey::rsa(n, e),
            Self::Ec { curve, point, .. } => PublicKey::Ec {
                curve: *curve,
                point: point.clone(),
            },
            Self::Ed25519 { public, .. } => PublicKey::Ed25519(public.clone()),
        }
    }

    /// An algorithm of the key's family, to read its public half back with.
    fn read_alg(&self) -> Algorithm {
        match self {
            Self::Rsa { .. } => Algorithm::RS256,
            Self::Ec {
                curve: Curve::P384, ..
            } => Algorithm::ES384,
            Self::Ec {
                curve: Curve::P521, ..
            } => Algorithm::ES512,
            Self::Ec { .. } => Algorithm::ES256,
            Self::Ed25519 { .. } => Algorithm::EdDSA,
        }
    }
}

/// `CKA_EC_POINT`: the point as a DER OCTET STRING (PKCS#11 v2.40).
fn octet_string(point: &[u8]) -> Result<Vec<u8>, OpError> {
    use der::Encode as _;
    der::asn1::OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .map_err(|e| OpError::Final(super::HsmError::Malformed(format!("EC point: {e}"))))
}

/// Overwrite the value of every attribute that can hold key material.
fn wipe(template: &mut [Attribute]) {
    for a in template {
        match a {
            Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v)
            | Attribute::Value(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// Create `material`'s two objects under `kid`; returns the public half as the token
/// now holds it. On any failure nothing is left behind.
pub(crate) fn import_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    material: &KeyMaterial,
) -> Result<PublicKey, OpError> {
    let (mut public, mut private) = super::keygen::templates(core, kid)?;
    public.push(Attribute::Class(ObjectClass::PUBLIC_KEY));
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    match material {
        KeyMaterial::Rsa {
            n,
            e,
            d,
            p,
            q,
            dp,
            dq,
            qi,
        } => {
            public.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
            ]);
            private.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
                Attribute::PrivateExponent(d.to_vec()),
                Attribute::Prime1(p.to_vec()),
                Attribute::Prime2(q.to_vec()),
                Attribute::Exponent1(dp.to_vec()),
                Attribute::Exponent2(dq.to_vec()),
                Attribute::Coefficient(qi.to_vec()),
            ]);
        }
        KeyMaterial::Ec { curve, d, point } => {
            let params = curve.oid_der().to_vec();
            public.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params.clone()),
                Attribute::EcPoint(octet_string(point)?),
            ]);
            private.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params),
                Attribute::Value(d.to_vec()),
            ]);
        }
        KeyMaterial::Ed25519 { seed, public: pk } => {
            let params = Curve::Ed25519.oid_der().to_vec();
            public.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(params.clone()),
                Attribute::EcPoint(octet_string(pk)?),
            ]);
            private.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(params),
                Attribute::Value(seed.to_vec()),
            ]);
        }
    }
    let making = core.making();
    let created = session.create_object(&private);
    wipe(&mut private);
    let priv_h = created?;
    let pub_h = match session.create_object(&public) {
        Ok(h) => h,
        Err(e) => {
            let _ = session.destroy_object(priv_h);
            return Err(e.into());
        }
    };
    drop(making);
    super::keygen::keep_pair(core, session, kid, pub_h, priv_h, material.read_alg())
}

#[cfg(test)]
mod tests {
    use super::octet_string;

    #[test]
    fn ec_points_are_wrapped_in_a_der_octet_string() {
        let der = |p: &[u8]| octet_string(p).ok().unwrap_or_default();
        assert_eq!(der(&[7; 65])[..2], [0x04, 65]);
        assert_eq!(der(&[7; 133])[..3], [0x04, 0x81, 133]);
        assert_eq!(der(&[7; 32]).len(), 34);
    }
}
