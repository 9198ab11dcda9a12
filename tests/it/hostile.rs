//! Hostile input on every family of routes: each gets a 4xx with a JSON error, and the store
//! and the token are unchanged afterwards.

use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp};

async fn snapshot(app: &TestApp, id: &str) -> Value {
    let (_, apps) = app.root("GET", "/apps", None).await;
    let keys = app.keys(id).await;
    let labels = app.token_labels();
    let objects: Vec<bool> = keys
        .iter()
        .map(|k| labels.contains(&format!("hsm-rotator/{}", k["kid"].as_str().unwrap())))
        .collect();
    json!({"apps": apps, "keys": keys, "objects": objects, "jwks": app.jwks(id).await})
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_json_4xx_and_change_nothing() {
    let app = TestApp::spawn("hostile", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Target", "signing_alg": "ES256"}))
        .await;
    let t = app.issue(&id, &pk, json!({"sub": "keep"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = snapshot(&app, &id).await;
    let root = app.root_key.clone();
    let bearer_pk = format!("Bearer {pk}");
    let ids = [
        "../../etc/passwd",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV' OR '1'='1",
        "%00",
        "🔑",
        "01ARZ3NDEKTSV4RRFFQ69G5FA\u{301}V",
        "x".repeat(5000).leak(),
        ";DROP TABLE apps;--",
    ];
    let mut n = 0;
    for bad in ids {
        let enc = urlencode(bad);
        for (method, path, auth) in [
            ("GET", format!("/apps/{enc}"), root.as_str()),
            ("DELETE", format!("/apps/{enc}"), root.as_str()),
            ("POST", format!("/apps/{enc}/keys/rotate"), root.as_str()),
            (
                "POST",
                format!("/apps/{id}/keys/{enc}/revoke"),
                root.as_str(),
            ),
            ("POST", format!("/apps/{enc}/tokens"), bearer_pk.as_str()),
            ("GET", format!("/apps/{enc}/.well-known/jwks.json"), ""),
            ("GET", format!("/root/{enc}/rotate/pki"), root.as_str()),
            ("DELETE", format!("/root/{id}/revoke/{enc}"), root.as_str()),
            ("GET", format!("/app/{enc}"), pk.as_str()),
            (
                "POST",
                format!("/connections/{enc}/keys/rotate"),
                bearer_pk.as_str(),
            ),
        ] {
            let (s, v) = app
                .call(method, &path, (!auth.is_empty()).then_some(auth), None)
                .await;
            assert!((400..500).contains(&s), "{method} {path} -> {s} {v}");
            assert!(v.is_object(), "{method} {path}: not JSON: {v}");
            n += 1;
        }
    }
    // Bodies: malformed, wrong types, unknown fields, deep nesting, odd unicode, bad algorithms.
    let bodies: Vec<(&str, String, String)> = vec![
        ("POST", "/apps".into(), nested(10_000)),
        ("POST", "/apps".into(), r#"{"name": "\ud800"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "signing_alg": "none"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "signing_alg": "HS256"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "signing_alg": "ES256\u0000"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "a\u0007b"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "subject_dn": "CN=x\nO=evil"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "rotation_period": 1e308}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "token_ttl": "3600"}"#.into()),
        ("POST", "/apps".into(), r#"{"name": "ok", "__proto__": {}}"#.into()),
        ("PATCH", format!("/apps/{id}"), r#"{"verification_ttl": -1}"#.into()),
        ("POST", "/root/create".into(), nested(5_000)),
        ("POST", "/root/create".into(), r#"{"name": "x", "algo": "none", "key_type": "RSA", "token_expire": 60, "refresh_expire": 60, "refresh_notbefore": 0, "rotation_period": 60}"#.into()),
        ("POST", format!("/connections/{id}/keys/rotate"), r#"{"signing_alg": "none"}"#.into()),
        ("POST", format!("/connections/{id}/keys/rotate"), r#"{"signing_alg": ["RS256"]}"#.into()),
    ];
    for (method, path, body) in bodies {
        let auth = if path.starts_with("/connections") {
            format!("Bearer {root}")
        } else {
            root.clone()
        };
        let res = app
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                app.url(&path),
            )
            .header("Authorization", auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let s = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            (400..500).contains(&s),
            "{method} {path} {} -> {s} {v}",
            &body[..body.len().min(80)]
        );
        assert!(v.is_object(), "{method} {path}: not JSON");
        n += 1;
    }
    // Token-side hostility: bodies on the token routes.
    for body in [
        json!({"claims": {"sub": "x"}, "ttl": -1}),
        json!({"claims": "not an object"}),
        json!({"claims": {"jti": "mine"}}),
        json!({"claims": {"nbf": 0}}),
    ] {
        let (s, v) = app
            .bearer(
                &pk,
                "POST",
                &format!("/apps/{id}/tokens"),
                Some(body.clone()),
            )
            .await;
        assert!(s == 422 || s == 400, "{body} -> {s} {v}");
        n += 1;
    }
    for token in [
        String::new(),
        "a.b.c".into(),
        "e30.e30.".into(),
        format!("{t}x"),
        "x".repeat(70_000),
    ] {
        let (s, v) = app
            .bearer(
                &pk,
                "POST",
                &format!("/apps/{id}/tokens/introspect"),
                Some(json!({"token": token})),
            )
            .await;
        assert!(
            s == 200 && v == json!({"active": false}) || s == 413,
            "{s} {v}"
        );
        n += 1;
    }
    // Credentials with odd characters never authenticate and never crash.
    for auth in [
        "Bearer",
        "Bearer  ",
        "rk_\u{0}",
        "Basic Zm9vOmJhcg==",
        "Bearer pk_../../",
        "bearer rk_🔑",
    ] {
        if let Ok(res) = app
            .client
            .get(app.url("/apps"))
            .header("Authorization", auth)
            .send()
            .await
        {
            assert!(
                matches!(res.status().as_u16(), 401 | 403),
                "{auth:?} -> {}",
                res.status()
            );
        }
        n += 1;
    }
    assert!(n >= 100, "{n} hostile requests");
    assert_eq!(
        snapshot(&app, &id).await,
        before,
        "hostile requests changed state"
    );
    assert!(
        app.active(&id, &pk, &t).await,
        "the earlier token still verifies"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
