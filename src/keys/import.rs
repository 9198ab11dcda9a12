//! Importing an existing signing key (issue 23): parsing it, checking it fits the app, and
//! giving it to the app once it is in the token.
//!
//! Accepted: PEM `PRIVATE KEY` (PKCS#8: RSA, EC on P-256/P-384/P-521, Ed25519), `RSA
//! PRIVATE KEY` (PKCS#1), `EC PRIVATE KEY` (SEC1), and a private JWK (RFC 7517/7518/8037).
//! The RustCrypto crates read them (`pkcs8`, `pkcs1`, `sec1`, `ed25519`); the curve crates
//! check a declared public point and derive a missing one. Every buffer that held the
//! private key is zeroised. Nothing is written before the key is known to fit.
//!
//! In the token the key is made exactly like a generated one (row `pending` first, then the
//! objects, see [`crate::hsm::KeyMaterial`]); a test signature by the token's private half,
//! checked against the declared public half, must verify before the key row is given to the
//! app, in one transaction. A failure at any step destroys the objects and deletes the row;
//! a crash in between leaves a `pending` imported row, which the reconciler undoes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use der::Decode as _;
use der::asn1::ObjectIdentifier;
use serde_json::{Map, Value};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{KeyError, KeyService, KeyState, Kid};
use crate::alg::{Algorithm, Curve, KeyFamily, KeySpec};
use crate::hsm::{HsmError, KeyMaterial};
use crate::pubkey::PublicKey;
use crate::store::{KeyOrigin, KeyRow};

/// Smallest RSA modulus accepted (NIST SP 800-131A).
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest RSA modulus accepted.
pub const MAX_RSA_BITS: u32 = 8192;
/// Default of `imported_key_max_life`: an imported key signs for at most a week.
pub const DEFAULT_IMPORTED_MAX_LIFE: i64 = 7 * 86_400;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
const ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");

/// Why a key cannot be imported. Each is refused before anything is written (422), except
/// [`ImportError::Mismatch`], found by the token's test signature and undone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Not a private key we can read (the message says what was wrong, never the key).
    #[error("{0}")]
    Unreadable(String),
    /// An RSA modulus outside 2048..=8192 bits.
    #[error("the RSA key has {0} bits; keys of 2048 to 8192 bits are accepted")]
    RsaSize(u32),
    /// A curve the service does not sign with.
    #[error(
        "the key is on {0}, which the service does not sign with (P-256, P-384, P-521 and Ed25519 are)"
    )]
    Curve(String),
    /// The key does not fit the app's algorithm.
    #[error("the key is {key}, but the app signs with {app}")]
    Algorithm {
        /// What the key is.
        key: String,
        /// The app's algorithm.
        app: Algorithm,
    },
    /// The declared public half does not belong to the private half.
    #[error(
        "the public key given with the private key does not match it (a test signature by the imported private key did not verify)"
    )]
    Mismatch,
    /// The kid is already used by a key of this store.
    #[error("key id {0} is already in use")]
    KidInUse(Kid),
    /// Only `next`, `current` or `previous`.
    #[error("an imported key can be next, current or previous, not {0}")]
    State(String),
}

impl ImportError {
    /// Stable error code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "invalid_key",
            Self::RsaSize(_) => "key_too_weak",
            Self::Curve(_) => "unsupported_curve",
            Self::Algorithm { .. } => "algorithm_mismatch",
            Self::Mismatch => "key_mismatch",
            Self::KidInUse(_) => "kid_in_use",
            Self::State(_) => "invalid_state",
        }
    }
}

fn unreadable(what: impl Into<String>) -> ImportError {
    ImportError::Unreadable(what.into())
}

fn curve_name(oid: ObjectIdentifier) -> String {
    match oid {
        SECP256K1 => "secp256k1".into(),
        X25519 => "X25519".into(),
        ED448 => "Ed448".into(),
        other => format!("the curve {other}"),
    }
}

fn curve_of(oid: ObjectIdentifier) -> Result<Curve, ImportError> {
    match oid {
        P256 => Ok(Curve::P256),
        P384 => Ok(Curve::P384),
        P521 => Ok(Curve::P521),
        other => Err(ImportError::Curve(curve_name(other))),
    }
}

/// Read a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC
/// PRIVATE KEY`).
///
/// # Errors
/// [`ImportError`] saying what is wrong with it.
pub fn parse_pem(pem: &str) -> Result<KeyMaterial, ImportError> {
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| {
        unreadable(format!(
            "not a PEM private key ({e}); expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY"
        ))
    })?;
    let der = Zeroizing::new(der);
    match label {
        "PRIVATE KEY" => parse_pkcs8(&der),
        "RSA PRIVATE KEY" => parse_pkcs1(&der),
        "EC PRIVATE KEY" => parse_sec1(&der, None),
        "ENCRYPTED PRIVATE KEY" => Err(unreadable(
            "the PEM key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN) and import the plain key",
        )),
        other => Err(unreadable(format!(
            "a PEM {other:?} is not a private key; expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY"
        ))),
    }
}

fn parse_pkcs8(der: &[u8]) -> Result<KeyMaterial, ImportError> {
    let info = pkcs8::PrivateKeyInfo::from_der(der)
        .map_err(|e| unreadable(format!("malformed PKCS#8 private key: {e}")))?;
    match info.algorithm.oid {
        RSA_ENCRYPTION | RSASSA_PSS => parse_pkcs1(info.private_key),
        EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| unreadable("PKCS#8 EC key without a named curve"))?;
            parse_sec1(info.private_key, Some(curve))
        }
        ED25519 => {
            let pair = ed25519::pkcs8::KeypairBytes::try_from(info)
                .map_err(|e| unreadable(format!("malformed Ed25519 private key: {e}")))?;
            let seed = Zeroizing::new(pair.secret_key.to_vec());
            let declared = pair.public_key.as_ref().map(|p| p.to_bytes().to_vec());
            ed25519_material(seed, declared)
        }
        other => Err(ImportError::Curve(curve_name(other))),
    }
}

fn parse_pkcs1(der: &[u8]) -> Result<KeyMaterial, ImportError> {
    let k = pkcs1::RsaPrivateKey::from_der(der)
        .map_err(|e| unreadable(format!("malformed RSA private key: {e}")))?;
    if k.version() != pkcs1::Version::TwoPrime {
        return Err(unreadable("multi-prime RSA keys cannot be imported"));
    }
    let z = |u: pkcs1::UintRef<'_>| Zeroizing::new(u.as_bytes().to_vec());
    rsa_material(
        k.modulus.as_bytes().to_vec(),
        k.public_exponent.as_bytes().to_vec(),
        [
            z(k.private_exponent),
            z(k.prime1),
            z(k.prime2),
            z(k.exponent1),
            z(k.exponent2),
            z(k.coefficient),
        ],
    )
}

fn rsa_material(
    n: Vec<u8>,
    e: Vec<u8>,
    [d, p, q, dp, dq, qi]: [Zeroizing<Vec<u8>>; 6],
) -> Result<KeyMaterial, ImportError> {
    let bits = PublicKey::rsa(&n, &e).rsa_bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(ImportError::RsaSize(bits));
    }
    Ok(KeyMaterial::Rsa {
        n,
        e,
        d,
        p,
        q,
        dp,
        dq,
        qi,
    })
}

/// An EC key from SEC1 DER; `outer` is the curve a PKCS#8 wrapper named.
fn parse_sec1(der: &[u8], outer: Option<ObjectIdentifier>) -> Result<KeyMaterial, ImportError> {
    let k = sec1::EcPrivateKey::from_der(der)
        .map_err(|e| unreadable(format!("malformed EC private key: {e}")))?;
    let inner = k.parameters.and_then(sec1::EcParameters::named_curve);
    let oid = match (outer, inner) {
        (Some(a), Some(b)) if a != b => {
            return Err(unreadable("the EC key names two different curves"));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(unreadable("EC private key without a named curve")),
    };
    ec_material(
        curve_of(oid)?,
        Zeroizing::new(k.private_key.to_vec()),
        k.public_key.map(<[u8]>::to_vec),
    )
}

/// Check an EC key's scalar and its declared point (or derive the point), with the curve
/// crates.
fn ec_material(
    curve: Curve,
    d: Zeroizing<Vec<u8>>,
    declared: Option<Vec<u8>>,
) -> Result<KeyMaterial, ImportError> {
    let len = curve.field_len();
    // SEC1 writes the scalar in the curve order's length; some writers drop leading zeros.
    let start = d.iter().position(|&b| b != 0).unwrap_or(d.len());
    if d.len() - start > len {
        return Err(unreadable(
            "the EC private scalar is longer than the curve allows",
        ));
    }
    let mut scalar = Zeroizing::new(vec![0u8; len]);
    scalar[len - (d.len() - start)..].copy_from_slice(&d[start..]);
    let bad_scalar = || unreadable("the EC private scalar is not valid for its curve");
    let bad_point = || unreadable("the EC public key is not a point of its curve");
    macro_rules! point {
        ($crate_:ident) => {{
            use $crate_::elliptic_curve::sec1::ToEncodedPoint as _;
            match &declared {
                Some(p) => $crate_::PublicKey::from_sec1_bytes(p)
                    .map_err(|_| bad_point())?
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
                None => $crate_::SecretKey::from_slice(&scalar)
                    .map_err(|_| bad_scalar())?
                    .public_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec(),
            }
        }};
    }
    let point = match curve {
        Curve::P256 => point!(p256),
        Curve::P384 => point!(p384),
        Curve::P521 => point!(p521),
        Curve::Ed25519 => return Err(ImportError::Curve("Ed25519 as ECDSA".into())),
    };
    Ok(KeyMaterial::Ec {
        curve,
        d: scalar,
        point,
    })
}

fn ed25519_material(
    seed: Zeroizing<Vec<u8>>,
    declared: Option<Vec<u8>>,
) -> Result<KeyMaterial, ImportError> {
    if seed.len() != 32 {
        return Err(unreadable("an Ed25519 private key is 32 bytes"));
    }
    let public = match declared {
        Some(p) if p.len() == 32 => p,
        Some(_) => return Err(unreadable("an Ed25519 public key is 32 bytes")),
        None => {
            use aws_lc_rs::signature::KeyPair as _;
            aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|_| unreadable("the Ed25519 private key is not valid"))?
                .public_key()
                .as_ref()
                .to_vec()
        }
    };
    Ok(KeyMaterial::Ed25519 { seed, public })
}

/// Read a private JWK (`kty` RSA with `n e d p q dp dq qi`, EC with `crv x y d`, OKP
/// Ed25519 with `x d`).
///
/// # Errors
/// [`ImportError`] saying what is wrong with it.
pub fn parse_jwk(jwk: &Map<String, Value>) -> Result<KeyMaterial, ImportError> {
    let member = |name: &str| -> Result<Zeroizing<Vec<u8>>, ImportError> {
        let s = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable(format!("the JWK has no {name:?} member")))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map(Zeroizing::new)
            .map_err(|_| unreadable(format!("the JWK member {name:?} is not base64url")))
    };
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or_else(|| unreadable("the JWK has no \"kty\""))?;
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    match kty {
        "RSA" => {
            if !jwk.contains_key("d") {
                return Err(unreadable(
                    "the JWK is a public key; a private JWK has \"d\"",
                ));
            }
            if ["p", "q", "dp", "dq", "qi"]
                .iter()
                .any(|m| !jwk.contains_key(*m))
            {
                return Err(unreadable(
                    "the RSA JWK lacks its CRT parameters (p q dp dq qi), which the HSM needs",
                ));
            }
            rsa_material(
                member("n")?.to_vec(),
                member("e")?.to_vec(),
                [
                    member("d")?,
                    member("p")?,
                    member("q")?,
                    member("dp")?,
                    member("dq")?,
                    member("qi")?,
                ],
            )
        }
        "EC" => {
            let curve = match crv {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                "P-521" => Curve::P521,
                other => return Err(ImportError::Curve(other.to_owned())),
            };
            let (x, y) = (member("x")?, member("y")?);
            let len = curve.field_len();
            if x.len() != len || y.len() != len {
                return Err(unreadable(format!(
                    "the JWK's x and y must be {len} bytes each on {crv}"
                )));
            }
            let point = [&[4u8][..], &x, &y].concat();
            ec_material(curve, member("d")?, Some(point))
        }
        "OKP" if crv == "Ed25519" => ed25519_material(member("d")?, Some(member("x")?.to_vec())),
        "OKP" => Err(ImportError::Curve(crv.to_owned())),
        other => Err(unreadable(format!(
            "a JWK of kty {other:?} cannot sign JWTs here (RSA, EC and OKP can)"
        ))),
    }
}

/// The key of an import request: exactly one of a PEM text and a JWK.
///
/// # Errors
/// [`ImportError`] for neither, both, or a key that cannot be read.
pub fn material_from(
    pem: Option<&str>,
    jwk: Option<&Map<String, Value>>,
) -> Result<KeyMaterial, ImportError> {
    match (pem, jwk) {
        (Some(p), None) => parse_pem(p),
        (None, Some(j)) => parse_jwk(j),
        _ => Err(unreadable(
            "give the private key as exactly one of \"pem\" and \"jwk\"",
        )),
    }
}

/// What a key is, in words (`an RSA-2048 key`, `a P-256 key`).
fn describe(pk: &PublicKey) -> String {
    match pk {
        PublicKey::Rsa { .. } => format!("an RSA-{} key", pk.rsa_bits()),
        PublicKey::Ec { curve, .. } => format!("a {} key", curve.jwk_name()),
        PublicKey::Ed25519(_) => "an Ed25519 key".into(),
    }
}

/// Whether a key (its public half) can sign with `alg`.
///
/// # Errors
/// [`ImportError::Algorithm`] when it cannot.
pub fn check_fits(pk: &PublicKey, alg: Algorithm) -> Result<(), ImportError> {
    let fits = match (pk, alg.family()) {
        (PublicKey::Rsa { .. }, KeyFamily::Rsa) => true,
        (PublicKey::Ec { curve, .. }, KeyFamily::Ec(c)) => *curve == c,
        (PublicKey::Ed25519(_), KeyFamily::Ed(_)) => true,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(ImportError::Algorithm {
            key: describe(pk),
            app: alg,
        })
    }
}

/// A key to import and where it goes.
#[derive(Debug)]
pub struct ImportRequest {
    /// The key.
    pub material: KeyMaterial,
    /// Its kid (default: a new ULID).
    pub kid: Option<Kid>,
    /// `next`, `current` (the default) or `previous`.
    pub state: KeyState,
}

/// Parse `next`, `current` or `previous`.
///
/// # Errors
/// [`ImportError::State`] for anything else.
pub fn parse_state(s: &str) -> Result<KeyState, ImportError> {
    match s {
        "next" => Ok(KeyState::Next),
        "current" => Ok(KeyState::Current),
        "previous" => Ok(KeyState::Previous),
        other => Err(ImportError::State(other.to_owned())),
    }
}

impl KeyService {
    /// Import a key into the token for `app_id` (see the module documentation). A
    /// `current` key signs from now and the app's current key becomes `previous`; a `next`
    /// key replaces the app's `next` key (revoked and destroyed: it never signed); a
    /// `previous` key only verifies, for the app's `verification_ttl`. Returns the key.
    ///
    /// # Errors
    /// [`KeyError::Import`] for a key that does not fit (nothing written);
    /// [`KeyError::AppNotFound`]; HSM and store failures (nothing left behind).
    pub async fn import_key(&self, app_id: &str, req: ImportRequest) -> Result<KeyRow, KeyError> {
        let ImportRequest {
            material,
            kid,
            state,
        } = req;
        if !matches!(
            state,
            KeyState::Next | KeyState::Current | KeyState::Previous
        ) {
            return Err(ImportError::State(state.to_string()).into());
        }
        let store = self.store();
        let app = store.app(app_id).await?.ok_or(KeyError::AppNotFound)?;
        let declared = material.public();
        check_fits(&declared, app.signing_alg)?;
        if !self.hsm().signs(app.signing_alg) {
            return Err(HsmError::from(crate::hsm::Unsupported {
                alg: app.signing_alg,
                reason: "the token cannot sign with it".into(),
            })
            .into());
        }
        let kid = kid.unwrap_or_else(Kid::generate);
        if store.key(kid).await?.is_some() {
            return Err(ImportError::KidInUse(kid).into());
        }
        let spec = KeySpec::new(app.signing_alg, declared.rsa_bits());
        let _guard = self.lock_app(app_id).await;
        let held = self.stage_import(kid, spec, material).await?;
        let placed = self
            .place_import(app_id, kid, state, &declared, &held)
            .await;
        let (row, displaced) = match placed {
            Ok(done) => done,
            Err(e) => {
                self.unstage_import(kid).await;
                return Err(e);
            }
        };
        self.registry().withdraw(&displaced);
        self.after_change(app_id).await;
        self.destroy_objects(&displaced).await;
        let leave_by = self.next_rotation_at(app_id);
        info!(app_id, %kid, state = %state, "key imported");
        let mut details = serde_json::json!({
            "app_id": app_id,
            "origin": KeyOrigin::Imported.as_str(),
            "state": state.as_str(),
            "algorithm": app.signing_alg.as_str(),
            "fingerprint": row.fingerprint,
            "revoked_next": displaced.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        if let Some(t) = leave_by.filter(|_| state == KeyState::Current) {
            details["next_rotation_at"] = t.into();
        }
        self.audit()
            .record("key.import", &kid.to_string(), "ok", details)
            .await;
        Ok(self.store().key(kid).await?.unwrap_or(row))
    }

    /// Make the objects of a key to import under `kid`: its `pending` imported row first,
    /// then the objects. Returns the public half as the token holds it. On failure nothing
    /// is left (the row is deleted).
    ///
    /// # Errors
    /// HSM and store failures.
    pub(crate) async fn stage_import(
        &self,
        kid: Kid,
        spec: KeySpec,
        material: KeyMaterial,
    ) -> Result<PublicKey, KeyError> {
        let store = self.store();
        store
            .insert_pending_import(kid, spec, self.clock_now())
            .await?;
        match self.hsm().import(kid, material).await {
            Ok(pk) => Ok(pk),
            Err(e) => {
                let _ = store.delete_pending_key(kid).await;
                Err(e.into())
            }
        }
    }

    /// The token's test signature of a staged import: its private half signs with `alg`,
    /// the `declared` public half must verify it (and equal the `held` one). Returns the
    /// public key's SPKI DER and fingerprint.
    ///
    /// # Errors
    /// [`ImportError::Mismatch`]; HSM failures.
    pub(crate) async fn check_staged(
        &self,
        kid: Kid,
        alg: Algorithm,
        declared: &PublicKey,
        held: &PublicKey,
    ) -> Result<(Vec<u8>, String), KeyError> {
        let probe = format!("hsm-rotator import check {kid}").into_bytes();
        let sig = self.hsm().sign(kid, alg, probe.clone()).await?;
        let verifier = crate::jwt::verify::Verifier::new(declared, alg)
            .map_err(|_| KeyError::from(ImportError::Mismatch))?;
        if held != declared || !verifier.verify(&probe, &sig) {
            return Err(ImportError::Mismatch.into());
        }
        let spki = declared
            .to_spki_der()
            .map_err(|e| KeyError::Inconsistent(format!("public key of {kid}: {e}")))?;
        let fingerprint = crate::pubkey::hex(&<sha2::Sha256 as sha2::Digest>::digest(&spki));
        Ok((spki, fingerprint))
    }

    /// Undo a staged import that was not given to an app: the objects first, then the row
    /// (a crash in between leaves a pending imported row, which the reconciler undoes).
    pub(crate) async fn unstage_import(&self, kid: Kid) {
        if let Err(d) = self.hsm().destroy(kid).await {
            warn!(%kid, error = %d, "could not destroy a failed import's objects; the reconciler will");
        } else {
            let _ = self.store().delete_pending_key(kid).await;
        }
    }

    /// The checks and the transaction of an import whose objects exist: the token's test
    /// signature, then the row given to the app. Returns the row and the `next` key it
    /// displaced.
    async fn place_import(
        &self,
        app_id: &str,
        kid: Kid,
        state: KeyState,
        declared: &PublicKey,
        held: &PublicKey,
    ) -> Result<(KeyRow, Vec<Kid>), KeyError> {
        let store = self.store();
        let app = store.app(app_id).await?.ok_or(KeyError::AppNotFound)?;
        let (spki, fingerprint) = self
            .check_staged(kid, app.signing_alg, declared, held)
            .await?;
        let now = self.clock_now();
        let mut tx = store.begin().await?;
        if !store.lock_app(&mut tx, app_id).await? {
            return Err(KeyError::AppNotFound);
        }
        let keys = store.app_keys_tx(&mut tx, app_id).await?;
        let mut displaced = Vec::new();
        let holder = keys
            .iter()
            .find(|k| k.state == state && state != KeyState::Previous);
        if let Some(k) = holder {
            let to = match state {
                KeyState::Current => KeyState::Previous,
                _ => KeyState::Revoked,
            };
            if !store
                .transition_key(&mut tx, k.kid, k.state, to, now)
                .await?
            {
                return Err(KeyError::Inconsistent(
                    "the app's keys changed during the import".into(),
                ));
            }
            if to == KeyState::Revoked {
                displaced.push(k.kid);
            }
        }
        if !store
            .place_imported(&mut tx, kid, app_id, state, (&spki, &fingerprint), now)
            .await?
        {
            return Err(KeyError::Inconsistent(format!(
                "the pending row of {kid} disappeared during the import"
            )));
        }
        tx.commit().await?;
        let row = store.key(kid).await?.ok_or(KeyError::KeyNotFound)?;
        Ok((row, displaced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_public_keys_are_not_private_keys() {
        assert!(matches!(
            parse_pem("hello"),
            Err(ImportError::Unreadable(_))
        ));
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(parse_pem(public), Err(ImportError::Unreadable(_))));
    }

    #[test]
    fn an_ed25519_pkcs8_key_gets_its_public_half_derived() {
        // RFC 8410 §10.3 example key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let m = parse_pem(pem).expect("parses");
        let PublicKey::Ed25519(x) = m.public() else {
            panic!("not Ed25519")
        };
        assert_eq!(
            URL_SAFE_NO_PAD.encode(x),
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE"
        );
    }

    #[test]
    fn keys_fit_only_their_own_algorithms() {
        let ec = PublicKey::Ec {
            curve: Curve::P384,
            point: vec![4; 97],
        };
        assert!(check_fits(&ec, Algorithm::ES384).is_ok());
        let e = check_fits(&ec, Algorithm::ES256).expect_err("P-384 is not ES256");
        assert_eq!(e.code(), "algorithm_mismatch");
        assert!(e.to_string().contains("P-384"));
        assert!(check_fits(&PublicKey::Ed25519(vec![0; 32]), Algorithm::RS256).is_err());
    }

    #[test]
    fn a_jwk_on_an_unsupported_curve_is_named() {
        let jwk =
            serde_json::json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "d": "AA"});
        let e = parse_jwk(jwk.as_object().expect("object")).expect_err("refused");
        assert_eq!(e.code(), "unsupported_curve");
        assert!(e.to_string().contains("secp256k1"));
    }
}
