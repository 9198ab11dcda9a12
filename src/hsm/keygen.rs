//! Key-pair generation inside the token.
//!
//! The private half is a token object that is private, sensitive, never extractable and
//! usable only to sign; both halves carry `CKA_ID = kid` and
//! `CKA_LABEL = hsm-rotator/<store id>/<kid>`.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::HsmError;
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
    let mut retried = false;
    loop {
        let made = match generate() {
            // `keep_pair` removes what it refuses itself.
            Ok((pub_h, priv_h)) => keep_pair(core, session, kid, pub_h, priv_h, spec.alg),
            Err(e) => {
                let e = OpError::from(e);
                if lost_while_written(&e) {
                    // A failed call may still leave one half behind.
                    remove_halves(core, session, kid)?;
                }
                Err(e)
            }
        };
        match made {
            // Another process changed the token while this pair was being written (see
            // `intact`): nothing of it is left; try once more.
            Err(e) if !retried && lost_while_written(&e) => {
                tracing::warn!(error = %e, "key generation lost its pair; retrying once");
                retried = true;
            }
            other => return other,
        }
    }
}

/// Whether a generation failed the way SoftHSM2 fails one that another process disturbed:
/// `CKR_GENERAL_ERROR` or `CKR_FUNCTION_FAILED` from the call, or a pair that comes back
/// unreadable, malformed or not intact.
fn lost_while_written(e: &OpError) -> bool {
    match e {
        OpError::Ck(e) => matches!(
            rv(e),
            Some(
                RvError::GeneralError
                    | RvError::FunctionFailed
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid
            )
        ),
        OpError::Final(e) => matches!(e, HsmError::NotKept(_) | HsmError::Malformed(_)),
    }
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

/// Keep a pair just made in the token: read its public half, check the token kept the pair
/// intact and cache its handles, or, if that fails, destroy both halves and anything else
/// under `kid` (never leave a pair behind the caller does not know about).
pub(super) fn keep_pair(
    core: &Core,
    session: &Session,
    kid: &Kid,
    pub_h: ObjectHandle,
    priv_h: ObjectHandle,
    alg: Algorithm,
) -> Result<PublicKey, OpError> {
    let checked = read_public(session, pub_h, alg).and_then(|pk| {
        intact(core, session, kid, pub_h, priv_h)?;
        Ok(pk)
    });
    match checked {
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
            let _ = remove_halves(core, session, kid);
            Err(e)
        }
    }
}

/// Check that the token holds exactly the pair just made under `kid`: a fresh search by
/// `CKA_ID` finds its two handles and nothing else.
///
/// SoftHSM2 2.6.1 (Debian 12's) can lose a new object's last write when another process
/// changes the token while it is made (a `pkcs11-tool` listing or a second replica logging
/// in rewrites the token file): `C_GenerateKeyPair` succeeds and the handles work in this
/// process, but the private half's file was left with its first attributes only (609 of
/// 833 bytes for ES256), so no search finds it and every other process, or this one after a
/// restart, sees one half. Found by `tests/hsm`'s cross-process generation test (most runs
/// before this check); a fresh search is what tells such a pair from a good one. Costs one
/// search per pair made, which waits for objects being made in this process.
fn intact(
    core: &Core,
    session: &Session,
    kid: &Kid,
    pub_h: ObjectHandle,
    priv_h: ObjectHandle,
) -> Result<(), OpError> {
    let found = super::object::find(core, session, &[Attribute::Id(kid.cka_id().to_vec())])?;
    if found.len() == 2 && found.contains(&pub_h) && found.contains(&priv_h) {
        return Ok(());
    }
    tracing::warn!(
        objects = found.len(),
        public = found.contains(&pub_h),
        private = found.contains(&priv_h),
        "the token did not keep a new key pair intact"
    );
    Err(OpError::Final(HsmError::NotKept(format!(
        "key {kid}'s new pair"
    ))))
}
