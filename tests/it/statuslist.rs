//! Token Status Lists (issue 24): every revocation grain flips its token's bit, read by
//! implementations we did not write (`@sd-jwt/jwt-status-list` + `jose` in Node, PyJWT in
//! Python, both verifying the list's signature with the app's JWKS); a random sequence of
//! issuances and revocations leaves the list equal to the ledger's truth.
//!
//! The service runs with `status_list_refresh = 1`; a change is awaited by polling the list
//! with a bound, never by a fixed sleep.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::common::app::{Engine, TestApp};

const FAST: &[(&str, &str)] = &[("HSM_ROTATOR_STATUS_LIST_REFRESH", "1")];

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims")
}

/// `(idx, uri)` of a token's `status` claim.
fn status_of(token: &str) -> (u64, String) {
    let c = claims(token);
    let sl = &c["status"]["status_list"];
    (
        sl["idx"]
            .as_u64()
            .unwrap_or_else(|| panic!("no status claim in {c}")),
        sl["uri"].as_str().unwrap().to_owned(),
    )
}

/// The bit of `token` in the list it names, as served now (our own decoder).
async fn bit_now(app: &TestApp, token: &str) -> u8 {
    let (idx, uri) = status_of(token);
    let res = app
        .client
        .get(&uri)
        .header("Accept", "application/statuslist+jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{uri}");
    let list = res.text().await.unwrap();
    let lst = claims(&list)["status_list"]["lst"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = hsm_rotator::statuslist::decompress(&lst).expect("zlib lst");
    hsm_rotator::statuslist::bit(&bytes, idx).expect("idx inside the list")
}

/// One token and the bit it must come to.
struct Case {
    name: String,
    token: String,
    revoked: bool,
}

fn case(name: &str, token: &Value, revoked: bool) -> Case {
    Case {
        name: name.to_owned(),
        token: token.as_str().unwrap().to_owned(),
        revoked,
    }
}

/// Wait (at most 30 s) until every case reads as it must in the served lists.
async fn await_bits(app: &TestApp, cases: &[Case]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut wrong = Vec::new();
        for c in cases {
            let got = bit_now(app, &c.token).await;
            if got != u8::from(c.revoked) {
                wrong.push(format!("{} reads {got}", c.name));
            }
        }
        if wrong.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lists still wrong after 30 s: {wrong:?}\n{}",
            app.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run a third-party reader (`runtime` from `var`) on the cases; `None` when not installed
/// outside CI.
async fn third_party(var: &str, script: &str, cases: &[Case]) -> Option<Value> {
    let program = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => p,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {var} is unset: scripts/clients-setup must run first")
        }
        _ => {
            eprintln!("SKIP {script}: {var} is unset (run: eval \"$(scripts/clients-setup)\")");
            return None;
        }
    };
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let request = json!({"cases": cases.iter().map(|c| json!({"name": c.name, "token": c.token})).collect::<Vec<_>>()});
    let mut child = tokio::process::Command::new(program)
        .arg(root.join(script))
        .current_dir(&root)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("reader finished in 120 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {stderr}");
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stderr}"));
    eprintln!("{script}: {}", answer["libraries"]);
    Some(answer)
}

/// Both third-party readers agree with `cases` (after [`await_bits`]).
async fn independent_readers_agree(cases: &[Case]) {
    if let Some(a) = third_party(
        "HSM_ROTATOR_TEST_NODE",
        "tests/clients/node/statuslist.mjs",
        cases,
    )
    .await
    {
        let results = a["results"].as_array().unwrap();
        assert_eq!(results.len(), cases.len());
        for (c, r) in cases.iter().zip(results) {
            assert_eq!(r["name"], c.name.as_str());
            assert_eq!(
                r["verified"], true,
                "jose verifies the list of {}: {r}",
                c.name
            );
            assert_eq!(r["typ"], "statuslist+jwt", "{r}");
            assert_eq!(r["content_type"], "application/statuslist+jwt", "{r}");
            assert_eq!(r["sub"], r["uri"], "{r}");
            assert_eq!(r["ttl"], 1, "{r}");
            assert_eq!(
                r["status"],
                u8::from(c.revoked),
                "jwt-status-list reads {}: {r}",
                c.name
            );
        }
    }
    if let Some(a) = third_party(
        "HSM_ROTATOR_TEST_PYTHON",
        "tests/clients/python/statuslist.py",
        cases,
    )
    .await
    {
        let results = a["results"].as_array().unwrap();
        for (c, r) in cases.iter().zip(results) {
            assert_eq!(
                r["verified"], true,
                "PyJWT verifies the list of {}: {r}",
                c.name
            );
            assert_eq!(
                r["status"],
                u8::from(c.revoked),
                "PyJWT reads {}: {r}",
                c.name
            );
        }
    }
}

async fn native_app(app: &TestApp, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": name, "signing_alg": "ES256", "status_list": true});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (id, pk, v) = app.create_app(body).await;
    assert_eq!(v["status_list"], true, "{v}");
    (id, pk)
}

async fn issue(app: &TestApp, id: &str, pk: &str, sub: &str) -> Value {
    app.issue(id, pk, json!({"sub": sub})).await
}

/// A JWTPlus app (refresh tokens are JWTs there) with status lists turned on natively.
async fn jwtplus_app(app: &TestApp) -> (String, String) {
    let (s, c) = app
        .call(
            "POST",
            "/root/create",
            Some(&app.root_key.clone()),
            Some(crate::compat::jwtplus::create_body("ES256", "ECDSA")),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let id = c["app_id"].as_str().unwrap().to_owned();
    let (s, v) = app
        .root(
            "PATCH",
            &format!("/apps/{id}"),
            Some(json!({"status_list": true})),
        )
        .await;
    assert_eq!((s, &v["status_list"]), (200, &json!(true)), "{v}");
    (id, c["app_key"].as_str().unwrap().to_owned())
}

async fn jwtplus_sign(app: &TestApp, id: &str, key: &str, sub: &str) -> Value {
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(key),
            Some(json!({"sub": sub, "aud": "shop", "ip": "192.0.2.1", "useragent": "t"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_grain_sets_its_tokens_bit_and_leaves_siblings_clear_sqlite() {
    every_grain(&TestApp::spawn_with("sl_every_grain_sq", Engine::Sqlite, FAST).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_grain_sets_its_tokens_bit_and_leaves_siblings_clear_postgres() {
    every_grain(&TestApp::spawn_with("sl_every_grain_pg", Engine::Postgres, FAST).await).await;
}

async fn every_grain(app: &TestApp) {
    let mut cases = Vec::new();

    // Token (RFC 7009); the response says when the lists will show it.
    let (id, pk) = native_app(app, "Token", json!({})).await;
    let (a, b) = (
        issue(app, &id, &pk, "u1").await,
        issue(app, &id, &pk, "u1").await,
    );
    // Served (and cached) before the revocation: the background refresh must flip it.
    await_bits(app, &[case("token/before", &a["token"], false)]).await;
    let res = app
        .client
        .post(app.url(&format!("/apps/{id}/tokens/revoke")))
        .header("Authorization", format!("Bearer {pk}"))
        .form(&[("token", a["token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let by: i64 = res
        .headers()
        .get("status-list-visible-by")
        .expect("a revocation says when the lists show it")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = hsm_rotator::clock::Clock::now(&hsm_rotator::clock::SystemClock);
    assert!(
        by >= now - 1 && by <= now + 10,
        "visible by {by}, now {now}"
    );
    cases.push(case("token/revoked", &a["token"], true));
    cases.push(case("token/sibling", &b["token"], false));
    let token_app = (
        id.clone(),
        pk.clone(),
        a["token"].as_str().unwrap().to_owned(),
    );

    // Subject logout.
    let (id, pk) = native_app(app, "Subject", json!({})).await;
    let (a, b) = (
        issue(app, &id, &pk, "gone").await,
        issue(app, &id, &pk, "stays").await,
    );
    let (s, v) = app
        .bearer(
            &pk,
            "DELETE",
            &format!("/apps/{id}/sessions?sub=gone"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    cases.push(case("subject/revoked", &a["token"], true));
    cases.push(case("subject/sibling", &b["token"], false));

    // Key revocation: the sibling is signed by the key promoted in its place.
    let (id, pk) = native_app(app, "Key", json!({})).await;
    let a = issue(app, &id, &pk, "k").await;
    let kid = a["kid"].as_str().unwrap().to_owned();
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/keys/{kid}/revoke"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let b = issue(app, &id, &pk, "k").await;
    cases.push(case("key/revoked", &a["token"], true));
    cases.push(case("key/sibling", &b["token"], false));

    // Flush (app cut-off).
    let (id, pk) = native_app(app, "Flush", json!({})).await;
    let a = issue(app, &id, &pk, "f").await;
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let b = issue(app, &id, &pk, "f").await;
    cases.push(case("flush/revoked", &a["token"], true));
    cases.push(case("flush/sibling", &b["token"], false));

    // Refresh-family reuse: the exchanges retire the first and second tokens, the reuse
    // (after the successor was used, so not a retry) kills the third; another family is
    // untouched.
    let (id, pk) = native_app(app, "Family", json!({"refresh_ttl": 3600})).await;
    let first = issue(app, &id, &pk, "r").await;
    let other = issue(app, &id, &pk, "r").await;
    let rt = first["refresh_token"].as_str().unwrap().to_owned();
    let (s, second) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(s, 200, "{second}");
    let (s, third) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": second["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 200, "{third}");
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_ne!(s, 200, "reuse: {v}");
    cases.push(case("family/exchanged", &first["token"], true));
    cases.push(case("family/exchanged-again", &second["token"], true));
    cases.push(case("family/reused", &third["token"], true));
    cases.push(case("family/sibling", &other["token"], false));

    // JWTPlus logout: the pair's access and refresh JWTs both; the other pair neither.
    let (id, key) = jwtplus_app(app).await;
    let (a, b) = (
        jwtplus_sign(app, &id, &key, "j1").await,
        jwtplus_sign(app, &id, &key, "j2").await,
    );
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/logout"),
            Some(&key),
            Some(json!({"token": a["auth_token"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    cases.push(case("jwtplus-logout/access", &a["auth_token"], true));
    cases.push(case("jwtplus-logout/refresh", &a["refresh_token"], true));
    cases.push(case(
        "jwtplus-logout/sibling-access",
        &b["auth_token"],
        false,
    ));
    cases.push(case(
        "jwtplus-logout/sibling-refresh",
        &b["refresh_token"],
        false,
    ));

    // Emergency rotation (JWTPlus `rotate/pki`).
    let (id, key) = jwtplus_app(app).await;
    let a = jwtplus_sign(app, &id, &key, "e").await;
    let (s, v) = app
        .call(
            "POST",
            &format!("/root/{id}/rotate/pki"),
            Some(&app.root_key.clone()),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let b = jwtplus_sign(app, &id, &key, "e").await;
    cases.push(case("emergency/access", &a["auth_token"], true));
    cases.push(case("emergency/refresh", &a["refresh_token"], true));
    cases.push(case("emergency/sibling", &b["auth_token"], false));

    // PocketPaw regenerate.
    let (id, pk) = native_app(app, "Paw", json!({})).await;
    let a = issue(app, &id, &pk, "p").await;
    let (s, v) = app.bearer(&pk, "POST", "/api/token/regenerate", None).await;
    assert_eq!(s, 200, "{v}");
    let pk2 = v["token"].as_str().unwrap().to_owned();
    let b = issue(app, &id, &pk2, "p").await;
    cases.push(case("regenerate/revoked", &a["token"], true));
    cases.push(case("regenerate/sibling", &b["token"], false));

    await_bits(app, &cases).await;
    independent_readers_agree(&cases).await;

    // The list endpoint: media type, ETag and 304, Cache-Control from ttl, the unsigned
    // form; an unknown list number is 404.
    let (id, pk, revoked) = token_app;
    let (idx, uri) = status_of(&revoked);
    let res = app.client.get(&uri).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/statuslist+jwt");
    assert_eq!(res.headers()["cache-control"], "public, max-age=1");
    let etag = res.headers()["etag"].clone();
    let again = app
        .client
        .get(&uri)
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let json_form: Value = app
        .client
        .get(&uri)
        .header("Accept", "application/statuslist+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json_form["bits"], 1);
    let bytes = hsm_rotator::statuslist::decompress(json_form["lst"].as_str().unwrap()).unwrap();
    assert_eq!(hsm_rotator::statuslist::bit(&bytes, idx), Some(1));
    let (s, v) = app
        .call("GET", &format!("/apps/{id}/statuslists/999"), None, None)
        .await;
    assert_eq!(
        (s, &v["error"]),
        (404, &json!("status_list_not_found")),
        "{v}"
    );
    let (s, v) = app
        .call("GET", &format!("/apps/{id}/statuslists/x"), None, None)
        .await;
    assert_eq!(s, 404, "{v}");
    // Discovery names the aggregation, which names the list.
    let (_, disc) = app
        .call(
            "GET",
            &format!("/apps/{id}/.well-known/openid-configuration"),
            None,
            None,
        )
        .await;
    let agg = disc["status_list_aggregation_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, lists) = app
        .call("GET", &agg.replace(&app.url(""), ""), None, None)
        .await;
    assert_eq!(s, 200);
    assert!(
        lists["status_lists"]
            .as_array()
            .unwrap()
            .contains(&json!(uri)),
        "{lists}"
    );

    // Turned off: new tokens carry no status claim, issued ones stay resolvable.
    let (s, v) = app
        .root(
            "PATCH",
            &format!("/apps/{id}"),
            Some(json!({"status_list": false})),
        )
        .await;
    assert_eq!((s, &v["status_list"]), (200, &json!(false)), "{v}");
    let plain = issue(app, &id, &pk, "u1").await;
    assert!(
        claims(plain["token"].as_str().unwrap())
            .get("status")
            .is_none()
    );
    let (_, disc) = app
        .call(
            "GET",
            &format!("/apps/{id}/.well-known/openid-configuration"),
            None,
            None,
        )
        .await;
    assert!(
        disc.get("status_list_aggregation_endpoint").is_none(),
        "{disc}"
    );
    await_bits(app, &[case("off/revoked", &json!(revoked), true)]).await;
}

/// A seeded pseudo-random sequence (printed, so that a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Random issuances and revocations of every native grain (token, subject, refresh
/// exchange and reuse, key, flush); then each live token's bit is exactly "introspection says
/// inactive", the ledger's truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_random_issuance_and_revocation_every_bit_equals_the_ledgers_truth() {
    let seed = std::env::var("STATUS_LIST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("STATUS_LIST_SEED={seed}");
    let mut rng = Lcg(seed);
    let app = TestApp::spawn_with("sl_property", Engine::Sqlite, FAST).await;
    let (id, pk) = native_app(&app, "Prop", json!({"refresh_ttl": 3600})).await;
    let subs = ["s0", "s1", "s2", "s3", "s4"];
    // (access token, refresh token)
    let mut issued: Vec<(String, String)> = Vec::new();
    for step in 0..60 {
        if step == 30 {
            // Read every list half way, so that the rest must reach verifiers through the
            // background refresh of lists already served.
            truth_reads_back(&app, &id, &pk, &issued).await;
        }
        let op = if issued.is_empty() { 0 } else { rng.next(12) };
        match op {
            0..=5 => {
                let sub = subs[usize::try_from(rng.next(5)).unwrap()];
                let t = issue(&app, &id, &pk, sub).await;
                issued.push((
                    t["token"].as_str().unwrap().to_owned(),
                    t["refresh_token"].as_str().unwrap().to_owned(),
                ));
            }
            6 => {
                let (t, _) = &issued[usize::try_from(rng.next(issued.len() as u64)).unwrap()];
                let (s, _) = app
                    .bearer(
                        &pk,
                        "POST",
                        &format!("/apps/{id}/tokens/revoke"),
                        Some(json!({"token": t})),
                    )
                    .await;
                assert_eq!(s, 200);
            }
            7 => {
                let sub = subs[usize::try_from(rng.next(5)).unwrap()];
                let (s, _) = app
                    .bearer(
                        &pk,
                        "DELETE",
                        &format!("/apps/{id}/sessions?sub={sub}"),
                        None,
                    )
                    .await;
                assert_eq!(s, 200);
            }
            8 | 9 => {
                // Exchange (or, for a spent one, reuse) a refresh token.
                let (_, rt) =
                    issued[usize::try_from(rng.next(issued.len() as u64)).unwrap()].clone();
                let (s, v) = app
                    .bearer(
                        &pk,
                        "POST",
                        &format!("/apps/{id}/tokens/refresh"),
                        Some(json!({"refresh_token": rt})),
                    )
                    .await;
                if s == 200 {
                    issued.push((
                        v["token"].as_str().unwrap().to_owned(),
                        v["refresh_token"].as_str().unwrap().to_owned(),
                    ));
                }
            }
            10 => {
                // Key revocation, now and then: the current key goes, `next` takes over.
                if rng.next(4) == 0 {
                    let current = crate::common::app::kids_in(&app.keys(&id).await, "current");
                    let (s, v) = app
                        .root(
                            "POST",
                            &format!("/apps/{id}/keys/{}/revoke", current[0]),
                            None,
                        )
                        .await;
                    assert_eq!(s, 200, "step {step}: {v}");
                }
            }
            _ => {
                if rng.next(6) == 0 {
                    let (s, _) = app
                        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
                        .await;
                    assert_eq!(s, 200, "step {step}");
                }
            }
        }
    }
    let cases = truth_reads_back(&app, &id, &pk, &issued).await;
    eprintln!(
        "{} tokens, {} revoked",
        cases.len(),
        cases.iter().filter(|c| c.revoked).count()
    );
    // Indexes are not handed out in issuance order.
    let idx: Vec<u64> = issued.iter().map(|(t, _)| status_of(t).0).collect();
    let mut sorted = idx.clone();
    sorted.sort_unstable();
    assert!(
        idx.len() < 3 || idx != sorted,
        "sequential indexes: {idx:?}"
    );
}

/// Every issued token's bit comes to "introspection says inactive".
async fn truth_reads_back(
    app: &TestApp,
    id: &str,
    pk: &str,
    issued: &[(String, String)],
) -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (t, _)) in issued.iter().enumerate() {
        let active = app.active(id, pk, t).await;
        cases.push(Case {
            name: format!("token {i}"),
            token: t.clone(),
            revoked: !active,
        });
    }
    await_bits(app, &cases).await;
    cases
}

/// One `token verify --offline --json` run: exit status, stdout, stderr.
struct OfflineRun {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `hsm-rotator [--url BASE] token verify ID --offline --cache-dir DIR --json`, the token on
/// stdin. With `url`, no other environment at all (no credential: the offline verifier
/// needs none); without, the test server's configuration with its address as `listen`, so
/// the CLI finds the server where the tokens' issuers point.
async fn verify_offline(
    app: &TestApp,
    id: &str,
    token: &str,
    cache: &std::path::Path,
    url: bool,
) -> OfflineRun {
    verify_offline_accepting(app, id, token, cache, url, &[]).await
}

/// [`verify_offline`] with an `--issuer-alias` for each of `aliases`.
async fn verify_offline_accepting(
    app: &TestApp,
    id: &str,
    token: &str,
    cache: &std::path::Path,
    url: bool,
    aliases: &[&str],
) -> OfflineRun {
    let cache = cache.display().to_string();
    let mut args = vec![];
    if url {
        args.extend(["--url", app.base.as_str()]);
    }
    args.extend([
        "token",
        "verify",
        id,
        "--offline",
        "--cache-dir",
        &cache,
        "--json",
    ]);
    for a in aliases {
        args.extend(["--issuer-alias", a]);
    }
    let mut cmd = if url {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hsm-rotator"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c
    } else {
        let listen = app.base.trim_start_matches("http://").to_owned();
        crate::common::app::command(
            &app.token,
            &app.database_url,
            &[("HSM_ROTATOR_LISTEN", &listen)],
        )
    };
    let mut child = cmd
        .args(&args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI finished in 60 s")
        .unwrap();
    OfflineRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Revoke `token` (RFC 7009) and run the offline verifier (from `--url`, with `aliases`)
/// until it reads the token inactive: at most a refresh plus the list's ttl later.
async fn revoke_until_offline_inactive(
    app: &TestApp,
    id: &str,
    pk: &str,
    token: &str,
    cache: &std::path::Path,
    aliases: &[&str],
) -> OfflineRun {
    let res = app
        .client
        .post(app.url(&format!("/apps/{id}/tokens/revoke")))
        .header("Authorization", format!("Bearer {pk}"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = verify_offline_accepting(app, id, token, cache, true, aliases).await;
        if !run.ok {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still active offline after 30 s\n{}",
            app.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Requests the server answered on `route`, from its metrics.
async fn requests_on(app: &TestApp, route: &str) -> u64 {
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
        .filter(|l| {
            l.starts_with("hsm_rotator_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_verifier_reads_a_revocation_from_the_list_and_never_calls_introspection() {
    let app = TestApp::spawn_with("sl_offline", Engine::Sqlite, FAST).await;
    let (id, pk) = native_app(&app, "Offline", json!({})).await;
    let (a, b) = (
        issue(&app, &id, &pk, "u1").await,
        issue(&app, &id, &pk, "u1").await,
    );
    let (a, b) = (
        a["token"].as_str().unwrap().to_owned(),
        b["token"].as_str().unwrap().to_owned(),
    );
    let dir = tempfile::tempdir().unwrap();

    // Both active, read from --url and from the configured address alike.
    for (t, url) in [(&a, true), (&b, false)] {
        let run = verify_offline(&app, &id, t, dir.path(), url).await;
        assert!(run.ok, "{}{}", run.stdout, run.stderr);
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(
            (&v["active"], &v["sub"]),
            (&json!(true), &json!("u1")),
            "{v}"
        );
        assert!(v["status"]["status_list"]["idx"].is_u64(), "{v}");
    }

    // Revoke one; the offline verifier reads it inactive once the lists show it (at most
    // a refresh plus the list's ttl later), and the sibling stays active.
    let revoked = revoke_until_offline_inactive(&app, &id, &pk, &a, dir.path(), &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&revoked.stdout).unwrap(),
        json!({"active": false}),
        "{}",
        revoked.stderr
    );
    assert!(
        revoked.stderr.contains("status list marks it revoked"),
        "{}",
        revoked.stderr
    );
    let sibling = verify_offline(&app, &id, &b, dir.path(), true).await;
    assert!(sibling.ok, "{}{}", sibling.stdout, sibling.stderr);

    // A cached list with one byte of its signature changed is refused, not trusted (the
    // server answers 304 to its ETag, so the verifier keeps the bytes it holds).
    let mut tampered = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if !v["url"].as_str().unwrap().contains("/statuslists/") {
            continue;
        }
        let body = v["body"].as_str().unwrap().to_owned();
        let at = body.rfind('.').unwrap() + 5;
        let mut bytes = body.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        v["body"] = String::from_utf8(bytes).unwrap().into();
        std::fs::write(&path, v.to_string()).unwrap();
        tampered += 1;
    }
    assert_eq!(tampered, 1, "one list cached");
    let refused = verify_offline(&app, &id, &b, dir.path(), true).await;
    assert!(
        !refused.ok,
        "a tampered list was trusted: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("signature does not verify"),
        "{}",
        refused.stderr
    );

    // Every answer came from public documents: introspection was never asked.
    assert_eq!(requests_on(&app, "/apps/{id}/tokens/introspect").await, 0);
    assert!(requests_on(&app, "/apps/{id}/statuslists/{n}").await > 0);
}

/// `GET /apps/{id}` (what the console shows) lists each status list with its size and
/// when it was signed; an app that never had lists shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_view_shows_each_status_list_with_its_size_and_signing_time() {
    let app = TestApp::spawn_with("sl_app_view", Engine::Sqlite, FAST).await;
    let (id, pk) = native_app(&app, "Viewed", json!({})).await;
    let (plain, _, _) = app
        .create_app(json!({"name": "Plain", "signing_alg": "ES256"}))
        .await;
    let t = issue(&app, &id, &pk, "v").await;
    // Reading the list signs it (if the background pass has not yet).
    bit_now(&app, t["token"].as_str().unwrap()).await;
    let (s, v) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    let lists = v["status_lists"].as_array().expect("status_lists");
    assert_eq!(lists.len(), 1, "{v}");
    assert_eq!(lists[0]["n"], 1, "{v}");
    assert!(lists[0]["size"].as_i64().unwrap() >= 16_384, "{v}");
    assert!(lists[0]["signed_at"].is_string(), "{v}");
    assert!(lists[0]["bytes"].as_i64().unwrap() > 0, "{v}");
    let (s, v) = app.root("GET", &format!("/apps/{plain}"), None).await;
    assert_eq!((s, &v["status_lists"]), (200, &json!([])), "{v}");
    let (s, v) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200, "{v}");
    let listed = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["status_lists"].as_array().unwrap().len(), 1, "{v}");
}

/// A token issued before `public_url` changed (its old base now in `issuer_aliases`) stays
/// active offline when the verifier is given the same alias, and its revocation shows:
/// the token names its list under the old base, the server signs that list under the new
/// one, and the verifier reads them as the same list. Without the alias it is refused for
/// its issuer, as the server's own introspection would without `issuer_aliases`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_verifier_given_the_issuer_alias_reads_a_token_issued_under_the_old_base() {
    let listen = crate::common::app::free_listen();
    let fixed = [
        ("HSM_ROTATOR_LISTEN", listen.as_str()),
        ("HSM_ROTATOR_STATUS_LIST_REFRESH", "1"),
    ];
    let mut first = TestApp::spawn_with("sl_offline_alias", Engine::Sqlite, &fixed).await;
    let old_base = first.base.clone();
    let (id, pk) = native_app(&first, "Moved", json!({})).await;
    let old = issue(&first, &id, &pk, "u1").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, old_uri) = status_of(&old);
    assert!(old_uri.starts_with(&old_base), "{old_uri}");
    let root = first.root_key.clone();
    first.terminate().await;
    let (token, db) = (first.token.clone(), first.database_url.clone());
    drop(first);

    let moved = TestApp::start(
        token,
        db,
        &[
            ("HSM_ROTATOR_LISTEN", listen.as_str()),
            ("HSM_ROTATOR_STATUS_LIST_REFRESH", "1"),
            ("HSM_ROTATOR_PUBLIC_URL", "https://keys.example.com/"),
            ("HSM_ROTATOR_ISSUER_ALIASES", old_base.as_str()),
        ],
    )
    .await
    .with_root(&root);
    let dir = tempfile::tempdir().unwrap();

    let refused = verify_offline(&moved, &id, &old, dir.path(), true).await;
    assert!(
        !refused.ok && refused.stderr.contains("--issuer-alias"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let run = verify_offline_accepting(&moved, &id, &old, dir.path(), true, &[&old_base]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["iss"], format!("{old_base}/apps/{id}"), "{v}");

    let revoked =
        revoke_until_offline_inactive(&moved, &id, &pk, &old, dir.path(), &[&old_base]).await;
    assert!(
        revoked.stderr.contains("status list marks it revoked"),
        "{}",
        revoked.stderr
    );
}
