//! Key import (issue 23): keys made by `openssl` go into the HSM sensitive and
//! non-extractable, sign there, are marked imported, bring the next rotation forward, and a
//! key that does not fit is refused with a clear error and changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hsm_rotator::hsm::KeyMaterial;
use hsm_rotator::pubkey::PublicKey;
use serde_json::{Map, Value, json};

use crate::common::app::{Engine, TestApp, kids_in};

/// Run `openssl` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key made by `openssl` (the arguments up to `-out`), written to `dir/name`.
fn key(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let mut all = args.to_vec();
    all.extend(["-out", name]);
    openssl(dir, &all);
    dir.join(name)
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read key")
}

/// The public half of a key file as openssl reads it (independent of the import's parser).
fn openssl_public(dir: &Path, key: &Path) -> Map<String, Value> {
    let der = openssl(
        dir,
        &[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ],
    );
    PublicKey::from_spki_der(&der).expect("SPKI").jwk_members()
}

/// The JWKS entry of `kid`.
async fn jwk_of(app: &TestApp, id: &str, kid: &str) -> Value {
    app.jwks(id).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap_or_else(|| panic!("{kid} not in the JWKS"))
}

fn same_key_material(jwk: &Value, public: &Map<String, Value>) -> bool {
    public.iter().all(|(k, v)| &jwk[k] == v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_keys_of_every_form_are_imported_sensitive_and_sign_in_the_hsm() {
    let app = TestApp::spawn("import_every_form", Engine::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rsa8 = key(
        d,
        "rsa.pem",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    let rsa1 = key(d, "rsa1.pem", &["rsa", "-in", "rsa.pem", "-traditional"]);
    assert!(pem(&rsa1).contains("BEGIN RSA PRIVATE KEY"));
    let p256 = key(
        d,
        "p256.pem",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    assert!(pem(&p256).contains("BEGIN EC PRIVATE KEY"));
    let p384 = key(
        d,
        "p384.pem",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
    );
    let p521 = key(
        d,
        "p521.pem",
        &["ecparam", "-name", "secp521r1", "-genkey", "-noout"],
    );
    let ed = key(d, "ed.pem", &["genpkey", "-algorithm", "ed25519"]);
    let cases = [
        ("RS256", &rsa8, "PKCS#8 RSA"),
        ("PS256", &rsa1, "PKCS#1 RSA"),
        ("ES256", &p256, "SEC1 P-256"),
        ("ES384", &p384, "PKCS#8 P-384"),
        ("ES512", &p521, "SEC1 P-521"),
        ("EdDSA", &ed, "PKCS#8 Ed25519"),
    ];
    let mut imported = Vec::new();
    for (alg, file, what) in cases {
        if !app.token.can("import_every_form", alg.parse().unwrap()) {
            continue;
        }
        let (id, pk, _) = app
            .create_app(json!({"name": format!("Import {alg}"), "signing_alg": alg}))
            .await;
        let before = app.keys(&id).await;
        let old_current = kids_in(&before, "current");
        let (s, k) = app
            .root(
                "POST",
                &format!("/apps/{id}/keys/import"),
                Some(json!({"pem": pem(file)})),
            )
            .await;
        assert_eq!(s, 201, "{what}: {k}\n{}", app.log_tail());
        assert_eq!(k["origin"], "imported", "{what}: {k}");
        assert_eq!(k["state"], "current", "{what}: {k}");
        assert_eq!(k["algorithm"], alg, "{what}: {k}");
        let kid = k["kid"].as_str().unwrap().to_owned();
        let keys = app.keys(&id).await;
        assert_eq!(kids_in(&keys, "current"), [kid.as_str()], "{what}");
        assert_eq!(
            kids_in(&keys, "previous"),
            old_current,
            "{what}: the old current key"
        );
        assert!(
            keys.iter()
                .filter(|k| k["kid"] != kid.as_str())
                .all(|k| k["origin"] == "generated"),
            "{what}: {keys:?}"
        );
        // The JWKS publishes the key openssl made, and the token signs with it.
        let published = jwk_of(&app, &id, &kid).await;
        assert!(
            same_key_material(&published, &openssl_public(d, file)),
            "{what}: JWKS {published} is not openssl's key"
        );
        let issued = app.issue(&id, &pk, json!({"sub": "alice"})).await;
        assert_eq!(
            issued["kid"],
            kid.as_str(),
            "{what}: signed by the imported key"
        );
        assert!(
            app.active(&id, &pk, issued["token"].as_str().unwrap())
                .await,
            "{what}: the token signed in the HSM verifies"
        );
        imported.push(kid);
    }
    assert!(
        !imported.is_empty(),
        "the token supports none of the algorithms"
    );

    // pkcs11-tool, a second process, sees every imported private key sensitive, not
    // extractable, sign-only, and (CKA_LOCAL, CKA_NEVER_EXTRACTABLE) born outside the token.
    let out = app
        .token
        .pkcs11_tool_login(&["--list-objects", "--type", "privkey"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kid in &imported {
        let block = text
            .split("Private Key Object")
            .find(|b| b.contains(kid.as_str()))
            .unwrap_or_else(|| panic!("{kid} not on the token:\n{text}"));
        let access = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Access:"))
            .unwrap_or_default();
        let items: Vec<&str> = access.split(',').map(str::trim).collect();
        assert!(items.contains(&"sensitive"), "{kid}: {block}");
        assert!(!items.contains(&"extractable"), "{kid}: {block}");
        assert!(!items.contains(&"local"), "{kid} is imported: {block}");
        assert!(!items.contains(&"never extractable"), "{kid}: {block}");
        let usage = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage:"))
            .unwrap_or_default();
        assert_eq!(usage.trim(), "sign", "{kid}: {block}");
    }

    // The audit log says what came in, and from where.
    let (s, audit) = app.root("GET", "/audit?action=key.import", None).await;
    assert_eq!(s, 200, "{audit}");
    let records = audit["records"].as_array().unwrap();
    for kid in &imported {
        let r = records
            .iter()
            .find(|r| r["target"] == kid.as_str())
            .unwrap_or_else(|| panic!("{kid} not audited: {audit}"));
        let details: Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
        assert_eq!(details["origin"], "imported", "{r}");
        assert_eq!(details["state"], "current", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwk_imports_as_next_and_previous_and_the_cli_imports_over_url_sqlite() {
    import_states(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwk_imports_as_next_and_previous_and_the_cli_imports_over_url_postgres() {
    import_states(Engine::Postgres).await;
}

async fn import_states(engine: Engine) {
    let app = TestApp::spawn_with(
        &format!("import_states_{engine:?}"),
        engine,
        &[("HSM_ROTATOR_IMPORTED_KEY_MAX_LIFE", "3600")],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (id, _, _) = app
        .create_app(json!({"name": "States", "signing_alg": "ES256", "rotation_period": 2_592_000}))
        .await;
    let before = app.keys(&id).await;

    // A private JWK as `next`: it replaces the next key, which never signed.
    let file = key(
        d,
        "n.pem",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    let Ok(KeyMaterial::Ec {
        d: scalar, point, ..
    }) = hsm_rotator::keys::import::parse_pem(&pem(&file))
    else {
        panic!("P-256 key")
    };
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "d": b64(&scalar)});
    let kid = ulid::Ulid::new().to_string();
    let (s, k) = app
        .root(
            "POST",
            &format!("/apps/{id}/keys/import"),
            Some(json!({"jwk": jwk, "kid": kid, "state": "next"})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    assert_eq!(
        (k["kid"].as_str(), k["state"].as_str()),
        (Some(kid.as_str()), Some("next"))
    );
    let keys = app.keys(&id).await;
    assert_eq!(kids_in(&keys, "next"), [kid.as_str()]);
    assert_eq!(kids_in(&keys, "revoked"), kids_in(&before, "next"));
    assert_eq!(kids_in(&keys, "current"), kids_in(&before, "current"));
    // The same kid again is refused.
    let (s, e) = app
        .root(
            "POST",
            &format!("/apps/{id}/keys/import"),
            Some(json!({"jwk": jwk, "kid": kid})),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("kid_in_use")), "{e}");

    // The CLI, over --url with the root key from the environment, imports as `previous`.
    let prev = key(
        d,
        "p.pem",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-rotator"))
        .args([
            "--url", &app.base, "--json", "keys", "import", &id, "--state", "previous", "--pem",
        ])
        .arg(&prev)
        .env("HSM_ROTATOR_ROOT_KEY", &app.root_key)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["state"].as_str(), v["origin"].as_str()),
        (Some("previous"), Some("imported")),
        "{v}"
    );
    let keys = app.keys(&id).await;
    assert_eq!(
        kids_in(&keys, "previous"),
        [v["kid"].as_str().unwrap().to_owned()]
    );

    // An imported current key brings the next rotation forward to imported_key_max_life.
    let cur = key(
        d,
        "c.pem",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    let (s, k) = app
        .root(
            "POST",
            &format!("/apps/{id}/keys/import"),
            Some(json!({"pem": pem(&cur)})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let (_, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    let at = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp()
    };
    // Counted from the import's start (the key's `created_at`), at or before its activation.
    let due = at(&shown["next_rotation_at"]) - at(&k["created_at"]);
    assert_eq!(due, 3600, "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_fit_are_refused_clearly_and_change_nothing() {
    // No spare pool: nothing is generated in the background while the token is compared.
    let app = TestApp::spawn_with(
        "import_refused",
        Engine::Sqlite,
        &[("HSM_ROTATOR_SPARE_KEYS", "0")],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (rs, _, _) = app
        .create_app(json!({"name": "Refuse RSA", "signing_alg": "RS256"}))
        .await;
    let (es, _, _) = app
        .create_app(json!({"name": "Refuse EC", "signing_alg": "ES256"}))
        .await;
    let weak = key(
        d,
        "weak.pem",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ],
    );
    let k1 = key(
        d,
        "k1.pem",
        &["ecparam", "-name", "secp256k1", "-genkey", "-noout"],
    );
    let p384 = key(
        d,
        "p384.pem",
        &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
    );
    let a = key(
        d,
        "a.pem",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    let b = key(
        d,
        "b.pem",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    let material = |p: &Path| hsm_rotator::keys::import::parse_pem(&pem(p)).expect("P-256 key");
    let (KeyMaterial::Ec { d: scalar, .. }, KeyMaterial::Ec { point, .. }) =
        (material(&a), material(&b))
    else {
        panic!("EC keys")
    };
    let b64 = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    // The private scalar of one key with the public point of another.
    let mismatched = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "d": b64(&scalar)});

    let before = (app.keys(&rs).await, app.keys(&es).await, app.token_labels());
    let cases = [
        (
            &rs,
            json!({"pem": "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n"}),
            "invalid_key",
        ),
        (&rs, json!({"pem": "hello"}), "invalid_key"),
        (&rs, json!({"pem": pem(&weak)}), "key_too_weak"),
        (&es, json!({"pem": pem(&k1)}), "unsupported_curve"),
        (&es, json!({"pem": pem(&p384)}), "algorithm_mismatch"),
        (&rs, json!({"pem": pem(&a)}), "algorithm_mismatch"),
        (&es, json!({"jwk": mismatched}), "key_mismatch"),
        (&es, json!({}), "invalid_key"),
        (
            &es,
            json!({"pem": pem(&a), "state": "retired"}),
            "invalid_state",
        ),
    ];
    for (id, body, code) in cases {
        let (s, e) = app
            .root(
                "POST",
                &format!("/apps/{id}/keys/import"),
                Some(body.clone()),
            )
            .await;
        assert_eq!((s, e["error"].as_str()), (422, Some(code)), "{body}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && !message.contains("not base64") && !message.contains("MII"),
            "a clear message that never echoes the key: {e}"
        );
    }
    let after = (app.keys(&rs).await, app.keys(&es).await, app.token_labels());
    assert_eq!(before, after, "a refused import changed nothing");

    // The app key may not import (root only).
    let (_, pk, _) = app
        .create_app(json!({"name": "Not root", "signing_alg": "ES256"}))
        .await;
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{es}/keys/import"),
            Some(json!({"pem": pem(&a)})),
        )
        .await;
    assert!(s == 401 || s == 403, "{s}");
}
