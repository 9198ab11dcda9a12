//! Apps: CRUD, auth, validation, and "a failed request changes nothing".

use hsm_rotator::alg::Algorithm;
use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::{Engine, TestApp, kids_in};
use crate::common::token::TestToken;

async fn crud(app: &TestApp) {
    let (id, pk, body) = app
        .create_app(json!({"name": "Billing", "signing_alg": "ES384", "token_ttl": 600}))
        .await;
    assert_eq!(id.len(), 26);
    assert!(pk.starts_with("pk_") && pk.len() == 46);
    for f in [
        "id",
        "name",
        "signing_alg",
        "rsa_bits",
        "rotation_period",
        "verification_ttl",
        "token_ttl",
        "refresh_ttl",
        "subject_dn",
        "issuer",
        "created_at",
        "updated_at",
        "cutoff_at",
    ] {
        assert!(body.get(f).is_some(), "missing {f} in {body}");
    }
    assert_eq!(body["signing_alg"], "ES384");
    assert_eq!(body["verification_ttl"], 900, "default is token_ttl + 300");
    assert_eq!(body["subject_dn"], "CN=Billing");
    assert_eq!(body["issuer"], format!("{}/apps/{id}", app.base));
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(kids_in(keys, "current").len(), 1);
    assert_eq!(kids_in(keys, "next").len(), 1);

    let (s, list) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200);
    assert!(
        list["apps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id)
    );
    let (s, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200);
    assert!(
        shown.get("access_token").is_none(),
        "the token is shown once only"
    );
    assert_eq!(
        shown["key_summary"]["current"],
        kids_in(keys, "current")[0].as_str()
    );

    let (s, patched) = app
        .root(
            "PATCH",
            &format!("/apps/{id}"),
            Some(json!({"rotation_period": 86400, "name": "Billing v2"})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["rotation_period"], 86400);
    assert_eq!(patched["name"], "Billing v2");

    let labels_before = app.token_labels();
    for k in keys {
        assert!(labels_before.contains(&format!("hsm-rotator/{}", k["kid"].as_str().unwrap())));
    }
    let (s, del) = app.root("DELETE", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200, "{del}");
    assert_eq!(del["revoked_kids"].as_array().unwrap().len(), 2);
    let labels_after = app.token_labels();
    for k in keys {
        assert!(
            !labels_after.contains(&format!("hsm-rotator/{}", k["kid"].as_str().unwrap())),
            "object left after delete"
        );
    }
    let (s, v) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("app_not_found")));
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    assert_eq!(s, 401, "a deleted app's token is dead");
}
both_engines!(app_crud, crud);

async fn auth(app: &TestApp) {
    let (a, pk_a, _) = app
        .create_app(json!({"name": "A", "signing_alg": "ES256"}))
        .await;
    let (b, _pk_b, _) = app
        .create_app(json!({"name": "B", "signing_alg": "ES256"}))
        .await;
    let res = app.client.get(app.url("/apps")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let wrong_root = format!("rk_{}", "A".repeat(43));
    let (s, v) = app.call("GET", "/apps", Some(&wrong_root), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("unauthorized")),
        "a wrong root key is an invalid credential (RFC 9110: 401)"
    );
    let (s, _) = app
        .call(
            "GET",
            "/apps",
            Some(&format!("Bearer {}", app.root_key)),
            None,
        )
        .await;
    assert_eq!(s, 200, "Bearer form of the root key works");
    let (s, _) = app.bearer(&pk_a, "GET", "/apps", None).await;
    assert_eq!(s, 403, "an app token is not the root key");
    let (s, _) = app
        .bearer(
            &pk_a,
            "POST",
            &format!("/apps/{b}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    assert_eq!(s, 403, "another app's token");
    let (s, _) = app
        .bearer(
            &format!("pk_{}", "x".repeat(43)),
            "POST",
            &format!("/apps/{a}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    assert_eq!(s, 401, "unknown token");
    let (s, _) = app
        .bearer(&pk_a, "GET", &format!("/apps/{a}/keys"), None)
        .await;
    assert_eq!(s, 200, "keys: root or app");
}
both_engines!(authentication, auth);

/// Everything a client can observe about an app, to compare before and after.
async fn snapshot(app: &TestApp, id: &str) -> Value {
    let (_, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    let keys = app.keys(id).await;
    // The spare pool refills in the background, so compare only this app's objects.
    let labels = app.token_labels();
    let objects: Vec<bool> = keys
        .iter()
        .map(|k| labels.contains(&format!("hsm-rotator/{}", k["kid"].as_str().unwrap())))
        .collect();
    json!({"app": shown, "keys": keys, "jwks": app.jwks(id).await, "objects": objects})
}

async fn bad_input_changes_nothing(app: &TestApp) {
    let alg = app.token.prefer(
        "bad_input_changes_nothing",
        Algorithm::EdDSA,
        Algorithm::ES256,
    );
    let (id, pk, _) = app
        .create_app(json!({"name": "Stable", "signing_alg": alg.as_str()}))
        .await;
    let before = snapshot(app, &id).await;
    let cases: Vec<(&str, String, Option<Value>, u16)> = vec![
        (
            "POST",
            "/apps".into(),
            Some(json!({"name": "x", "signing_alg": "none"})),
            422,
        ),
        (
            "POST",
            "/apps".into(),
            Some(json!({"name": "x", "signing_alg": "HS256"})),
            422,
        ),
        (
            "POST",
            "/apps".into(),
            Some(json!({"name": "x", "token_ttl": 7200, "verification_ttl": 60})),
            422,
        ),
        (
            "POST",
            "/apps".into(),
            Some(json!({"name": "x", "rsa_bits": 1024})),
            422,
        ),
        ("POST", "/apps".into(), Some(json!({"name": ""})), 422),
        (
            "POST",
            "/apps".into(),
            Some(json!({"name": "x", "surprise": true})),
            422,
        ),
        ("POST", "/apps".into(), Some(json!({"name": 5})), 422),
        (
            "PATCH",
            format!("/apps/{id}"),
            Some(json!({"token_ttl": -5})),
            422,
        ),
        (
            "PATCH",
            format!("/apps/{id}"),
            Some(json!({"signing_alg": "RS1"})),
            422,
        ),
        (
            "PATCH",
            format!("/apps/{id}"),
            Some(json!({"subject_dn": "not a dn"})),
            422,
        ),
        ("GET", "/apps/..%2F..%2Fetc%2Fpasswd".into(), None, 404),
        (
            "GET",
            "/apps/01ARZ3NDEKTSV4RRFFQ69G5FA'--".into(),
            None,
            404,
        ),
        (
            "POST",
            format!("/apps/{id}/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV/revoke"),
            None,
            404,
        ),
        ("POST", format!("/apps/{id}/keys/notakid/revoke"), None, 404),
        (
            "DELETE",
            "/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            None,
            404,
        ),
    ];
    for (m, path, body, want) in cases {
        let (s, v) = app.root(m, &path, body.clone()).await;
        assert_eq!(s, want, "{m} {path} {body:?} -> {v}");
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "error JSON for {m} {path}: {v}"
        );
    }
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {"iat": 1}})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (422, Some("reserved_claim")));
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}, "ttl": 999_999})),
        )
        .await;
    assert_eq!(s, 422);
    // Malformed JSON, wrong content type, oversized body.
    let res = app
        .client
        .post(app.url("/apps"))
        .header("Authorization", &app.root_key)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .post(app.url("/apps"))
        .header("Authorization", &app.root_key)
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let huge = json!({"name": "x".repeat(70_000)});
    let (s, v) = app.root("POST", "/apps", Some(huge)).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(
        snapshot(app, &id).await,
        before,
        "a failed request changed state"
    );
    let (_, list) = app.root("GET", "/apps", None).await;
    assert_eq!(
        list["apps"].as_array().unwrap().len(),
        1,
        "no app was created by a failed request"
    );
}
both_engines!(failed_requests_change_nothing, bad_input_changes_nothing);

/// What PS256 needs besides what PS384 and the other RSA algorithms need too.
const PS256_SIGN: &str = "CKM_SHA256_RSA_PKCS_PSS";

/// An algorithm the token lacks (its module configured to leave out PS256's signing
/// mechanism, as a token without it would) is refused with a 422 naming it, decided from
/// the token's mechanism list; nothing is written; the other algorithms keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_the_token_lacks_is_refused_with_a_clear_error() {
    let token = TestToken::with_denied("alg_lacking", &[PS256_SIGN]);
    assert!(
        token.lacks(Algorithm::PS256).is_some(),
        "the module ignored its mechanism deny list"
    );
    assert_eq!(token.lacks(Algorithm::PS384), None);
    let app = TestApp::spawn_on(token, Engine::Sqlite, &[]).await;

    let (s, v) = app
        .root(
            "POST",
            "/apps",
            Some(json!({"name": "Pss", "signing_alg": "PS256"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "unsupported_algorithm", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("PS256") && message.contains(PS256_SIGN),
        "{message}"
    );
    let (s, apps) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200);
    assert_eq!(apps["apps"].as_array().map(Vec::len), Some(0), "{apps}");

    // An app on an algorithm the token has; its policy cannot move to the one it lacks.
    let (id, pk, _) = app
        .create_app(json!({"name": "Es", "signing_alg": "ES256"}))
        .await;
    let (s, v) = app
        .root(
            "PATCH",
            &format!("/apps/{id}"),
            Some(json!({"signing_alg": "PS256", "rsa_bits": 2048})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "unsupported_algorithm", "{v}");
    let (_, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(shown["signing_alg"], "ES256", "{shown}");
    let t = app.issue(&id, &pk, json!({"sub": "s"})).await;
    assert!(app.active(&id, &pk, t["token"].as_str().unwrap()).await);
    let (_, _, created) = app
        .create_app(json!({"name": "Pss384", "signing_alg": "PS384"}))
        .await;
    assert_eq!(created["signing_alg"], "PS384");

    let (s, ready) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{ready}");
    assert!(ready["spares"].get("PS256/2048").is_none(), "{ready}");
}

/// A store made on a token that had PS256, started on one that lost it: the service starts
/// and is ready, makes no PS256 spares (instead of failing on them at every refill), and
/// answers 422 naming the algorithm for the app that uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_algorithm_the_token_lost_gets_a_clear_error_and_the_rest_runs() {
    let app = TestApp::spawn("alg_lost", Engine::Sqlite).await;
    let root = app.root_key.clone();
    let db = app.database_url.clone();
    let (id, pk, _) = app
        .create_app(json!({"name": "Pss", "signing_alg": "PS256"}))
        .await;
    let token = app.kill().await;
    token.deny(&[PS256_SIGN]);
    assert!(token.lacks(Algorithm::PS256).is_some());
    let app = TestApp::start(token, db, &[]).await.with_root(&root);

    // Ready: the readiness probe does not pick a key the token cannot sign with.
    let (s, ready) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{ready}");
    for (method, path, body) in [
        ("POST", format!("/apps/{id}/keys/rotate"), None),
        (
            "POST",
            format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        ),
    ] {
        let (s, v) = if path.ends_with("/tokens") {
            app.bearer(&pk, method, &path, body).await
        } else {
            app.root(method, &path, body).await
        };
        assert_eq!(s, 422, "{method} {path}: {v}");
        assert_eq!(v["error"], "unsupported_algorithm", "{v}");
        assert!(v["message"].as_str().unwrap().contains("PS256"), "{v}");
    }
    // A working algorithm still works, and its creation wakes the spare refill.
    let (es, es_pk, _) = app
        .create_app(json!({"name": "Es", "signing_alg": "ES256"}))
        .await;
    let t = app.issue(&es, &es_pk, json!({"sub": "s"})).await;
    assert!(app.active(&es, &es_pk, t["token"].as_str().unwrap()).await);
    let (s, ready) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{ready}");
    let log = app.stderr();
    assert!(
        log.contains("algorithm unavailable on this token") && log.contains("PS256"),
        "the start-up log names what the token lacks"
    );
    assert!(
        !log.contains("spare refill failed"),
        "the refill tried the lost algorithm:\n{log}"
    );
}

/// Many apps created at once all succeed: concurrent requests take each other's spare
/// keys, and a request that lost the race makes its own rather than failing.
/// Eight clients, each creating apps and at once revoking each new app's next key (both take
/// spares), with the pool refilling behind them: every request succeeds. Before spare claims,
/// concurrent requests counted the same spares and some ran out on every retry (500).
async fn concurrent_creation(app: &TestApp) {
    let mut tasks = Vec::new();
    for client_no in 0..8 {
        let client = app.client.clone();
        let base = app.url("");
        let auth = format!("Bearer {}", app.root_key);
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..6 {
                let r = client
                    .post(format!("{base}/apps"))
                    .header("Authorization", &auth)
                    .json(&json!({"name": format!("Burst{client_no}-{i}"), "signing_alg": "ES256"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                if status != 201 {
                    failures.push(format!("create {status}: {body}"));
                    continue;
                }
                let next = kids_in(body["keys"].as_array().unwrap(), "next")[0].clone();
                let r = client
                    .post(format!(
                        "{base}/apps/{}/keys/{next}/revoke",
                        body["id"].as_str().unwrap()
                    ))
                    .header("Authorization", &auth)
                    .send()
                    .await
                    .unwrap();
                if r.status().as_u16() != 200 {
                    failures.push(format!(
                        "revoke {}: {}",
                        r.status(),
                        r.text().await.unwrap()
                    ));
                }
            }
            failures
        }));
    }
    for t in tasks {
        let failures = t.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}\n{}", app.log_tail());
    }
    let (s, list) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200);
    let apps = list["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 48);
    for a in apps {
        assert!(a["key_summary"]["current"].is_string(), "{a}");
        assert!(a["key_summary"]["next"].is_string(), "{a}");
    }
}
both_engines!(concurrent_creations_all_succeed, concurrent_creation);
