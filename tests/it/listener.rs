//! The listener under slow, silent and too many clients: TLS handshakes off the accept
//! loop, header-read and idle timeouts, the connection cap, HSTS, and a `/readyz` that
//! does not sign on every call.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::app::{Engine, TestApp};

use crate::common::tls::self_signed;

async fn spawn_tls(name: &str, dir: &Path, env: &[(&str, &str)]) -> TestApp {
    let (cert, key) = self_signed(dir);
    let mut all = vec![
        ("HSM_ROTATOR_TLS_CERT", cert.to_str().unwrap().to_owned()),
        ("HSM_ROTATOR_TLS_KEY", key.to_str().unwrap().to_owned()),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut app = TestApp::spawn_with(name, Engine::Sqlite, &all).await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    app.client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    app
}

/// `host:port` of the service.
fn addr(app: &TestApp) -> String {
    app.base
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_owned()
}

/// Read until the server closes the connection (bounded); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server kept the connection open for {within:?}"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_is_answered_at_once_while_three_silent_connections_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_tls("silent_tls", dir.path(), &[]).await;
    // Three clients that connect and never start their TLS handshake.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    let started = Instant::now();
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), 200);
    // Before: each silent socket held the accept loop for its 10 s handshake timeout.
    assert!(
        took < Duration::from_secs(5),
        "HTTPS request took {took:?} behind silent sockets\n{}",
        app.log_tail()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_sent_on_every_https_response_and_never_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let tls = spawn_tls("hsts_tls", dir.path(), &[]).await;
    for (path, auth, status) in [
        ("/healthz", None, 200),
        ("/apps", Some(tls.root_key.as_str()), 200),
        ("/no-such-route", None, 404),
    ] {
        let mut rb = tls.client.get(tls.url(path));
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let res = rb.send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "{path} over TLS"
        );
    }
    let plain = TestApp::spawn("hsts_plain", Engine::Sqlite).await;
    let res = plain
        .client
        .get(plain.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("strict-transport-security").is_none(),
        "HSTS over plain HTTP: {:?}",
        res.headers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_within_the_header_read_timeout() {
    let app = TestApp::spawn_with(
        "half_sent",
        Engine::Sqlite,
        &[("HSM_ROTATOR_HEADER_READ_TIMEOUT", "1")],
    )
    .await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    // The headers never end (no blank line).
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a request without the end of its headers was answered"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the client had its header-read time"
    );
    // A silent connection (no byte at all) is closed the same way.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    // And the service is fine.
    let (s, _) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
}

/// The header-read limit does not apply between requests: a keep-alive connection may
/// idle longer than it, up to the idle timeout, and is closed after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_the_header_timeout_but_not_the_idle_timeout() {
    let app = TestApp::spawn_with(
        "idle",
        Engine::Sqlite,
        &[
            ("HSM_ROTATOR_HEADER_READ_TIMEOUT", "1"),
            ("HSM_ROTATOR_IDLE_TIMEOUT", "3"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        stream.write_all(request).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        if round == 0 {
            // Idle for longer than the header-read limit, well within the idle limit.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    let started = Instant::now();
    read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_clients_wait_and_are_served_once_sockets_close() {
    let app = TestApp::spawn_with(
        "max_conns",
        Engine::Sqlite,
        &[
            ("HSM_ROTATOR_MAX_CONNECTIONS", "4"),
            ("HSM_ROTATOR_HEADER_READ_TIMEOUT", "60"),
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // More clients than the cap: they connect (the kernel queues them) but are not served
    // while every slot is taken.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/healthz"));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a client beyond max_connections was served while every slot was held"
    );
    drop(held);
    for w in waiting {
        let status = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("served once the held sockets closed")
            .unwrap()
            .expect("request");
        assert_eq!(status, 200);
    }
    let (s, _) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(s, 200, "{}", app.log_tail());
    assert!(
        app.stderr().contains("connection limit reached"),
        "the cap is logged"
    );
}

/// Total signatures the service has made (every algorithm), from `/metrics`.
async fn signatures(app: &TestApp) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("hsm_rotator_hsm_sign_duration_seconds_count"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_readyz_calls_cost_a_handful_of_signatures() {
    let app = TestApp::spawn("readyz_cache", Engine::Sqlite).await;
    app.create_app(json!({"name": "Probe", "signing_alg": "ES256"}))
        .await;
    let before = signatures(&app).await;
    // 25 at once (they share one probe), then 25 one after another (the result is reused).
    let concurrent: Vec<_> = (0..25)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/readyz"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for c in concurrent {
        assert_eq!(c.await.unwrap(), 200);
    }
    for _ in 0..25 {
        let (s, v) = app.call("GET", "/readyz", None, None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["hsm"], "ok", "{v}");
    }
    let made = signatures(&app).await - before;
    assert!(made >= 1.0, "readyz never probed the HSM");
    assert!(made <= 5.0, "50 readyz calls made {made} signatures");
}
