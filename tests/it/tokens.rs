//! Issuance, introspection and every rejection, refresh tokens, sessions, discovery.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::TestApp;

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    let p = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, p, it.next().unwrap().to_owned())
}

fn forge(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string()),
        B64.encode(sig)
    )
}

async fn issue_and_reject(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Tokens", "signing_alg": "RS256", "token_ttl": 600}))
        .await;
    let (other, other_pk, _) = app
        .create_app(json!({"name": "Other", "signing_alg": "RS256"}))
        .await;
    let v = app
        .issue(
            &id,
            &pk,
            json!({"sub": "alice", "aud": "api", "role": "admin"}),
        )
        .await;
    for f in ["token", "token_type", "kid", "expires_at"] {
        assert!(v.get(f).is_some(), "{f} missing: {v}");
    }
    assert!(
        v.get("refresh_token").is_none(),
        "no refresh token when refresh_ttl is 0"
    );
    let token = v["token"].as_str().unwrap().to_owned();
    let (h, p, _) = parts(&token);
    assert_eq!(h["alg"], "RS256");
    assert_eq!(h["typ"], "JWT");
    assert_eq!(h["kid"], v["kid"]);
    assert_eq!(p["iss"], format!("{}/apps/{id}", app.base));
    assert_eq!(p["sub"], "alice");
    assert_eq!(p["role"], "admin");
    assert_eq!(p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(), 600);
    assert_eq!(p["jti"].as_str().unwrap().len(), 26);

    let (s, intro) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/introspect"),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(intro["active"], true);
    assert_eq!(intro["token_type"], "access_token");
    assert_eq!(intro["kid"], v["kid"]);
    assert_eq!(intro["role"], "admin");
    // RFC 7662 form encoding.
    let res = app
        .client
        .post(app.url(&format!("/apps/{id}/tokens/introspect")))
        .header("Authorization", format!("Bearer {pk}"))
        .form(&[
            ("token", token.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);

    let (idr, pkr) = (&id, &pk);
    let inactive = |t: String| async move {
        let (s, v) = app
            .bearer(
                pkr,
                "POST",
                &format!("/apps/{idr}/tokens/introspect"),
                Some(json!({"token": t})),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(v, json!({"active": false}), "exactly {{\"active\": false}}");
    };
    let (h, p, sig) = parts(&token);
    let sig = B64.decode(sig).unwrap();
    // alg: none
    inactive(forge(&json!({"alg": "none", "kid": h["kid"]}), &p, b"")).await;
    // HS256 keyed with the public key (algorithm confusion)
    let jwks = app.jwks(&id).await;
    let secret = jwks["keys"][0].to_string();
    let hs_input = format!(
        "{}.{}",
        B64.encode(json!({"alg":"HS256","kid":h["kid"],"typ":"JWT"}).to_string()),
        B64.encode(p.to_string())
    );
    let hs_sig = jsonwebtoken::crypto::sign(
        hs_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    inactive(format!("{hs_input}.{hs_sig}")).await;
    // a claim changed after signing
    let mut p2 = p.clone();
    p2["role"] = json!("root");
    inactive(forge(&h, &p2, &sig)).await;
    // unknown kid, missing kid, a crit header
    inactive(forge(
        &json!({"alg": "RS256", "kid": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
        &p,
        &sig,
    ))
    .await;
    inactive(forge(&json!({"alg": "RS256"}), &p, &sig)).await;
    inactive(forge(
        &json!({"alg": "RS256", "kid": h["kid"], "crit": ["exp"]}),
        &p,
        &sig,
    ))
    .await;
    // garbage and oversized tokens
    inactive("not.a.token".into()).await;
    inactive("x".repeat(20_000)).await;
    // a token of another app, presented here (its kid belongs to the other app)
    let foreign = app
        .issue(&other, &other_pk, json!({"sub": "mallory"}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    inactive(foreign).await;
    // the issuer does not depend on the host name a client used (issue 21)
    let other_host = app.base.replace("127.0.0.1", "localhost");
    let res = app
        .client
        .post(format!("{other_host}/apps/{id}/tokens/introspect"))
        .header("Authorization", format!("Bearer {pk}"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["active"],
        true,
        "active through another host name"
    );
    assert!(app.active(&id, &pk, &token).await);
}
both_engines!(issuance_and_every_rejection, issue_and_reject);

async fn expiry(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Short", "signing_alg": "ES256"}))
        .await;
    let (s, v) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens"),
            Some(json!({"claims": {"sub": "a"}, "ttl": 1})),
        )
        .await;
    assert_eq!(s, 201);
    let token = v["token"].as_str().unwrap().to_owned();
    // Poll (bounded) until the one-second token has expired.
    let mut expired = false;
    for _ in 0..30 {
        if !app.active(&id, &pk, &token).await {
            expired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(expired, "a 1-second token stayed active");
}
both_engines!(expired_tokens_are_inactive, expiry);

async fn refresh(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Refresh", "signing_alg": "ES256", "refresh_ttl": 3600}))
        .await;
    let v = app
        .issue(&id, &pk, json!({"sub": "bob", "scope": "read"}))
        .await;
    let rt = v["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    assert!(rt.starts_with("rt_"));
    let first = v["token"].as_str().unwrap().to_owned();
    let (s, r) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let second = r["token"].as_str().unwrap().to_owned();
    let rt2 = r["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt, rt2);
    assert_eq!(parts(&second).1["scope"], "read", "claims carried over");
    assert!(
        !app.active(&id, &pk, &first).await,
        "refreshing retires the old access token"
    );
    assert!(app.active(&id, &pk, &second).await);
    // The successor is used: the spent token coming back now is reuse, not a retry.
    let (s, r) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt2})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let third = r["token"].as_str().unwrap().to_owned();
    let rt3 = r["refresh_token"].as_str().unwrap().to_owned();
    // Reuse of the spent token: refused, and the whole family revoked.
    let (s, e) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("refresh_token_reused"))
    );
    assert!(
        !app.active(&id, &pk, &third).await,
        "family revoked on reuse"
    );
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": rt3})),
        )
        .await;
    assert_eq!(s, 400, "the family's newest refresh token is dead too");
    let (s, e) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": "rt_nope"})),
        )
        .await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_grant")));
}
both_engines!(refresh_tokens_are_single_use, refresh);

/// `POST /apps/{id}/tokens/refresh` with `refresh_token`: `(status, body)`.
async fn exchange(app: &TestApp, id: &str, pk: &str, rt: &str) -> (u16, Value) {
    app.bearer(
        pk,
        "POST",
        &format!("/apps/{id}/tokens/refresh"),
        Some(json!({"refresh_token": rt})),
    )
    .await
}

/// The audit actions recorded for `id`.
async fn actions(app: &TestApp, id: &str) -> Vec<String> {
    crate::audit_log::records(app)
        .await
        .iter()
        .filter(|r| r["target"] == id)
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}

/// A spent refresh token presented again within `refresh_reuse_grace` (default 10 s)
/// while its successor was never used is a client retrying an answer it never got: it
/// gets a fresh pair, only the unused successor dies, and the retry is audited. The
/// superseded successor presented later is reuse (a thief holding it is still caught).
async fn retry(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Retry", "signing_alg": "ES256", "refresh_ttl": 3600}))
        .await;
    let other = app.issue(&id, &pk, json!({"sub": "bob"})).await;
    let other = other["token"].as_str().unwrap().to_owned();
    let v = app.issue(&id, &pk, json!({"sub": "bob"})).await;
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, lost) = exchange(app, &id, &pk, &rt).await;
    assert_eq!(s, 200, "{lost}");
    // The client never saw `lost`; it retries with the token it has.
    let (s, again) = exchange(app, &id, &pk, &rt).await;
    assert_eq!(
        s, 200,
        "a retry within the grace gets a fresh pair: {again}"
    );
    let token = again["token"].as_str().unwrap().to_owned();
    let rt2 = again["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(Some(rt2.as_str()), lost["refresh_token"].as_str());
    assert!(
        app.active(&id, &pk, &token).await,
        "the retry's token works"
    );
    assert!(
        app.active(&id, &pk, &other).await,
        "bob's other session lives"
    );
    assert!(
        !app.active(&id, &pk, lost["token"].as_str().unwrap()).await,
        "the undelivered successor's access token is withdrawn"
    );
    assert!(
        actions(app, &id)
            .await
            .contains(&"token.refresh_retried".to_owned())
    );
    // The superseded successor turns up later: reuse, the family is revoked.
    let (s, e) = exchange(app, &id, &pk, lost["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("refresh_token_reused"))
    );
    assert!(!app.active(&id, &pk, &token).await, "family revoked");
    let (s, _) = exchange(app, &id, &pk, &rt2).await;
    assert_eq!(s, 400, "the family's newest refresh token is dead too");
    assert!(
        app.active(&id, &pk, &other).await,
        "another family of the subject is untouched"
    );
    assert!(
        actions(app, &id)
            .await
            .contains(&"token.refresh_reuse".to_owned())
    );
}
both_engines!(
    a_refresh_retried_within_the_grace_gets_a_new_pair_and_supersedes_the_unused_one,
    retry
);

/// `refresh_reuse_grace = 0`: any spent token presented again revokes its family.
async fn no_grace(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "No grace", "signing_alg": "ES256", "refresh_ttl": 3600}))
        .await;
    let v = app.issue(&id, &pk, json!({"sub": "bob"})).await;
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, r) = exchange(app, &id, &pk, &rt).await;
    assert_eq!(s, 200, "{r}");
    let (s, e) = exchange(app, &id, &pk, &rt).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("refresh_token_reused"))
    );
    assert!(
        !app.active(&id, &pk, r["token"].as_str().unwrap()).await,
        "family revoked"
    );
    let (s, _) = exchange(app, &id, &pk, r["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 400);
    assert!(
        !actions(app, &id)
            .await
            .contains(&"token.refresh_retried".to_owned())
    );
}
mod without_a_reuse_grace_a_spent_refresh_token_revokes_its_family {
    use crate::common::app::{Engine, TestApp};

    const ENV: &[(&str, &str)] = &[("HSM_ROTATOR_REFRESH_REUSE_GRACE", "0")];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = TestApp::spawn_with("no_reuse_grace_sq", Engine::Sqlite, ENV).await;
        super::no_grace(&app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = TestApp::spawn_with("no_reuse_grace_pg", Engine::Postgres, ENV).await;
        super::no_grace(&app).await;
    }
}

async fn sessions_and_discovery(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Sess", "signing_alg": "ES256", "refresh_ttl": 600}))
        .await;
    let a1 = app.issue(&id, &pk, json!({"sub": "carol"})).await;
    let _a2 = app.issue(&id, &pk, json!({"sub": "carol"})).await;
    let d1 = app.issue(&id, &pk, json!({"sub": "dave"})).await;
    let (s, v) = app
        .bearer(&pk, "GET", &format!("/apps/{id}/sessions?sub=carol"), None)
        .await;
    assert_eq!(s, 200);
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for f in ["jti", "kid", "iat", "exp", "refresh_expires_at"] {
        assert!(sessions[0].get(f).is_some(), "{f}");
    }
    let (s, _) = app
        .bearer(
            &pk,
            "DELETE",
            &format!("/apps/{id}/sessions?sub=carol"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        !app.active(&id, &pk, a1["token"].as_str().unwrap()).await,
        "logged out"
    );
    assert!(
        app.active(&id, &pk, d1["token"].as_str().unwrap()).await,
        "other subjects unaffected"
    );
    let (_, v) = app
        .bearer(&pk, "GET", &format!("/apps/{id}/sessions?sub=carol"), None)
        .await;
    assert_eq!(v["sessions"].as_array().unwrap().len(), 0);
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/refresh"),
            Some(json!({"refresh_token": a1["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 400, "logout revokes refresh tokens too");
    let after = app.issue(&id, &pk, json!({"sub": "carol"})).await;
    assert!(
        app.active(&id, &pk, after["token"].as_str().unwrap()).await,
        "a new login works"
    );

    let (s, d) = app
        .call(
            "GET",
            &format!("/apps/{id}/.well-known/openid-configuration"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 200);
    let issuer = format!("{}/apps/{id}", app.base);
    assert_eq!(d["issuer"], issuer);
    assert_eq!(d["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
    assert_eq!(
        d["introspection_endpoint"],
        format!("{issuer}/tokens/introspect")
    );
    assert_eq!(d["revocation_endpoint"], format!("{issuer}/tokens/revoke"));
    assert!(
        d["id_token_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256"))
    );
    let res = app
        .client
        .get(app.url(&format!("/apps/{id}/.well-known/jwks.json")))
        .send()
        .await
        .unwrap();
    let cc = res.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.contains("max-age="), "{cc}");
}
both_engines!(sessions_logout_and_discovery, sessions_and_discovery);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_issues_tokens_that_introspect_and_verify_against_the_jwks() {
    let app = TestApp::spawn("every_alg_tokens", crate::common::app::Engine::Sqlite).await;
    for (alg, bits) in [
        ("RS256", 2048),
        ("RS384", 3072),
        ("RS512", 2048),
        ("PS256", 2048),
        ("PS384", 2048),
        ("PS512", 4096),
        ("ES256", 0),
        ("ES384", 0),
        ("ES512", 0),
        ("EdDSA", 0),
    ] {
        if !app.token.can("every_alg_tokens", alg.parse().unwrap()) {
            continue;
        }
        let mut body = json!({"name": format!("Alg {alg}"), "signing_alg": alg});
        if bits > 0 {
            body["rsa_bits"] = json!(bits);
        }
        let (id, pk, _) = app.create_app(body).await;
        let t = app.issue(&id, &pk, json!({"sub": "s"})).await;
        let token = t["token"].as_str().unwrap();
        assert!(app.active(&id, &pk, token).await, "{alg}");
        let (h, _, _) = parts(token);
        assert_eq!(h["alg"], alg);
        // Independent check: jsonwebtoken against the published JWK (it has no ES512).
        if alg != "ES512" {
            let jwks = app.jwks(&id).await;
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == h["kid"])
                .unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = jsonwebtoken::Validation::new(alg.parse().unwrap());
            v.validate_aud = false;
            v.set_issuer(&[format!("{}/apps/{id}", app.base)]);
            let data = jsonwebtoken::decode::<Value>(token, &key, &v);
            assert!(data.is_ok(), "{alg}: {data:?}");
        }
    }
}

/// An app row with only the columns every schema version has (no keys, no tokens).
async fn bare_app(pool: &sqlx::AnyPool, id: &str) {
    sqlx::query(
        "INSERT INTO apps (id, name, signing_alg, rsa_bits, rotation_period, verification_ttl, \
         token_ttl, refresh_ttl, subject_dn, access_token_sha256, created_at, updated_at) \
         VALUES ($1, $1, 'ES256', 0, 86400, 3600, 3600, 0, 'CN=t', $1, 0, 0)",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

/// Rows the ledger held before migrations 0005 (the compact subject index) and 0006 (its
/// slots) are keyed as new rows are: after the upgrade a subject's sessions, an app's count
/// and the app's deletion find old and new rows alike, and an app created after it gets a key
/// of its own. Both engines; the digests start with letters and digits, so the SQL that turns
/// a digest's head into a number in the migration is checked against the number the service
/// computes, and the old rows live a few minutes, a day (by their refresh token) and three
/// days, so each slot class the migration computes is checked against the service's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_rows_from_before_the_compact_subject_index_are_found_after_it() {
    use hsm_rotator::store::{LedgerRow, Store};
    use sqlx::Row as _;
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/upgrade.db?mode=rwc", dir.path().display());
    let postgres = crate::common::app::fresh_postgres_db().await;
    let alice = format!("f0e1d2c{}", "3".repeat(57));
    let bob = format!("0a9b8c7{}", "d".repeat(57));
    let now = 2_000_000_000_i64;
    for (engine, url) in [("sqlite", sqlite), ("postgres", postgres)] {
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(engine);
        let migrator = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        migrator.run_to(4, &pool).await.unwrap();
        for id in ["a1", "a2", "a3"] {
            bare_app(&pool, id).await;
        }
        // (jti, app, subject, exp, refresh_exp, the slot the service gives such a row)
        let minute = 1_999_999_980;
        let old = [
            ("01A", "a1", Some(&alice), now + 600, None, minute),
            (
                "01B",
                "a1",
                Some(&alice),
                now + 600,
                Some(now + 86_400),
                1_999_998_000 + 1,
            ),
            (
                "01C",
                "a1",
                Some(&bob),
                now + 3 * 86_400,
                None,
                1_999_987_200 + 2,
            ),
            ("01D", "a1", None, now + 600, None, minute),
            ("01E", "a2", Some(&alice), now + 600, None, minute),
        ];
        for (jti, app, sub, exp, refresh_exp, _) in old {
            sqlx::query(
                "INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp, refresh_exp) \
                 VALUES ($1, $2, 'k', $3, $4, $5, $6)",
            )
            .bind(jti)
            .bind(app)
            .bind(sub)
            .bind(now - 10)
            .bind(exp)
            .bind(refresh_exp)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = Store::connect(&url).await.unwrap();
        for (digest, head) in [(&alice, 0x0f0e_1d2c_i64), (&bob, 0x00a9_b8c7)] {
            let keys: Vec<i64> = sqlx::query("SELECT sub_key FROM tokens WHERE sub_sha256 = $1")
                .bind(digest.as_str())
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get(0).unwrap())
                .collect();
            assert!(
                !keys.is_empty() && keys.iter().all(|k| *k == head),
                "{engine}: {keys:?}"
            );
        }
        for (jti, _, _, _, _, slot) in old {
            let got = sqlx::query("SELECT slot FROM tokens WHERE jti = $1")
                .bind(jti)
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(got.try_get::<i64, _>(0).unwrap(), slot, "{engine} {jti}");
        }
        // Each slot is listed with its rows' latest end, rounded up to a minute.
        let slots: Vec<(i64, i64)> =
            sqlx::query("SELECT slot, until FROM ledger_slots ORDER BY slot")
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
                .collect();
        let at_minute = |t: i64| (t + 59) / 60 * 60;
        assert_eq!(
            slots,
            [
                (1_999_987_200 + 2, at_minute(now + 3 * 86_400)),
                (1_999_998_000 + 1, at_minute(now + 86_400)),
                (minute, at_minute(now + 600)),
            ],
            "{engine}"
        );
        // An app created after the upgrade takes a key of its own.
        bare_app(store.pool(), "a4").await;
        let keys = sqlx::query("SELECT COUNT(DISTINCT ledger_key) FROM apps")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(keys.try_get::<i64, _>(0).unwrap(), 4, "{engine}");
        let new = |jti: &str, app: &str| LedgerRow {
            jti: jti.into(),
            app_id: app.into(),
            kid: "k".into(),
            sub_sha256: Some(alice.clone()),
            iat: now,
            exp: now + 600,
            family: None,
            refresh_exp: None,
            meta: None,
            status: None,
        };
        store
            .insert_ledger(&[new("01F", "a1"), new("01G", "a4")])
            .await
            .unwrap();

        let jtis = async |app: &str, sub: &str| {
            let mut j: Vec<String> = store
                .sessions(app, sub, now)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.jti)
                .collect();
            j.sort();
            j
        };
        assert_eq!(jtis("a1", &alice).await, ["01A", "01B", "01F"], "{engine}");
        assert_eq!(jtis("a1", &bob).await, ["01C"], "{engine}");
        assert_eq!(jtis("a2", &alice).await, ["01E"], "{engine}");
        assert_eq!(jtis("a4", &alice).await, ["01G"], "{engine}");
        assert!(jtis("a3", &alice).await.is_empty(), "{engine}");
        let counts = store
            .live_token_counts_per_app(Some("a1"), now)
            .await
            .unwrap();
        assert_eq!(counts.get("a1"), Some(&5), "{engine}");
        // A day on, only the rows that live three days (or whose refresh token lives a day)
        // are found.
        assert_eq!(jtis("a1", &bob).await, ["01C"], "{engine}");
        let later = store.sessions("a1", &alice, now + 3_600).await.unwrap();
        assert_eq!(
            later.iter().map(|s| s.jti.as_str()).collect::<Vec<_>>(),
            ["01B"],
            "{engine}"
        );

        let mut tx = store.begin().await.unwrap();
        assert!(store.delete_app(&mut tx, "a1").await.unwrap());
        tx.commit().await.unwrap();
        let left = sqlx::query("SELECT COUNT(*) FROM tokens WHERE app_id = 'a1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(left.try_get::<i64, _>(0).unwrap(), 0, "{engine}");
        assert_eq!(jtis("a2", &alice).await, ["01E"], "{engine}");
    }
}
