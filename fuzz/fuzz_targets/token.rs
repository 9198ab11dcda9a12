//! Fuzz the token parser and the verification path that introspection runs before any
//! store or HSM access: split/decode, header checks, algorithm and kid parsing, signature
//! verification against a fixed key, and the claim reads. Nothing may panic, and nothing
//! may verify.
#![no_main]

use hsm_rotator::alg::{Algorithm, Curve};
use hsm_rotator::jwt::verify::Verifier;
use hsm_rotator::jwt::{MAX_TOKEN_LEN, parse};
use hsm_rotator::keys::Kid;
use hsm_rotator::pubkey::PublicKey;
use libfuzzer_sys::fuzz_target;

fn verifier() -> Verifier {
    // The P-256 generator point.
    let x = hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
    let y = hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
    let pk = PublicKey::Ec { curve: Curve::P256, point: [vec![4u8], x, y].concat() };
    Verifier::new(&pk, Algorithm::ES256).expect("verifier")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(c) = parse(text) else { return };
    assert!(text.len() <= MAX_TOKEN_LEN);
    let _ = c.header.alg.parse::<Algorithm>();
    let _ = c.header.kid.as_deref().map(|k| k.parse::<Kid>());
    let _ = c.claims.get("exp").and_then(serde_json::Value::as_i64);
    let _ = c.claims.get("jti").and_then(serde_json::Value::as_str).map(ulid_ok);
    assert!(!verifier().verify(c.signing_input.as_bytes(), &c.signature), "fuzzer forged an ES256 signature");
});

fn ulid_ok(s: &str) -> bool {
    s.parse::<Kid>().is_ok()
}
