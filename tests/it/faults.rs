//! HSM and store faults: clean errors while a dependency is away, recovery without a
//! restart when it comes back, nothing half-applied.

use std::time::Duration;

use serde_json::json;

use crate::common::app::{Engine, TestApp, fresh_postgres_db};
use crate::common::proxy::Proxy;

async fn poll<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_away_gives_503_and_recovers_without_restart() {
    let app = TestApp::spawn("hsm_fault", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Fault", "signing_alg": "ES256"}))
        .await;
    let before = app.issue(&id, &pk, json!({"sub": "x"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200);

    // The token directory goes away (a removed device, an unmounted volume).
    let tokens = app.token.path().join("hsm/tokens");
    let away = app.token.path().join("hsm/tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("hsm_"), "{v}");
    let (s, v) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 503, "readyz while the token is away: {v}");
    assert_eq!(
        (v["hsm"].as_str(), v["store"].as_str()),
        (Some("unavailable"), Some("ok")),
        "which dependency failed, not the error text: {v}"
    );
    assert!(
        app.active(&id, &pk, &before).await,
        "introspection keeps working from memory"
    );

    std::fs::rename(&away, &tokens).unwrap();
    poll("signing again", || async {
        app.bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await
        .0 == 201
    })
    .await;
    let (s, _) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200);
    let after = app.issue(&id, &pk, json!({"sub": "x"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.active(&id, &pk, &after).await);
    assert!(app.active(&id, &pk, &before).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_away_fails_writes_cleanly_and_recovers() {
    let direct = fresh_postgres_db().await;
    // postgres://user@host:port/db -> route host:port through the proxy.
    let (head, db) = direct.rsplit_once('/').unwrap();
    let (creds, hostport) = head.rsplit_once('@').unwrap();
    let proxy = Proxy::start(hostport.to_owned()).await;
    let via_proxy = format!("{creds}@127.0.0.1:{}/{db}", proxy.port);
    let token = crate::common::token::TestToken::new("db_fault");
    let root = crate::common::app::init_store(&token, &via_proxy, &[]).await;
    let app = TestApp::start(std::sync::Arc::new(token), via_proxy, &[])
        .await
        .with_root(&root);
    let (id, pk, _) = app
        .create_app(json!({"name": "Before", "signing_alg": "ES256"}))
        .await;
    let t = app.issue(&id, &pk, json!({"sub": "x"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    proxy.cut();
    let (s, v) = app
        .root(
            "POST",
            "/apps",
            Some(json!({"name": "During", "signing_alg": "ES256"})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (500, Some("store_error")), "{v}");
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {}})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (500, Some("store_error")),
        "no token without its ledger row: {v}"
    );
    let (s, v) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 500, "{v}");
    let (s, _) = app.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 503);
    assert!(
        app.active(&id, &pk, &t).await,
        "introspection keeps working from memory"
    );
    // Each compatibility family answers a store failure with 500 in its own shape.
    let (s, v) = app
        .call("GET", "/root/rotate", Some(&app.root_key), None)
        .await;
    assert_eq!((s, v), (500, json!({"message": "error"})), "JWTPlus");
    let (s, v) = app.bearer(&pk, "POST", "/api/token/regenerate", None).await;
    assert_eq!(s, 500, "PocketPaw: {v}");
    assert!(v["detail"].is_string(), "{v}");
    let (s, v) = app
        .bearer(&pk, "POST", &format!("/connections/{id}/keys/rotate"), None)
        .await;
    assert_eq!(
        (s, v["statusCode"].as_u64()),
        (500, Some(500)),
        "Auth0: {v}"
    );

    proxy.restore();
    poll("writes again", || async {
        app.root(
            "POST",
            "/apps",
            Some(json!({"name": "After", "signing_alg": "ES256"})),
        )
        .await
        .0 == 201
    })
    .await;
    let (_, list) = app.root("GET", "/apps", None).await;
    let names: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"During"),
        "a failed write left something behind: {names:?}"
    );
    let keys = app.keys(&id).await;
    assert_eq!(keys.iter().filter(|k| k["state"] == "current").count(), 1);
    assert_eq!(
        keys.iter().filter(|k| k["state"] == "previous").count(),
        0,
        "the failed rotation changed nothing"
    );
    let (s, _) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200, "the root key did not change during the outage");
    let t2 = app.issue(&id, &pk, json!({"sub": "x"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.active(&id, &pk, &t2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let mut app = TestApp::spawn("sigterm", Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Term", "signing_alg": "RS256", "rsa_bits": 4096}))
        .await;
    // Requests in flight when the signal arrives still complete.
    let mut inflight = Vec::new();
    for _ in 0..8 {
        let (client, url, pk) = (
            app.client.clone(),
            app.url(&format!("/apps/{id}/tokens")),
            pk.clone(),
        );
        inflight.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(pk)
                .json(&json!({"claims": {}}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let status = app.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    for t in inflight {
        match t.await.unwrap() {
            Ok(s) => assert_eq!(s, 201, "a request in flight was cut"),
            // Sent after the listener closed: refused, never half-done.
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
    assert!(app.stderr().contains("stopped"), "clean shutdown logged");
}
