//! JWTPlus (`/root/*`, `/app/{app_id}/*`): the seeds `jwtplus-rotate-app-pki.txt` and
//! `jwtplus-rotate-root-key.txt` replayed as written (raw root key in `Authorization`), and
//! every route of the peer's surface with its validation and error shapes.

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
both_engines!(the_rotate_pki_seed_replays_as_written, seed_rotate_pki);

/// `GET /root/rotate` with the raw root key (jwtplus-rotate-root-key.txt).
async fn seed_root_rotate(app: &TestApp) {
    let old = app.root_key.clone();
    let (s, v) = app.call("GET", "/root/rotate", Some(&old), None).await;
    assert_eq!(s, 200, "{v}");
    let new = v["new-key"]
        .as_str()
        .expect("new-key is a string")
        .to_owned();
    assert!(new.starts_with("rk_") && new.len() == 46);
    assert_eq!(v.as_object().unwrap().len(), 1, "only new-key");
    // JWTPlus answers 403 to a wrong root key; the native API 401 (RFC 9110).
    for (m, p, refused) in [
        ("GET", "/root/list", 403),
        ("GET", "/root/rotate", 403),
        ("GET", "/apps", 401),
    ] {
        let (s, _) = app.call(m, p, Some(&old), None).await;
        assert_eq!(s, refused, "old root key still works on {m} {p}");
    }
    let (s, v) = app.call("GET", "/root/list", Some(&old), None).await;
    assert_eq!((s, v), (403, json!({"errors": "invalid root key"})));
    let (s, v) = app.call("GET", "/root/list", None, None).await;
    assert_eq!((s, v), (403, json!({"errors": "invalid root token"})));
    let (s, v) = app.call("GET", "/root/list", Some(&new), None).await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"apps": []}));
    let (s, _) = app
        .call("GET", "/apps", Some(&format!("Bearer {new}")), None)
        .await;
    assert_eq!(s, 200, "new key works on native routes too");
    let (s, v) = app
        .call("POST", "/root/rotate", Some(&format!("Bearer {new}")), None)
        .await;
    assert_eq!(s, 200, "POST and Bearer accepted: {v}");
}
both_engines!(
    the_rotate_root_key_seed_replays_as_written,
    seed_root_rotate
);

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
both_engines!(
    every_jwtplus_route_answers_in_its_peers_shapes,
    jwtplus_surface
);

/// JWTPlus finds no row for a refresh token before its `refresh_token_nbf`
/// (`refresh_token_nbf < now`): renew answers 404 `invalid refresh token` and changes
/// nothing. Presented twice, it is still not taken for a spent token: no family revocation
/// kills the access token issued with it, and the session stays listed.
async fn refresh_before_its_not_before(app: &TestApp) {
    let root = app.root_key.clone();
    let mut body = create_body("ES256", "ECDSA");
    body["refresh_notbefore"] = json!(300);
    let (s, created) = app
        .call("POST", "/root/create", Some(&root), Some(body))
        .await;
    assert_eq!(s, 200, "{created}");
    let id = created["app_id"].as_str().unwrap().to_owned();
    let key = created["app_key"].as_str().unwrap().to_owned();
    let (s, pair) = app
        .call(
            "POST",
            &format!("/app/{id}/sign"),
            Some(&key),
            Some(json!({"sub": "carol", "aud": "shop", "ip": "10.0.0.1", "useragent": "curl"})),
        )
        .await;
    assert_eq!(s, 200, "{pair}");
    let rt = pair["refresh_token"].as_str().unwrap().to_owned();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["nbf"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(),
        300,
        "{payload}"
    );
    let renew = json!({"refresh_token": rt, "ip": "10.0.0.1", "useragent": "curl"});
    for attempt in ["first", "second"] {
        let (s, v) = app
            .call(
                "POST",
                &format!("/app/{id}/renew"),
                Some(&key),
                Some(renew.clone()),
            )
            .await;
        assert_eq!(
            (s, v),
            (404, json!({"message": "invalid refresh token"})),
            "{attempt} renew inside the refresh not-before window"
        );
    }
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/verify"),
            Some(&key),
            Some(json!({"token": pair["auth_token"]})),
        )
        .await;
    assert_eq!(v, json!({"verified": true}), "the access token lives on");
    let (_, v) = app
        .call(
            "POST",
            &format!("/app/{id}/get-session"),
            Some(&key),
            Some(json!({"sub": "carol"})),
        )
        .await;
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, audit) = app.root("GET", "/audit?limit=100", None).await;
    assert_eq!(s, 200, "{audit}");
    assert!(
        !audit.to_string().contains("refresh_reuse"),
        "no reuse was recorded: {audit}"
    );
}
both_engines!(
    a_refresh_token_inside_its_not_before_window_is_refused_and_changes_nothing,
    refresh_before_its_not_before
);

/// JWTPlus has no refresh reuse detection: a refresh token renewed already is simply not
/// found. Renewing it again answers JWTPlus's 404 and revokes nothing (our family
/// revocation is a native guardrail): the renewed pair keeps working, and the reuse is an
/// audit record.
async fn renew_twice(app: &TestApp) {
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
    let call = |path: &'static str, body: Value| {
        let (app, id, key) = (app, id.clone(), key.clone());
        async move {
            app.call("POST", &format!("/app/{id}/{path}"), Some(&key), Some(body))
                .await
        }
    };
    let sign = json!({"sub": "erin", "aud": "shop", "ip": "10.0.0.1", "useragent": "curl"});
    let (s, other) = call("sign", sign.clone()).await;
    assert_eq!(s, 200, "{other}");
    let (s, pair) = call("sign", sign).await;
    assert_eq!(s, 200, "{pair}");
    let renew =
        json!({"refresh_token": pair["refresh_token"], "ip": "10.0.0.1", "useragent": "curl"});
    let (s, renewed) = call("renew", renew.clone()).await;
    assert_eq!(s, 200, "{renewed}");
    let (s, v) = call("renew", renew).await;
    assert_eq!(
        (s, v),
        (404, json!({"message": "invalid refresh token"})),
        "JWTPlus's answer to a renewed refresh token"
    );
    for (what, t) in [
        ("the renewed pair", &renewed["auth_token"]),
        ("the other session", &other["auth_token"]),
    ] {
        let (_, v) = call("verify", json!({"token": t})).await;
        assert_eq!(v, json!({"verified": true}), "{what} lives on");
    }
    let (s, again) = call(
        "renew",
        json!({"refresh_token": renewed["refresh_token"], "ip": "10.0.0.1", "useragent": "curl"}),
    )
    .await;
    assert_eq!(s, 200, "the family was not revoked: {again}");
    let recs = crate::audit_log::records(app).await;
    assert!(
        recs.iter().any(|r| r["action"] == "token.refresh_reuse"
            && r["target"] == id.as_str()
            && r["outcome"] == "not_revoked_compat"),
        "the reuse is audited: {recs:?}"
    );
}
both_engines!(
    a_jwtplus_renew_of_a_renewed_token_is_not_found_and_revokes_nothing,
    renew_twice
);
