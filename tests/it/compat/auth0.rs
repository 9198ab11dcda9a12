//! Auth0 connection keys: the seed `auth0-connection-keys-rotate.txt` replayed as written
//! (`POST /connections/{id}/keys/rotate` with a Bearer token), early rotations with a new
//! algorithm, and what an app's own token may not change.

use serde_json::json;

use crate::both_engines;
use crate::common::app::{TestApp, kids_in};

/// `POST /connections/{id}/keys/rotate` (auth0-connection-keys-rotate.txt).
async fn seed_auth0(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Conn", "signing_alg": "RS256", "subject_dn": "CN=Conn,O=Acme"}))
        .await;
    for (prefix, auth) in [
        ("", format!("Bearer {}", app.root_key)),
        ("/api/v2", format!("Bearer {pk}")),
    ] {
        let before_next = kids_in(&app.keys(&id).await, "next")[0].clone();
        let (s, v) = app
            .call(
                "POST",
                &format!("{prefix}/connections/{id}/keys/rotate"),
                Some(&auth),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        for f in [
            "kid",
            "cert",
            "fingerprint",
            "thumbprint",
            "pkcs",
            "next",
            "algorithm",
            "key_use",
            "subject_dn",
        ] {
            assert!(v.get(f).is_some(), "{f} missing: {v}");
        }
        assert_ne!(
            v["kid"],
            before_next.as_str(),
            "the response is the new next key"
        );
        assert_eq!(v["next"], true);
        assert_eq!(v["current"], false);
        assert_eq!(v["key_use"], "signing");
        assert_eq!(v["algorithm"], "RS256");
        assert_eq!(v["subject_dn"], "CN=Conn,O=Acme");
        let cert = v["cert"].as_str().unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\r\n"));
        assert!(
            v["pkcs"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN PKCS7-----\r\n")
        );
        let fp = v["fingerprint"].as_str().unwrap();
        assert_eq!(fp.len(), 59);
        assert_eq!(fp.replace(':', ""), v["thumbprint"].as_str().unwrap());
        assert!(
            fp.chars()
                .all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase())
        );
    }
    let (s, v) = app
        .root(
            "POST",
            &format!("/connections/{id}/keys/rotate"),
            Some(json!({"signing_alg": "ES384"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["algorithm"], "ES384",
        "the next key has the requested algorithm"
    );
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/connections/{id}/keys/rotate"),
            Some(json!({"signing_alg": "HS256"})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["statusCode"], 400);
    assert_eq!(v["error"], "Bad Request");
    assert_eq!(v["errorCode"], "invalid_body");
    assert!(v["message"].is_string());
    let (s, v) = app
        .call(
            "POST",
            &format!("/connections/{id}/keys/rotate"),
            None,
            None,
        )
        .await;
    assert_eq!((s, v["statusCode"].as_u64()), (401, Some(401)));
    let (s, v) = app
        .root(
            "POST",
            "/connections/01ARZ3NDEKTSV4RRFFQ69G5FAV/keys/rotate",
            None,
        )
        .await;
    assert_eq!(
        (s, v["errorCode"].as_str()),
        (404, Some("inexistent_connection"))
    );

    let (s, list) = app
        .bearer(&pk, "GET", &format!("/api/v2/connections/{id}/keys"), None)
        .await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.iter().filter(|k| k["current"] == true).count(), 1);
    assert_eq!(list.iter().filter(|k| k["next"] == true).count(), 1);
    assert!(list.iter().any(|k| k["previous"] == true
        && k["current_since"].is_string()
        && k["current_until"].is_string()));
}
both_engines!(
    the_connection_keys_rotate_seed_replays_as_written,
    seed_auth0
);

/// An early rotation (a verifier fetched the JWKS, then two rotations in a row with a
/// one-hour max-age) that changes the algorithm is carried out as Auth0 would (201), and the
/// connection's algorithm follows it; the audit log marks it early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_rotation_with_a_new_algorithm_is_carried_out() {
    let app = TestApp::spawn_with(
        "a0_too_soon",
        crate::common::app::Engine::Sqlite,
        &[("HSM_ROTATOR_JWKS_MAX_AGE", "3600")],
    )
    .await;
    let (id, _, _) = app
        .create_app(json!({"name": "Soon", "signing_alg": "RS256"}))
        .await;
    app.jwks(&id).await;
    let auth = format!("Bearer {}", app.root_key);
    let path = format!("/connections/{id}/keys/rotate");
    let (s, v) = app.call("POST", &path, Some(&auth), None).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app
        .call(
            "POST",
            &path,
            Some(&auth),
            Some(json!({"signing_alg": "ES256"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["algorithm"], "ES256", "{v}");
    let (s, a) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["signing_alg"], "ES256", "policy changed: {a}");
    let (s, audit) = app
        .root(
            "GET",
            &format!("/audit?app={id}&action=key.rotate&order=desc&limit=1"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{audit}");
    let details = audit["records"][0]["details"].as_str().unwrap_or_default();
    assert!(details.contains("\"early\":true"), "{audit}");
}

/// Changing a connection's `signing_alg` changes the app's policy, which natively needs the
/// root key (`PATCH /apps/{id}`): with the app's own access token Auth0's rotate answers
/// 403 `insufficient_scope` in Auth0's shape and changes nothing. The same token may still
/// rotate (without `signing_alg`, or naming the algorithm the app already has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_token_cannot_change_the_connection_algorithm() {
    let app = TestApp::spawn("a0_policy_root_only", crate::common::app::Engine::Sqlite).await;
    let (id, pk, _) = app
        .create_app(json!({"name": "Conn", "signing_alg": "RS256"}))
        .await;
    let next = kids_in(&app.keys(&id).await, "next");
    for prefix in ["", "/api/v2"] {
        let (s, v) = app
            .bearer(
                &pk,
                "POST",
                &format!("{prefix}/connections/{id}/keys/rotate"),
                Some(json!({"signing_alg": "PS512"})),
            )
            .await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(v["statusCode"], 403, "{v}");
        assert_eq!(v["error"], "Forbidden", "{v}");
        assert_eq!(v["errorCode"], "insufficient_scope", "{v}");
        assert!(v["message"].as_str().unwrap().contains("root key"), "{v}");
    }
    let (s, a) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(a["signing_alg"], "RS256", "policy unchanged: {a}");
    assert_eq!(
        kids_in(&app.keys(&id).await, "next"),
        next,
        "no rotation happened"
    );
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/connections/{id}/keys/rotate"),
            Some(json!({"signing_alg": "RS256"})),
        )
        .await;
    assert_eq!((s, v["algorithm"].as_str()), (201, Some("RS256")), "{v}");
    let (s, v) = app
        .root(
            "POST",
            &format!("/connections/{id}/keys/rotate"),
            Some(json!({"signing_alg": "PS512"})),
        )
        .await;
    assert_eq!((s, v["algorithm"].as_str()), (201, Some("PS512")), "{v}");
}
