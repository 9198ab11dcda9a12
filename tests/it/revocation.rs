//! Revocation at every grain: token, subject (see tokens.rs), key, app.

use serde_json::json;

use crate::both_engines;
use crate::common::app::{TestApp, kids_in};

async fn token_grain(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Rev", "signing_alg": "ES256"}))
        .await;
    let a = app.issue(&id, &pk, json!({"sub": "u1"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.issue(&id, &pk, json!({"sub": "u1"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .post(app.url(&format!("/apps/{id}/tokens/revoke")))
        .header("Authorization", format!("Bearer {pk}"))
        .form(&[("token", a.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!app.active(&id, &pk, &a).await, "revoked token");
    assert!(app.active(&id, &pk, &b).await, "only that token");
    // RFC 7009: an unknown token is not an error.
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": "garbage"})),
        )
        .await;
    assert_eq!(s, 200);
}
both_engines!(revoke_one_token, token_grain);

async fn key_grain(app: &TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "KeyRev", "signing_alg": "ES384"}))
        .await;
    let keys = created["keys"].as_array().unwrap();
    let (cur, next) = (
        kids_in(keys, "current")[0].clone(),
        kids_in(keys, "next")[0].clone(),
    );
    let t = app.issue(&id, &pk, json!({"sub": "k"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, r) = app
        .root("POST", &format!("/apps/{id}/keys/{cur}/revoke"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["revoked"]["state"], "revoked");
    assert!(r["revoked"]["revoked_at"].is_string());
    assert_eq!(
        r["current"]["kid"],
        next.as_str(),
        "revoking current promotes next"
    );
    assert_eq!(r["revoked_tokens"], 1);
    assert!(
        !app.active(&id, &pk, &t).await,
        "tokens of a revoked key are rejected"
    );
    let jwks = app.jwks(&id).await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != cur.as_str()),
        "gone from JWKS"
    );
    assert!(
        !app.token_labels().contains(&format!("hsm-rotator/{cur}")),
        "HSM object destroyed"
    );
    let keys = app.keys(&id).await;
    let revoked = keys.iter().find(|k| k["kid"] == cur.as_str()).unwrap();
    assert!(revoked["destroyed_at"].is_string());
    let (s, e) = app
        .root("POST", &format!("/apps/{id}/keys/{cur}/revoke"), None)
        .await;
    assert_eq!((s, e["error"].as_str()), (409, Some("key_not_revocable")));
    let t2 = app.issue(&id, &pk, json!({"sub": "k"})).await;
    assert_eq!(t2["kid"], next.as_str());
    assert!(app.active(&id, &pk, t2["token"].as_str().unwrap()).await);
    // Revoking the next key replaces it from the pool.
    let new_next = kids_in(&app.keys(&id).await, "next")[0].clone();
    let (s, r) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/keys/{new_next}/revoke"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(r["next"]["kid"], new_next.as_str());
    assert_eq!(kids_in(&app.keys(&id).await, "next").len(), 1);
}
both_engines!(revoke_one_key, key_grain);

async fn app_grain(app: &TestApp) {
    let alg = app.token.prefer(
        "app_grain",
        hsm_rotator::alg::Algorithm::EdDSA,
        hsm_rotator::alg::Algorithm::ES256,
    );
    let (id, pk, _) = app
        .create_app(json!({"name": "Flush", "signing_alg": alg.as_str()}))
        .await;
    let old = app.issue(&id, &pk, json!({"sub": "f"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !app.active(&id, &pk, &old).await,
        "every earlier token rejected"
    );
    let new = app.issue(&id, &pk, json!({"sub": "f"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        app.active(&id, &pk, &new).await,
        "tokens issued after the flush work"
    );
    let (_, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert!(shown["cutoff_at"].is_string());
}
both_engines!(flush_the_whole_app, app_grain);

/// A refresh token issued with an access token that a revoked key signed is dead too: the
/// session ends with the key (JWTPlus refresh JWTs are signed by that key as well).
async fn refresh_dies_with_key(app: &TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "KeyRefresh", "signing_alg": "ES256", "refresh_ttl": 3600}))
        .await;
    let cur = kids_in(created["keys"].as_array().unwrap(), "current")[0].clone();
    let v = app.issue(&id, &pk, json!({"sub": "r"})).await;
    assert_eq!(v["kid"], cur.as_str());
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, r) = app
        .root("POST", &format!("/apps/{id}/keys/{cur}/revoke"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, e) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    // A session started under the new current key still refreshes.
    let v = app.issue(&id, &pk, json!({"sub": "r"})).await;
    let (s, r) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": v["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
}
both_engines!(refresh_tokens_die_with_their_key, refresh_dies_with_key);

/// The app's records of `action` in the audit log (details parsed).
async fn audit_of(app: &TestApp, id: &str, action: &str) -> Vec<serde_json::Value> {
    let (s, v) = app
        .root("GET", &format!("/audit?app={id}&action={action}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

/// Native emergency rotation with the app's own token: every key revoked and destroyed,
/// every earlier token rejected, fresh current and next keys, and the answer says what was
/// cut off (the same figures the blast radius showed beforehand). Audited with the caller.
async fn emergency_with_app_token(app: &TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "Breach", "signing_alg": "ES256"}))
        .await;
    let keys = created["keys"].as_array().unwrap();
    let mut old = vec![
        kids_in(keys, "current")[0].clone(),
        kids_in(keys, "next")[0].clone(),
    ];
    let mut tokens = Vec::new();
    for sub in ["alice", "bob", "alice"] {
        tokens.push(
            app.issue(&id, &pk, json!({"sub": sub})).await["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (s, radius) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(s, 200, "{radius}");

    let (s, r) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/keys/emergency-rotate"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["app_id"], id.as_str());
    let mut revoked: Vec<String> = r["revoked_kids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    revoked.sort();
    old.sort();
    assert_eq!(revoked, old, "every key of the app revoked");
    assert_eq!(r["revoked_tokens"], 3);
    assert_eq!(r["affected_subjects"], 2);
    assert_eq!(r["revoked_tokens"], radius["live_tokens"]);
    assert_eq!(r["affected_subjects"], radius["subjects"]);
    assert!(r["revoked_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(r["current"]["state"], "current");
    assert_eq!(r["next"]["state"], "next");
    let (cur, next) = (
        r["current"]["kid"].as_str().unwrap().to_owned(),
        r["next"]["kid"].as_str().unwrap().to_owned(),
    );
    assert!(!old.contains(&cur) && !old.contains(&next), "fresh keys");

    for t in &tokens {
        assert!(!app.active(&id, &pk, t).await, "earlier tokens rejected");
    }
    let listed = app.keys(&id).await;
    for kid in &old {
        let k = listed.iter().find(|k| k["kid"] == kid.as_str()).unwrap();
        assert_eq!(k["state"], "revoked");
        assert!(k["destroyed_at"].is_string(), "{kid} destroyed");
        assert!(
            !app.token_labels().contains(&format!("hsm-rotator/{kid}")),
            "{kid}'s HSM objects are gone"
        );
    }
    let jwks: Vec<String> = app.jwks(&id).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jwks.len(), 2);
    assert!(jwks.contains(&cur) && jwks.contains(&next), "{jwks:?}");
    let fresh = app.issue(&id, &pk, json!({"sub": "alice"})).await;
    assert_eq!(fresh["kid"], cur.as_str());
    assert!(app.active(&id, &pk, fresh["token"].as_str().unwrap()).await);

    let recs = audit_of(app, &id, "key.emergency_rotate").await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["actor"], format!("app:{id}"));
}
both_engines!(
    emergency_rotation_cuts_off_every_key_and_token_and_says_what_it_cut,
    emergency_with_app_token
);

/// An app's own emergency rotations spend its key-change budget: 429 with `Retry-After`
/// in the native shape once it is spent, nothing changed; the root key is not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_by_an_app_is_limited_and_by_the_root_key_is_not() {
    let app = TestApp::spawn("emergency_budget", crate::common::app::Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Loop", "signing_alg": "ES256"}))
        .await;
    let path = format!("/apps/{id}/keys/emergency-rotate");
    let mut limited = None;
    for i in 0..10 {
        let res = app
            .client
            .post(app.url(&path))
            .header("Authorization", format!("Bearer {pk}"))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = Some((i, res));
            break;
        }
        assert_eq!(res.status(), 200, "call {i}");
    }
    let (n, res) = limited.expect("the app's budget ran out");
    assert!(n >= 1, "at least one emergency rotation went through");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let before = app.keys(&id).await;
    let (s, _) = app.bearer(&pk, "POST", &path, None).await;
    assert_eq!(s, 429);
    assert_eq!(
        app.keys(&id).await,
        before,
        "a refused call changes nothing"
    );
    let (s, r) = app.root("POST", &path, None).await;
    assert_eq!(s, 200, "the root key is not limited: {r}");
}
