//! Keys trusted only as the HSM holds them (issue 26, item 3): someone who can write the
//! database but not use the HSM replaces a key's public half with their own P-256 key and
//! restarts the server. The key is refused: it is in no JWKS or compat listing, tokens the
//! outsider signs under its kid are inactive, the mismatch is counted, audited and
//! reported by the reconciler, and the app's other keys keep working.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::app::{TestApp, command, kids_in};

/// An outsider's P-256 key pair, made outside the HSM.
struct Outsider {
    pair: EcdsaKeyPair,
}

impl Outsider {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap(),
        }
    }

    fn point(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Its SubjectPublicKeyInfo DER and the store's fingerprint of it.
    fn spki(&self) -> (Vec<u8>, String) {
        let spki = hsm_rotator::pubkey::PublicKey::Ec {
            curve: hsm_rotator::alg::Curve::P256,
            point: self.point(),
        }
        .to_spki_der()
        .unwrap();
        let fp = sha2::Sha256::digest(&spki)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (spki, fp)
    }

    /// The JWK `x` of its public key.
    fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.point()[1..33])
    }

    /// A token for `app` signed with this key under `kid`, with every claim the service
    /// checks set as it would set them.
    fn token(&self, issuer: &str, kid: &str) -> String {
        let now = hsm_rotator::clock::Clock::now(&hsm_rotator::clock::SystemClock);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let claims = json!({
            "iss": issuer, "sub": "mallory", "iat": now, "nbf": now, "exp": now + 600,
            "jti": ulid::Ulid::new().to_string(),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// What a database writer does: `kid`'s stored public key and fingerprint become the
/// outsider's.
async fn replace_public_key(url: &str, kid: &str, outsider: &Outsider) {
    let (spki, fp) = outsider.spki();
    let mut c = crate::common::app::any_conn(url).await;
    let done = sqlx::query("UPDATE keys SET spki = $1, fingerprint = $2 WHERE kid = $3")
        .bind(spki)
        .bind(fp)
        .bind(kid)
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "no key row {kid}");
}

async fn issuer(app: &TestApp, id: &str) -> String {
    let (s, v) = app
        .call(
            "GET",
            &format!("/apps/{id}/.well-known/openid-configuration"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["issuer"].as_str().unwrap().to_owned()
}

/// `hsm_rotator_key_hsm_mismatch_total` as `GET /metrics` shows it.
async fn mismatch_metric(app: &TestApp) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("hsm_rotator_key_hsm_mismatch_total "))
        .unwrap_or_else(|| panic!("no mismatch metric in {text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn audited_mismatches(app: &TestApp) -> Vec<String> {
    let (s, v) = app
        .root("GET", "/audit?limit=1000&action=key.hsm_mismatch", None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect()
}

/// `hsm-rotator reconcile --dry-run --json` against the stopped server's store.
async fn reconcile_report(app: TestApp) -> Value {
    let url = app.database_url.clone();
    let token = app.kill().await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        command(&token, &url, &[])
            .args(["reconcile", "--dry-run", "--json"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kids listed by the Auth0 listing and JWTPlus's pub-keys.
async fn compat_kids(app: &TestApp, id: &str, pk: &str) -> (Vec<String>, Vec<String>) {
    let (s, a0) = app
        .root("GET", &format!("/connections/{id}/keys"), None)
        .await;
    assert_eq!(s, 200, "{a0}");
    let auth0 = a0
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let (s, jp) = app
        .call("GET", &format!("/app/{id}/pub-keys"), Some(pk), None)
        .await;
    assert_eq!(s, 200, "{jp}");
    let jwtplus = jp["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect();
    (auth0, jwtplus)
}

fn jwks_kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Everything a refused key must not be, checked on a running server.
async fn assert_refused(app: &TestApp, id: &str, pk: &str, kid: &str, outsider: &Outsider) {
    let jwks = app.jwks(id).await;
    assert!(!jwks_kids(&jwks).contains(&kid.to_owned()), "{jwks}");
    assert!(
        !jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["x"] == outsider.x()),
        "the outsider's key is published: {jwks}"
    );
    let (auth0, jwtplus) = compat_kids(app, id, pk).await;
    assert!(!auth0.contains(&kid.to_owned()), "{auth0:?}");
    assert!(!jwtplus.contains(&kid.to_owned()), "{jwtplus:?}");
    let forged = outsider.token(&issuer(app, id).await, kid);
    assert!(
        !app.active(id, pk, &forged).await,
        "a token the outsider signed is active"
    );
    assert_eq!(mismatch_metric(app).await, 1.0);
    assert_eq!(audited_mismatches(app).await, [kid.to_owned()]);
}

async fn tampered_current_key_is_refused(app: TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "Tampered", "signing_alg": "ES256"}))
        .await;
    let keys = created["keys"].as_array().unwrap().clone();
    let current = kids_in(&keys, "current").remove(0);
    let next = kids_in(&keys, "next").remove(0);
    let outsider = Outsider::new();
    replace_public_key(&app.database_url, &current, &outsider).await;
    let app = app.restart().await;

    assert_refused(&app, &id, &pk, &current, &outsider).await;
    // The app's other keys still work: the start-up reconciler promoted the next key
    // (published in advance), which signs and verifies.
    let jwks = app.jwks(&id).await;
    assert!(jwks_kids(&jwks).contains(&next), "{jwks}");
    let t = app.issue(&id, &pk, json!({"sub": "alice"})).await;
    assert_eq!(t["kid"], next.as_str(), "{t}");
    assert!(app.active(&id, &pk, t["token"].as_str().unwrap()).await);

    let report = reconcile_report(app).await;
    assert_eq!(
        report["hsm_mismatch"],
        json!([[current, "previous"]]),
        "{report}"
    );
}

async fn tampered_previous_key_is_refused(app: TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "TamperedPrevious", "signing_alg": "ES256"}))
        .await;
    let keys = created["keys"].as_array().unwrap().clone();
    let previous = kids_in(&keys, "current").remove(0);
    let (s, r) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    let current = r["current"]["kid"].as_str().unwrap().to_owned();
    let outsider = Outsider::new();
    replace_public_key(&app.database_url, &previous, &outsider).await;
    let app = app.restart().await;

    assert_refused(&app, &id, &pk, &previous, &outsider).await;
    let t = app.issue(&id, &pk, json!({"sub": "alice"})).await;
    assert_eq!(t["kid"], current.as_str(), "{t}");
    assert!(app.active(&id, &pk, t["token"].as_str().unwrap()).await);
    assert!(jwks_kids(&app.jwks(&id).await).contains(&current));

    let report = reconcile_report(app).await;
    assert_eq!(
        report["hsm_mismatch"],
        json!([[previous, "previous"]]),
        "{report}"
    );
    assert_eq!(report["replaced"], json!([]), "{report}");
}

crate::both_engines_owned!(
    a_tampered_current_key_is_refused_and_the_next_key_takes_over,
    tampered_current_key_is_refused
);
crate::both_engines_owned!(
    a_tampered_previous_key_is_refused_and_the_current_key_keeps_working,
    tampered_previous_key_is_refused
);
