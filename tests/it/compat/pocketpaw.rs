//! PocketPaw: the seed `pocketpaw-token-regenerate.txt` replayed as written
//! (`POST /api/token/regenerate` with a Bearer token and a JSON content type).

use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::TestApp;

/// `POST /api/token/regenerate` (pocketpaw-token-regenerate.txt).
async fn seed_pocketpaw(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Paw", "signing_alg": "ES256"}))
        .await;
    let session = app.issue(&id, &pk, json!({"sub": "u"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .client
        .post(app.url("/api/token/regenerate"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {pk}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let new = v["token"].as_str().unwrap().to_owned();
    assert!(new.starts_with("pk_"));
    assert_eq!(v.as_object().unwrap().len(), 1);
    let (s, v) = app
        .call(
            "POST",
            "/api/token/regenerate",
            Some(&format!("Bearer {pk}")),
            None,
        )
        .await;
    assert_eq!(
        (s, v),
        (401, json!({"detail": "Unauthorized"})),
        "the old token is dead"
    );
    let (s, _) = app.call("POST", "/api/token/regenerate", None, None).await;
    assert_eq!(s, 401);
    assert!(
        !app.active(&id, &new, &session).await,
        "earlier session tokens are rejected"
    );
    let after = app.issue(&id, &new, json!({"sub": "u"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.active(&id, &new, &after).await);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/token/regenerate",
            Some(&format!("Bearer {new}")),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
}
both_engines!(the_token_regenerate_seed_replays_as_written, seed_pocketpaw);
