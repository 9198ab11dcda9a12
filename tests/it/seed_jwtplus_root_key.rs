//! Seed `jwtplus-rotate-root-key.txt`, replayed as written: `GET /root/rotate` with the raw
//! root key.

use serde_json::json;

use crate::both_engines;
use crate::common::app::TestApp;

/// `GET /root/rotate` with the raw root key (jwtplus-rotate-root-key.txt).
async fn seed_root_rotate(app: &TestApp) {
    let old = app.root_key.clone();
    let (s, v) = app.call("GET", "/root/rotate", Some(&old), None).await;
    assert_eq!(s, 200, "{v}");
    let new = v["new-key"]
        .as_str()
        .expect("new-key is a string")
        .to_owned();
    assert!(new.starts_with("rk_") && new.len() == 46);
    assert_eq!(v.as_object().unwrap().len(), 1, "only new-key");
    // JWTPlus answers 403 to a wrong root key; the native API 401 (RFC 9110).
    for (m, p, refused) in [
        ("GET", "/root/list", 403),
        ("GET", "/root/rotate", 403),
        ("GET", "/apps", 401),
    ] {
        let (s, _) = app.call(m, p, Some(&old), None).await;
        assert_eq!(s, refused, "old root key still works on {m} {p}");
    }
    let (s, v) = app.call("GET", "/root/list", Some(&old), None).await;
    assert_eq!((s, v), (403, json!({"errors": "invalid root key"})));
    let (s, v) = app.call("GET", "/root/list", None, None).await;
    assert_eq!((s, v), (403, json!({"errors": "invalid root token"})));
    let (s, v) = app.call("GET", "/root/list", Some(&new), None).await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"apps": []}));
    let (s, _) = app
        .call("GET", "/apps", Some(&format!("Bearer {new}")), None)
        .await;
    assert_eq!(s, 200, "new key works on native routes too");
    let (s, v) = app
        .call("POST", "/root/rotate", Some(&format!("Bearer {new}")), None)
        .await;
    assert_eq!(s, 200, "POST and Bearer accepted: {v}");
}
both_engines!(seed_jwtplus_rotate_root_key, seed_root_rotate);
