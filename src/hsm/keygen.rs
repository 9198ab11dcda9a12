//! Key-pair generation inside the token.
//!
//! The private half is a token object that is private, sensitive, never extractable and
//! usable only to sign; both halves carry `CKA_ID = kid` and
//! `CKA_LABEL = hsm-rotator/<store id>/<kid>`.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::Session;

use super::object::read_public;
use super::pool::{Core, Handles, OpError};
use crate::alg::{KeyFamily, KeySpec};
use crate::keys::Kid;
use crate::pubkey::PublicKey;

/// Generate `spec`'s key pair under `kid` and return its public half.
pub(crate) fn generate_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    spec: KeySpec,
) -> Result<PublicKey, OpError> {
    let id = kid.cka_id().to_vec();
    let label = kid.label(core.store_id()?).into_bytes();
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Id(id.clone()),
        Attribute::Label(label.clone()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        // SoftHSM2 defaults CKA_UNWRAP to true on RSA private keys (pkcs11-tool showed
        // "Usage: sign, unwrap"); a signing key must not import wrapped keys either.
        Attribute::Unwrap(false),
        Attribute::Id(id),
        Attribute::Label(label),
    ];
    let mechanism = match spec.alg.family() {
        KeyFamily::Rsa => {
            public.push(Attribute::ModulusBits(u64::from(spec.rsa_bits).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        KeyFamily::Ec(curve) => {
            public.push(Attribute::EcParams(curve.oid_der().to_vec()));
            Mechanism::EccKeyPairGen
        }
        KeyFamily::Ed(curve) => {
            public.push(Attribute::EcParams(curve.oid_der().to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
    };
    let (pub_h, priv_h) = session.generate_key_pair(&mechanism, &public, &private)?;
    match read_public(session, pub_h, spec.alg) {
        Ok(pk) => {
            core.remember(
                *kid,
                Handles {
                    private: Some(priv_h),
                    public: Some(pub_h),
                },
            );
            Ok(pk)
        }
        Err(e) => {
            // Never leave a pair behind that the caller does not know about.
            let _ = session.destroy_object(priv_h);
            let _ = session.destroy_object(pub_h);
            Err(e)
        }
    }
}
