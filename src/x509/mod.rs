//! X.509: a self-signed certificate for each signing key, signed inside the HSM by that
//! key, and certs-only PKCS#7 bundles of it (Auth0's `cert` and `pkcs`, JWKS `x5c`).
//!
//! We stay on the RustCrypto generation that jsonwebtoken's and rsa 0.9's dependencies
//! use (der 0.7, spki 0.7, x509-cert 0.2, cms 0.2): all stable releases, one copy of each
//! crate in the build. The TBS certificate is built by hand and its DER signed through
//! [`crate::hsm::Hsm::sign`], since the private key never leaves the token.

use std::str::FromStr as _;
use std::time::{Duration, UNIX_EPOCH};

use der::asn1::{BitString, OctetString};
use der::{Decode as _, Encode as _};
use rand::RngCore as _;
use sha1::{Digest as _, Sha1};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::{AsExtension as _, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::alg::{Algorithm, Digest};
use crate::hsm::{Hsm, HsmError};
use crate::keys::Kid;

/// Parse an RFC 4514 distinguished name (`CN=Billing,O=Acme`).
///
/// # Errors
/// A sentence saying why it is not one.
pub fn parse_dn(dn: &str) -> Result<Name, String> {
    Name::from_str(dn).map_err(|e| format!("not a valid distinguished name ({e})"))
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// DER encoding failed, or the inputs were malformed.
    #[error("certificate encoding: {0}")]
    Encoding(String),
    /// The HSM could not sign.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

impl From<der::Error> for CertError {
    fn from(e: der::Error) -> Self {
        Self::Encoding(e.to_string())
    }
}

const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

fn hash_oid(d: Digest) -> ObjectIdentifier {
    match d {
        Digest::Sha256 => oid("2.16.840.1.101.3.4.2.1"),
        Digest::Sha384 => oid("2.16.840.1.101.3.4.2.2"),
        Digest::Sha512 => oid("2.16.840.1.101.3.4.2.3"),
    }
}

/// `AlgorithmIdentifier { oid, NULL }`.
fn with_null(o: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: o,
        parameters: Some(der::Any::from(der::asn1::AnyRef::NULL)),
    }
}

/// DER of `[tag] EXPLICIT <inner>`.
fn explicit(tag: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0xa0 | tag];
    push_len(&mut out, inner.len());
    out.extend_from_slice(inner);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// RSASSA-PSS-params (RFC 4055): the hash, MGF1 with the same hash, salt = hash length.
fn pss_params(d: Digest) -> Result<der::Any, CertError> {
    let hash = with_null(hash_oid(d)).to_der()?;
    let mgf = AlgorithmIdentifierOwned {
        oid: oid("1.2.840.113549.1.1.8"),
        parameters: Some(der::Any::from_der(&hash)?),
    }
    .to_der()?;
    let salt: u8 = match d {
        Digest::Sha256 => 32,
        Digest::Sha384 => 48,
        Digest::Sha512 => 64,
    };
    let mut body = explicit(0, &hash);
    body.extend(explicit(1, &mgf));
    body.extend(explicit(2, &[0x02, 0x01, salt]));
    let mut seq = vec![0x30];
    push_len(&mut seq, body.len());
    seq.extend(body);
    Ok(der::Any::from_der(&seq)?)
}

/// The certificate `signatureAlgorithm` for a JOSE algorithm.
pub fn signature_algorithm(alg: Algorithm) -> Result<AlgorithmIdentifierOwned, CertError> {
    Ok(match alg {
        Algorithm::RS256 => with_null(oid("1.2.840.113549.1.1.11")),
        Algorithm::RS384 => with_null(oid("1.2.840.113549.1.1.12")),
        Algorithm::RS512 => with_null(oid("1.2.840.113549.1.1.13")),
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => AlgorithmIdentifierOwned {
            oid: oid("1.2.840.113549.1.1.10"),
            parameters: Some(pss_params(alg.digest())?),
        },
        Algorithm::ES256 => no_params(oid("1.2.840.10045.4.3.2")),
        Algorithm::ES384 => no_params(oid("1.2.840.10045.4.3.3")),
        Algorithm::ES512 => no_params(oid("1.2.840.10045.4.3.4")),
        Algorithm::EdDSA => no_params(oid("1.3.101.112")),
    })
}

fn no_params(o: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: o,
        parameters: None,
    }
}

/// ECDSA `r || s` (JWS) → DER `SEQUENCE { INTEGER r, INTEGER s }` (X.509).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, CertError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(CertError::Encoding("ECDSA signature of odd length".into()));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 8);
    for half in [r, s] {
        let int = der::asn1::UintRef::new(half)?;
        body.extend(int.to_der()?);
    }
    let mut seq = vec![0x30];
    push_len(&mut seq, body.len());
    seq.extend(body);
    Ok(seq)
}

fn time(unix: i64) -> Result<Time, CertError> {
    let secs = u64::try_from(unix.max(0)).unwrap_or(0);
    Time::try_from(UNIX_EPOCH + Duration::from_secs(secs)).map_err(CertError::from)
}

/// What a certificate says.
#[derive(Debug, Clone)]
pub struct CertRequest<'a> {
    /// Key id (for the HSM call).
    pub kid: Kid,
    /// Signing algorithm of the key.
    pub alg: Algorithm,
    /// The key's SubjectPublicKeyInfo DER.
    pub spki_der: &'a [u8],
    /// Subject and issuer (RFC 4514).
    pub subject_dn: &'a str,
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

/// Build and sign (inside the HSM, by the key itself) a self-signed certificate; returns
/// its DER.
///
/// # Errors
/// [`CertError`] for malformed inputs or an HSM failure.
pub async fn self_signed(hsm: &Hsm, req: &CertRequest<'_>) -> Result<Vec<u8>, CertError> {
    let name = parse_dn(req.subject_dn).map_err(CertError::Encoding)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(req.spki_der)?;
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let ski = SubjectKeyIdentifier(OctetString::new(
        Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec(),
    )?);
    let extensions: Vec<Extension> = vec![
        BasicConstraints {
            ca: false,
            path_len_constraint: None,
        }
        .to_extension(&name, &[])?,
        KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(&name, &[])?,
        ski.to_extension(&name, &[])?,
    ];
    let signature_algorithm = signature_algorithm(req.alg)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial)?,
        signature: signature_algorithm.clone(),
        issuer: name.clone(),
        validity: Validity {
            not_before: time(req.not_before)?,
            not_after: time(req.not_after)?,
        },
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der()?;
    let raw = hsm.sign(req.kid, req.alg, tbs_der).await?;
    let sig = match req.alg {
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::ES512 => ecdsa_raw_to_der(&raw)?,
        _ => raw,
    };
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&sig)?,
    };
    Ok(cert.to_der()?)
}

/// PEM of a certificate DER (`-----BEGIN CERTIFICATE-----`, CRLF line ends as Auth0 shows).
///
/// # Errors
/// Encoding failures.
pub fn cert_pem(der_bytes: &[u8]) -> Result<String, CertError> {
    pem(der_bytes, "CERTIFICATE")
}

/// PEM of a certs-only PKCS#7 SignedData holding the certificate (`-----BEGIN PKCS7-----`).
///
/// # Errors
/// Encoding failures.
pub fn pkcs7_pem(cert_der: &[u8]) -> Result<String, CertError> {
    let cert = Certificate::from_der(cert_der)?;
    let ci = cms::content_info::ContentInfo::try_from(cert)?;
    pem(&ci.to_der()?, "PKCS7")
}

fn pem(der_bytes: &[u8], label: &str) -> Result<String, CertError> {
    der::pem::encode_string(label, der::pem::LineEnding::CRLF, der_bytes)
        .map_err(|e| CertError::Encoding(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_become_der_sequences() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte in DER
        raw[63] = 1;
        let der = ecdsa_raw_to_der(&raw).expect("der");
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 0x21, 0x00]);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }

    #[test]
    fn pss_identifiers_carry_explicit_parameters() {
        let a = signature_algorithm(Algorithm::PS256).expect("alg");
        let der = a.to_der().expect("der");
        // salt length 32 is encoded explicitly: [2] { INTEGER 32 }
        assert!(der.windows(5).any(|w| w == [0xa2, 0x03, 0x02, 0x01, 0x20]));
        assert!(
            signature_algorithm(Algorithm::ES256)
                .expect("alg")
                .parameters
                .is_none()
        );
    }

    #[test]
    fn distinguished_names_parse() {
        assert!(parse_dn("CN=Billing,O=Acme").is_ok());
        assert!(parse_dn("not a dn").is_err());
    }
}
