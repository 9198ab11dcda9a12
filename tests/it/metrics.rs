//! `GET /metrics` after a known sequence of requests, and the per-request log span.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp, kids_in};

/// Samples of metric `name` in a Prometheus text exposition: labels (sorted `k=v` joined
/// by `,`) → value.
fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let mut pairs: Vec<String> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| p.trim_end_matches('"').replacen("=\"", "=", 1))
            .collect();
        pairs.sort();
        out.insert(pairs.join(","), value.parse::<f64>().unwrap());
    }
    out
}

async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    res.text().await.unwrap()
}

async fn audit_rows(app: &TestApp) -> usize {
    let (s, v) = app.root("GET", "/audit?limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().unwrap().len()
}

fn http(route: &str, method: &str, status: u16) -> String {
    format!("method={method},route={route},status={status}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_after_a_known_sequence() {
    let app = TestApp::spawn("metrics_sequence", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Metrics", "signing_alg": "ES256"}))
        .await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        let v = app.issue(&id, &pk, json!({"sub": format!("u{i}")})).await;
        tokens.push(v["token"].as_str().unwrap().to_owned());
    }
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200, "rotate: {v}");
    let keys = app.keys(&id).await;
    let previous = kids_in(&keys, "previous");
    assert_eq!(previous.len(), 1, "{keys:?}");
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/keys/{}/revoke", previous[0]),
            None,
        )
        .await;
    assert_eq!(s, 200, "revoke: {v}");
    assert!(
        !app.active(&id, &pk, &tokens[0]).await,
        "signed by the revoked key"
    );
    // One revocation at each other grain (the first tokens died with their key: revoking
    // one of them revokes nothing, and counts nothing), and an emergency rotation.
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": tokens[1]})),
        )
        .await;
    assert_eq!(s, 200);
    let fresh = app.issue(&id, &pk, json!({"sub": "u9"})).await;
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": fresh["token"]})),
        )
        .await;
    assert_eq!(s, 200, "revoke token: {v}");
    let (s, v) = app
        .bearer(&pk, "DELETE", &format!("/apps/{id}/sessions?sub=u2"), None)
        .await;
    assert_eq!(s, 200, "logout: {v}");
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200, "flush: {v}");
    let (s, v) = app
        .call(
            "GET",
            &format!("/root/{id}/rotate/pki"),
            Some(&app.root_key),
            None,
        )
        .await;
    assert_eq!(s, 200, "emergency: {v}");
    let (s, _) = app.call("GET", "/no/such/route-s3cr3t", None, None).await;
    assert_eq!(s, 404);
    let (s, _) = app.call("BREW", "/coffee", None, None).await;
    assert_eq!(s, 404);

    // The spare pool refills in the background and audits what it does: read the audit
    // log until it holds still around a scrape.
    let mut audit_calls = 0;
    let mut scrapes = 0;
    let (text, rows) = loop {
        let before = audit_rows(&app).await;
        let text = scrape(&app).await;
        let after = audit_rows(&app).await;
        audit_calls += 2;
        scrapes += 1;
        if before == after {
            break (text, after);
        }
        assert!(scrapes < 50, "the audit log never held still");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every HTTP request, exactly, by route template; the scrape that produced `text`
    // is counted after it answered, and the last audit read after that.
    let mut want = BTreeMap::from([
        (http("/apps", "POST", 201), 1.0),
        (http("/apps/{id}/tokens", "POST", 201), 4.0),
        (http("/apps/{id}/keys/rotate", "POST", 200), 1.0),
        (http("/apps/{id}/keys", "GET", 200), 1.0),
        (http("/apps/{id}/keys/{kid}/revoke", "POST", 200), 1.0),
        (http("/apps/{id}/tokens/introspect", "POST", 200), 1.0),
        (http("/apps/{id}/tokens/revoke", "POST", 200), 2.0),
        (http("/apps/{id}/sessions", "DELETE", 200), 1.0),
        (http("/apps/{id}/tokens/flush", "POST", 200), 1.0),
        (http("/root/{app_id}/rotate/pki", "GET", 200), 1.0),
        (http("unmatched", "GET", 404), 1.0),
        (http("unmatched", "OTHER", 404), 1.0),
        (http("/audit", "GET", 200), f64::from(audit_calls - 1)),
    ]);
    if scrapes > 1 {
        want.insert(http("/metrics", "GET", 200), f64::from(scrapes - 1));
    }
    assert_eq!(samples(&text, "hsm_rotator_http_requests_total"), want);
    assert!(
        !text.contains("s3cr3t"),
        "a raw path leaked into the metrics"
    );
    assert!(!text.contains(&id), "an app id leaked into the metrics");
    // The latency histogram counts the same requests.
    let counts = samples(&text, "hsm_rotator_http_request_duration_seconds_count");
    assert_eq!(counts, want);

    assert_eq!(
        samples(&text, "hsm_rotator_rotations_total"),
        BTreeMap::from([
            ("kind=emergency".to_owned(), 1.0),
            ("kind=graceful".to_owned(), 1.0)
        ])
    );
    assert_eq!(
        samples(&text, "hsm_rotator_revocations_total"),
        BTreeMap::from([
            ("grain=app".to_owned(), 1.0),
            ("grain=key".to_owned(), 1.0),
            ("grain=subject".to_owned(), 1.0),
            ("grain=token".to_owned(), 1.0),
        ])
    );
    assert_eq!(
        samples(&text, "hsm_rotator_audit_records_appended_total"),
        BTreeMap::from([(String::new(), rows as f64)])
    );
    assert!(rows >= 4, "create, rotate, revoke and more: {rows}");
    assert!(samples(&text, "hsm_rotator_hsm_errors_total").is_empty());
    assert!(samples(&text, "hsm_rotator_store_errors_total").is_empty());
    // The four issuances' ledger rows, in as many transactions as the writer made of them.
    let ledger_rows = samples(&text, "hsm_rotator_ledger_batch_rows_sum");
    assert_eq!(ledger_rows, BTreeMap::from([(String::new(), 4.0)]));
    let commits = samples(&text, "hsm_rotator_ledger_batch_rows_count")[""];
    assert!((1.0..=4.0).contains(&commits), "{commits}");
    assert_eq!(
        samples(&text, "hsm_rotator_ledger_commit_duration_seconds_count")[""],
        commits
    );

    // Four issuances signed with ES256 (certificates are signed too, so at least four).
    let signed = samples(&text, "hsm_rotator_hsm_sign_duration_seconds_count");
    assert!(signed["alg=ES256"] >= 4.0, "{signed:?}");
    assert_eq!(signed["alg=RS256"], 0.0);
    let buckets = samples(&text, "hsm_rotator_hsm_sign_duration_seconds_bucket");
    assert_eq!(buckets["alg=ES256,le=+Inf"], signed["alg=ES256"]);
    let waits = samples(&text, "hsm_rotator_hsm_pool_wait_seconds_count");
    assert!(waits[""] >= signed["alg=ES256"], "{waits:?}");
    assert_eq!(
        samples(&text, "hsm_rotator_hsm_pool_sessions"),
        BTreeMap::from([(String::new(), 4.0)])
    );
    assert!(samples(&text, "hsm_rotator_hsm_pool_sessions_in_use").contains_key(""));
    let spares = samples(&text, "hsm_rotator_spare_keys");
    // The app's spec is listed even when the emergency rotation took its last spares.
    assert!(spares.contains_key("alg=ES256,rsa_bits=0"), "{spares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_route_app_and_kid_but_no_token() {
    let app = TestApp::spawn_with(
        "metrics_json_log",
        Engine::Sqlite,
        &[("HSM_ROTATOR_LOG_FORMAT", "json")],
    )
    .await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Logs", "signing_alg": "ES256"}))
        .await;
    let issued = app.issue(&id, &pk, json!({"sub": "alice"})).await;
    let token = issued["token"].as_str().unwrap();
    let kid = issued["kid"].as_str().unwrap();
    let (s, _) = app.call("GET", "/nowhere", None, None).await;
    assert_eq!(s, 404);
    let (s, _) = app.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 200);

    // The completion event of the issuance is logged once the response is sent; the
    // metrics request above was answered after it, so it is in the file.
    let log = app.stderr();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "request done" && l["span"]["route"] == "/apps/{id}/tokens"
        })
        .collect();
    assert_eq!(done.len(), 1, "{log}");
    let span = &done[0]["span"];
    assert_eq!(span["name"], "request");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["app"], id.as_str());
    assert_eq!(span["kid"], kid);
    assert!(span["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(done[0]["fields"]["status"], 201);
    assert!(done[0]["fields"]["latency_ms"].as_f64().is_some());

    // Unmatched routes log under the fixed label (the raw path is not a span field).
    let miss: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request done" && l["span"]["route"] == "unmatched")
        .collect();
    assert_eq!(miss.len(), 1, "{log}");
    assert_eq!(miss[0]["fields"]["status"], 404);
    assert!(miss[0]["span"].get("app").is_none());
    for secret in [token, pk.as_str(), app.root_key.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    let payload = token.split('.').nth(1).unwrap();
    assert!(!log.contains(payload), "a token payload reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_failures_are_counted_by_ckr_code() {
    let app = TestApp::spawn("metrics_hsm_errors", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Away", "signing_alg": "ES256"}))
        .await;
    app.issue(&id, &pk, json!({"sub": "x"})).await;
    assert!(samples(&scrape(&app).await, "hsm_rotator_hsm_errors_total").is_empty());

    // The token directory goes away (as in faults.rs): issuance fails with a 503.
    let tokens = app.token.path().join("hsm/tokens");
    let away = app.token.path().join("hsm/tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    std::fs::rename(&away, &tokens).unwrap();
    assert_eq!(s, 503, "{v}");

    let text = scrape(&app).await;
    let errors = samples(&text, "hsm_rotator_hsm_errors_total");
    assert!(!errors.is_empty(), "no HSM error counted");
    for (labels, n) in &errors {
        let code = labels.strip_prefix("code=").unwrap();
        assert!(
            code == "library" || code.chars().all(|c| c.is_ascii_alphanumeric()),
            "{labels}"
        );
        assert!(*n >= 1.0);
    }
    assert_eq!(
        samples(&text, "hsm_rotator_http_requests_total")[&http("/apps/{id}/tokens", "POST", 503)],
        1.0
    );
}
