//! The credentials the operator rotates natively: an app's access token
//! (`POST /apps/{id}/access-token`) and the root key (`POST /root-key/rotate`). Each new
//! secret is shown once with `Cache-Control: no-store`, works at once, and the old one is
//! dead at once (natively 401; the compat families keep their own answers).

use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::TestApp;

/// A POST with a raw `Authorization` value; the status, `Cache-Control` and body.
async fn post(app: &TestApp, path: &str, auth: &str) -> (u16, String, Value) {
    let res = app
        .client
        .post(app.url(path))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let cache = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, res.json().await.unwrap())
}

async fn new_access_token(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Rekey", "signing_alg": "ES256"}))
        .await;
    let jwt = app.issue(&id, &pk, json!({"sub": "u"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/apps/{id}/access-token");

    // Only the root key may do it.
    let (s, _, e) = post(app, &path, &format!("Bearer {pk}")).await;
    assert_eq!((s, e["error"].as_str()), (403, Some("forbidden")), "{e}");

    let (s, cache, v) = post(app, &path, &format!("Bearer {}", app.root_key)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(cache, "no-store", "a secret is never cached");
    assert_eq!(v["app_id"], id.as_str());
    let new = v["access_token"].as_str().unwrap().to_owned();
    assert!(new.starts_with("pk_") && new.len() == 46, "{new}");
    assert_ne!(new, pk);

    let keys = format!("/apps/{id}/keys");
    let (s, e) = app.bearer(&pk, "GET", &keys, None).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (401, Some("unauthorized")),
        "the old token is dead"
    );
    let (s, _) = app.bearer(&new, "GET", &keys, None).await;
    assert_eq!(s, 200, "the new token works at once");
    assert!(
        app.active(&id, &new, &jwt).await,
        "session tokens stay valid (unlike PocketPaw's regenerate, which also flushes)"
    );
    // JWTPlus sees the same change in its own dialect.
    let (s, e) = app
        .call("GET", &format!("/app/{id}"), Some(&pk), None)
        .await;
    assert_eq!((s, &e["errors"]), (403, &json!("invalid app key or id")));

    let (s, e) = app
        .root(
            "POST",
            "/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV/access-token",
            None,
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (404, Some("app_not_found")));

    let (s, v) = app
        .root(
            "GET",
            &format!("/audit?app={id}&action=app.access_token_regenerate"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{v}");
    assert_eq!(recs[0]["actor"], "root");
    assert!(!v.to_string().contains(&new), "no secret in the audit log");
}
both_engines!(
    a_new_access_token_works_at_once_and_the_old_one_is_dead,
    new_access_token
);

async fn new_root_key(app: &TestApp) {
    let (_, pk, _) = app
        .create_app(json!({"name": "Bystander", "signing_alg": "ES256"}))
        .await;
    let (s, _, e) = post(app, "/root-key/rotate", &format!("Bearer {pk}")).await;
    assert_eq!((s, e["error"].as_str()), (403, Some("forbidden")), "{e}");

    // The raw header works as well as Bearer.
    let (s, cache, v) = post(app, "/root-key/rotate", &app.root_key).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(cache, "no-store", "a secret is never cached");
    let new = v["root_key"].as_str().unwrap().to_owned();
    assert!(new.starts_with("rk_") && new.len() == 46, "{new}");
    assert_eq!(v.as_object().unwrap().len(), 1, "only the key: {v}");

    let old = app.root_key.clone();
    let (s, e) = app
        .call("GET", "/apps", Some(&format!("Bearer {old}")), None)
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (401, Some("unauthorized")),
        "the old key is dead"
    );
    let (s, _) = app
        .call("GET", "/apps", Some(&format!("Bearer {new}")), None)
        .await;
    assert_eq!(s, 200, "the new key works at once");
    let (s, e) = app.call("GET", "/root/list", Some(&old), None).await;
    assert_eq!(
        (s, &e["errors"]),
        (403, &json!("invalid root key")),
        "JWTPlus too"
    );
    // Rotating again with the old key is refused; the new key stays.
    let (s, _, _) = post(app, "/root-key/rotate", &old).await;
    assert_eq!(s, 401);

    let (s, v) = app
        .call("GET", "/audit?action=root.rotate", Some(&new), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{v}");
    assert_eq!(recs[0]["actor"], "root");
    assert!(!v.to_string().contains(&new) && !v.to_string().contains(&old));
}
both_engines!(
    a_new_root_key_works_at_once_and_the_old_one_is_dead,
    new_root_key
);
