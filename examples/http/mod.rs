//! `scripts/bench http`: the service's HTTP rates measured by a load generator we did not
//! write (`wrk`), each beside its anchor measured in the same run, right before it:
//!
//! - issuance (ES256, RS256, EdDSA) against raw 2-thread `C_Sign` on the same key (the best
//!   of three fresh starts: see the lock convoy noted in `run`), and
//!   against the HTTP + signature floor: a server in this process that only signs (see
//!   [`Floor`]), the most any HTTP issuance could reach on this machine with wrk beside it;
//! - introspection (ES256, RS256) against in-process `jsonwebtoken` verification, and
//!   against the HTTP + verification floor of the same [`Floor`] server;
//! - JWKS against a static 200 route of the same server (`GET /healthz`, the HTTP floor).
//!
//! Each figure also gives the server's CPU time per request (utime + stime of the process
//! at `BENCH_PID` over the wrk run, divided by the requests answered): on shared cores that
//! is steadier than the rate, and it is the budget the per-token profile splits.
//!
//! Environment: as the other HTTP benchmarks, plus `BENCH_PID` (the server) and
//! `BENCH_WRK_LUA` (scripts/wrk-post.lua); `BENCH_ROUNDS` (2), `BENCH_WRK_SECONDS` (8),
//! `BENCH_WRK_CONNECTIONS` (32).

use std::process::Command;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use hsm_rotator::alg::Algorithm;
use hsm_rotator::hsm::Hsm;
use hsm_rotator::keys::Kid;
use serde_json::{Value, json};

use super::{Http, env, raw_rate, verify_rate};

/// The HTTP floors of issuance and introspection: the cheapest server that could answer
/// either request on this machine. In this process, on a runtime shaped as the server's (one
/// worker a core), requests are taken as the server takes them (hyper through axum):
/// `POST /sign/{i}` signs a real token's JWS signing input with key `i` through the session
/// pool the server uses ([`Hsm::sign`], in place as the server's hot path) and answers
/// `{"token": ...}`; `POST /verify/{i}` reads `{"token": ...}` and verifies it as the
/// in-process anchor does, answering `{"active": true}`. No credential, claims, ledger,
/// revocation checks, metrics or logging: what is left between the service and its floor
/// is the service's own work; what is left between the floor and the in-process anchor is
/// HTTP, the kernel and wrk on the same cores.
struct Floor {
    base: String,
    /// Keeps the floor's runtime (and so its server) alive.
    _rt: tokio::runtime::Runtime,
}

/// What the floor's routes use: its session pool; key, algorithm and signing input per index
/// for `/sign`; key and validation per index for `/verify`.
struct FloorKeys {
    /// The floor's own session pool.
    hsm: Hsm,
    sign: Vec<(Kid, Algorithm, String)>,
    verify: Vec<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
}

async fn floor_sign(
    State(keys): State<Arc<FloorKeys>>,
    Path(i): Path<usize>,
    _body: axum::body::Bytes,
) -> Result<axum::response::Response, StatusCode> {
    let (kid, alg, input) = keys.sign.get(i).ok_or(StatusCode::NOT_FOUND)?;
    let sig = keys
        .hsm
        .sign(*kid, *alg, input.as_bytes().to_vec())
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let body = format!("{{\"token\":\"{input}.{}\"}}", URL_SAFE_NO_PAD.encode(sig));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(serde::Deserialize)]
struct FloorIntrospect {
    token: String,
}

async fn floor_verify(
    State(keys): State<Arc<FloorKeys>>,
    Path(i): Path<usize>,
    axum::Json(req): axum::Json<FloorIntrospect>,
) -> Result<axum::response::Response, StatusCode> {
    let (key, validation) = keys.verify.get(i).ok_or(StatusCode::NOT_FOUND)?;
    jsonwebtoken::decode::<Value>(&req.token, key, validation)
        .map_err(|_| StatusCode::UNAUTHORIZED)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        "{\"active\":true}",
    )
        .into_response())
}

impl Floor {
    /// Start the floor server on the bench token (`BENCH_LABEL`, `BENCH_PIN`), its pool as
    /// large as the server's default (two sessions a core): `sign` holds key, algorithm
    /// and signing input per index, `verify` key and validation per index.
    fn start(
        sign: Vec<(Kid, Algorithm, String)>,
        verify: Vec<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
            .unwrap();
        let keys = FloorKeys {
            hsm: super::bench_pool(&rt, 2 * cores, None),
            sign,
            verify,
        };
        let app = axum::Router::new()
            .route("/sign/{i}", axum::routing::post(floor_sign))
            .route("/verify/{i}", axum::routing::post(floor_verify))
            .with_state(Arc::new(keys));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, _rt: rt }
    }

    /// wrk on `route` (`sign` or `verify`) of key `i`, counting this process's CPU.
    fn wrk(&self, route: &str, i: usize, body: &str) -> Wrk {
        let url = format!("{}/{route}/{i}", self.base);
        let pid = std::process::id().to_string();
        // Warm up: the pool's first signatures set its running mean (the in-place path).
        let _ = wrk_on(&url, Some((body, "-")), 1, &pid);
        wrk_on(
            &url,
            Some((body, "-")),
            env_or("BENCH_WRK_SECONDS", 8),
            &pid,
        )
    }
}

fn env_or<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One wrk run's figures.
struct Wrk {
    rate: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server CPU (user + system) per request, µs.
    cpu_us: f64,
    /// Share of the machine's CPU time left idle during the run, %: above a few per cent the
    /// figure was not bound by CPU but by waiting (a lock, a batch, a hand-off).
    idle_pct: f64,
}

/// The machine's CPU time so far from `/proc/stat`: (idle + iowait, total), in ticks.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    (f[3] + f[4], f[..8].iter().sum())
}

/// A latency as wrk prints it (`850.00us`, `1.23ms`, `2.00s`, `1.00m`), in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the paren), in
    // clock ticks of 1/100 s.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Run wrk on `url` (a POST of `body` with `token` when `body` is set, else a GET).
fn wrk(url: &str, post: Option<(&str, &str)>) -> Wrk {
    wrk_for(url, post, env_or("BENCH_WRK_SECONDS", 8))
}

/// [`wrk`] for `secs` seconds, counting the CPU of the server at `BENCH_PID`.
fn wrk_for(url: &str, post: Option<(&str, &str)>, secs: u64) -> Wrk {
    wrk_on(url, post, secs, &env("BENCH_PID"))
}

/// [`wrk_for`], counting the CPU of process `pid`.
fn wrk_on(url: &str, post: Option<(&str, &str)>, secs: u64, pid: &str) -> Wrk {
    let conns: u64 = env_or("BENCH_WRK_CONNECTIONS", 32);
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some((body, token)) = post {
        cmd.args(["-s", &env("BENCH_WRK_LUA")])
            .env("WRK_BODY", body)
            .env("WRK_TOKEN", token);
    }
    cmd.arg(url);
    let cpu0 = cpu_seconds(pid);
    let (idle0, total0) = machine_ticks();
    let out = cmd.output().expect("wrk (scripts/bench installs it)");
    let cpu = cpu_seconds(pid) - cpu0;
    let (idle1, total1) = machine_ticks();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw failures: {text}"
    );
    let mut w = Wrk {
        rate: 0.0,
        requests: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        cpu_us: f64::NAN,
        idle_pct: 100.0 * (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => w.p50_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => w.p99_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => w.rate = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    if w.requests > 0.0 {
        w.cpu_us = cpu * 1e6 / w.requests;
    }
    w
}

pub(crate) fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = Pkcs11::new(super::MODULE).unwrap();
    let _ = raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let http = Http::new();
    let anchor_secs: f64 = env_or("BENCH_WRK_SECONDS", 8.0);
    let issue_body = json!({"claims": {"sub": "alice", "aud": "api"}}).to_string();
    // One app per algorithm; for introspection, one token of each (an hour to live).
    let mut apps = Vec::new();
    for (name, alg, bits) in [
        ("ES256", Algorithm::ES256, 0),
        ("RS256", Algorithm::RS256, 2048),
        ("EdDSA", Algorithm::EdDSA, 0),
    ] {
        let (id, pk) = rt.block_on(http.create(name, bits));
        let kid = rt.block_on(http.current_kid(&id));
        let token: Value = rt.block_on(async {
            http.client
                .post(format!("{}/apps/{id}/tokens", http.base))
                .bearer_auth(&pk)
                .body(issue_body.clone())
                .header("Content-Type", "application/json")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let token = token["token"].as_str().unwrap().to_owned();
        let jwks = rt.block_on(http.get_json(&format!("/apps/{id}/.well-known/jwks.json"), false));
        apps.push((name, alg, id, pk, kid, token, jwks));
    }
    // The floor signs what the server signed (each app's token's signing input) and
    // verifies as the in-process anchor does.
    let floor = Floor::start(
        apps.iter()
            .map(|(_, alg, _, _, kid, token, _)| {
                let input = token.rsplit_once('.').unwrap().0.to_owned();
                (*kid, *alg, input)
            })
            .collect(),
        apps.iter()
            .map(|(name, _, _, _, _, token, jwks)| super::verifier(jwks, token, name))
            .collect(),
    );
    let rounds: usize = env_or("BENCH_ROUNDS", 2);
    for round in 1..=rounds {
        println!();
        println!("Run {round} of {rounds}:");
        println!();
        println!(
            "| figure | req/s | p50 ms | p99 ms | server CPU µs/req | machine idle | anchor (same run) | anchor/s | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let row = |figure: &str, w: &Wrk, anchor: &str, a: f64| {
            println!(
                "| {figure} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} % | {anchor} | {a:.0} | {:.2} |",
                w.rate,
                w.p50_ms,
                w.p99_ms,
                w.cpu_us,
                w.idle_pct,
                w.rate / a
            );
        };
        let mut against_floor = Vec::new();
        let mut anchor_idle = Vec::new();
        for (i, (name, alg, id, pk, kid, _, _)) in apps.iter().enumerate() {
            // Two raw threads on SoftHSM2 can fall into a lock convoy (its token-wide mutex
            // is held across file system calls at every `C_SignInit`): ES256 then signs at
            // about half the rate with a fifth of the machine idle, and stays so until the
            // threads restart. The anchor is the best of three fresh starts, so that a
            // convoy does not flatter the ratio; each start's rate and idle share is printed.
            let mut a = 0.0_f64;
            let mut starts = Vec::new();
            for _ in 0..3 {
                let (idle0, total0) = machine_ticks();
                let r = raw_rate(&raw, *kid, *alg, 2, anchor_secs / 3.0);
                let (idle1, total1) = machine_ticks();
                starts.push(format!(
                    "{r:.0}/s ({:.0} % idle)",
                    100.0 * (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64
                ));
                a = a.max(r);
            }
            anchor_idle.push(format!("{name}: {}", starts.join(", ")));
            let w = wrk(
                &format!("{}/apps/{id}/tokens", http.base),
                Some((&issue_body, pk)),
            );
            let f = floor.wrk("sign", i, &issue_body);
            row(
                &format!("{name} issuance"),
                &w,
                "raw `C_Sign`, 2 threads, best of 3",
                a,
            );
            row(
                &format!("{name} HTTP + signature floor"),
                &f,
                "raw `C_Sign`, 2 threads, best of 3",
                a,
            );
            against_floor.push(format!("{name} issuance {:.2}", w.rate / f.rate));
        }
        for (i, (name, _, id, pk, _, token, jwks)) in apps.iter().enumerate().take(2) {
            let a = verify_rate(jwks, token, name, anchor_secs);
            let body = json!({ "token": token }).to_string();
            let w = wrk(
                &format!("{}/apps/{id}/tokens/introspect", http.base),
                Some((&body, pk)),
            );
            let f = floor.wrk("verify", i, &body);
            row(
                &format!("{name} introspection"),
                &w,
                "in-process `jsonwebtoken` verify, 2 threads",
                a,
            );
            row(
                &format!("{name} HTTP + verification floor"),
                &f,
                "in-process `jsonwebtoken` verify, 2 threads",
                a,
            );
            against_floor.push(format!("{name} introspection {:.2}", w.rate / f.rate));
        }
        let healthz = wrk(&format!("{}/healthz", http.base), None);
        let (_, _, id, ..) = &apps[0];
        let w = wrk(
            &format!("{}/apps/{id}/.well-known/jwks.json", http.base),
            None,
        );
        row(
            "JWKS",
            &w,
            "`GET /healthz` (wrk, same server)",
            healthz.rate,
        );
        println!(
            "| `GET /healthz` (the HTTP floor) | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} % | | | |",
            healthz.rate, healthz.p50_ms, healthz.p99_ms, healthz.cpu_us, healthz.idle_pct
        );
        println!();
        println!(
            "The service against its floor (same run): {}.",
            against_floor.join(", ")
        );
        println!(
            "Raw `C_Sign` anchor, 2 threads, three fresh starts (the best is the anchor): {}.",
            anchor_idle.join("; ")
        );
    }
}

/// `http-profile`: ES256 issuance under wrk while `perf record` samples the server
/// (`BENCH_PID`) into `BENCH_PERF_DATA`; prints the rate and the server's CPU per token.
pub(crate) fn profile() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = Http::new();
    let (id, pk) = rt.block_on(http.create("ES256", 0));
    let body = json!({"claims": {"sub": "alice", "aud": "api"}}).to_string();
    let url = format!("{}/apps/{id}/tokens", http.base);
    // Warm up (the first signature of an algorithm sets its running mean).
    let _ = wrk_for(&url, Some((&body, &pk)), 2);
    // BENCH_PERF_ARGS adds options, e.g. `--call-graph dwarf,8192 -F 499` to see callers.
    let extra = std::env::var("BENCH_PERF_ARGS").unwrap_or_default();
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-F", "1999"])
        .args(extra.split_whitespace())
        .args(["-p", &env("BENCH_PID"), "-o"])
        .arg(env("BENCH_PERF_DATA"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf");
    let w = wrk(&url, Some((&body, &pk)));
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    println!(
        "ES256 issuance: {:.0} tokens/s, p99 {:.2} ms, server CPU {:.0} µs per token, machine idle {:.1} %",
        w.rate, w.p99_ms, w.cpu_us, w.idle_pct
    );
}
