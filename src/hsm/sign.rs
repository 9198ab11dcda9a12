//! Signing with a key in the token, in JWS encoding (RFC 7518 §3).
//!
//! RS* use `CKM_SHAxxx_RSA_PKCS`; PS* `CKM_SHAxxx_RSA_PKCS_PSS` with MGF1 of the same hash
//! and a salt as long as the hash; ES* hash in software and sign with raw `CKM_ECDSA`
//! (SoftHSM has no `CKM_ECDSA_SHA256`), whose `r || s` output is JWS's encoding already;
//! EdDSA uses `CKM_EDDSA`.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::session::Session;
use sha2::Digest as _;

use super::error::HsmError;
use super::pool::{Core, OpError};
use crate::alg::{Algorithm, Digest, KeyFamily};
use crate::keys::Kid;

fn pss(hash: MechanismType, mgf: PkcsMgfType, len: u64) -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: hash,
        mgf,
        s_len: len.into(),
    }
}

/// Hash `data` with `digest` (for ECDSA, which signs a digest).
pub(crate) fn hash(digest: Digest, data: &[u8]) -> Vec<u8> {
    match digest {
        Digest::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Digest::Sha384 => sha2::Sha384::digest(data).to_vec(),
        Digest::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

/// Sign `data` with `kid`'s private half for `alg`.
pub(crate) fn sign_in(
    core: &Core,
    session: &Session,
    kid: &Kid,
    alg: Algorithm,
    data: &[u8],
) -> Result<Vec<u8>, OpError> {
    let handle = core
        .handles(session, kid)?
        .private
        .ok_or(HsmError::KeyNotFound(*kid))?;
    let eddsa = EddsaParams::new(EddsaSignatureScheme::Pure);
    let mechanism = match alg {
        Algorithm::RS256 => Mechanism::Sha256RsaPkcs,
        Algorithm::RS384 => Mechanism::Sha384RsaPkcs,
        Algorithm::RS512 => Mechanism::Sha512RsaPkcs,
        Algorithm::PS256 => {
            Mechanism::Sha256RsaPkcsPss(pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32))
        }
        Algorithm::PS384 => {
            Mechanism::Sha384RsaPkcsPss(pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48))
        }
        Algorithm::PS512 => {
            Mechanism::Sha512RsaPkcsPss(pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64))
        }
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => Mechanism::Ecdsa,
        Algorithm::EdDSA => Mechanism::Eddsa(eddsa),
    };
    let sig = if matches!(alg.family(), KeyFamily::Ec(_)) {
        session.sign(&mechanism, handle, &hash(alg.digest(), data))?
    } else {
        session.sign(&mechanism, handle, data)?
    };
    Ok(sig)
}
