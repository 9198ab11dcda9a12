//! What the token can do, asked once at start-up with `C_GetMechanismList` and
//! `C_GetMechanismInfo`: for each JOSE algorithm, whether the token can generate its key
//! pair and sign with it, and for which key sizes.
//!
//! Tokens differ: SoftHSM2 has EdDSA, kryoptic built on OpenSSL 3.0 has not, a hardware
//! HSM may lack P-521 or RSA-PSS. The service decides from the token's own answer (never
//! from its name), so an app asking for an algorithm the token lacks is refused with a
//! clear error before anything is written, and background work skips it instead of failing
//! on it again and again.

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;

use crate::alg::{ALL, Algorithm, Curve, KeyFamily, KeySpec};

/// The token cannot serve a key spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the HSM token does not support {alg}: {reason}")]
pub struct Unsupported {
    /// The algorithm asked for.
    pub alg: Algorithm,
    /// What the token lacks, in plain words (mechanism names, key sizes).
    pub reason: String,
}

/// The two mechanisms an algorithm needs: key-pair generation and signing.
fn needs(alg: Algorithm) -> [MechanismType; 2] {
    let keygen = match alg.family() {
        KeyFamily::Rsa => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        KeyFamily::Ec(_) => MechanismType::ECC_KEY_PAIR_GEN,
        KeyFamily::Ed(_) => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    };
    let sign = match alg {
        Algorithm::RS256 => MechanismType::SHA256_RSA_PKCS,
        Algorithm::RS384 => MechanismType::SHA384_RSA_PKCS,
        Algorithm::RS512 => MechanismType::SHA512_RSA_PKCS,
        Algorithm::PS256 => MechanismType::SHA256_RSA_PKCS_PSS,
        Algorithm::PS384 => MechanismType::SHA384_RSA_PKCS_PSS,
        Algorithm::PS512 => MechanismType::SHA512_RSA_PKCS_PSS,
        // ECDSA hashes in software and signs the digest (see `sign`).
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => MechanismType::ECDSA,
        Algorithm::EdDSA => MechanismType::EDDSA,
    };
    [keygen, sign]
}

/// Key size in bits, as PKCS#11 states mechanism key-size ranges for the family.
fn key_bits(spec: KeySpec) -> u64 {
    match spec.alg.family() {
        KeyFamily::Rsa => u64::from(spec.rsa_bits),
        KeyFamily::Ec(Curve::P256 | Curve::Ed25519) | KeyFamily::Ed(_) => 256,
        KeyFamily::Ec(Curve::P384) => 384,
        KeyFamily::Ec(Curve::P521) => 521,
    }
}

/// One mechanism as the token described it.
#[derive(Debug, Clone, Copy)]
struct Info {
    generate_key_pair: bool,
    sign: bool,
    min_bits: u64,
    max_bits: u64,
}

/// The token's answer, kept for the life of the process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mechanisms {
    infos: Vec<(MechanismType, Info)>,
}

impl Mechanisms {
    /// Ask the token in `slot` which mechanisms it has (`C_GetMechanismList`, the
    /// token's own list, which is what a token's policy restricts), then for the details of
    /// each one the service uses.
    pub(crate) fn query(pkcs11: &Pkcs11, slot: Slot) -> Result<Self, CkError> {
        let mut infos = Vec::new();
        for mech in pkcs11.get_mechanism_list(slot)? {
            let wanted = ALL.iter().any(|&a| needs(a).contains(&mech));
            if !wanted {
                continue;
            }
            let info = pkcs11.get_mechanism_info(slot, mech)?;
            infos.push((
                mech,
                Info {
                    generate_key_pair: info.generate_key_pair(),
                    sign: info.sign(),
                    min_bits: info.min_key_size() as u64,
                    max_bits: info.max_key_size() as u64,
                },
            ));
        }
        Ok(Self { infos })
    }

    /// The algorithms whose keys the token can generate and sign with (at their default
    /// sizes: RSA-2048).
    pub(crate) fn supported(&self) -> Vec<Algorithm> {
        ALL.into_iter()
            .filter(|&a| {
                let bits = if a.is_rsa() { 2048 } else { 0 };
                self.check(KeySpec::new(a, bits)).is_ok()
            })
            .collect()
    }

    fn info(&self, mech: MechanismType) -> Option<&Info> {
        self.infos.iter().find(|(m, _)| *m == mech).map(|(_, i)| i)
    }

    /// Whether the token can sign with `alg` (keys that already exist).
    pub(crate) fn check_sign(&self, alg: Algorithm) -> Result<(), Unsupported> {
        let [_, sign] = needs(alg);
        match self.info(sign) {
            Some(i) if i.sign => Ok(()),
            Some(_) => Err(Unsupported {
                alg,
                reason: format!("its {sign} cannot be used for signing"),
            }),
            None => Err(Unsupported {
                alg,
                reason: format!("it has no {sign} (signing)"),
            }),
        }
    }

    /// Whether the token can generate and sign with keys of `spec`.
    pub(crate) fn check(&self, spec: KeySpec) -> Result<(), Unsupported> {
        let [keygen, sign] = needs(spec.alg);
        let bits = key_bits(spec);
        for (mech, role) in [(keygen, "key-pair generation"), (sign, "signing")] {
            let fail = |why: String| Unsupported {
                alg: spec.alg,
                reason: why,
            };
            let Some(info) = self.info(mech) else {
                return Err(fail(format!("it has no {mech} ({role})")));
            };
            let capable = if mech == keygen {
                info.generate_key_pair
            } else {
                info.sign
            };
            if !capable {
                return Err(fail(format!("its {mech} cannot be used for {role}")));
            }
            // A range of 0..0 means the token did not say; trust it then.
            if info.max_bits > 0 && !(info.min_bits..=info.max_bits).contains(&bits) {
                return Err(fail(format!(
                    "its {mech} takes {}..{} bit keys, not {bits}",
                    info.min_bits, info.max_bits
                )));
            }
        }
        Ok(())
    }

    /// The algorithms the token lacks (each with its reason), for the start-up log.
    pub(crate) fn missing(&self) -> Vec<Unsupported> {
        ALL.iter()
            .filter_map(|&a| {
                let bits = if a.is_rsa() { 2048 } else { 0 };
                self.check(KeySpec::new(a, bits)).err()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(generate_key_pair: bool, sign: bool, min_bits: u64, max_bits: u64) -> Info {
        Info {
            generate_key_pair,
            sign,
            min_bits,
            max_bits,
        }
    }

    #[test]
    fn an_algorithm_needs_both_mechanisms_and_a_fitting_key_size() {
        let mut m = Mechanisms::default();
        m.infos
            .push((MechanismType::ECC_KEY_PAIR_GEN, info(true, false, 256, 384)));
        m.infos
            .push((MechanismType::ECDSA, info(false, true, 256, 384)));
        m.infos.push((
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            info(true, false, 0, 0),
        ));
        assert_eq!(m.check(KeySpec::new(Algorithm::ES256, 0)), Ok(()));
        let p521 = m.check(KeySpec::new(Algorithm::ES512, 0)).unwrap_err();
        assert!(p521.reason.contains("not 521"), "{p521}");
        let ed = m.check(KeySpec::new(Algorithm::EdDSA, 0)).unwrap_err();
        assert!(
            ed.to_string().contains("EdDSA") && ed.reason.contains("CKM_EC_EDWARDS_KEY_PAIR_GEN"),
            "{ed}"
        );
        let rs = m.check(KeySpec::new(Algorithm::RS256, 2048)).unwrap_err();
        assert!(rs.reason.contains("CKM_SHA256_RSA_PKCS"), "{rs}");
        assert!(m.check_sign(Algorithm::ES384).is_ok() && m.check_sign(Algorithm::EdDSA).is_err());
        assert_eq!(m.missing().len(), 8);
    }
}
