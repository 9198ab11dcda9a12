//! The compatibility families' answers, recorded: a fixed script of requests to JWTPlus,
//! Auth0 and PocketPaw (successes and every error class), each answer reduced to its
//! status, the headers a client acts on and its body with ids, secrets and times replaced
//! by what they are. The result must equal `tests/golden/compat-answers.json`, so a
//! refactor that changes what a peer's client sees fails here with the differing answers.
//!
//! `UPDATE_GOLDEN=1` rewrites the file instead (review the diff before committing it).

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::common::app::{Engine, TestApp};

/// Fields whose value differs from run to run: reduced to what kind of value they hold.
const VARYING: &[&str] = &[
    "access_token",
    "add_time",
    "app_id",
    "app_key",
    "auth_token",
    "cert",
    "current_since",
    "current_until",
    "fingerprint",
    "id",
    "key_id",
    "kid",
    "new-key",
    "new_public_key",
    "pkcs",
    "public_key",
    "refresh_token",
    "revoked_at",
    "thumbprint",
    "token",
    "token_id",
];

/// What kind of value a varying string is.
fn kind_of(s: &str) -> String {
    let ulid = |s: &str| s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if s.is_empty() {
        "".into()
    } else if let Some(p) = ["pk_", "rk_"].iter().find(|p| s.starts_with(**p)) {
        format!("<{p}secret>")
    } else if s.split('.').count() == 3 && s.starts_with("eyJ") {
        "<jwt>".into()
    } else if ulid(s) {
        "<ulid>".into()
    } else if s.starts_with("-----BEGIN ") {
        format!("<pem {}>", s.lines().next().unwrap_or_default())
    } else if s.len() >= 20 && s.as_bytes().get(4) == Some(&b'-') && s.contains('T') {
        "<rfc3339>".into()
    } else {
        "<string>".into()
    }
}

/// The body with varying values replaced (`key` is the member holding `v`, if any).
fn normalise(key: Option<&str>, v: &Value) -> Value {
    let varying = key.is_some_and(|k| VARYING.contains(&k) || k.ends_with("_kids"));
    match v {
        Value::String(s) if varying => Value::String(kind_of(s)),
        // JWTPlus says 0 for "never updated", which it also is within the second of creation.
        Value::Number(_) if key == Some("update_time") => Value::String("<unix-time or 0>".into()),
        // Unix times.
        Value::Number(n) if n.as_i64().is_some_and(|n| n > 1_000_000_000) => {
            Value::String("<unix-time>".into())
        }
        // Key and app lists: the store's order among keys made in the same second is not
        // fixed (nor is it part of any peer's contract), so they compare as sets.
        Value::Array(a) if matches!(key, None | Some("keys" | "apps")) => {
            let mut a: Vec<Value> = a.iter().map(|e| normalise(key, e)).collect();
            a.sort_by_key(Value::to_string);
            Value::Array(a)
        }
        Value::Array(a) => Value::Array(a.iter().map(|e| normalise(key, e)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalise(Some(k), v)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// Records each answer of the script.
struct Recorder<'a> {
    app: &'a TestApp,
    answers: Vec<Value>,
    /// The family being recorded.
    family: &'static str,
    /// Placeholders for ids in recorded paths, longest first.
    names: Vec<(String, String)>,
}

impl Recorder<'_> {
    fn name(&mut self, value: &str, placeholder: &str) {
        self.names.push((value.to_owned(), placeholder.to_owned()));
        self.names.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    fn redact(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (v, p) in &self.names {
            s = s.replace(v.as_str(), p);
        }
        s
    }

    /// Send one request and record its answer under `what`; returns status and body.
    async fn send(
        &mut self,
        what: &str,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Body>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.app.client.request(m, self.app.url(path));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        match body {
            Some(Body::Json(v)) => rb = rb.json(&v),
            Some(Body::Raw(s)) => {
                rb = rb.header("Content-Type", "application/json").body(s);
            }
            None => {}
        }
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        let mut headers = Map::new();
        for h in [
            "content-type",
            "www-authenticate",
            "retry-after",
            "cache-control",
        ] {
            if let Some(v) = res.headers().get(h) {
                let v = v.to_str().unwrap();
                let v = if h == "retry-after" && v.parse::<u64>().is_ok() {
                    "<seconds>"
                } else {
                    v
                };
                headers.insert(h.into(), v.into());
            }
        }
        let text = res.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"text": text}));
        self.answers.push(json!({
            "what": format!("{}: {what}", self.family),
            "request": format!("{method} {}", self.redact(path)),
            "status": status,
            "headers": headers,
            "body": normalise(None, &body),
        }));
        (status, body)
    }
}

enum Body {
    Json(Value),
    Raw(String),
}

fn json_body(v: Value) -> Option<Body> {
    Some(Body::Json(v))
}

fn raw(s: &str) -> Option<Body> {
    Some(Body::Raw(s.to_owned()))
}

fn too_large() -> Option<Body> {
    Some(Body::Raw(format!(
        "{{\"name\": \"{}\"}}",
        "a".repeat(70_000)
    )))
}

fn jp_create(algo: &str, key_type: &str) -> Value {
    json!({
        "name": "Shop API", "description": "the shop", "token_expire": 600, "token_notbefore": 0,
        "refresh_expire": 3600, "refresh_notbefore": 0, "key_type": key_type, "algo": algo,
        "rotation_period": 86400
    })
}

async fn jwtplus(r: &mut Recorder<'_>, root: &str) {
    r.send("ping", "GET", "/ping", None, None).await;
    r.send("health", "GET", "/health", None, None).await;
    r.send("no credential", "GET", "/root/list", None, None)
        .await;
    r.send(
        "unknown root key",
        "GET",
        "/root/list",
        Some("rk_wrong"),
        None,
    )
    .await;
    r.send("not a root key", "GET", "/root/list", Some("garbage"), None)
        .await;
    r.send("empty list", "GET", "/root/list", Some(root), None)
        .await;
    r.send("empty body", "POST", "/root/create", Some(root), None)
        .await;
    r.send(
        "bad JSON",
        "POST",
        "/root/create",
        Some(root),
        raw("{\"name\":"),
    )
    .await;
    r.send(
        "not an object",
        "POST",
        "/root/create",
        Some(root),
        raw("[1]"),
    )
    .await;
    r.send(
        "wrong type",
        "POST",
        "/root/create",
        Some(root),
        json_body(json!({"name": 5})),
    )
    .await;
    r.send(
        "missing fields",
        "POST",
        "/root/create",
        Some(root),
        json_body(json!({"name": "x"})),
    )
    .await;
    let mut bad = jp_create("RS256", "ECDSA");
    bad["token_expire"] = json!(10);
    bad["rotation_period"] = json!(99_999_999_999_i64);
    bad["name"] = json!("bad<name>");
    bad["algo"] = json!("HS256");
    r.send(
        "invalid fields",
        "POST",
        "/root/create",
        Some(root),
        json_body(bad),
    )
    .await;
    r.send(
        "too large body",
        "POST",
        "/root/create",
        Some(root),
        too_large(),
    )
    .await;
    r.send("method not allowed", "PUT", "/root/list", Some(root), None)
        .await;
    r.send(
        "unknown route",
        "GET",
        "/root/nothing/here",
        Some(root),
        None,
    )
    .await;
    let (s, c) = r
        .send(
            "create",
            "POST",
            "/root/create",
            Some(root),
            json_body(jp_create("ES256", "ECDSA")),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let id = c["app_id"].as_str().unwrap().to_owned();
    let key = c["app_key"].as_str().unwrap().to_owned();
    r.name(&id, "{jp_app}");
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    r.name(unknown, "{unknown_app}");
    r.send("list", "GET", "/root/list", Some(root), None).await;
    r.send(
        "bearer root key",
        "GET",
        "/root/list",
        Some(&format!("Bearer {root}")),
        None,
    )
    .await;

    // App routes.
    let app_path = format!("/app/{id}");
    r.send("app info", "GET", &app_path, Some(&key), None).await;
    r.send(
        "app info, bearer",
        "GET",
        &app_path,
        Some(&format!("Bearer {key}")),
        None,
    )
    .await;
    r.send("app info, no credential", "GET", &app_path, None, None)
        .await;
    r.send("app info, wrong key", "GET", &app_path, Some("wrong"), None)
        .await;
    r.send("app info, root key", "GET", &app_path, Some(root), None)
        .await;
    r.send("app info, bad id", "GET", "/app/nope", Some(&key), None)
        .await;
    r.send(
        "app info, unknown app",
        "GET",
        &format!("/app/{unknown}"),
        Some(&key),
        None,
    )
    .await;
    r.send(
        "pub-keys",
        "GET",
        &format!("{app_path}/pub-keys"),
        Some(&key),
        None,
    )
    .await;
    let sign = format!("{app_path}/sign");
    let sign_body = json!({"sub": "alice", "aud": "shop", "ip": "192.168.1.2", "useragent": "Mozilla/5.0", "plan": "gold"});
    let (_, pair) = r
        .send(
            "sign",
            "POST",
            &sign,
            Some(&key),
            json_body(sign_body.clone()),
        )
        .await;
    r.send("sign, empty body", "POST", &sign, Some(&key), None)
        .await;
    r.send("sign, bad JSON", "POST", &sign, Some(&key), raw("{"))
        .await;
    r.send(
        "sign, missing fields and bad ip",
        "POST",
        &sign,
        Some(&key),
        json_body(json!({"sub": "alice", "ip": "999.1.1.1"})),
    )
    .await;
    let mut reserved = sign_body.clone();
    reserved["exp"] = json!(1);
    r.send(
        "sign, reserved claim",
        "POST",
        &sign,
        Some(&key),
        json_body(reserved),
    )
    .await;
    r.send(
        "sign, too large body",
        "POST",
        &sign,
        Some(&key),
        too_large(),
    )
    .await;
    r.send("sign, method not allowed", "GET", &sign, Some(&key), None)
        .await;
    let token = pair["auth_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    let verify = format!("{app_path}/verify");
    r.send(
        "verify",
        "POST",
        &verify,
        Some(&key),
        json_body(json!({"token": token})),
    )
    .await;
    r.send(
        "verify, not a jwt",
        "POST",
        &verify,
        Some(&key),
        json_body(json!({"token": "abc"})),
    )
    .await;
    r.send(
        "verify, forged jwt",
        "POST",
        &verify,
        Some(&key),
        json_body(json!({"token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"})),
    )
    .await;
    r.send(
        "get-session",
        "POST",
        &format!("{app_path}/get-session"),
        Some(&key),
        json_body(json!({"sub": "alice"})),
    )
    .await;
    r.send(
        "get-session, none",
        "POST",
        &format!("{app_path}/get-session"),
        Some(&key),
        json_body(json!({"sub": "nobody"})),
    )
    .await;
    let renew = format!("{app_path}/renew");
    let renew_body = json!({"refresh_token": refresh, "ip": "192.168.1.2", "useragent": "curl"});
    let (s, renewed) = r
        .send(
            "renew",
            "POST",
            &renew,
            Some(&key),
            json_body(renew_body.clone()),
        )
        .await;
    assert_eq!(s, 200, "{renewed}");
    r.send(
        "renew, reused",
        "POST",
        &renew,
        Some(&key),
        json_body(renew_body),
    )
    .await;
    r.send(
        "renew, not a jwt",
        "POST",
        &renew,
        Some(&key),
        json_body(json!({"refresh_token": "x", "ip": "192.168.1.2", "useragent": "curl"})),
    )
    .await;
    let token2 = renewed["auth_token"].as_str().unwrap().to_owned();
    r.send(
        "logout",
        "POST",
        &format!("{app_path}/logout"),
        Some(&key),
        json_body(json!({"token": token2})),
    )
    .await;

    // Root routes on the app.
    let root_app = format!("/root/{id}");
    let mut patch = jp_create("ES256", "ECDSA");
    patch["name"] = json!("Shop API 2");
    r.send(
        "patch",
        "PATCH",
        &root_app,
        Some(root),
        json_body(patch.clone()),
    )
    .await;
    r.send(
        "patch, invalid",
        "PATCH",
        &root_app,
        Some(root),
        json_body(json!({"name": "x", "token_expire": 1})),
    )
    .await;
    r.send(
        "patch, unknown app",
        "PATCH",
        &format!("/root/{unknown}"),
        Some(root),
        json_body(patch.clone()),
    )
    .await;
    r.send(
        "patch, bad id",
        "PATCH",
        "/root/nope",
        Some(root),
        json_body(patch),
    )
    .await;
    r.send("patch, app key", "PATCH", &root_app, Some(&key), None)
        .await;
    let old_key = key.clone();
    let (_, k) = r
        .send(
            "rotate/key",
            "GET",
            &format!("{root_app}/rotate/key"),
            Some(root),
            None,
        )
        .await;
    let key = k["app_key"].as_str().unwrap().to_owned();
    r.send("old app key", "GET", &app_path, Some(&old_key), None)
        .await;
    let (_, keys) = r
        .send(
            "pub-keys again",
            "GET",
            &format!("{app_path}/pub-keys"),
            Some(&key),
            None,
        )
        .await;
    let old_kid = keys["keys"][0]["key_id"].as_str().unwrap().to_owned();
    r.name(&old_kid, "{old_kid}");
    r.send(
        "rotate/pki",
        "GET",
        &format!("{root_app}/rotate/pki"),
        Some(root),
        None,
    )
    .await;
    r.send(
        "rotate/pki, unknown app",
        "POST",
        &format!("/root/{unknown}/rotate/pki"),
        Some(root),
        None,
    )
    .await;
    r.send(
        "revoke, already revoked",
        "DELETE",
        &format!("{root_app}/revoke/{old_kid}"),
        Some(root),
        None,
    )
    .await;
    r.send(
        "revoke, bad key id",
        "DELETE",
        &format!("{root_app}/revoke/nope"),
        Some(root),
        None,
    )
    .await;
    let (_, keys) = r
        .send(
            "pub-keys after pki",
            "GET",
            &format!("{app_path}/pub-keys"),
            Some(&key),
            None,
        )
        .await;
    let next = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "next")
        .map(|k| k["key_id"].as_str().unwrap().to_owned());
    if let Some(next) = next {
        r.name(&next, "{next_kid}");
        r.send(
            "revoke next key",
            "DELETE",
            &format!("{root_app}/revoke/{next}"),
            Some(root),
            None,
        )
        .await;
    }
    r.send(
        "flush",
        "DELETE",
        &format!("{root_app}/flush"),
        Some(root),
        None,
    )
    .await;
    r.send(
        "delete, unknown app",
        "DELETE",
        &format!("/root/{unknown}"),
        Some(root),
        None,
    )
    .await;
    r.send("delete", "DELETE", &root_app, Some(root), None)
        .await;
    r.send("app info, deleted app", "GET", &app_path, Some(&key), None)
        .await;
}

async fn auth0(r: &mut Recorder<'_>, root: &str) {
    let (id, pk, _) = r
        .app
        .create_app(json!({"name": "Conn", "signing_alg": "ES256", "subject_dn": "CN=Conn,O=Acme"}))
        .await;
    let (other, other_pk, _) = r
        .app
        .create_app(json!({"name": "Other", "signing_alg": "ES256"}))
        .await;
    r.name(&id, "{a0_app}");
    r.name(&other, "{other_app}");
    let (rb, ab, ob) = (
        format!("Bearer {root}"),
        format!("Bearer {pk}"),
        format!("Bearer {other_pk}"),
    );
    for prefix in ["", "/api/v2"] {
        let keys = format!("{prefix}/connections/{id}/keys");
        let rotate = format!("{keys}/rotate");
        r.send("list, root", "GET", &keys, Some(&rb), None).await;
        r.send("list, app token", "GET", &keys, Some(&ab), None)
            .await;
        r.send("list, no credential", "GET", &keys, None, None)
            .await;
        r.send(
            "list, unknown token",
            "GET",
            &keys,
            Some("Bearer pk_nope"),
            None,
        )
        .await;
        r.send("list, another app's token", "GET", &keys, Some(&ob), None)
            .await;
        r.send(
            "list, unknown connection",
            "GET",
            &format!("{prefix}/connections/01ARZ3NDEKTSV4RRFFQ69G5FAV/keys"),
            Some(&rb),
            None,
        )
        .await;
        r.send(
            "list, bad id",
            "GET",
            &format!("{prefix}/connections/nope/keys"),
            Some(&rb),
            None,
        )
        .await;
        r.send("list, method not allowed", "DELETE", &keys, Some(&rb), None)
            .await;
        r.send("rotate", "POST", &rotate, Some(&rb), json_body(json!({})))
            .await;
        r.send("rotate early, no body", "POST", &rotate, Some(&rb), None)
            .await;
        r.send("rotate, bad JSON", "POST", &rotate, Some(&rb), raw("{"))
            .await;
        r.send(
            "rotate, not an object",
            "POST",
            &rotate,
            Some(&rb),
            raw("[]"),
        )
        .await;
        r.send(
            "rotate, extra property",
            "POST",
            &rotate,
            Some(&rb),
            json_body(json!({"x": 1})),
        )
        .await;
        r.send(
            "rotate, unknown alg",
            "POST",
            &rotate,
            Some(&rb),
            json_body(json!({"signing_alg": "HS256"})),
        )
        .await;
        r.send(
            "rotate, alg not a string",
            "POST",
            &rotate,
            Some(&rb),
            json_body(json!({"signing_alg": 5})),
        )
        .await;
        r.send(
            "rotate, app token changes alg",
            "POST",
            &rotate,
            Some(&ab),
            json_body(json!({"signing_alg": "ES384"})),
        )
        .await;
        r.send(
            "rotate, too large body",
            "POST",
            &rotate,
            Some(&rb),
            too_large(),
        )
        .await;
        r.send("rotate, no credential", "POST", &rotate, None, None)
            .await;
        r.send(
            "rotate, method not allowed",
            "GET",
            &rotate,
            Some(&rb),
            None,
        )
        .await;
    }
    // An app's own rotations are budgeted: the first refusal is recorded.
    let rotate = format!("/connections/{id}/keys/rotate");
    let mut throttled = false;
    for _ in 0..12 {
        let (s, v) = r
            .send(
                "rotate, app over its budget",
                "POST",
                &rotate,
                Some(&ab),
                None,
            )
            .await;
        if s == 429 {
            throttled = true;
            break;
        }
        // Only the refusal is recorded: how many calls the budget took depends on time.
        r.answers.pop();
        assert_eq!(s, 201, "{v}\n{}", r.app.log_tail());
    }
    assert!(throttled, "the app's budget of key changes runs out");
    r.send(
        "rotate, root is not budgeted",
        "POST",
        &rotate,
        Some(&rb),
        None,
    )
    .await;
}

async fn pocketpaw(r: &mut Recorder<'_>, root: &str) {
    let (id, pk, _) = r
        .app
        .create_app(json!({"name": "Paw", "signing_alg": "ES256"}))
        .await;
    r.name(&id, "{pp_app}");
    let pb = format!("Bearer {pk}");
    let (_, v) = r
        .send(
            "regenerate",
            "POST",
            "/api/token/regenerate",
            Some(&pb),
            None,
        )
        .await;
    let pk2 = v["token"].as_str().unwrap().to_owned();
    r.send(
        "regenerate, old token",
        "POST",
        "/api/token/regenerate",
        Some(&pb),
        None,
    )
    .await;
    r.send(
        "regenerate v1",
        "POST",
        "/api/v1/token/regenerate",
        Some(&format!("Bearer {pk2}")),
        json_body(json!({})),
    )
    .await;
    r.send(
        "regenerate, no credential",
        "POST",
        "/api/token/regenerate",
        None,
        None,
    )
    .await;
    r.send(
        "regenerate, root key",
        "POST",
        "/api/token/regenerate",
        Some(&format!("Bearer {root}")),
        None,
    )
    .await;
    r.send(
        "regenerate, method not allowed",
        "GET",
        "/api/token/regenerate",
        Some(&pb),
        None,
    )
    .await;
}

/// Spend this source's budget of invalid credentials, then record each family's answer.
async fn throttled(r: &mut Recorder<'_>, root: &str) {
    let mut over = false;
    for _ in 0..40 {
        let (s, _) = r
            .app
            .call(
                "POST",
                "/api/token/regenerate",
                Some("Bearer pk_nope"),
                None,
            )
            .await;
        if s == 429 {
            over = true;
            break;
        }
    }
    assert!(over, "the source's budget of invalid credentials runs out");
    r.send(
        "pocketpaw, source over budget",
        "POST",
        "/api/token/regenerate",
        Some("Bearer pk_nope"),
        None,
    )
    .await;
    r.send(
        "auth0, source over budget",
        "GET",
        "/connections/01ARZ3NDEKTSV4RRFFQ69G5FAV/keys",
        Some("Bearer pk_nope"),
        None,
    )
    .await;
    r.send(
        "jwtplus, source over budget",
        "GET",
        "/root/list",
        Some("rk_nope"),
        None,
    )
    .await;
    r.send(
        "jwtplus app route, source over budget",
        "GET",
        "/app/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        Some("pk_nope"),
        None,
    )
    .await;
    r.send(
        "jwtplus, valid root key over budget",
        "GET",
        "/root/list",
        Some(root),
        None,
    )
    .await;
    // Last: JWTPlus's root-key rotation kills the key every other family used.
    r.send(
        "jwtplus, rotate root key",
        "POST",
        "/root/rotate",
        Some(root),
        None,
    )
    .await;
    r.send(
        "jwtplus, old root key",
        "GET",
        "/root/list",
        Some(root),
        None,
    )
    .await;
}

/// Where `want` and `got` differ, as JSON pointers with both values.
fn diff_paths(at: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: std::collections::BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for k in keys {
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => diff_paths(&format!("{at}/{k}"), a, b, out),
                    (a, b) => out.push(format!("    {at}/{k}: {a:?} -> {b:?}")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                diff_paths(&format!("{at}/{i}"), a, b, out);
            }
        }
        (a, b) if a != b => out.push(format!("    {at}: {a} -> {b}")),
        _ => {}
    }
}

/// A human-readable list of the answers that differ.
fn differences(want: &[Value], got: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if w == g => {}
            (Some(w), Some(g)) => {
                out.push(format!("answer #{i} ({}, {}):", g["what"], g["request"]));
                diff_paths("", w, g, &mut out);
            }
            (w, g) => out.push(format!(
                "answer #{i}:\n  golden: {}\n  now:    {}",
                w.map_or("(none)".into(), Value::to_string),
                g.map_or("(none)".into(), Value::to_string)
            )),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_families_answer_as_recorded() {
    let app = TestApp::spawn("compat_answers", Engine::Sqlite).await;
    let root = app.root_key.clone();
    let mut r = Recorder {
        app: &app,
        answers: Vec::new(),
        family: "jwtplus",
        names: Vec::new(),
    };
    jwtplus(&mut r, &root).await;
    r.family = "auth0";
    auth0(&mut r, &root).await;
    r.family = "pocketpaw";
    pocketpaw(&mut r, &root).await;
    r.family = "all";
    throttled(&mut r, &root).await;

    let got = r.answers;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/compat-answers.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = serde_json::to_string_pretty(&got).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .expect("tests/golden/compat-answers.json (UPDATE_GOLDEN=1 writes it)"),
    )
    .unwrap();
    let diff = differences(&want, &got);
    assert!(
        diff.is_empty(),
        "{} of {} compat answers differ from tests/golden/compat-answers.json \
         (UPDATE_GOLDEN=1 rewrites it, if the change is meant):\n{}",
        diff.len(),
        got.len(),
        diff.join("\n")
    );
}
