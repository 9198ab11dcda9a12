//! The OpenAPI document and its UI, from the outside: `/openapi.json` is OpenAPI 3.1 and
//! lists every route with its methods (native and every compatibility family, aliases
//! included), every documented operation is really served, and `/docs` is an HTML page
//! that loads nothing from another origin.

use serde_json::Value;

use crate::common::app::{Engine, TestApp};

/// Every route the service serves, with its methods (SPEC §3.1 and §3.2).
const ROUTES: &[(&str, &[&str])] = &[
    // native
    ("/apps", &["get", "post"]),
    ("/apps/{id}", &["get", "patch", "delete"]),
    ("/apps/{id}/keys", &["get"]),
    ("/apps/{id}/keys/import", &["post"]),
    ("/apps/{id}/keys/rotate", &["post"]),
    ("/apps/{id}/keys/{kid}/revoke", &["post"]),
    ("/apps/{id}/keys/emergency-rotate", &["post"]),
    ("/apps/{id}/access-token", &["post"]),
    ("/root-key/rotate", &["post"]),
    ("/apps/{id}/blast-radius", &["get"]),
    ("/apps/{id}/tokens", &["post"]),
    ("/apps/{id}/tokens/refresh", &["post"]),
    ("/apps/{id}/tokens/introspect", &["post"]),
    ("/apps/{id}/tokens/revoke", &["post"]),
    ("/apps/{id}/tokens/flush", &["post"]),
    ("/apps/{id}/sessions", &["get", "delete"]),
    ("/apps/{id}/.well-known/jwks.json", &["get"]),
    ("/apps/{id}/.well-known/openid-configuration", &["get"]),
    ("/apps/{id}/statuslists", &["get"]),
    ("/apps/{id}/statuslists/{n}", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/status", &["get"]),
    ("/audit", &["get"]),
    ("/audit/verify", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
    ("/docs", &["get"]),
    // JWTPlus
    ("/ping", &["get"]),
    ("/health", &["get"]),
    ("/root/list", &["get"]),
    ("/root/rotate", &["get", "post"]),
    ("/root/create", &["post"]),
    ("/root/{app_id}", &["patch", "delete"]),
    ("/root/{app_id}/rotate/key", &["get"]),
    ("/root/{app_id}/rotate/pki", &["get", "post"]),
    ("/root/{app_id}/revoke/{key_id}", &["delete"]),
    ("/root/{app_id}/flush", &["delete"]),
    ("/app/{app_id}", &["get"]),
    ("/app/{app_id}/pub-keys", &["get"]),
    ("/app/{app_id}/sign", &["post"]),
    ("/app/{app_id}/verify", &["post"]),
    ("/app/{app_id}/renew", &["post"]),
    ("/app/{app_id}/get-session", &["post"]),
    ("/app/{app_id}/logout", &["post"]),
    // Auth0
    ("/connections/{id}/keys/rotate", &["post"]),
    ("/api/v2/connections/{id}/keys/rotate", &["post"]),
    ("/connections/{id}/keys", &["get"]),
    ("/api/v2/connections/{id}/keys", &["get"]),
    // PocketPaw
    ("/api/token/regenerate", &["post"]),
    ("/api/v1/token/regenerate", &["post"]),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn methods_of(item: &Value) -> Vec<String> {
    let mut m: Vec<String> = item
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| METHODS.contains(&k.as_str()))
        .cloned()
        .collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_docs_are_self_contained() {
    let app = TestApp::spawn("openapi_doc", Engine::Sqlite).await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = res.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();

    // Exactly the routes above, each with exactly its methods.
    for (path, methods) in ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from /openapi.json"));
        let mut want: Vec<String> = methods.iter().map(|m| (*m).to_owned()).collect();
        want.sort();
        assert_eq!(methods_of(item), want, "methods of {path}");
    }
    let listed: Vec<&str> = ROUTES.iter().map(|(p, _)| *p).collect();
    for p in paths.keys() {
        assert!(
            listed.contains(&p.as_str()),
            "{p} documented but not expected"
        );
    }

    // Every operation: a tag, a success response, and an error schema of its family
    // wherever it can fail.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in ["ErrorBody", "JpErrorBody", "A0ErrorBody", "PpErrorBody"] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in ["root_key", "root_bearer", "app_key", "app_token"] {
        assert!(schemes.contains_key(name), "security scheme {name}");
    }
    for (path, item) in paths {
        for m in methods_of(item) {
            let op = &item[&m];
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{m} {path} has a tag"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{m} {path} documents its success"
            );
            let family = if path.starts_with("/root/") || path.starts_with("/app/") {
                "JpErrorBody"
            } else if path.contains("/connections/") {
                "A0ErrorBody"
            } else if path.contains("/token/regenerate") {
                "PpErrorBody"
            } else {
                "ErrorBody"
            };
            if op.get("security").is_some() {
                let e401 = responses
                    .get("401")
                    .or_else(|| responses.get("403"))
                    .unwrap_or_else(|| panic!("{m} {path} documents its auth failure"));
                assert_eq!(
                    e401["content"]["application/json"]["schema"]["$ref"],
                    format!("#/components/schemas/{family}"),
                    "{m} {path} error shape"
                );
            }
        }
    }

    // Every documented operation is served: never the fallback's "route not found" nor 405.
    let ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", ulid)
            .replace("{app_id}", ulid)
            .replace("{kid}", ulid)
            .replace("{key_id}", ulid);
        for m in methods_of(item) {
            let (status, body) = app.call(&m.to_uppercase(), &concrete, None, None).await;
            assert_ne!(status, 405, "{m} {concrete} is served");
            assert!(
                !(status == 404 && body["message"] == "route not found"),
                "{m} {concrete} is served: {body}"
            );
        }
    }

    // /docs: HTML, a CSP that forbids other origins, and no third-party URL.
    let res = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("http"), "no other origin allowed: {csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains("<html"), "{html}");
    assert!(html.contains("/openapi.json"));
    assert!(html.contains("/docs/scalar.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "no third-party URL in /docs: {html}"
    );
    // Its script is served from the binary.
    let res = app
        .client
        .get(app.url("/docs/scalar.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = res.bytes().await.unwrap();
    assert!(js.len() > 100_000, "the Scalar bundle ({} bytes)", js.len());
}
