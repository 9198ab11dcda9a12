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
