//! App policy: defaults and the rules every entry point (native, JWTPlus, CLI) applies.

use crate::alg::{Algorithm, RSA_BITS};

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
}
