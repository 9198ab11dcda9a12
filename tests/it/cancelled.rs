//! Requests whose client goes away mid-way (issue 26 item 2): a change that committed keeps
//! its audit record (and this replica's memory follows it), one that did not leaves neither.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::audit_log::{audit_verify, records};
use crate::both_engines;
use crate::common::app::TestApp;

/// Send a request on a raw connection and hang up after `after` unless the whole answer
/// has arrived by then: `Some((status, body))` if it has (the client got it), else `None`
/// (the server sees the connection close while it works, and drops the request).
async fn abandon(
    app: &TestApp,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
    after: Duration,
) -> Option<(u16, Value)> {
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    // A partial answer never reached the client as a whole: it is a hang-up too.
    (rest.len() >= len).then(|| (status, serde_json::from_str(rest).unwrap_or(Value::Null)))
}

/// Hang-ups after 0, 2, 4 ... ms: before, during and after the change's commit.
fn delays() -> impl Iterator<Item = Duration> {
    (0..10u64).map(|i| Duration::from_millis(i * 2))
}

async fn cancelled_changes(app: &TestApp) {
    let mut rotated = Vec::new();
    let mut deleted = Vec::new();
    for (i, after) in delays().enumerate() {
        let (id, pk, _) = app
            .create_app(json!({"name": format!("Rotated {i}"), "signing_alg": "ES256"}))
            .await;
        let current = crate::common::app::kids_in(&app.keys(&id).await, "current");
        let path = format!("/apps/{id}/keys/emergency-rotate");
        let answer = abandon(app, "POST", &path, &app.root_key, None, after).await;
        rotated.push((id, pk, current, answer));
        let (id, _, _) = app
            .create_app(json!({"name": format!("Deleted {i}"), "signing_alg": "ES256"}))
            .await;
        let answer = abandon(
            app,
            "DELETE",
            &format!("/apps/{id}"),
            &app.root_key,
            None,
            after,
        )
        .await;
        deleted.push((id, answer));
    }
    // Let anything still running finish: every request above has been answered or
    // dropped once a later request on one of its apps has been served.
    for (id, pk, _, _) in &rotated {
        let _ = app.bearer(pk, "GET", &format!("/apps/{id}"), None).await;
    }
    let recs = records(app).await;
    let recorded = |action: &str, id: &str| {
        recs.iter()
            .any(|r| r["action"] == action && r["target"] == id)
    };
    let mut cut = 0;
    for (id, _, before, answer) in &rotated {
        let now = crate::common::app::kids_in(&app.keys(id).await, "current");
        let happened = now != *before;
        cut += usize::from(answer.is_none());
        assert_eq!(
            happened,
            recorded("key.emergency_rotate", id),
            "emergency rotation of {id} (answer {answer:?}): it happened iff it is recorded"
        );
        if let Some((s, _)) = answer {
            assert_eq!(*s, 200);
            assert!(happened);
        }
    }
    for (id, answer) in &deleted {
        let (s, _) = app.root("GET", &format!("/apps/{id}"), None).await;
        let happened = s == 404;
        assert_eq!(
            happened,
            recorded("app.delete", id),
            "deletion of {id} (answer {answer:?}): it happened iff it is recorded"
        );
    }
    let (ok, out) = audit_verify(app).await;
    assert!(ok, "audit verify after hang-ups: {out}");
    eprintln!("{cut} of {} emergency rotations hung up on", rotated.len());
}
both_engines!(
    a_change_whose_client_hung_up_is_recorded_iff_it_happened,
    cancelled_changes
);

/// A client sends its refresh and hangs up without reading the answer, which the server
/// still completes (and writes to a socket nobody reads, or withdraws); the client then
/// retries with the same refresh token. The retry gets a new pair; the subject's other
/// session and the new pair live; the pair the client never read is inactive; nothing
/// was taken for reuse (issue 26 item 2).
async fn refresh_hung_up(app: &TestApp) {
    let (id, pk, _) = app
        .create_app(json!({"name": "Hung-up refresh", "signing_alg": "ES256", "refresh_ttl": 3600}))
        .await;
    let other = app.issue(&id, &pk, json!({"sub": "dora"})).await;
    let other = other["token"].as_str().unwrap().to_owned();
    let v = app.issue(&id, &pk, json!({"sub": "dora"})).await;
    let (first, rt) = (
        v["token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    );
    let path = format!("/apps/{id}/tokens/refresh");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = json!({"refresh_token": rt}).to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {pk}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The exchange commits (the old access token retires with it); the answer is never read.
    let mut waited = 0;
    while app.active(&id, &pk, &first).await {
        waited += 1;
        assert!(waited < 1000, "the exchange never completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    let (status, again) = app
        .bearer(&pk, "POST", &path, Some(json!({"refresh_token": rt})))
        .await;
    assert_eq!(status, 200, "the retry gets a new pair: {again}");
    let token = again["token"].as_str().unwrap().to_owned();
    assert!(app.active(&id, &pk, &token).await, "the new pair works");
    assert!(
        app.active(&id, &pk, &other).await,
        "the other session lives"
    );
    let (status, next) = app
        .bearer(
            &pk,
            "POST",
            &path,
            Some(json!({"refresh_token": again["refresh_token"]})),
        )
        .await;
    assert_eq!(status, 200, "the new refresh token works: {next}");
    let newest = next["token"].as_str().unwrap().to_owned();
    // Live sessions: the other one and the newest; the undelivered pair is not among them.
    let (status, sessions) = app
        .bearer(&pk, "GET", &format!("/apps/{id}/sessions?sub=dora"), None)
        .await;
    assert_eq!(status, 200, "{sessions}");
    let jti = |t: &str| -> Value {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&payload).unwrap()["jti"].clone()
    };
    let mut live: Vec<Value> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["jti"].clone())
        .collect();
    live.sort_by_key(ToString::to_string);
    let mut expected = vec![jti(&other), jti(&newest)];
    expected.sort_by_key(ToString::to_string);
    assert_eq!(live, expected, "only the delivered tokens live");
    let recs = records(app).await;
    assert!(
        !recs
            .iter()
            .any(|r| r["action"] == "token.refresh_reuse" && r["target"] == id),
        "the retry was not taken for reuse"
    );
    let retried = recs
        .iter()
        .any(|r| r["action"] == "token.refresh_retried" && r["target"] == id);
    eprintln!(
        "hung-up refresh: {}",
        if retried {
            "answered into a dead socket, retried within the grace"
        } else {
            "withdrawn before it was answered, exchanged again"
        }
    );
    let (ok, out) = audit_verify(app).await;
    assert!(ok, "audit verify: {out}");
}
both_engines!(
    a_refresh_whose_client_hung_up_can_be_retried_without_revoking_the_family,
    refresh_hung_up
);
