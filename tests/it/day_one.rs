//! Day one for a new user and an existing client (issue 21): compat routes answer only what
//! their peer would (an early rotation is carried out and audited, never refused), and one
//! issuer per service, whatever host name a client used, across restarts and a change of
//! `public_url`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::app::{Engine, TestApp};

/// The service with the default JWKS max-age (the harness sets 0), so rotations right
/// after a JWKS fetch are early.
async fn spawn(name: &str) -> TestApp {
    TestApp::spawn_with(name, Engine::Sqlite, &[("HSM_ROTATOR_JWKS_MAX_AGE", "60")]).await
}

/// The audit records of `action` about app `id`, oldest first, with their details parsed.
async fn audit_details(app: &TestApp, id: &str, action: &str) -> Vec<Value> {
    let (s, v) = app
        .root("GET", &format!("/audit?app={id}&action={action}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match &r["details"] {
            Value::String(d) => serde_json::from_str(d).unwrap(),
            other => other.clone(),
        })
        .collect()
}

/// Auth0's SDK rotating a connection in a loop: four rotations in a row, right after a
/// verifier fetched the JWKS, all answer 201 with the new next key in Auth0's shape; the
/// three whose promoted key a cached JWKS may lack are audited as early, with its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0_rotations_in_a_row_are_carried_out_and_the_early_ones_audited() {
    let app = spawn("d1_auth0_loop").await;
    let (id, _, _) = app
        .create_app(json!({"name": "Conn", "signing_alg": "RS256"}))
        .await;
    app.jwks(&id).await;
    let mut kids = Vec::new();
    for i in 0..4 {
        let body = (i == 2).then(|| json!({"signing_alg": "ES256"}));
        let (s, v) = app
            .bearer(
                &app.root_key.clone(),
                "POST",
                &format!("/api/v2/connections/{id}/keys/rotate"),
                body,
            )
            .await;
        assert_eq!(s, 201, "rotation {i}: {v}\n{}", app.log_tail());
        for field in ["kid", "cert", "fingerprint", "thumbprint", "pkcs"] {
            assert!(v[field].is_string(), "rotation {i}: no {field} in {v}");
        }
        assert_eq!(
            (v["next"].as_bool(), v["key_use"].as_str()),
            (Some(true), Some("signing"))
        );
        kids.push(v["kid"].as_str().unwrap().to_owned());
    }
    assert_eq!(kids.iter().collect::<BTreeSet<_>>().len(), 4, "{kids:?}");
    let rotations = audit_details(&app, &id, "key.rotate").await;
    assert_eq!(rotations.len(), 4, "{rotations:?}");
    assert!(
        rotations[0]["early"].is_null(),
        "the first pair was never missing: {rotations:?}"
    );
    for r in &rotations[1..] {
        assert_eq!(r["early"], true, "{rotations:?}");
        assert_eq!(r["allowed_by"], "auth0");
        assert!(r["promoted_age"].as_i64().unwrap() >= 0, "{r}");
    }
}

/// JWTPlus's rotation routes (emergency `rotate/pki`, the access token's `rotate/key`, a key
/// revocation that promotes `next`, the root key's `rotate`) each answer 200 four times in a
/// row; a revocation that promoted a key a cached JWKS may lack is audited as early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwtplus_rotations_in_a_row_all_answer_200() {
    let mut app = spawn("d1_jwtplus_loop").await;
    let (id, _, _) = app
        .create_app(json!({"name": "Plus", "signing_alg": "ES256"}))
        .await;
    let root = app.root_key.clone();
    for route in [
        format!("/root/{id}/rotate/pki"),
        format!("/root/{id}/rotate/key"),
    ] {
        app.jwks(&id).await;
        for i in 0..4 {
            let (s, v) = app.call("GET", &route, Some(&root), None).await;
            assert_eq!(s, 200, "{route} #{i}: {v}");
        }
    }
    app.jwks(&id).await;
    for i in 0..4 {
        let current = crate::common::app::kids_in(&app.keys(&id).await, "current");
        let (s, v) = app
            .call(
                "DELETE",
                &format!("/root/{id}/revoke/{}", current[0]),
                Some(&root),
                None,
            )
            .await;
        assert_eq!((s, &v), (200, &json!({"status": "ok"})), "revoke #{i}");
    }
    let revokes = audit_details(&app, &id, "key.revoke").await;
    assert_eq!(revokes.len(), 4, "{revokes:?}");
    assert!(
        revokes
            .iter()
            .any(|r| r["early"] == true && r["promoted_age"].is_i64()),
        "a promotion of a young next key is marked: {revokes:?}"
    );
    for i in 0..4 {
        let (s, v) = app
            .call("POST", "/root/rotate", Some(&app.root_key.clone()), None)
            .await;
        assert_eq!(s, 200, "root rotate #{i}: {v}");
        app = app.with_root(v["new-key"].as_str().unwrap());
    }
}

/// What each family's peer documents. JWTPlus: peer-apis.md A.2/A.3 (gin's 404 for unknown
/// paths and renew's 404); Auth0: the Management API's documented answers for connection
/// keys; PocketPaw: B.2/B.3. Every family may also answer 500 (store) and 503 (HSM), as SPEC
/// §3.1 says.
const JWTPLUS: &[u16] = &[200, 400, 403, 404, 500, 503];
const AUTH0: &[u16] = &[200, 201, 400, 401, 403, 404, 429, 500, 503];
const POCKETPAW: &[u16] = &[200, 401, 403, 429, 500, 503];

/// One request of a status walk: label, method, path, `Authorization`, body.
type Call<'a> = (String, &'a str, String, Option<String>, Option<Value>);

/// Drive `calls` and return the ones whose status is not in `allowed`.
async fn outside(app: &TestApp, allowed: &[u16], calls: Vec<Call<'_>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (label, method, path, auth, body) in calls {
        let (s, v) = app.call(method, &path, auth.as_deref(), body).await;
        if !allowed.contains(&s) {
            bad.push(format!("{label}: {method} {path} -> {s} {v}"));
        }
    }
    bad
}

/// Every JWTPlus route, driven with no credential, a wrong one, a bad body, an unknown app
/// and back-to-back rotations, answers only statuses JWTPlus answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwtplus_routes_answer_only_the_peers_statuses() {
    let app = spawn("d1_jwtplus_statuses").await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Plus", "signing_alg": "ES256"}))
        .await;
    app.jwks(&id).await;
    let root = Some(app.root_key.clone());
    let pk = Some(pk);
    let wrong_root = Some(format!("rk_{}", "A".repeat(43)));
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let kid = crate::common::app::kids_in(&app.keys(&id).await, "previous")
        .first()
        .cloned()
        .unwrap_or_else(|| unknown.to_owned());
    let root_routes = [
        ("GET", "/root/list".to_owned()),
        ("GET", format!("/root/{id}/rotate/pki")),
        ("GET", format!("/root/{id}/rotate/key")),
        ("DELETE", format!("/root/{id}/flush")),
    ];
    let app_routes = [
        ("POST", format!("/app/{id}/sign")),
        ("POST", format!("/app/{id}/verify")),
        ("GET", format!("/app/{id}/pub-keys")),
    ];
    let mut calls = Vec::new();
    for (m, p) in root_routes.iter().chain(app_routes.iter()) {
        calls.push(("no auth".into(), *m, p.clone(), None, None));
        calls.push(("bad auth".into(), *m, p.clone(), wrong_root.clone(), None));
    }
    calls.push((
        "bad body".into(),
        "POST",
        "/root/create".into(),
        root.clone(),
        Some(json!({"name": 5})),
    ));
    calls.push((
        "bad body".into(),
        "PATCH",
        format!("/root/{id}"),
        root.clone(),
        Some(json!([1])),
    ));
    calls.push((
        "bad body".into(),
        "POST",
        format!("/app/{id}/sign"),
        pk.clone(),
        Some(json!({"sub": 1})),
    ));
    calls.push((
        "bad body".into(),
        "POST",
        format!("/app/{id}/verify"),
        pk.clone(),
        Some(json!({"token": "x"})),
    ));
    calls.push((
        "bad body".into(),
        "POST",
        format!("/app/{id}/renew"),
        pk.clone(),
        Some(json!({})),
    ));
    for (m, p) in [
        ("GET", format!("/root/{unknown}/rotate/pki")),
        ("GET", format!("/root/{unknown}/rotate/key")),
        ("DELETE", format!("/root/{id}/revoke/{unknown}")),
    ] {
        calls.push(("unknown id".into(), m, p, root.clone(), None));
    }
    calls.push((
        "unknown id".into(),
        "DELETE",
        format!("/root/{unknown}/flush"),
        root.clone(),
        None,
    ));
    for i in 0..3 {
        calls.push((
            format!("early rotation {i}"),
            "GET",
            format!("/root/{id}/rotate/pki"),
            root.clone(),
            None,
        ));
    }
    calls.push((
        "revoke a previous key".into(),
        "DELETE",
        format!("/root/{id}/revoke/{kid}"),
        root.clone(),
        None,
    ));
    calls.push((
        "revoke it again".into(),
        "DELETE",
        format!("/root/{id}/revoke/{kid}"),
        root.clone(),
        None,
    ));
    let bad = outside(&app, JWTPLUS, calls).await;
    assert!(
        bad.is_empty(),
        "statuses JWTPlus never answers:\n{}",
        bad.join("\n")
    );
}

/// Auth0's connection-key routes, driven the same way, answer only Auth0's statuses; four
/// rotations in a row included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0_routes_answer_only_the_peers_statuses() {
    let app = spawn("d1_auth0_statuses").await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Conn", "signing_alg": "RS256"}))
        .await;
    app.jwks(&id).await;
    let root = Some(format!("Bearer {}", app.root_key));
    let pk = Some(format!("Bearer {pk}"));
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let mut calls = Vec::new();
    for prefix in ["", "/api/v2"] {
        for (m, p) in [
            ("POST", format!("{prefix}/connections/{id}/keys/rotate")),
            ("GET", format!("{prefix}/connections/{id}/keys")),
        ] {
            calls.push(("no auth".into(), m, p.clone(), None, None));
            calls.push((
                "bad auth".into(),
                m,
                p.clone(),
                Some("Bearer pk_nope".into()),
                None,
            ));
            calls.push((
                "unknown id".into(),
                m,
                p.replace(&id, unknown),
                root.clone(),
                None,
            ));
        }
        let rotate = format!("{prefix}/connections/{id}/keys/rotate");
        calls.push((
            "bad body".into(),
            "POST",
            rotate.clone(),
            root.clone(),
            Some(json!({"signing_alg": "HS256"})),
        ));
        calls.push((
            "bad body".into(),
            "POST",
            rotate.clone(),
            pk.clone(),
            Some(json!({"x": 1})),
        ));
        for i in 0..4 {
            calls.push((
                format!("rotation {i}"),
                "POST",
                rotate.clone(),
                root.clone(),
                None,
            ));
        }
    }
    let bad = outside(&app, AUTH0, calls).await;
    assert!(
        bad.is_empty(),
        "statuses Auth0 never answers:\n{}",
        bad.join("\n")
    );
}

/// PocketPaw's regenerate routes answer only PocketPaw's statuses, twice in a row included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pocketpaw_routes_answer_only_the_peers_statuses() {
    let app = spawn("d1_pocketpaw_statuses").await;
    let (_, pk, _) = app.create_app(json!({"name": "Paw"})).await;
    let mut calls = Vec::new();
    for p in ["/api/token/regenerate", "/api/v1/token/regenerate"] {
        calls.push(("no auth".into(), "POST", p.to_owned(), None, None));
        calls.push((
            "bad auth".into(),
            "POST",
            p.to_owned(),
            Some("Bearer pk_nope".into()),
            None,
        ));
        calls.push((
            "a body it ignores".into(),
            "POST",
            p.to_owned(),
            Some("Bearer pk_nope".into()),
            Some(json!({"x": 1})),
        ));
    }
    let bad = outside(&app, POCKETPAW, calls).await;
    let mut token = pk;
    let mut bad = bad;
    for i in 0..2 {
        let (s, v) = app
            .bearer(&token, "POST", "/api/token/regenerate", None)
            .await;
        if !POCKETPAW.contains(&s) {
            bad.push(format!("regenerate {i} -> {s} {v}"));
        }
        if let Some(t) = v["token"].as_str() {
            token = t.to_owned();
        }
    }
    assert!(
        bad.is_empty(),
        "statuses PocketPaw never answers:\n{}",
        bad.join("\n")
    );
}

/// One issuer, whatever the host name: a token issued through 127.0.0.1 is active when
/// introspected or verified (JWTPlus) through `localhost`, and discovery names the same
/// issuer and JWKS URL through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_through_one_host_name_verifies_through_another() {
    let app = TestApp::spawn("d1_hostnames", Engine::Sqlite).await;
    let (id, pk, _) = app.create_app(json!({"name": "Hosts"})).await;
    let jwt = app.issue(&id, &pk, json!({"sub": "alice"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = app.base.replace("127.0.0.1", "localhost");
    assert_ne!(other, app.base);
    let post = |base: &str, path: String, body: Value| {
        app.client
            .post(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {pk}"))
            .json(&body)
            .send()
    };
    let v: Value = post(
        &other,
        format!("/apps/{id}/tokens/introspect"),
        json!({"token": jwt}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["iss"], format!("{}/apps/{id}", app.base));
    let v: Value = post(&other, format!("/app/{id}/verify"), json!({"token": jwt}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"verified": true}));
    let mut seen = Vec::new();
    for base in [&app.base, &other] {
        let res = app
            .client
            .get(format!("{base}/apps/{id}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap();
        assert!(
            res.headers().get("vary").is_none_or(|v| !v
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("host"))
        );
        let d: Value = res.json().await.unwrap();
        seen.push((d["issuer"].clone(), d["jwks_uri"].clone()));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0, format!("{}/apps/{id}", app.base));
}

/// Restarting on the same `listen` keeps every token active; changing `public_url` with
/// the old base in `issuer_aliases` keeps them active too, while new tokens carry the new
/// issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_and_a_new_public_url_listed_in_issuer_aliases() {
    let listen = crate::common::app::free_listen();
    let fixed = [("HSM_ROTATOR_LISTEN", listen.as_str())];
    let mut first = TestApp::spawn_with("d1_restart", Engine::Sqlite, &fixed).await;
    let old_base = first.base.clone();
    let (id, pk, _) = first.create_app(json!({"name": "Restart"})).await;
    let jwt = first.issue(&id, &pk, json!({"sub": "alice"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let root = first.root_key.clone();
    first.terminate().await;
    let token = first.token.clone();
    let db = first.database_url.clone();
    drop(first);

    let mut again = TestApp::start(token.clone(), db.clone(), &fixed)
        .await
        .with_root(&root);
    assert_eq!(again.base, old_base);
    assert!(again.active(&id, &pk, &jwt).await, "active after a restart");
    again.terminate().await;
    drop(again);

    let moved = TestApp::start(
        token,
        db,
        &[
            ("HSM_ROTATOR_PUBLIC_URL", "https://keys.example.com/"),
            ("HSM_ROTATOR_ISSUER_ALIASES", old_base.as_str()),
        ],
    )
    .await
    .with_root(&root);
    assert!(
        moved.active(&id, &pk, &jwt).await,
        "an alias keeps old tokens active"
    );
    let fresh = moved.issue(&id, &pk, json!({"sub": "bob"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = moved
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/introspect"),
            Some(json!({"token": fresh})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["iss"],
        format!("https://keys.example.com/apps/{id}"),
        "{v}"
    );
}

/// Keys published before migration 0008 keep the guard they had (publication +
/// `jwks_max_age`), and apps that existed count as served at the upgrade: the migration
/// never makes an existing `next` key promotable early. Both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_before_the_served_record_keep_the_old_guard() {
    use hsm_rotator::store::Store;
    use sqlx::Row as _;
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/upgrade.db?mode=rwc", dir.path().display());
    let postgres = crate::common::app::fresh_postgres_db().await;
    for (engine, url) in [("sqlite", sqlite), ("postgres", postgres)] {
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(engine);
        let migrator = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        migrator.run_to(6, &pool).await.unwrap();
        sqlx::query(
            "INSERT INTO apps (id, name, signing_alg, rsa_bits, rotation_period, verification_ttl, \
             token_ttl, refresh_ttl, subject_dn, access_token_sha256, created_at, updated_at) \
             VALUES ('a1', 'a1', 'ES256', 0, 86400, 3600, 3600, 0, 'CN=t', 'x', 0, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO keys (kid, app_id, algorithm, rsa_bits, state, created_at, published_at) \
             VALUES ('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'a1', 'ES256', 0, 'next', 1000, 1000)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::connect(&url).await.unwrap();
        let key = store
            .key("01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(key.served_at_publish, Some(1000), "{engine}");
        assert_eq!(
            hsm_rotator::keys::policy::signs_from(1000, key.served_at_publish, 60),
            1060,
            "{engine}"
        );
        let served: Option<i64> = sqlx::query("SELECT jwks_served_at FROM apps WHERE id = 'a1'")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert!(
            served.is_some_and(|t| t > 1_700_000_000),
            "{engine}: {served:?}"
        );
    }
}

/// With TLS on, the issuer, discovery URLs and `jwks_uri` are `https://` (issue 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_discovery_advertises_https() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::common::tls::self_signed(dir.path());
    let app = TestApp::spawn_with(
        "d1_tls_discovery",
        Engine::Sqlite,
        &[
            ("HSM_ROTATOR_TLS_CERT", cert.to_str().unwrap()),
            ("HSM_ROTATOR_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let curl = |args: &[&str]| -> Value {
        let out = Command::new("curl").arg("-sk").args(args).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let created = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: {}", app.root_key),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"name": "Tls"}"#,
        &format!("{}/apps", app.base),
    ]);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["issuer"], format!("{}/apps/{id}", app.base));
    let d = curl(&[&format!(
        "{}/apps/{id}/.well-known/openid-configuration",
        app.base
    )]);
    assert_eq!(d["issuer"], format!("{}/apps/{id}", app.base), "{d}");
    assert!(
        d["jwks_uri"].as_str().unwrap().starts_with("https://"),
        "{d}"
    );
}
