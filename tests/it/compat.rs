//! The rest of the JWTPlus surface (every route of peer-apis.md Part A).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::TestApp;

use crate::seed_jwtplus_app_pki::create_body;

mod answers;
async fn jwtplus_surface(app: &TestApp) {
    let root = app.root_key.clone();
    // Validation shapes.
    let (s, v) = app.call("POST", "/root/create", Some(&root), None).await;
    assert_eq!((s, v), (400, json!({"errors": "empty request body"})));
    let res = app
        .client
        .post(app.url("/root/create"))
        .header("Authorization", &root)
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"errors": {"error_field": "", "error_message": "invalid json format"}})
    );
    let (s, v) = app
        .call(
            "POST",
            "/root/create",
            Some(&root),
            Some(json!({"name": 5})),
        )
        .await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"errors": {"error_field": "", "error_message": "invalid json data type"}})
        )
    );
    let mut bad = create_body("RS256", "ECDSA");
    bad["token_expire"] = json!(10);
    bad["name"] = json!("bad<name>");
    let (s, v) = app
        .call("POST", "/root/create", Some(&root), Some(bad))
        .await;
    assert_eq!(s, 400);
    let errs = v["errors"].as_array().unwrap();
    assert!(errs.contains(&json!({"error_field": "name", "error_message": "This field accepts alpha, numbers & spaces only."})));
    assert!(errs.contains(&json!({"error_field": "token_expire", "error_message": "This field accepts the minimum value of 60"})));
    assert!(errs.contains(&json!({"error_field": "key_type", "error_message": "This field accepts preconfigured values only."})), "key_type must match algo: {v}");
    let (_, list) = app.call("GET", "/root/list", Some(&root), None).await;
    assert_eq!(list, json!({"apps": []}), "failed creates changed nothing");

    let (s, c) = app
        .call(
            "POST",
            "/root/create",
            Some(&root),
            Some(create_body("PS512", "RSA")),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    for f in ["app_id", "app_key", "public_key", "algo"] {
        assert!(c.get(f).is_some(), "{f}");
    }
    let id = c["app_id"].as_str().unwrap().to_owned();
    let key = c["app_key"].as_str().unwrap().to_owned();
    let (_, list) = app.call("GET", "/root/list", Some(&root), None).await;
    let a = &list["apps"][0];
    for f in [
        "id",
        "name",
        "description",
        "token_expiry",
        "token_notbefore",
        "refresh_expiry",
        "refresh_notbefore",
        "key_type",
        "algo",
        "rotation_period",
        "add_time",
        "update_time",
        "last_key_rotate",
    ] {
        assert!(a.get(f).is_some(), "{f} missing in {a}");
    }
    assert_eq!(a["key_type"], "RSA");
    assert_eq!(a["token_expiry"], 600);

    // App routes.
    let (s, v) = app
        .call("GET", &format!("/app/{id}"), Some(&key), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["app"]["id"], id.as_str());
    let (s, v) = app
        .call("GET", &format!("/app/{id}"), Some("wrong"), None)
        .await;
    assert_eq!((s, v), (403, json!({"errors": "invalid app key or id"})));
    let (s, v) = app.call("GET", "/app/nope", Some(&key), None).await;
    assert_eq!((s, v), (403, json!({"errors": "invalid app id"})));
    let (_, keys) = app
        .call("GET", &format!("/app/{id}/pub-keys"), Some(&key), None)
        .await;
    let k0 = &keys["keys"][0];
    for f in [
        "key_id",
        "public_key",
        "key_type",
        "key_algo",
        "exp_time",
        "is_expired",
        "is_revoked",
    ] {
        assert!(k0.get(f).is_some(), "{f}");
    }
    let sign_body = json!({"sub": "alice", "aud": "shop", "ip": "192.168.1.2", "useragent": "Mozilla/5.0", "plan": "gold"});
    let (s, pair) = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(sign_body.clone()),
        )
        .await;
    assert_eq!(s, 200, "{pair}");
    for f in ["key_id", "public_key", "auth_token", "refresh_token"] {
        assert!(pair[f].is_string(), "{f}");
    }
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(
                pair["auth_token"]
                    .as_str()
                    .unwrap()
                    .split('.')
                    .nth(1)
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["jid"], payload["jti"], "tokens carry jid and jti");
    assert_eq!(payload["plan"], "gold");
    let mut over = sign_body.clone();
    over["exp"] = json!(1);
    let (s, _) = app
        .call("POST", &format!("/app/{id}/sign"), Some(&key), Some(over))
        .await;
    assert_eq!(s, 422, "reserved claims cannot be overridden");
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(json!({"sub": "a", "aud": "b", "ip": "999.1.1.1", "useragent": "x"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0]["error_field"], "ip");
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/get-session"),
            Some(&key),
            Some(json!({"sub": "alice"})),
        )
        .await;
    let sess = &v["sessions"][0];
    for f in [
        "token_id",
        "key_id",
        "auth_token_iat",
        "auth_token_nbf",
        "auth_token_exp",
        "refresh_token_iat",
        "refresh_token_nbf",
        "refresh_token_exp",
        "ip_address",
        "user_agent",
    ] {
        assert!(sess.get(f).is_some(), "{f}");
    }
    assert_eq!(sess["ip_address"], "192.168.1.2");
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/get-session"),
            Some(&key),
            Some(json!({"sub": "nobody"})),
        )
        .await;
    assert_eq!(v, json!({"sessions": null}));
    let (s, renewed) = app
        .call(
            "POST",
            &format!("/app/{id}/renew"),
            Some(&key),
            Some(
                json!({"refresh_token": pair["refresh_token"], "ip": "10.1.1.1", "useragent": "x"}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{renewed}");
    assert!(!renewed["auth_token"].as_str().unwrap().is_empty());
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": pair["auth_token"]})),
        )
        .await;
    assert_eq!(
        v,
        json!({"verified": false}),
        "renew retires the old access token"
    );
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/renew"),
            Some(&key),
            Some(
                json!({"refresh_token": pair["refresh_token"], "ip": "10.1.1.1", "useragent": "x"}),
            ),
        )
        .await;
    assert_eq!(
        (s, v),
        (404, json!({"message": "invalid refresh token"})),
        "single use"
    );
    let fresh = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(sign_body.clone()),
        )
        .await
        .1;
    let (s, v) = app
        .call(
            "POST",
            &format!("/app/{id}/logout"),
            Some(&key),
            Some(json!({"token": fresh["auth_token"]})),
        )
        .await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": fresh["auth_token"]})),
        )
        .await;
    assert_eq!(v, json!({"verified": false}));

    // Root maintenance routes.
    let mut patch = create_body("PS512", "RSA");
    patch.as_object_mut().unwrap().remove("algo");
    patch.as_object_mut().unwrap().remove("key_type");
    patch["name"] = json!("Shop API two");
    let (s, v) = app
        .call("PATCH", &format!("/root/{id}"), Some(&root), Some(patch))
        .await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let (s, v) = app
        .call("GET", &format!("/root/{id}/rotate/key"), Some(&root), None)
        .await;
    assert_eq!(s, 200);
    let key2 = v["app_key"].as_str().unwrap().to_owned();
    let (s, _) = app
        .call("GET", &format!("/app/{id}"), Some(&key), None)
        .await;
    assert_eq!(s, 403, "old app key dead");
    let live = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key2),
            Some(sign_body.clone()),
        )
        .await
        .1;
    let kid = live["key_id"].as_str().unwrap().to_owned();
    let (s, v) = app
        .call(
            "DELETE",
            &format!("/root/{id}/revoke/{kid}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key2),
            Some(json!({"token": live["auth_token"]})),
        )
        .await;
    assert_eq!(v, json!({"verified": false}));
    let (s, v) = app
        .call(
            "DELETE",
            &format!("/root/{id}/revoke/bad"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!((s, v), (403, json!({"errors": "invalid app or key id"})));
    let t = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key2),
            Some(sign_body.clone()),
        )
        .await
        .1;
    let (s, _) = app
        .call("DELETE", &format!("/root/{id}/flush"), Some(&root), None)
        .await;
    assert_eq!(s, 200);
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key2),
            Some(json!({"token": t["auth_token"]})),
        )
        .await;
    assert_eq!(v, json!({"verified": false}), "flushed");
    let (s, v) = app
        .call("DELETE", &format!("/root/{id}"), Some(&root), None)
        .await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let (s, _) = app
        .call("DELETE", &format!("/root/{id}"), Some(&root), None)
        .await;
    assert_eq!(s, 404, "existence is checked");
    let (s, v) = app.call("GET", "/ping", None, None).await;
    assert_eq!((s, v), (200, json!("pong")));
    let (s, v) = app.call("GET", "/health", None, None).await;
    assert_eq!((s, v), (200, json!({"message": "ok"})));
}
both_engines!(jwtplus_full_surface, jwtplus_surface);
