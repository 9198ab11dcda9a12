//! Proof against software nobody here wrote: third-party JWT libraries verify the service's
//! tokens through its own discovery document, across rotations; `pkcs11-tool` (OpenSC)
//! inspects the token the service filled.
//!
//! The verifiers are child processes (tests/clients/python/verify.py: PyJWT `PyJWKClient`
//! and jwcrypto; tests/clients/node/verify.mjs: `jose` `createRemoteJWKSet` + `jwtVerify`)
//! found through `HSM_ROTATOR_TEST_PYTHON` / `HSM_ROTATOR_TEST_NODE`, which
//! `scripts/clients-setup` installs and exports. Without them a test prints why and skips,
//! unless `CI=true`, where it fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::common::app::{Engine, TestApp};

/// Every algorithm the service signs with; one app each.
const ALGS: [&str; 10] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

/// One third-party verifier: an interpreter, its script, and the libraries it answers for.
struct Verifier {
    runtime: &'static str,
    program: PathBuf,
    script: PathBuf,
    libraries: &'static [&'static str],
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The verifier `runtime` from `var`, or `None` (skip) when unset outside CI.
fn verifier(
    runtime: &'static str,
    var: &str,
    script: &str,
    libraries: &'static [&'static str],
) -> Option<Verifier> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Some(Verifier {
            runtime,
            program: PathBuf::from(p),
            script: repo_root().join(script),
            libraries,
        }),
        _ if in_ci() => panic!("CI=true but {var} is unset: scripts/clients-setup must run first"),
        _ => {
            eprintln!(
                "SKIP {runtime} verifiers: {var} is unset (run: eval \"$(scripts/clients-setup)\")"
            );
            None
        }
    }
}

fn verifiers() -> Vec<Verifier> {
    [
        verifier(
            "python",
            "HSM_ROTATOR_TEST_PYTHON",
            "tests/clients/python/verify.py",
            &["pyjwt", "jwcrypto"],
        ),
        verifier(
            "node",
            "HSM_ROTATOR_TEST_NODE",
            "tests/clients/node/verify.mjs",
            &["jose"],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What a case must come to, in every library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Verifies, with these claims.
    Valid,
    /// Refused: the token's `kid` is not in the JWKS.
    UnknownKid,
    /// Refused: the signature does not match.
    BadSignature,
    /// Refused: `aud` (or `iss`) is not what the relying party expects.
    BadClaims,
}

impl Expect {
    fn kind(self) -> Option<&'static str> {
        match self {
            Expect::Valid => None,
            Expect::UnknownKid => Some("unknown_kid"),
            Expect::BadSignature => Some("signature"),
            Expect::BadClaims => Some("claims"),
        }
    }
}

struct Case {
    name: String,
    app: String,
    alg: &'static str,
    aud: String,
    token: String,
    expect: Expect,
}

/// Run `v` on `cases` and check every library's verdict on every case.
async fn check(app: &TestApp, v: &Verifier, phase: &str, cases: &[Case]) {
    let request = json!({
        "cases": cases.iter().map(|c| json!({
            "name": c.name,
            "discovery": app.url(&format!("/apps/{}/.well-known/openid-configuration", c.app)),
            "alg": c.alg,
            "aud": c.aud,
            "token": c.token,
        })).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(&v.program)
        .arg(&v.script)
        .current_dir(repo_root())
        // The service is on 127.0.0.1: no proxy may stand in between.
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {}: {e}", v.program.display(), v.script.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .expect("write request");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} verifier did not finish in 120 s", v.runtime))
        .expect("verifier output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} verifier failed ({}): {stderr}",
        v.runtime,
        out.status
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} verifier printed no JSON ({e}): {}{stderr}",
            v.runtime,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("{phase}: {} {}", v.runtime, answer["libraries"]);
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len(), "{phase}: one result per case");
    for (case, r) in cases.iter().zip(results) {
        assert_eq!(r["name"], case.name.as_str(), "{phase}: results in order");
        for lib in v.libraries {
            assert!(
                answer["libraries"][*lib].is_string(),
                "{lib}: no version reported"
            );
            let got = &r[*lib];
            let ctx = format!("{phase} {} {lib}: {got}", case.name);
            match case.expect.kind() {
                None => {
                    assert_eq!(got["ok"], true, "{ctx}");
                    let claims = &got["claims"];
                    assert_eq!(
                        claims["iss"],
                        app.url(&format!("/apps/{}", case.app)),
                        "{ctx}"
                    );
                    assert_eq!(claims["aud"], case.aud.as_str(), "{ctx}");
                    assert_eq!(claims["sub"], "client-test", "{ctx}");
                }
                Some(kind) => {
                    assert_eq!(got["ok"], false, "{ctx}");
                    assert_eq!(got["kind"], kind, "{ctx}");
                }
            }
        }
    }
}

/// One app per algorithm, with its access token.
struct Apps(Vec<(&'static str, String, String)>);

impl Apps {
    async fn create(app: &TestApp) -> Self {
        let mut v = Vec::new();
        for alg in ALGS {
            let (id, pk, _) = app
                .create_app(json!({"name": format!("Client {alg}"), "signing_alg": alg}))
                .await;
            v.push((alg, id, pk));
        }
        Self(v)
    }

    /// A token for every app; returns `(kid, token)` in `ALGS` order.
    async fn issue(&self, app: &TestApp) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (alg, id, pk) in &self.0 {
            let t = app
                .issue(id, pk, json!({"sub": "client-test", "aud": aud(alg)}))
                .await;
            out.push((
                t["kid"].as_str().unwrap().to_owned(),
                t["token"].as_str().unwrap().to_owned(),
            ));
        }
        out
    }

    /// `expect` for each token of `tokens` (one per app, `ALGS` order), named `label`.
    fn cases(&self, label: &str, tokens: &[(String, String)], expect: Expect) -> Vec<Case> {
        self.0
            .iter()
            .zip(tokens)
            .map(|((alg, id, _), (_, token))| Case {
                name: format!("{alg}/{label}"),
                app: id.clone(),
                alg,
                aud: aud(alg),
                token: token.clone(),
                expect,
            })
            .collect()
    }
}

fn aud(alg: &str) -> String {
    format!("relying-party-{alg}")
}

/// The same token with one signature character changed (in the middle, so the change is
/// never in base64url padding bits that decode to the same bytes).
fn tampered(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').expect("JWS compact");
    let mut sig: Vec<u8> = sig.bytes().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
    format!("{head}.{}", String::from_utf8(sig).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_jwcrypto_and_jose_verify_every_algorithm_across_rotations() {
    let verifiers = verifiers();
    if verifiers.is_empty() {
        return;
    }
    let app = TestApp::spawn("clients_verify", Engine::Sqlite).await;
    let apps = Apps::create(&app).await;

    // Phase 1: freshly issued tokens verify; a wrong audience and a changed signature are
    // refused, which shows the libraries check both rather than accept anything.
    let t0 = apps.issue(&app).await;
    let mut cases = apps.cases("t0", &t0, Expect::Valid);
    for c in apps.cases("t0-wrong-aud", &t0, Expect::BadClaims) {
        cases.push(Case {
            aud: format!("{}-other", c.aud),
            ..c
        });
    }
    for c in apps.cases("t0-tampered", &t0, Expect::BadSignature) {
        cases.push(Case {
            token: tampered(&c.token),
            ..c
        });
    }
    for v in &verifiers {
        check(&app, v, "issued", &cases).await;
    }

    // Phase 2: graceful rotation. The old key stays published as `previous`, so tokens
    // from before and after the rotation both verify.
    for (alg, id, pk) in &apps.0 {
        let (s, r) = app
            .bearer(pk, "POST", &format!("/apps/{id}/keys/rotate"), None)
            .await;
        assert_eq!(s, 200, "{alg}: rotate: {r}");
    }
    let t1 = apps.issue(&app).await;
    for ((k0, _), (k1, _)) in t0.iter().zip(&t1) {
        assert_ne!(k0, k1, "tokens after the rotation use the new key");
    }
    let mut cases = apps.cases("t0", &t0, Expect::Valid);
    cases.extend(apps.cases("t1", &t1, Expect::Valid));
    for v in &verifiers {
        check(&app, v, "graceful", &cases).await;
    }

    // Phase 3: emergency rotation revokes every key of the app; a fresh verifier refuses
    // the old tokens (their kid is gone from the JWKS) and accepts the new ones. A verifier
    // that cached the JWKS earlier keeps the old keys until its cache expires, which the
    // service bounds with `Cache-Control: max-age=<jwks_max_age>` on the JWKS and the
    // discovery document (0 in these tests, see TestApp).
    for (alg, id, _) in &apps.0 {
        let (s, r) = app
            .call(
                "GET",
                &format!("/root/{id}/rotate/pki"),
                Some(&app.root_key),
                None,
            )
            .await;
        assert_eq!(s, 200, "{alg}: emergency rotation: {r}");
    }
    let t2 = apps.issue(&app).await;
    let mut cases = apps.cases("t0", &t0, Expect::UnknownKid);
    cases.extend(apps.cases("t1", &t1, Expect::UnknownKid));
    cases.extend(apps.cases("t2", &t2, Expect::Valid));
    for v in &verifiers {
        check(&app, v, "emergency", &cases).await;
    }
}

/// One object of `pkcs11-tool --list-objects`: its header line and its `name: value` lines.
#[derive(Debug)]
struct P11Object {
    header: String,
    fields: Vec<(String, String)>,
}

impl P11Object {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The comma-separated items of a field (`Access:`, `Usage:`).
    fn items(&self, name: &str) -> Vec<&str> {
        self.field(name)
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }
}

/// Parse `pkcs11-tool --list-objects` output: an unindented header line per object
/// ("Private Key Object; EC"), then indented `name: value` lines.
fn p11_objects(text: &str) -> Vec<P11Object> {
    let mut out: Vec<P11Object> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            out.push(P11Object {
                header: line.trim().to_owned(),
                fields: Vec::new(),
            });
        } else if let (Some(obj), Some((k, v))) = (out.last_mut(), line.split_once(':')) {
            obj.fields.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_tool_sees_every_private_key_sensitive_and_never_extractable() {
    let app = TestApp::spawn("clients_pkcs11_tool", Engine::Sqlite).await;
    // One app per key type (RSA, the three NIST curves, Ed25519); one of them rotated so a
    // `previous` key is on the token too.
    let mut live = Vec::new();
    let mut ids = Vec::new();
    for alg in ["PS256", "ES256", "ES384", "ES512", "EdDSA"] {
        let (id, _, _) = app
            .create_app(json!({"name": format!("P11 {alg}"), "signing_alg": alg}))
            .await;
        ids.push(id);
    }
    let (s, r) = app
        .root("POST", &format!("/apps/{}/keys/rotate", ids[0]), None)
        .await;
    assert_eq!(s, 200, "{r}");
    for id in &ids {
        for k in app.keys(id).await {
            if k["destroyed_at"].is_null() {
                live.push((
                    k["kid"].as_str().unwrap().to_owned(),
                    k["algorithm"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    assert!(
        live.len() >= 11,
        "two keys per app and a previous one: {live:?}"
    );

    // A second process (OpenSC's pkcs11-tool), logged in, reads the token's attributes. The
    // service refills its spare keys in the background: an object caught half made lists
    // without its class or attributes (SoftHSM2 2.6.1), so the listing waits for the spare
    // pools to be full, and a listing showing such an object is still taken again.
    for _ in 0..600 {
        let (_, ready) = app.call("GET", "/readyz", None, None).await;
        let full = ready["spares"]
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.values().all(|n| n.as_u64() >= Some(2)));
        if full {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (mut text, mut privs) = (String::new(), Vec::new());
    for _ in 0..20 {
        let out = app
            .token
            .pkcs11_tool_login(&["--list-objects", "--type", "privkey"]);
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pkcs11-tool: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        privs = p11_objects(&text);
        // Half made, an object may also list with its class but without its label yet.
        if privs.iter().all(|o| {
            o.header.starts_with("Private Key Object")
                && o.field("label")
                    .is_some_and(|l| l.starts_with("hsm-rotator/"))
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        privs.len() >= live.len(),
        "{} private keys on the token, {} live keys in the API:\n{text}",
        privs.len(),
        live.len()
    );
    for o in &privs {
        assert!(o.header.starts_with("Private Key Object"), "{o:?}");
        let access = o.items("Access");
        for want in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(access.contains(&want), "{want} missing: {o:?}");
        }
        assert!(!access.contains(&"extractable"), "extractable: {o:?}");
        assert_eq!(
            o.items("Usage"),
            ["sign"],
            "a signing key signs only: {o:?}"
        );
        assert!(
            o.field("label")
                .is_some_and(|l| l.starts_with("hsm-rotator/")),
            "{o:?}"
        );
    }
    // Every key the API calls live is there, under its kid, of the right type.
    for (kid, alg) in &live {
        let suffix = format!("/{kid}");
        let o = privs
            .iter()
            .find(|o| {
                o.field("label")
                    .is_some_and(|l| l.starts_with("hsm-rotator/") && l.ends_with(&suffix))
            })
            .unwrap_or_else(|| panic!("{kid} ({alg}) not on the token:\n{text}"));
        let kind = o.header.rsplit(';').next().unwrap().trim();
        let want = match alg.as_str() {
            a if a.starts_with("RS") || a.starts_with("PS") => "RSA",
            "EdDSA" => "EC_EDWARDS",
            _ => "EC",
        };
        assert!(kind.starts_with(want), "{kid} ({alg}) is a {kind} key");
    }
}
