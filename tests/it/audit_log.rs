//! The audit log: what each change writes, tamper detection (`hsm-rotator audit verify`),
//! and the bounded number of records a flood of failed authentications writes.

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

pub(crate) async fn records(app: &TestApp) -> Vec<Value> {
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

/// 300 failures from one source, on native and compat routes, with attacker-chosen app
/// ids in the path: the audit log gets one record when the source's window opens and one
/// when it goes over budget, naming the source (not the path); the metrics count all 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failures_writes_a_bounded_number_of_audit_records() {
    let app = TestApp::spawn("auth_flood", Engine::Sqlite).await;
    let before = records(&app).await.len();
    for i in 0..300 {
        let path = match i % 3 {
            0 => "/apps".to_owned(),
            1 => format!("/apps/evil{i}%0A/keys"),
            _ => format!("/app/01ARZ3NDEKTSV4RRFFQ{i:07}/pub-keys"),
        };
        let (s, _) = app
            .call("GET", &path, Some("Bearer garbage-token"), None)
            .await;
        assert!(matches!(s, 401 | 403 | 429), "{path}: {s}");
    }
    let all = records(&app).await;
    let failures: Vec<&Value> = all
        .iter()
        .filter(|r| r["action"] == "auth.failure")
        .collect();
    assert_eq!(
        failures.len(),
        2,
        "one record per source per window, plus the one going over budget: {failures:?}"
    );
    // The spare pool's background refill (actor `system`) may still be writing its
    // `key.create` records: they are not the flood's.
    let flood: Vec<&Value> = all[before..]
        .iter()
        .filter(|r| r["actor"] != "system")
        .collect();
    assert!(flood.len() <= 2, "the flood wrote nothing else: {flood:?}");
    for r in &failures {
        assert_eq!(r["target"], "127.0.0.1", "the target is the source: {r}");
        let details = r["details"].to_string();
        assert!(
            !details.contains("evil"),
            "no attacker-chosen text: {details}"
        );
    }
    assert_eq!(failures[0]["outcome"], "denied");
    assert_eq!(failures[1]["outcome"], "throttled");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hsm_rotator_auth_failures_total{credential=\"unrecognised\"} 300"),
        "every failure is counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("auth_failures") || l.contains("rate_limited"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (ok, out) = audit_verify(&app).await;
    assert!(ok, "{out}");
}

/// `GET /audit/verify` while changes are appended and sealed meanwhile: every answer is
/// intact. (It reads records and seals page by page; the sealer sealing an earlier page's
/// tail between two reads, or a record appended and sealed after the last page, once read as
/// deleted seals or a deleted record.)
async fn verified_while_appending(app: &TestApp) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (id, _, _) = app
        .create_app(json!({"name": "Busy", "signing_alg": "ES256"}))
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (base, root, id) = (app.base.clone(), app.root_key.clone(), id.clone());
            let (stop, changes) = (stop.clone(), changes.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = changes.fetch_add(1, Ordering::Relaxed);
                    let r = client
                        .patch(format!("{base}/apps/{id}"))
                        .bearer_auth(&root)
                        .json(&json!({"name": format!("Busy {i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for _ in 0..40 {
        let (s, v) = app.root("GET", "/audit/verify", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["ok"], true, "verified while appending: {v}");
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        changes.load(Ordering::Relaxed) > 40,
        "too few changes landed while the log was verified"
    );
}
crate::both_engines!(
    the_log_verifies_while_changes_are_appended_and_sealed,
    verified_while_appending
);
