//! Access control: the per-source budget of invalid credentials (behind
//! `trusted_proxies` too), the 401/403 rules of every native route, the per-app budget of
//! key changes, and the headers every response carries (request id, security headers,
//! over TLS too).

use std::process::Command;

use serde_json::{Value, json};

use super::audit_log::records;
use crate::common::app::{Engine, TestApp};

/// `GET /apps` with `auth` from `client`, with an optional `X-Forwarded-For`.
async fn get_apps(
    app: &TestApp,
    auth: &str,
    forwarded_for: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut rb = app
        .client
        .get(app.url("/apps"))
        .header("Authorization", auth);
    if let Some(f) = forwarded_for {
        rb = rb.header("X-Forwarded-For", f);
    }
    let res = rb.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

fn wrong_root(i: usize) -> String {
    format!("rk_{:A>43}", i)
}

/// Invalid credentials are throttled per source once it is over its budget, but the
/// credential is checked first: the right root key and an app's token from the very same
/// address still work (before, 20 failures locked every credential out of that address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_root_key_works_after_a_hundred_wrong_ones_from_its_address() {
    let app = TestApp::spawn("rate_limit", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Tenant", "signing_alg": "ES256"}))
        .await;
    let mut limited = 0;
    let mut last_retry = None;
    for i in 0..100 {
        let (s, retry, v) = get_apps(&app, &wrong_root(i), None).await;
        match s {
            401 => assert!(limited == 0, "401 after a 429 in the same window"),
            429 => {
                limited += 1;
                assert_eq!(v["error"], "rate_limited", "{v}");
                last_retry = retry;
            }
            other => panic!("wrong root key {i} answered {other}: {v}"),
        }
    }
    assert_eq!(
        limited, 80,
        "the first 20 failures are answered 401, the rest 429"
    );
    assert!(
        last_retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1),
        "429 carries Retry-After"
    );
    let (s, _, v) = get_apps(&app, &app.root_key, None).await;
    assert_eq!(s, 200, "the right root key from the throttled address: {v}");
    let (s, _, _) = get_apps(&app, &format!("Bearer {}", app.root_key), None).await;
    assert_eq!(s, 200);
    let t = app.issue(&id, &pk, json!({"sub": "s"})).await;
    assert!(
        t["token"].is_string(),
        "an app's token from the same address"
    );
    // Still throttled for invalid credentials.
    let (s, _, _) = get_apps(&app, &wrong_root(101), None).await;
    assert_eq!(s, 429);
}

/// With `trusted_proxies` naming the proxy (here 127.0.0.1), clients behind it are told
/// apart by `X-Forwarded-For` (right-most untrusted hop) and throttled separately; the
/// audit log names the client. Without it the header is ignored: however it is forged,
/// every request from the address is one source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_throttled_apart_and_forged_headers_change_nothing() {
    let proxied = TestApp::spawn_with(
        "trusted_proxy",
        Engine::Sqlite,
        &[("HSM_ROTATOR_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    for i in 0..25 {
        // The client forges the left-most entry; the proxy appended the real address.
        let (s, _, _) = get_apps(&proxied, &wrong_root(i), Some("6.6.6.6, 198.51.100.1")).await;
        assert_eq!(s, if i < 20 { 401 } else { 429 }, "client 1, failure {i}");
    }
    let (s, _, _) = get_apps(&proxied, &wrong_root(0), Some("198.51.100.2")).await;
    assert_eq!(
        s, 401,
        "another client behind the same proxy has its own budget"
    );
    let (s, _, _) = get_apps(&proxied, &proxied.root_key, Some("198.51.100.1")).await;
    assert_eq!(s, 200, "a valid credential from the throttled client");
    let targets: Vec<String> = records(&proxied)
        .await
        .iter()
        .filter(|r| r["action"] == "auth.failure")
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        targets.contains(&"198.51.100.1".to_owned())
            && targets.contains(&"198.51.100.2".to_owned())
            && !targets.iter().any(|t| t == "6.6.6.6" || t == "127.0.0.1"),
        "the audit log names the clients: {targets:?}"
    );

    let direct = TestApp::spawn("untrusted_proxy", Engine::Sqlite).await;
    for i in 0..25 {
        let forged = format!("198.51.100.{i}");
        let (s, _, _) = get_apps(&direct, &wrong_root(i), Some(&forged)).await;
        assert_eq!(s, if i < 20 { 401 } else { 429 }, "failure {i}");
    }
    let (s, _, _) = get_apps(&direct, &wrong_root(0), Some("203.0.113.77")).await;
    assert_eq!(s, 429, "a forged header does not open a new budget");
    let targets: Vec<String> = records(&direct)
        .await
        .iter()
        .filter(|r| r["action"] == "auth.failure")
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !targets.is_empty() && targets.iter().all(|t| t == "127.0.0.1"),
        "the audit log names the TCP peer: {targets:?}"
    );
}

/// Every native route (from `/openapi.json`, compat families excepted) with each kind of
/// credential follows RFC 9110: 401 with `WWW-Authenticate: Bearer` for none, a garbage
/// token or a wrong root key; 403 for a valid credential without the right (another app's
/// token; an app's token where only the root key goes; the root key where only the app's
/// token goes); anything but 401/403/429 where the credential may call the route. The
/// routes' documented `security` says which credential may call what. The walk follows
/// the routes that replace a credential (the app's access token, the root key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_native_route_answers_401_and_403_by_rfc_9110() {
    // Each request comes from its own client behind a trusted proxy, so the walk's many
    // deliberate failures never run into a source's budget.
    let app = TestApp::spawn_with(
        "authz_table",
        Engine::Sqlite,
        &[("HSM_ROTATOR_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    let (a, pk_a, created) = app
        .create_app(json!({"name": "A", "signing_alg": "ES256"}))
        .await;
    let (_b, pk_b, _) = app
        .create_app(json!({"name": "B", "signing_alg": "ES256"}))
        .await;
    let next_a =
        crate::common::app::kids_in(created["keys"].as_array().unwrap(), "next")[0].clone();
    let (s, doc) = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let compat = ["jwtplus", "auth0", "pocketpaw"];
    let mut ops: Vec<(String, String, Vec<String>)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let tags: Vec<&str> = op["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            if tags.iter().any(|t| compat.contains(t)) {
                continue;
            }
            let schemes = op["security"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .flat_map(|o| o.as_object().unwrap().keys().cloned())
                        .collect()
                })
                .unwrap_or_default();
            ops.push((method.to_uppercase(), path.clone(), schemes));
        }
    }
    // Deleting the app goes last: the other routes need it.
    ops.sort_by_key(|(m, p, _)| (m == "DELETE" && p == "/apps/{id}", p.clone(), m.clone()));
    assert!(ops.len() >= 20, "the native surface: {ops:?}");
    let wrong = format!("rk_{}", "A".repeat(43));
    let mut kinds: [(&str, Option<String>); 6] = [
        ("none", None),
        ("garbage", Some("Bearer garbage-token".to_owned())),
        ("wrong root key", Some(wrong)),
        ("another app's token", Some(format!("Bearer {pk_b}"))),
        ("the app's own token", Some(format!("Bearer {pk_a}"))),
        ("root key", Some(app.root_key.clone())),
    ];
    let mut checked = 0;
    for (n, (method, path, schemes)) in ops.iter().enumerate() {
        let concrete = path
            .replace("{id}", &a)
            .replace("{kid}", &next_a)
            .replace("{n}", "0");
        assert!(!concrete.contains('{'), "unfilled parameter in {path}");
        let concrete = if path.ends_with("/sessions") {
            format!("{concrete}?sub=s1")
        } else {
            concrete
        };
        let guarded = !schemes.is_empty();
        let root_may = schemes
            .iter()
            .any(|s| s == "root_key" || s == "root_bearer");
        let app_may = schemes.iter().any(|s| s == "app_token");
        for (k, (kind, auth)) in kinds.clone().into_iter().enumerate() {
            let mut rb = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .header("X-Forwarded-For", format!("10.9.{n}.{k}"));
            if let Some(a) = &auth {
                rb = rb.header("Authorization", a);
            }
            if method != "GET" && method != "DELETE" {
                rb = rb.json(&json!({}));
            }
            let res = rb.send().await.unwrap();
            let status = res.status().as_u16();
            let www = res.headers().contains_key("www-authenticate");
            let body = res.text().await.unwrap();
            // A new credential replaces the old one for the rest of the walk.
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(pk) = v["access_token"].as_str().filter(|_| v["app_id"] == a) {
                    kinds[4].1 = Some(format!("Bearer {pk}"));
                }
                if let Some(rk) = v["root_key"].as_str() {
                    kinds[5].1 = Some(format!("Bearer {rk}"));
                }
            }
            let want = match (kind, guarded) {
                (_, false) => None,
                ("none" | "garbage" | "wrong root key", true) => Some(401),
                ("another app's token", true) => Some(403),
                ("the app's own token", true) => (!app_may).then_some(403),
                (_, true) => (!root_may).then_some(403),
            };
            match want {
                Some(w) => {
                    assert_eq!(status, w, "{method} {path} with {kind}: {body}");
                    assert_eq!(
                        www,
                        w == 401,
                        "{method} {path} with {kind}: WWW-Authenticate"
                    );
                }
                None => assert!(
                    !matches!(status, 401 | 403 | 429),
                    "{method} {path} with {kind} answered {status}: {body}"
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ops.len() * kinds.len());
}

/// An app that revokes its own `next` key in a loop gets 429 with `Retry-After` once its
/// budget of key changes is spent (each revocation takes a key from the shared spare pool);
/// the root key and other apps are not affected, and Auth0's rotate says it in Auth0's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_revoking_its_keys_in_a_loop_is_limited_and_others_are_not() {
    let app = TestApp::spawn("key_change_budget", Engine::Sqlite).await;
    let (id, pk, created) = app
        .create_app(json!({"name": "Looper", "signing_alg": "ES256"}))
        .await;
    let (other, other_pk, _) = app
        .create_app(json!({"name": "Other", "signing_alg": "ES256"}))
        .await;
    let mut next =
        crate::common::app::kids_in(created["keys"].as_array().unwrap(), "next")[0].clone();
    let mut refused = None;
    for i in 0..10 {
        let res = app
            .client
            .post(app.url(&format!("/apps/{id}/keys/{next}/revoke")))
            .bearer_auth(&pk)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        let v: Value = res.json().await.unwrap();
        if status == 429 {
            assert_eq!(v["error"], "rate_limited", "{v}");
            refused = Some((i, retry));
            break;
        }
        assert_eq!(status, 200, "revocation {i}: {v}");
        next = v["next"]["kid"].as_str().unwrap().to_owned();
    }
    let (i, retry) = refused.expect("the loop was never refused");
    assert_eq!(i, 5, "five key changes at once, then 429");
    assert!(
        retry.is_some_and(|r| (1..=12).contains(&r)),
        "Retry-After {retry:?}"
    );
    let keys = app.keys(&id).await;
    assert!(
        crate::common::app::kids_in(&keys, "next").contains(&next),
        "the refused revocation changed nothing"
    );
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/connections/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(
        (v["statusCode"].as_u64(), v["errorCode"].as_str()),
        (Some(429), Some("too_many_requests")),
        "Auth0's shape: {v}"
    );
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/keys/{next}/revoke"), None)
        .await;
    assert_eq!(s, 200, "the root key is never limited: {v}");
    let (s, v) = app
        .bearer(
            &other_pk,
            "POST",
            &format!("/apps/{other}/keys/rotate"),
            None,
        )
        .await;
    assert_eq!(s, 200, "another app has its own budget: {v}");
    // The spares the loop took are made again in the background, not on others' requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let es256 = text
            .lines()
            .find(|l| l.starts_with("hsm_rotator_spare_keys{alg=\"ES256\""))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse::<f64>().unwrap());
        if es256.is_some_and(|n| n >= 2.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spare pool was not refilled: {es256:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id_and_security_headers() {
    let app = TestApp::spawn("headers", Engine::Sqlite).await;
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let res = app
        .client
        .get(app.url("/nope"))
        .header("X-Request-Id", "bad\u{7f}id")
        .send()
        .await;
    if let Ok(res) = res {
        assert_eq!(res.status(), 404);
        assert!(
            res.headers()["x-request-id"].to_str().unwrap().len() == 26,
            "an insane id is replaced"
        );
    }
    let (s, v) = app.call("GET", "/no/such/route", None, None).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let res = app
        .client
        .post(app.url("/apps"))
        .header("Authorization", &app.root_key)
        .json(&json!({"name": "x", "signing_alg": "ES256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["cache-control"],
        "no-store",
        "a response with a secret is not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_https_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::common::tls::self_signed(dir.path());
    let app = TestApp::spawn_with(
        "tls",
        Engine::Sqlite,
        &[
            ("HSM_ROTATOR_TLS_CERT", cert.to_str().unwrap()),
            ("HSM_ROTATOR_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let out = Command::new("curl")
        .args(["-sk", &format!("{}/healthz", app.base)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    let out = Command::new("curl")
        .args([
            "-sk",
            "-H",
            &format!("Authorization: {}", app.root_key),
            &format!("{}/apps", app.base),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        r#"{"apps":[]}"#,
        "root key over TLS"
    );
    let plain = app.base.replace("https://", "http://");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{plain}/healthz"),
        ])
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "plain HTTP is not served on the TLS port"
    );
}
