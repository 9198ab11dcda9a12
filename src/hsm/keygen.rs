//! Key-pair generation inside the token.
//!
//! The private half is a token object that is private, sensitive, never extractable and
//! usable only to sign; both halves carry `CKA_ID = kid` and
//! `CKA_LABEL = hsm-rotator/<store id>/<kid>`.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::error::rv;
use super::object::read_public;
use super::pool::{Core, Handles, OpError};
use crate::alg::{Algorithm, KeyFamily, KeySpec};
use crate::keys::Kid;
use crate::pubkey::PublicKey;

/// Generate `spec`'s key pair under `kid` and return its public half.
pub(crate) fn generate_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    spec: KeySpec,
) -> Result<PublicKey, OpError> {
    let (mut public, private) = templates(core, kid)?;
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
    let generate = || {
        let _making = core.making();
        session.generate_key_pair(&mechanism, &public, &private)
    };
    let (pub_h, priv_h) = match generate() {
        // Another process searched the token while this pair was being written (SoftHSM2
        // before 2.7.0, see `Core::searching`): remove what was left of it and try once more.
        Err(e) if rv(&e) == Some(RvError::GeneralError) => {
            tracing::warn!(error = %e, "key generation failed; removing what it left and retrying once");
            remove_halves(core, session, kid)?;
            generate()?
        }
        other => other?,
    };
    keep_pair(core, session, kid, pub_h, priv_h, spec.alg)
}

/// Destroy every object under `kid`'s `CKA_ID` (what a failed generation may leave).
fn remove_halves(core: &Core, session: &Session, kid: &Kid) -> Result<(), OpError> {
    let leftovers = super::object::find(core, session, &[Attribute::Id(kid.cka_id().to_vec())])?;
    for h in leftovers {
        if let Err(e) = session.destroy_object(h) {
            tracing::debug!(error = %e, "a left-over object could not be destroyed");
        }
    }
    Ok(())
}

/// The templates every key pair of ours starts from, generated or imported: both halves
/// token objects under `kid`'s `CKA_ID` and label, the private half private, sensitive,
/// never extractable and usable only to sign.
pub(super) fn templates(
    core: &Core,
    kid: &Kid,
) -> Result<(Vec<Attribute>, Vec<Attribute>), OpError> {
    let id = kid.cka_id().to_vec();
    let label = kid.label(core.store_id()?).into_bytes();
    let public = vec![
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
    Ok((public, private))
}

/// Keep a pair just made in the token: read its public half and cache its handles, or, if
/// that fails, destroy both halves (never leave a pair behind the caller does not know about).
pub(super) fn keep_pair(
    core: &Core,
    session: &Session,
    kid: &Kid,
    pub_h: ObjectHandle,
    priv_h: ObjectHandle,
    alg: Algorithm,
) -> Result<PublicKey, OpError> {
    match read_public(session, pub_h, alg) {
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
            let _ = session.destroy_object(priv_h);
            let _ = session.destroy_object(pub_h);
            Err(e)
        }
    }
}
