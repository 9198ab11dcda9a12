//! Graceful rotation, and rotation under concurrency.

use std::collections::HashSet;

use serde_json::json;

use crate::both_engines;
use crate::common::app::{TestApp, kids_in};

async fn graceful(app: &TestApp) {
    let (id, pk, created) = app
        .create_app(json!({"name": "Rot", "signing_alg": "PS256"}))
        .await;
    let keys0 = created["keys"].as_array().unwrap().clone();
    let (cur0, next0) = (
        kids_in(&keys0, "current")[0].clone(),
        kids_in(&keys0, "next")[0].clone(),
    );
    let old = app.issue(&id, &pk, json!({"sub": "x"})).await;
    assert_eq!(old["kid"], cur0.as_str());

    let (s, r) = app
        .bearer(&pk, "POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["current"]["kid"], next0.as_str(), "next became current");
    assert_eq!(r["current"]["state"], "current");
    assert_eq!(r["next"]["state"], "next");
    let prev = r["previous"].as_array().unwrap();
    assert_eq!(prev.len(), 1);
    assert_eq!(prev[0]["kid"], cur0.as_str());
    assert!(prev[0]["deactivated_at"].is_string());
    for k in [&r["current"], &r["next"]] {
        for f in [
            "kid",
            "app_id",
            "algorithm",
            "state",
            "created_at",
            "activated_at",
            "deactivated_at",
            "retired_at",
            "revoked_at",
            "destroyed_at",
            "fingerprint",
            "thumbprint",
        ] {
            assert!(k.get(f).is_some(), "{f} missing in {k}");
        }
    }
    assert!(
        app.active(&id, &pk, old["token"].as_str().unwrap()).await,
        "previous key still verifies"
    );
    let new = app.issue(&id, &pk, json!({"sub": "x"})).await;
    assert_eq!(
        new["kid"],
        next0.as_str(),
        "new tokens use the new current key"
    );

    let jwks = app.jwks(&id).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 3, "next, current and previous are published");
    let mut sorted = kids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(kids, sorted, "newest first");
    for k in jwks["keys"].as_array().unwrap() {
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["alg"], "PS256");
        assert_eq!(k["use"], "sig");
        assert!(k["n"].is_string() && k["e"].is_string());
    }
    // A root-key rotation works too, and the previous keys pile up.
    let (s, _) = app
        .root("POST", &format!("/apps/{id}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200);
    let keys = app.keys(&id).await;
    assert_eq!(kids_in(&keys, "previous").len(), 2);
    assert_eq!(kids_in(&keys, "current").len(), 1);
    assert_eq!(kids_in(&keys, "next").len(), 1);
}
both_engines!(graceful_rotation, graceful);

async fn concurrent(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Busy", "signing_alg": "ES256"}))
        .await;
    let before: HashSet<String> = app
        .keys(&id)
        .await
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = app.client.clone();
        let url = app.url(&format!("/apps/{id}/keys/rotate"));
        // Four with the app's token (within its key-change budget of five), the rest root.
        let auth = if i % 3 == 0 {
            format!("Bearer {pk}")
        } else {
            app.root_key.clone()
        };
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    // Issuance keeps working while rotations run.
    for _ in 0..10 {
        let t = app.issue(&id, &pk, json!({"sub": "during"})).await;
        assert!(app.active(&id, &pk, t["token"].as_str().unwrap()).await);
    }
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200, "rotation answered {s}");
        ok += 1;
    }
    let keys = app.keys(&id).await;
    assert_eq!(kids_in(&keys, "current").len(), 1, "exactly one current");
    assert_eq!(kids_in(&keys, "next").len(), 1, "exactly one next");
    assert_eq!(
        kids_in(&keys, "previous").len(),
        ok,
        "one previous per rotation"
    );
    let all: HashSet<String> = keys
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), keys.len(), "no duplicated key");
    assert!(before.is_subset(&all), "no lost key");
    assert_eq!(all.len(), 2 + ok);
}
both_engines!(concurrent_rotations_keep_one_current, concurrent);
