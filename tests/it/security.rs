//! Audit log, tamper detection, and the per-address authentication-failure limit.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp};

/// `hsm-rotator audit verify` (which checks the seals in the test's token).
pub(crate) async fn audit_verify(app: &TestApp) -> (bool, String) {
    verify_store(&app.token, &app.database_url, &[]).await
}

/// `hsm-rotator audit verify` on a store and token, with extra environment.
pub(crate) async fn verify_store(
    token: &crate::common::token::TestToken,
    database_url: &str,
    env: &[(&str, &str)],
) -> (bool, String) {
    let out = crate::common::app::command(token, database_url, env)
        .args(["audit", "verify"])
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn records(app: &TestApp) -> Vec<Value> {
    let (s, v) = app.root("GET", "/audit?after=0&limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

pub(crate) async fn sql(url: &str, statement: &str) {
    use sqlx::Connection as _;
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut c)
            .await
            .unwrap();
    }
}

async fn audited(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Audited", "signing_alg": "ES256", "refresh_ttl": 60}))
        .await;
    let t = app.issue(&id, &pk, json!({"sub": "s1"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": t})),
        )
        .await;
    let _ = app
        .bearer(&pk, "DELETE", &format!("/apps/{id}/sessions?sub=s1"), None)
        .await;
    let _ = app
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    let (_, r) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    let kid = r["current"]["kid"].as_str().unwrap().to_owned();
    let _ = app
        .root("POST", &format!("/apps/{id}/keys/{kid}/revoke"), None)
        .await;
    let _ = app
        .call(
            "GET",
            &format!("/root/{id}/rotate/pki"),
            Some(&app.root_key),
            None,
        )
        .await;
    let _ = app.bearer(&pk, "POST", "/api/token/regenerate", None).await;
    let _ = app
        .call("GET", "/apps", Some("rk_not-the-root-key"), None)
        .await;
    let (s, v) = app
        .call("GET", "/root/rotate", Some(&app.root_key), None)
        .await;
    assert_eq!(s, 200);
    let root = v["new-key"].as_str().unwrap().to_owned();
    let (s, v) = app
        .call("GET", "/audit?after=0&limit=1000", Some(&root), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let recs = v["records"].as_array().unwrap().clone();
    let actions: Vec<&str> = recs.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for want in [
        "key.create",
        "app.create",
        "token.revoke",
        "subject.logout",
        "app.flush",
        "key.rotate",
        "key.revoke",
        "key.destroy",
        "key.emergency_rotate",
        "app.access_token_regenerate",
        "auth.failure",
        "root.rotate",
    ] {
        assert!(actions.contains(&want), "no {want} record in {actions:?}");
    }
    let emergency = recs
        .iter()
        .find(|r| r["action"] == "key.emergency_rotate")
        .unwrap();
    let details: Value = serde_json::from_str(emergency["details"].as_str().unwrap()).unwrap();
    assert!(details["revoked_tokens"].is_number() && details["affected_subjects"].is_number());
    assert_eq!(emergency["actor"], "root");
    assert!(
        emergency["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let rotate = recs.iter().find(|r| r["action"] == "key.rotate").unwrap();
    assert_eq!(rotate["actor"], "root");
    let failure = recs.iter().find(|r| r["action"] == "auth.failure").unwrap();
    assert_eq!(failure["outcome"], "denied");
    // Nothing secret in the log.
    let all = serde_json::to_string(&recs).unwrap();
    for secret in [
        pk.as_str(),
        app.root_key.as_str(),
        root.as_str(),
        t.as_str(),
        app.token.pin.as_str(),
    ] {
        assert!(!all.contains(secret), "a secret is in the audit log");
    }
    let (ok, out) = audit_verify(app).await;
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");

    // Edit one record: verify fails and names it.
    let n = recs.len();
    let victim = recs[n / 2]["seq"].as_i64().unwrap();
    sql(
        &app.database_url,
        &format!("UPDATE audit_log SET target = 'tampered' WHERE seq = {victim}"),
    )
    .await;
    let (ok, out) = audit_verify(app).await;
    assert!(
        !ok && out.contains(&format!("record {victim}")),
        "edit not detected: {out}"
    );
    sql(
        &app.database_url,
        &format!(
            "UPDATE audit_log SET target = '{}' WHERE seq = {victim}",
            recs[n / 2]["target"].as_str().unwrap()
        ),
    )
    .await;
    let (ok, out) = audit_verify(app).await;
    assert!(ok, "restored chain should verify: {out}");

    // Delete one record.
    let gone = recs[n / 3]["seq"].as_i64().unwrap();
    sql(
        &app.database_url,
        &format!("DELETE FROM audit_log WHERE seq = {gone}"),
    )
    .await;
    let (ok, out) = audit_verify(app).await;
    assert!(
        !ok && out.contains(&format!("record {gone}")),
        "deletion not detected: {out}"
    );
}
crate::both_engines!(audit_log_records_and_detects_tampering, audited);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_audit_records_are_detected() {
    let app = TestApp::spawn("audit_reorder", Engine::Sqlite).await;
    app.create_app(json!({"name": "A", "signing_alg": "ES256"}))
        .await;
    app.create_app(json!({"name": "B", "signing_alg": "ES256"}))
        .await;
    let recs = records(&app).await;
    assert!(recs.len() >= 4);
    // Swap the contents of two records (keep their seq): the chain breaks at the first.
    sql(
        &app.database_url,
        "UPDATE audit_log SET seq = -1 WHERE seq = 2",
    )
    .await;
    sql(
        &app.database_url,
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
    )
    .await;
    sql(
        &app.database_url,
        "UPDATE audit_log SET seq = 3 WHERE seq = -1",
    )
    .await;
    let (ok, out) = audit_verify(&app).await;
    assert!(
        !ok && out.contains("record 2"),
        "reordering not detected: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_credentials_are_rate_limited_per_address() {
    let app = TestApp::spawn("rate_limit", Engine::Sqlite).await;
    let mut limited = 0;
    let mut last = None;
    for i in 0..100 {
        let res = app
            .client
            .get(app.url("/apps"))
            .header("Authorization", format!("rk_bad{i}"))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited += 1;
            last = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let v: Value = res.json().await.unwrap();
            assert_eq!(v["error"], "rate_limited");
        }
    }
    assert!(
        limited >= 70,
        "only {limited} of 100 bad attempts were limited"
    );
    assert!(
        last.is_some_and(|r| r.parse::<u64>().unwrap() >= 1),
        "429 carries Retry-After"
    );
    // Even the right key is refused from the limited address...
    let (s, _) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 429);
    // ...and works from another one.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let base = app.base.clone();
    let res = other
        .get(format!("{base}/apps"))
        .header("Authorization", &app.root_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let failures = records_with(&other, &base, &app.root_key).await;
    assert!(failures >= 20, "auth failures are audited ({failures})");
}

async fn records_with(client: &reqwest::Client, base: &str, root: &str) -> usize {
    let v: Value = client
        .get(format!("{base}/audit?limit=1000"))
        .header("Authorization", root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "auth.failure")
        .count()
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
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl req");
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
