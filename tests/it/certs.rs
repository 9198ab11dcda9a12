//! Certificates and PKCS#7 bundles, checked by OpenSSL, for every algorithm.

use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp};

fn openssl(args: &[&str], input: &std::path::Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .arg(input)
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_gets_a_certificate_openssl_accepts() {
    let app = TestApp::spawn("certs_openssl", Engine::Sqlite).await;
    let dir = app.token.path().to_owned();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ] {
        if !app.token.can("certs_openssl", alg.parse().unwrap()) {
            continue;
        }
        let (id, pk, _) = app
            .create_app(json!({"name": format!("Cert {alg}"), "signing_alg": alg}))
            .await;
        let (s, keys) = app
            .bearer(&pk, "GET", &format!("/connections/{id}/keys"), None)
            .await;
        assert_eq!(s, 200, "{keys}");
        let jwks = app.jwks(&id).await;
        for k in keys.as_array().unwrap() {
            let kid = k["kid"].as_str().unwrap();
            let cert_path = dir.join(format!("{kid}.pem"));
            std::fs::write(&cert_path, k["cert"].as_str().unwrap()).unwrap();
            // The self-signed certificate is its own trust anchor: -CAfile takes it, and it is
            // also the certificate verified.
            let o = Command::new("openssl")
                .args([
                    "verify",
                    "-check_ss_sig",
                    "-partial_chain",
                    "-x509_strict",
                    "-CAfile",
                ])
                .arg(&cert_path)
                .arg(&cert_path)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{alg}: openssl verify failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let (ok, text) = openssl(&["x509", "-noout", "-text", "-in"], &cert_path);
            assert!(ok, "{alg}: {text}");
            assert!(
                text.contains(&format!("Subject: CN = Cert {alg}"))
                    || text.contains(&format!("Subject: CN=Cert {alg}")),
                "{alg}: {text}"
            );
            assert!(
                text.contains("CA:FALSE")
                    && text.contains("Digital Signature")
                    && text.contains("Subject Key Identifier"),
                "{alg}: {text}"
            );
            let (ok, fp) = openssl(
                &["x509", "-noout", "-fingerprint", "-sha1", "-in"],
                &cert_path,
            );
            assert!(ok);
            let fp = fp.trim().rsplit('=').next().unwrap().to_owned();
            assert_eq!(fp, k["fingerprint"].as_str().unwrap(), "{alg}: fingerprint");
            let p7_path = dir.join(format!("{kid}.p7"));
            std::fs::write(&p7_path, k["pkcs"].as_str().unwrap()).unwrap();
            let (ok, printed) = openssl(&["pkcs7", "-print_certs", "-in"], &p7_path);
            assert!(ok, "{alg}: {printed}");
            assert!(printed.contains(&format!("Cert {alg}")), "{alg}: {printed}");
            // The certificate's key is the JWKS key.
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["kid"] == kid)
                .expect("key in JWKS");
            let x5c = jwk["x5c"][0].as_str().unwrap();
            let der = base64::engine::general_purpose::STANDARD
                .decode(x5c)
                .unwrap();
            let pem_der = pem_body(k["cert"].as_str().unwrap());
            assert_eq!(der, pem_der, "{alg}: x5c is the certificate");
            let (ok, pubkey) = openssl(&["x509", "-noout", "-pubkey", "-in"], &cert_path);
            assert!(ok);
            assert_eq!(
                pem_body(&pubkey),
                spki_of_jwk(jwk),
                "{alg}: certificate key differs from JWKS key"
            );
            assert!(jwk["x5t"].is_string() && jwk["x5t#S256"].is_string());
        }
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// The SPKI DER the service would produce for a JWK (decoded from its fields).
fn spki_of_jwk(jwk: &Value) -> Vec<u8> {
    use hsm_rotator::pubkey::PublicKey;
    let d = |k: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[k].as_str().unwrap())
            .unwrap()
    };
    let pk = match jwk["kty"].as_str().unwrap() {
        "RSA" => PublicKey::rsa(&d("n"), &d("e")),
        "EC" => {
            let curve = match jwk["crv"].as_str().unwrap() {
                "P-256" => hsm_rotator::alg::Curve::P256,
                "P-384" => hsm_rotator::alg::Curve::P384,
                _ => hsm_rotator::alg::Curve::P521,
            };
            PublicKey::Ec {
                curve,
                point: [vec![4u8], d("x"), d("y")].concat(),
            }
        }
        _ => PublicKey::Ed25519(d("x")),
    };
    pk.to_spki_der().unwrap()
}
