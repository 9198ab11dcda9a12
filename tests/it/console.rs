//! The operator console (issue 9): its embedded assets and headers, and the public API
//! additions it reads (blast radius, app list figures, audit filters and chain check,
//! scheduler status). The browser flow itself is scripts/console-test.

use serde_json::{Value, json};

use crate::both_engines;
use crate::common::app::{TestApp, kids_in};

async fn blast_radius_and_app_figures(app: &TestApp) {
    let (id, pk, body) = app
        .create_app(json!({"name": "Radius", "signing_alg": "ES256", "rotation_period": 3600}))
        .await;
    let keys = body["keys"].as_array().unwrap();
    let current = kids_in(keys, "current")[0].clone();
    let next = kids_in(keys, "next")[0].clone();

    let (s, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["live_tokens"].as_i64(), r["subjects"].as_i64()),
        (Some(0), Some(0))
    );

    for sub in ["alice", "bob", "alice"] {
        app.issue(&id, &pk, json!({"sub": sub})).await;
    }
    let (s, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["app_id"], id.as_str());
    assert_eq!(r["live_tokens"], 3);
    assert_eq!(r["subjects"], 2);
    let per = |kid: &str| {
        r["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .cloned()
            .unwrap_or_else(|| panic!("{kid} missing from {r}"))
    };
    assert_eq!(per(&current)["state"], "current");
    assert_eq!(
        (
            per(&current)["live_tokens"].as_i64(),
            per(&current)["subjects"].as_i64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(
        (
            per(&next)["live_tokens"].as_i64(),
            per(&next)["subjects"].as_i64()
        ),
        (Some(0), Some(0))
    );

    // The list carries what the console's table shows.
    let (s, list) = app.root("GET", "/apps", None).await;
    assert_eq!(s, 200);
    let a = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        a["key_counts"],
        json!({"next": 1, "current": 1, "previous": 0, "retired": 0, "revoked": 0})
    );
    assert_eq!(a["live_tokens"], 3);
    let last = chrono_secs(a["last_rotation_at"].as_str().unwrap());
    let next_at = chrono_secs(a["next_rotation_at"].as_str().unwrap());
    assert_eq!(
        next_at - last,
        3600,
        "next rotation = signing since + rotation_period"
    );
    let (_, shown) = app.root("GET", &format!("/apps/{id}"), None).await;
    assert_eq!(shown["live_tokens"], 3);

    // The preview matches what the revocation then reports.
    let (s, rev) = app
        .root("POST", &format!("/apps/{id}/keys/{current}/revoke"), None)
        .await;
    assert_eq!(s, 200, "{rev}");
    assert_eq!(rev["revoked_tokens"], 3);
    assert_eq!(rev["affected_subjects"], 2);
    let (_, list) = app.root("GET", "/apps", None).await;
    let a = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(a["key_counts"]["revoked"], 1);
    assert_eq!(a["key_counts"]["current"], 1);

    // Tokens of a revoked key, and tokens before a flush, no longer count.
    let (_, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(
        (r["live_tokens"].as_i64(), r["subjects"].as_i64()),
        (Some(0), Some(0)),
        "{r}"
    );
    for sub in ["carol", "dave"] {
        app.issue(&id, &pk, json!({"sub": sub})).await;
    }
    let (_, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(
        (r["live_tokens"].as_i64(), r["subjects"].as_i64()),
        (Some(2), Some(2)),
        "{r}"
    );
    // A token revoked on its own (RFC 7009) no longer counts either.
    let t = app.issue(&id, &pk, json!({"sub": "erin"})).await;
    let (s, _) = app
        .bearer(
            &pk,
            "POST",
            &format!("/apps/{id}/tokens/revoke"),
            Some(json!({"token": t["token"]})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(r["live_tokens"], 2, "{r}");
    let (s, _) = app
        .root("POST", &format!("/apps/{id}/tokens/flush"), None)
        .await;
    assert_eq!(s, 200);
    let (_, r) = app
        .root("GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(
        (r["live_tokens"].as_i64(), r["subjects"].as_i64()),
        (Some(0), Some(0)),
        "{r}"
    );

    // Root only; unknown apps are 404; nothing is changed by asking.
    let (s, _) = app
        .call("GET", &format!("/apps/{id}/blast-radius"), None, None)
        .await;
    assert_eq!(s, 401);
    let (s, _) = app
        .bearer(&pk, "GET", &format!("/apps/{id}/blast-radius"), None)
        .await;
    assert_eq!(s, 403);
    let (s, e) = app
        .root("GET", "/apps/01ARZ3NDEKTSV4RRFFQ69G5FAV/blast-radius", None)
        .await;
    assert_eq!(s, 404);
    assert!(e["error"].is_string());
}
both_engines!(console_blast_radius, blast_radius_and_app_figures);

fn chrono_secs(t: &str) -> i64 {
    // RFC 3339 UTC with a `Z`: days from the civil date plus the time of day.
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let tm: Vec<i64> = time
        .split(':')
        .map(|x| x.split('.').next().unwrap().parse().unwrap())
        .collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + tm[0] * 3600 + tm[1] * 60 + tm[2]
}

async fn audit_filters_and_verify(app: &TestApp) {
    let (a, _, _) = app.create_app(json!({"name": "Audited A"})).await;
    let (b, _, _) = app.create_app(json!({"name": "Audited B"})).await;
    let (s, r) = app
        .root("POST", &format!("/apps/{a}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200, "{r}");
    let prev = r["previous"][0]["kid"].as_str().unwrap().to_owned();
    let (s, _) = app
        .root("POST", &format!("/apps/{a}/keys/{prev}/revoke"), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .root("POST", &format!("/apps/{b}/keys/rotate"), None)
        .await;
    assert_eq!(s, 200);
    // An auth failure by someone else.
    let (s, _) = app
        .call("GET", "/apps", Some("Bearer rk_wrong"), None)
        .await;
    assert_eq!(s, 401);

    let get = |q: String| async move {
        let (s, v) = app.root("GET", &format!("/audit?{q}"), None).await;
        assert_eq!(s, 200, "{q}: {v}");
        v["records"].as_array().unwrap().clone()
    };
    // By app: the app's own records and those of its keys, nothing of the other app.
    let recs = get(format!("order=desc&app={a}")).await;
    assert!(!recs.is_empty());
    let a_keys: Vec<String> = app
        .keys(&a)
        .await
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    for r in &recs {
        let t = r["target"].as_str().unwrap();
        assert!(
            t == a || a_keys.iter().any(|k| k == t),
            "{r} is not about {a}"
        );
    }
    let seqs: Vec<i64> = recs.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    for action in ["app.create", "key.rotate", "key.revoke"] {
        assert!(
            recs.iter().any(|r| r["action"] == action),
            "{action} missing"
        );
    }
    // By action and app.
    let recs = get(format!("order=desc&app={a}&action=key.revoke")).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["target"], prev.as_str());
    assert_eq!(recs[0]["actor"], "root");
    // By actor: root's records only; the failed attempt is not root's.
    let recs = get("actor=root&limit=1000".into()).await;
    assert!(recs.iter().all(|r| r["actor"] == "root"));
    let seqs: Vec<i64> = recs.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first by default"
    );
    let fails = get("order=desc&action=auth.failure".into()).await;
    assert!(!fails.is_empty());
    assert!(fails.iter().all(|r| r["actor"] != "root"));
    // Paging newest first.
    let page1 = get("order=desc&limit=2".into()).await;
    assert_eq!(page1.len(), 2);
    let before = page1[1]["seq"].as_i64().unwrap();
    let page2 = get(format!("order=desc&limit=2&before={before}")).await;
    assert!(page2.iter().all(|r| r["seq"].as_i64().unwrap() < before));
    // A filter that matches nothing.
    assert!(get("action=no.such.action".into()).await.is_empty());

    // Bad pages and filters are 400 with a code.
    for q in ["order=sideways", "limit=0", "before=-1", "colour=red"] {
        let (s, e) = app.root("GET", &format!("/audit?{q}"), None).await;
        assert_eq!(s, 400, "{q}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
    let long = "x".repeat(201);
    let (s, _) = app.root("GET", &format!("/audit?actor={long}"), None).await;
    assert_eq!(s, 400);

    // The chain verifies.
    let (s, v) = app.root("GET", "/audit/verify", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["records"].as_i64().unwrap() >= 6);
    assert_eq!(v["broken"], Value::Null);
    let (s, _) = app.call("GET", "/audit/verify", None, None).await;
    assert_eq!(s, 401);
}
both_engines!(console_audit_filters, audit_filters_and_verify);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_status_and_assets() {
    let app = TestApp::spawn("console_assets", crate::common::app::Engine::Sqlite).await;

    let (s, st) = app.root("GET", "/status", None).await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["replica_id"].as_str().unwrap().len(), 26);
    assert!(st["scheduler"]["leader"].is_boolean());
    assert!(st["scheduler"].get("last_tick_at").is_some());
    let (s, _) = app.call("GET", "/status", None, None).await;
    assert_eq!(s, 401);

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client.get(app.url("/console")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 308);
    assert_eq!(res.headers()["location"], "/console/");

    let res = client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );

    for (file, mime) in [
        ("app.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("timeline.js", "text/javascript"),
        ("console.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let res = client
            .get(app.url(&format!("/console/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{file}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(mime),
            "{file}"
        );
        assert!(res.headers().contains_key("content-security-policy"));
        let etag = res.headers()["etag"].clone();
        let again = client
            .get(app.url(&format!("/console/{file}")))
            .header("If-None-Match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status().as_u16(), 304, "{file} revalidates");
    }
    // The root key is kept in session storage only: never a cookie.
    let js = client
        .get(app.url("/console/api.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        js.contains("sessionStorage")
            && !js.contains("document.cookie")
            && !js.contains("localStorage")
    );

    let (s, e) = app.call("GET", "/console/../Cargo.toml", None, None).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = app.call("GET", "/console/nope.js", None, None).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"], "not_found", "{e}");
}
