//! Seed `jwtplus-rotate-app-pki.txt`, replayed as written: `GET /root/{app-id}/rotate/pki`
//! with the raw root key.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::TestApp;

pub(crate) fn create_body(algo: &str, key_type: &str) -> Value {
    json!({
        "name": "Shop API", "description": "the shop", "token_expire": 600, "token_notbefore": 0,
        "refresh_expire": 3600, "refresh_notbefore": 0, "key_type": key_type, "algo": algo, "rotation_period": 86400
    })
}

/// `GET /root/{app-id}/rotate/pki` (jwtplus-rotate-app-pki.txt).
async fn seed_rotate_pki(app: &TestApp) {
    let root = app.root_key.clone();
    let (s, created) = app
        .call(
            "POST",
            "/root/create",
            Some(&root),
            Some(create_body("ES256", "ECDSA")),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    let id = created["app_id"].as_str().unwrap().to_owned();
    let key = created["app_key"].as_str().unwrap().to_owned();
    let signed = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(json!({"sub": "u1", "aud": "shop", "ip": "10.0.0.1", "useragent": "curl"})),
        )
        .await
        .1;
    let token = signed["auth_token"].as_str().unwrap().to_owned();
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(v, json!({"verified": true}));
    let old_kids: Vec<String> = app
        .keys(&id)
        .await
        .iter()
        .filter(|k| k["state"] != "revoked")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();

    let (s, v) = app
        .call("GET", &format!("/root/{id}/rotate/pki"), Some(&root), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["app_id"], id.as_str());
    assert_eq!(v["algo"], "ES256");
    let pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v["new_public_key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(v["kid"].is_string());
    let revoked: Vec<String> = v["revoked_kids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let mut a = revoked.clone();
    let mut b = old_kids.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "every key of the app revoked");
    assert!(v["revoked_at"].is_string());
    assert_eq!(v["revoked_tokens"], 1);
    assert_eq!(v["affected_subjects"], 1);

    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(v, json!({"verified": false}), "every earlier JWT rejected");
    assert!(!app.active(&id, &key, &token).await);
    let jwks = app.jwks(&id).await;
    let labels = app.token_labels();
    for k in &old_kids {
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["kid"] != k.as_str()),
            "{k} still in JWKS"
        );
        assert!(
            !labels.contains(&format!("hsm-rotator/{k}")),
            "{k} still in the HSM"
        );
    }
    let fresh = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(json!({"sub": "u1", "aud": "shop", "ip": "::1", "useragent": "curl"})),
        )
        .await
        .1;
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": fresh["auth_token"]})),
        )
        .await;
    assert_eq!(v, json!({"verified": true}), "new tokens work");
    // Wrong root key, unknown app, bad id.
    let (s, v) = app
        .call(
            "GET",
            &format!("/root/{id}/rotate/pki"),
            Some("rk_nope"),
            None,
        )
        .await;
    assert_eq!((s, v), (403, json!({"errors": "invalid root key"})));
    let (s, _) = app
        .call(
            "GET",
            "/root/01ARZ3NDEKTSV4RRFFQ69G5FAV/rotate/pki",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = app
        .call("GET", "/root/not-an-id/rotate/pki", Some(&root), None)
        .await;
    assert_eq!((s, v), (400, json!({"errors": "invalid app id"})));
}
both_engines!(seed_jwtplus_rotate_app_pki, seed_rotate_pki);
