//! App policy: defaults and the rules every entry point (native, JWTPlus, CLI) applies.

use ulid::Ulid;

use crate::alg::{Algorithm, RSA_BITS, UnknownAlgorithm};
use crate::store::AppRow;

/// Longest period or lifetime accepted, seconds (one year).
pub const MAX_SECONDS: i64 = 31_536_000;
/// Default rotation period: 30 days.
pub const DEFAULT_ROTATION_PERIOD: i64 = 30 * 86_400;
/// Default access-token lifetime: one hour.
pub const DEFAULT_TOKEN_TTL: i64 = 3_600;
/// Margin added to the longest token lifetime for the default verification TTL.
pub const VERIFICATION_MARGIN: i64 = 300;

/// The policy fields of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Algorithm of new keys.
    pub signing_alg: Algorithm,
    /// RSA modulus of new keys.
    pub rsa_bits: u32,
    /// Seconds between scheduled rotations.
    pub rotation_period: i64,
    /// Seconds a key verifies after it stopped signing.
    pub verification_ttl: i64,
    /// Longest access-token lifetime.
    pub token_ttl: i64,
    /// Offset of `nbf` from issuance.
    pub token_nbf: i64,
    /// Refresh-token lifetime (0: none).
    pub refresh_ttl: i64,
    /// Offset from issuance before a refresh token may be used.
    pub refresh_nbf: i64,
}

/// A policy field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The field's JSON name.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field,
        message: message.into(),
    }
}

/// The default verification TTL: the longest token lifetime plus five minutes.
pub fn default_verification_ttl(token_ttl: i64) -> i64 {
    token_ttl + VERIFICATION_MARGIN
}

/// Check a policy.
///
/// # Errors
/// The first field out of range.
pub fn validate(p: &Policy) -> Result<(), PolicyError> {
    if p.signing_alg.is_rsa() && !RSA_BITS.contains(&p.rsa_bits) {
        return Err(err("rsa_bits", "must be 2048, 3072 or 4096"));
    }
    if !(60..=MAX_SECONDS).contains(&p.rotation_period) {
        return Err(err(
            "rotation_period",
            format!("must be between 60 and {MAX_SECONDS} seconds"),
        ));
    }
    if !(1..=MAX_SECONDS).contains(&p.token_ttl) {
        return Err(err(
            "token_ttl",
            format!("must be between 1 and {MAX_SECONDS} seconds"),
        ));
    }
    if !(0..=MAX_SECONDS).contains(&p.refresh_ttl) {
        return Err(err(
            "refresh_ttl",
            format!("must be between 0 and {MAX_SECONDS} seconds"),
        ));
    }
    if !(0..=MAX_SECONDS).contains(&p.token_nbf) || !(0..=MAX_SECONDS).contains(&p.refresh_nbf) {
        return Err(err(
            "token_nbf",
            "not-before offsets must be between 0 and one year",
        ));
    }
    if !(1..=2 * MAX_SECONDS).contains(&p.verification_ttl) {
        return Err(err(
            "verification_ttl",
            "must be between 1 second and two years",
        ));
    }
    // A verifier would otherwise reject tokens that have not expired (Vault #11441).
    if p.token_ttl > p.verification_ttl {
        return Err(err(
            "verification_ttl",
            "must be at least token_ttl, or live tokens would stop verifying after a rotation",
        ));
    }
    Ok(())
}

/// Check a display name: 1 to 100 characters, no control characters.
///
/// # Errors
/// [`PolicyError`] on `name`.
pub fn validate_name(name: &str) -> Result<(), PolicyError> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.trim().is_empty() {
        return Err(err("name", "must be 1 to 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(err("name", "must not contain control characters"));
    }
    Ok(())
}

/// A new app as an entry point asks for it (the native `POST /apps` body, a JWTPlus
/// create, the CLI): every field left `None` takes its default.
#[derive(Debug, Clone, Default)]
pub struct NewApp {
    /// Display name.
    pub name: String,
    /// Algorithm name of the app's keys (default RS256).
    pub signing_alg: Option<String>,
    /// RSA modulus bits (default 2048; ignored for other algorithms).
    pub rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations.
    pub rotation_period: Option<i64>,
    /// Seconds a key verifies after it stopped signing (default token_ttl + 300).
    pub verification_ttl: Option<i64>,
    /// Longest access-token lifetime.
    pub token_ttl: Option<i64>,
    /// Refresh-token lifetime (default 0: none).
    pub refresh_ttl: Option<i64>,
    /// Certificate subject, an RFC 4514 DN (default `CN=<name>`).
    pub subject_dn: Option<String>,
    /// Token Status List entries for new tokens (default false).
    pub status_list: Option<bool>,
}

/// Why a new app is refused.
#[derive(Debug, thiserror::Error)]
pub enum NewAppError {
    /// The algorithm name is not one we support.
    #[error(transparent)]
    Algorithm(#[from] UnknownAlgorithm),
    /// A policy field is out of range.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Parse an algorithm name.
///
/// # Errors
/// [`UnknownAlgorithm`] for a name we do not sign with.
pub fn parse_alg(s: &str) -> Result<Algorithm, UnknownAlgorithm> {
    s.parse()
}

/// Check a certificate subject: 1 to 132 characters, no control characters, an RFC 4514 DN.
///
/// # Errors
/// [`PolicyError`] on `subject_dn`.
pub fn validate_subject_dn(dn: &str) -> Result<(), PolicyError> {
    if dn.is_empty() || dn.chars().count() > 132 || dn.chars().any(char::is_control) {
        return Err(err("subject_dn", "must be 1 to 132 characters"));
    }
    crate::x509::parse_dn(dn).map_err(|e| err("subject_dn", e))?;
    Ok(())
}

/// Build and validate a new app row (its id, name and policy; the service fills in times and
/// the access token).
///
/// # Errors
/// [`NewAppError`]: the first field refused, in the order name, algorithm, policy, subject.
pub fn new_app_row(
    req: NewApp,
    description: String,
    token_nbf: i64,
    refresh_nbf: i64,
) -> Result<AppRow, NewAppError> {
    validate_name(&req.name)?;
    let signing_alg = req
        .signing_alg
        .as_deref()
        .map(parse_alg)
        .transpose()?
        .unwrap_or(Algorithm::RS256);
    let token_ttl = req.token_ttl.unwrap_or(DEFAULT_TOKEN_TTL);
    let refresh_ttl = req.refresh_ttl.unwrap_or(0);
    let p = Policy {
        signing_alg,
        rsa_bits: if signing_alg.is_rsa() {
            req.rsa_bits.unwrap_or(2048)
        } else {
            0
        },
        rotation_period: req.rotation_period.unwrap_or(DEFAULT_ROTATION_PERIOD),
        verification_ttl: req
            .verification_ttl
            .unwrap_or_else(|| default_verification_ttl(token_ttl)),
        token_ttl,
        token_nbf,
        refresh_ttl,
        refresh_nbf,
    };
    validate(&p)?;
    let subject_dn = req
        .subject_dn
        .unwrap_or_else(|| format!("CN={}", dn_escape(&req.name)));
    validate_subject_dn(&subject_dn)?;
    Ok(AppRow {
        id: Ulid::new().to_string(),
        name: req.name,
        description,
        signing_alg: p.signing_alg,
        rsa_bits: p.rsa_bits,
        rotation_period: p.rotation_period,
        verification_ttl: p.verification_ttl,
        token_ttl: p.token_ttl,
        token_nbf: p.token_nbf,
        refresh_ttl: p.refresh_ttl,
        refresh_nbf: p.refresh_nbf,
        subject_dn,
        created_at: 0,
        updated_at: 0,
        cutoff: None,
        last_rotated_at: None,
        access_token_sha256: String::new(),
        status_list: req.status_list.unwrap_or(false),
        legacy_issuer: None,
    })
}

/// Escape RFC 4514 special characters in an attribute value.
fn dn_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    if out.ends_with(' ') {
        out.insert(out.len() - 1, '\\');
    }
    out
}

/// How often (seconds) a process records an app's JWKS serves in the store: a quarter of
/// the JWKS max-age, between 1 and 15 s. Serves are public and cheap; anyone can fetch every
/// app's JWKS in a loop, so each one must not cost a store write (10,000 apps once a second
/// would be 10,000 writes a second): this bounds the writes to apps / interval per process.
pub fn served_record_every(max_age: i64) -> i64 {
    (max_age / 4).clamp(1, 15)
}

/// Seconds added to a recorded JWKS serve: serves between two records are not written, and
/// a serve an instant before a publication may reach the store an instant after it. A
/// larger slack only moves a key's first signature towards `published + max_age`, the
/// rule without any record.
pub fn served_slack(max_age: i64) -> i64 {
    served_record_every(max_age) + 1
}

/// From when a `next` key may sign without any verifier meeting a token whose key it lacks.
///
/// A verifier that caches the JWKS for `max_age` seconds lacks the key only if it fetched
/// the JWKS before the key was published; such a cache expires `max_age` after that fetch.
/// So the key is safe from the last serve before its publication plus `max_age`:
/// `min(published_at, served_at_publish + served_slack(max_age)) + max_age`, where
/// `served_at_publish` is the app's last JWKS serve as the store knew it when the key was
/// published. If the JWKS had never been served by then (`None`), no cache can lack the
/// key and it may sign at once (`published_at`): that is every app's first pair, and any
/// key published before anyone fetched the app's JWKS.
///
/// `served_at_publish` is read in the transaction that publishes the key, from a record
/// every replica writes (see `KeyService::jwks_served`), so the rule holds across replicas
/// and restarts.
pub fn signs_from(published_at: i64, served_at_publish: Option<i64>, max_age: i64) -> i64 {
    match served_at_publish {
        None => published_at,
        Some(served) => published_at
            .min(served.saturating_add(served_slack(max_age)))
            .saturating_add(max_age),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_no_served_jwks_lacked_signs_at_once() {
        assert_eq!(signs_from(1_000, None, 60), 1_000);
    }

    #[test]
    fn a_key_published_after_a_serve_waits_for_that_serve_to_expire() {
        // Served 2 s before publication: caches without the key expire by then + 60 (+ slack).
        assert_eq!(signs_from(1_000, Some(998), 60), 1_060);
        // Served long before: those caches are gone sooner than a full max-age after publication.
        assert_eq!(signs_from(1_000, Some(900), 60), 976);
        assert_eq!(signs_from(1_000, Some(900), 4), 906);
        // Never later than publication + max-age (the guard of old).
        assert_eq!(signs_from(1_000, Some(1_000), 60), 1_060);
    }

    fn base() -> Policy {
        Policy {
            signing_alg: Algorithm::RS256,
            rsa_bits: 2048,
            rotation_period: DEFAULT_ROTATION_PERIOD,
            verification_ttl: default_verification_ttl(DEFAULT_TOKEN_TTL),
            token_ttl: DEFAULT_TOKEN_TTL,
            token_nbf: 0,
            refresh_ttl: 0,
            refresh_nbf: 0,
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(validate(&base()), Ok(()));
    }

    #[test]
    fn token_ttl_beyond_verification_ttl_is_refused() {
        let p = Policy {
            token_ttl: 7200,
            verification_ttl: 3600,
            ..base()
        };
        assert_eq!(validate(&p).map_err(|e| e.field), Err("verification_ttl"));
    }

    #[test]
    fn rsa_sizes_and_ranges() {
        assert!(
            validate(&Policy {
                rsa_bits: 1024,
                ..base()
            })
            .is_err()
        );
        assert!(
            validate(&Policy {
                signing_alg: Algorithm::ES256,
                rsa_bits: 0,
                ..base()
            })
            .is_ok()
        );
        assert!(
            validate(&Policy {
                rotation_period: 59,
                ..base()
            })
            .is_err()
        );
        assert!(validate_name("").is_err());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(validate_name("Billing API").is_ok());
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(dn_escape("Acme, Inc"), "Acme\\, Inc");
        assert_eq!(dn_escape("#1"), "\\#1");
        assert_eq!(dn_escape("plain"), "plain");
    }
}
