//! Integrity against a database writer (issue 26): the audit log is sealed with a secret
//! that lives in the HSM, so editing, deleting or rebuilding it in the database shows in
//! `audit verify`.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row as _;

use super::audit_log::{audit_verify, sql, verify_store};
use crate::common::app::{Engine, TestApp};

/// Some audited activity: an app, a token, a rotation, a flush.
async fn activity(app: &TestApp) -> String {
    let (id, pk, _) = app
        .create_app(json!({"name": "Integrity", "signing_alg": "ES256"}))
        .await;
    app.issue(&id, &pk, json!({"sub": "s1"})).await;
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert!(s < 300, "{v}");
    id
}

/// Wait until the sealer has sealed every record (it runs moments after each append).
async fn sealed(app: &TestApp) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let (s, v) = app.root("GET", "/audit/verify", None).await;
        assert_eq!(s, 200, "{v}\n{}", app.log_tail());
        assert_eq!(v["ok"], true, "{v}");
        if v["unsealed"] == 0 && v["seals"].as_i64() > Some(0) && v["hsm_mark"] == v["records"] {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the audit log was never sealed: {last}\n{}", app.log_tail());
}

async fn audit_rows(url: &str) -> Vec<Vec<Value>> {
    let mut c = crate::common::app::any_conn(url).await;
    let rows = sqlx::query("SELECT seq, id, at, actor, action, target, outcome, request_id, details FROM audit_log ORDER BY seq")
        .fetch_all(&mut c)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            vec![
                json!(r.get::<i64, _>("seq")),
                json!(r.get::<String, _>("id")),
                json!(r.get::<i64, _>("at")),
                json!(r.get::<String, _>("actor")),
                json!(r.get::<String, _>("action")),
                json!(r.get::<String, _>("target")),
                json!(r.get::<String, _>("outcome")),
                json!(r.get::<String, _>("request_id")),
                json!(r.get::<String, _>("details")),
            ]
        })
        .collect()
}

/// What an insider with the database and the source can do: delete record `gone`, number
/// the rest densely again and recompute every hash with plain SHA-256, as
/// `store::audit::record_hash` does.
async fn rebuild_without(url: &str, gone: i64) {
    use sha2::Digest as _;
    let rows = audit_rows(url).await;
    let mut c = crate::common::app::any_conn(url).await;
    sqlx::query("DELETE FROM audit_log")
        .execute(&mut c)
        .await
        .unwrap();
    let mut prev = "0".repeat(64);
    let mut seq = 0i64;
    for r in rows.into_iter().filter(|r| r[0] != json!(gone)) {
        seq += 1;
        let mut fields = vec![json!(prev), json!(seq)];
        fields.extend(r[1..].iter().cloned());
        let canonical = Value::Array(fields).to_string();
        let hash: String = sha2::Sha256::digest(canonical.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        sqlx::query("INSERT INTO audit_log (seq, id, at, actor, action, target, outcome, request_id, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(seq)
            .bind(r[1].as_str().unwrap().to_owned())
            .bind(r[2].as_i64().unwrap())
            .bind(r[3].as_str().unwrap().to_owned())
            .bind(r[4].as_str().unwrap().to_owned())
            .bind(r[5].as_str().unwrap().to_owned())
            .bind(r[6].as_str().unwrap().to_owned())
            .bind(r[7].as_str().unwrap().to_owned())
            .bind(r[8].as_str().unwrap().to_owned())
            .bind(prev.clone())
            .bind(hash.clone())
            .execute(&mut c)
            .await
            .unwrap();
        prev = hash;
    }
}

async fn every_seal_deleted(app: TestApp) {
    activity(&app).await;
    sealed(&app).await;
    let (ok, out) = audit_verify(&app).await;
    assert!(ok && out.contains("intact"), "{out}");
    sql(&app.database_url, "DELETE FROM audit_macs").await;
    let (ok, out) = audit_verify(&app).await;
    assert!(
        !ok && out.contains("record 1") && out.contains("seals were deleted"),
        "deleted seals not detected: {out}"
    );
    // A restart does not paper over it: the sealer refuses to seal again what the HSM's
    // mark says was sealed.
    let app = app.restart().await;
    let (s, v) = app.root("GET", "/audit/verify", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    let (ok, out) = audit_verify(&app).await;
    assert!(!ok && out.contains("seals were deleted"), "{out}");
}

async fn chain_rebuilt_with_sha256(app: TestApp) {
    activity(&app).await;
    sealed(&app).await;
    let n = audit_rows(&app.database_url).await.len();
    assert!(n >= 6, "{n} records");
    let gone = i64::try_from(n / 2).unwrap();
    // Stop the service while the database is rewritten, as an insider would.
    let root = app.root_key.clone();
    let url = app.database_url.clone();
    let token = app.kill().await;
    rebuild_without(&url, gone).await;
    let app = TestApp::start(token, url, &[]).await.with_root(&root);
    let (ok, out) = audit_verify(&app).await;
    assert!(
        !ok && out.contains(&format!("record {gone} ")) && out.contains("HSM seal"),
        "rebuilt chain not detected at record {gone}: {out}"
    );
    // With the seals deleted too, verify still fails and says so.
    sql(&app.database_url, "DELETE FROM audit_macs").await;
    let (ok, out) = audit_verify(&app).await;
    assert!(
        !ok && out.contains("seals were deleted"),
        "rebuilt chain without seals not detected: {out}"
    );
}

async fn forged_tail_record(app: TestApp) {
    activity(&app).await;
    sealed(&app).await;
    let url = app.database_url.clone();
    let token = app.kill().await;
    // A record appended by a database writer, correctly hash-chained but never sealed.
    let rows = audit_rows(&url).await;
    let last = rows.last().unwrap().clone();
    let mut c = crate::common::app::any_conn(&url).await;
    let head: String = sqlx::query("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get("hash");
    let seq = last[0].as_i64().unwrap() + 1;
    let at = last[2].as_i64().unwrap() - 600;
    let fields = json!([
        head,
        seq,
        "01FORGED0000000000000000000",
        at,
        "root",
        "key.rotate",
        "x",
        "ok",
        "",
        "{}"
    ]);
    let hash: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(fields.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    sqlx::query("INSERT INTO audit_log (seq, id, at, actor, action, target, outcome, request_id, details, prev_hash, hash) VALUES ($1, '01FORGED0000000000000000000', $2, 'root', 'key.rotate', 'x', 'ok', '', '{}', $3, $4)")
        .bind(seq)
        .bind(at)
        .bind(head)
        .bind(hash)
        .execute(&mut c)
        .await
        .unwrap();
    // Left unsealed for longer than audit_seal_max_lag: verify names it.
    let (ok, out) = verify_store(&token, &url, &[("HSM_ROTATOR_AUDIT_SEAL_MAX_LAG", "60")]).await;
    assert!(
        !ok && out.contains(&format!("record {seq} is still unsealed")),
        "forged record not detected: {out}"
    );
}

async fn anchored_once(app: TestApp) {
    activity(&app).await;
    sealed(&app).await;
    let app = app.restart().await;
    activity(&app).await;
    sealed(&app).await;
    let (s, v) = app
        .root("GET", "/audit?action=audit.anchor&limit=1000", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let anchors = v["records"].as_array().unwrap();
    assert_eq!(anchors.len(), 1, "{v}");
    assert_eq!(anchors[0]["actor"], "system", "{v}");
}

/// The mark moves on every seal pass without piling up objects in the token (on SoftHSM2,
/// which will not change a data object's value in place, by a new object and the old one's
/// destruction), and a restarted process finds it again.
async fn one_mark_however_many_passes(app: TestApp) {
    let audit_objects = |app: &TestApp| {
        let mut l: Vec<String> = app
            .token
            .labels()
            .into_iter()
            // pkcs11-tool quotes a data object's label.
            .map(|l| l.trim_matches('\'').to_owned())
            .filter(|l| l.ends_with("/audit-mark") || l.ends_with("/audit-mac"))
            .collect();
        l.sort();
        l
    };
    let mut marks = Vec::new();
    for _ in 0..3 {
        activity(&app).await;
        marks.push(sealed(&app).await["hsm_mark"].as_i64().unwrap());
    }
    assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
    let objects = audit_objects(&app);
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(
        objects
            .iter()
            .filter(|l| l.ends_with("/audit-mark"))
            .count(),
        1,
        "{objects:?}"
    );
    let app = app.restart().await;
    activity(&app).await;
    let v = sealed(&app).await;
    assert!(v["hsm_mark"].as_i64().unwrap() > marks[2], "{v}");
    assert_eq!(audit_objects(&app), objects);
    let (ok, out) = audit_verify(&app).await;
    assert!(ok && out.contains("intact"), "{out}");
}

crate::both_engines_owned!(
    deleting_every_audit_seal_fails_audit_verify,
    every_seal_deleted
);
crate::both_engines_owned!(
    audit_chain_rebuilt_with_sha256_fails_at_the_first_bad_record,
    chain_rebuilt_with_sha256
);
crate::both_engines_owned!(
    a_record_added_in_the_database_fails_audit_verify_once_older_than_the_lag,
    forged_tail_record
);
crate::both_engines_owned!(the_existing_log_is_anchored_in_the_hsm_once, anchored_once);
crate::both_engines_owned!(
    the_audit_mark_stays_one_object_in_the_token,
    one_mark_however_many_passes
);

/// A change and its audit record commit together: when the record cannot be written, the
/// change does not happen either (before, the rotation stayed and its record was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_audit_record_cannot_be_written_does_not_happen() {
    let app = TestApp::spawn("audit_same_tx", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Tx", "signing_alg": "ES256"}))
        .await;
    let before = app.keys(&id).await;
    sql(
        &app.database_url,
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log unavailable'); END",
    )
    .await;
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 500, "{v}");
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 500, "{v}");
    sql(&app.database_url, "DROP TRIGGER audit_down").await;
    assert_eq!(
        app.keys(&id).await,
        before,
        "the rotation happened without its record"
    );
    let (s, v) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["cutoff_at"].is_null(),
        "the flush happened without its record: {v}"
    );
}

/// A numeric `sub` is refused (a subject logout, which names subjects by string, could
/// never reach such a token); JWTPlus's sign answers a type mismatch as JWTPlus does (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_string_sub_is_refused() {
    let app = TestApp::spawn("sub_not_string", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Sub", "signing_alg": "ES256"}))
        .await;
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {"sub": 123}})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "invalid_claim", "{v}");
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&pk),
            Some(json!({"sub": 123, "aud": "a", "ip": "127.0.0.1", "useragent": "t"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["errors"]["error_message"], "invalid json data type",
        "{v}"
    );
}
