//! Certificates and PKCS#7 bundles (the Auth0 key shape), checked by OpenSSL, for every
//! algorithm; OpenSSL also verifies a token's signature with the certificate's key.

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
            // The bundle holds exactly the certificate, byte for byte...
            let bundled = pem_blocks(&printed, "CERTIFICATE");
            assert_eq!(bundled.len(), 1, "{alg}: one certificate in the bundle");
            assert_eq!(
                bundled[0],
                pem_body(k["cert"].as_str().unwrap()),
                "{alg}: the bundle's certificate is the key's certificate"
            );
            // ...and is a certs-only SignedData: no signer, no CRL, no content.
            let (ok, tree) = openssl(&["pkcs7", "-print", "-noout", "-in"], &p7_path);
            assert!(ok, "{alg}: {tree}");
            assert!(tree.contains("type: pkcs7-signedData"), "{alg}: {tree}");
            for (field, none) in [
                ("signer_info:", ["<EMPTY>", "<EMPTY>"]),
                ("crl:", ["<EMPTY>", "<ABSENT>"]),
                ("d.data:", ["<ABSENT>", "<ABSENT>"]),
            ] {
                let got = after(&tree, field);
                assert!(
                    got.is_some_and(|v| none.contains(&v)),
                    "{alg}: {field} is {got:?} in {tree}"
                );
            }
            // A certificate OpenSSL takes out of the bundle verifies like the PEM one.
            let from_p7 = dir.join(format!("{kid}-from-p7.pem"));
            let o = Command::new("openssl")
                .args(["pkcs7", "-print_certs", "-in"])
                .arg(&p7_path)
                .arg("-out")
                .arg(&from_p7)
                .output()
                .unwrap();
            assert!(o.status.success(), "{alg}: pkcs7 -print_certs -out");
            let o = Command::new("openssl")
                .args(["verify", "-check_ss_sig", "-partial_chain", "-CAfile"])
                .arg(&from_p7)
                .arg(&from_p7)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{alg}: the bundled certificate does not verify: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            // Valid now, as the key is.
            let (ok, text) = openssl(&["x509", "-noout", "-checkend", "0", "-in"], &cert_path);
            assert!(ok, "{alg}: certificate not valid now: {text}");
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
        // OpenSSL also checks a token's signature with the key of the certificate, so the
        // certificate is the token signer's and not just a well-formed one.
        let issued = app.issue(&id, &pk, json!({"sub": "openssl"})).await;
        let kid = issued["kid"].as_str().unwrap();
        assert!(
            dir.join(format!("{kid}.pem")).exists(),
            "{alg}: the signing key {kid} is among /connections/{id}/keys"
        );
        openssl_verifies_token(&dir, alg, kid, issued["token"].as_str().unwrap());
    }
}

/// `openssl dgst -verify` (or `pkeyutl` for Ed25519) checks `token`'s signature with the
/// public key of the certificate `<dir>/<kid>.pem`; a changed signature must fail.
fn openssl_verifies_token(dir: &std::path::Path, alg: &str, kid: &str, token: &str) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let (ok, pubkey) = openssl(
        &["x509", "-noout", "-pubkey", "-in"],
        &dir.join(format!("{kid}.pem")),
    );
    assert!(ok, "{alg}: {pubkey}");
    let pub_path = dir.join(format!("{kid}.pub.pem"));
    let in_path = dir.join(format!("{kid}.signing-input"));
    std::fs::write(&pub_path, pubkey).unwrap();
    std::fs::write(&in_path, input).unwrap();
    let digest = format!("-sha{}", &alg[2..]);
    // JWS ECDSA signatures are r || s; OpenSSL wants the DER ECDSA-Sig-Value.
    let sig = if alg.starts_with("ES") {
        ecdsa_der(&sig)
    } else {
        sig
    };
    let run = |sig: &[u8]| {
        let sig_path = dir.join(format!("{kid}.sig"));
        std::fs::write(&sig_path, sig).unwrap();
        let mut cmd = Command::new("openssl");
        if alg == "EdDSA" {
            cmd.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&pub_path)
                .arg("-in")
                .arg(&in_path)
                .arg("-sigfile")
                .arg(&sig_path);
        } else {
            cmd.args(["dgst", &digest]);
            if alg.starts_with("PS") {
                // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
                cmd.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]);
            }
            cmd.arg("-verify")
                .arg(&pub_path)
                .arg("-signature")
                .arg(&sig_path)
                .arg(&in_path);
        }
        let o = cmd.output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, text) = run(&sig);
    assert!(ok, "{alg}: OpenSSL rejects the token's signature: {text}");
    assert!(
        text.contains("Verified OK") || text.contains("Signature Verified Successfully"),
        "{alg}: {text}"
    );
    let mut bad = sig.clone();
    let i = bad.len() - 8;
    bad[i] ^= 0x01;
    let (ok, text) = run(&bad);
    assert!(!ok, "{alg}: OpenSSL accepted a changed signature: {text}");
}

/// DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` of a JWS `r || s`.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn len(n: usize) -> Vec<u8> {
        match u8::try_from(n) {
            Ok(b) if b < 0x80 => vec![b],
            Ok(b) => vec![0x81, b],
            Err(_) => panic!("ECDSA signature too long"),
        }
    }
    fn int(x: &[u8]) -> Vec<u8> {
        let x = match x.iter().position(|b| *b != 0) {
            Some(i) => &x[i..],
            None => &[0u8][..],
        };
        let mut v = if x[0] & 0x80 != 0 { vec![0] } else { vec![] };
        v.extend_from_slice(x);
        [vec![0x02], len(v.len()), v].concat()
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    [vec![0x30], len(body.len()), body].concat()
}

/// The DER of every `-----BEGIN <label>-----` block in `text` (other lines ignored).
fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == begin {
            current = Some(String::new());
        } else if line == end {
            let b64 = current.take().expect("END without BEGIN");
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            );
        } else if let Some(c) = current.as_mut() {
            c.push_str(line);
        }
    }
    out
}

/// The value of `field` in `openssl ... -print` output: the rest of its line, or the first
/// non-empty line after it.
fn after<'a>(tree: &'a str, field: &str) -> Option<&'a str> {
    let mut lines = tree.lines().map(str::trim);
    let line = lines.find(|l| l.starts_with(field))?;
    match line[field.len()..].trim() {
        "" => lines.find(|l| !l.is_empty()),
        rest => Some(rest),
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
