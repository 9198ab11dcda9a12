//! `scripts/bench http`: the service's HTTP rates measured by a load generator we did not
//! write (`wrk`), each beside its anchor measured in the same run, right before it:
//!
//! - issuance (ES256, RS256, EdDSA) against raw 2-thread `C_Sign` on the same key;
//! - introspection (ES256, RS256) against in-process `jsonwebtoken` verification;
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

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use hsm_rotator::alg::Algorithm;
use serde_json::{Value, json};

use super::{Http, env, raw_rate, verify_rate};

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

/// [`wrk`] for `secs` seconds.
fn wrk_for(url: &str, post: Option<(&str, &str)>, secs: u64) -> Wrk {
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
    let pid = env("BENCH_PID");
    let cpu0 = cpu_seconds(&pid);
    let out = cmd.output().expect("wrk (scripts/bench installs it)");
    let cpu = cpu_seconds(&pid) - cpu0;
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
    let rounds: usize = env_or("BENCH_ROUNDS", 2);
    for round in 1..=rounds {
        println!();
        println!("Run {round} of {rounds}:");
        println!();
        println!(
            "| figure | req/s | p50 ms | p99 ms | server CPU µs/req | anchor (same run) | anchor/s | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let row = |figure: &str, w: &Wrk, anchor: &str, a: f64| {
            println!(
                "| {figure} | {:.0} | {:.2} | {:.2} | {:.0} | {anchor} | {a:.0} | {:.2} |",
                w.rate,
                w.p50_ms,
                w.p99_ms,
                w.cpu_us,
                w.rate / a
            );
        };
        for (name, alg, id, pk, kid, _, _) in &apps {
            let a = raw_rate(&raw, *kid, *alg, 2, anchor_secs);
            let w = wrk(
                &format!("{}/apps/{id}/tokens", http.base),
                Some((&issue_body, pk)),
            );
            row(
                &format!("{name} issuance"),
                &w,
                "raw `C_Sign`, 2 threads",
                a,
            );
        }
        for (name, _, id, pk, _, token, jwks) in apps.iter().take(2) {
            let a = verify_rate(jwks, token, name, anchor_secs);
            let body = json!({ "token": token }).to_string();
            let w = wrk(
                &format!("{}/apps/{id}/tokens/introspect", http.base),
                Some((&body, pk)),
            );
            row(
                &format!("{name} introspection"),
                &w,
                "in-process `jsonwebtoken` verify, 2 threads",
                a,
            );
        }
        let floor = wrk(&format!("{}/healthz", http.base), None);
        let (_, _, id, ..) = &apps[0];
        let w = wrk(
            &format!("{}/apps/{id}/.well-known/jwks.json", http.base),
            None,
        );
        row("JWKS", &w, "`GET /healthz` (wrk, same server)", floor.rate);
        println!(
            "| `GET /healthz` (the HTTP floor) | {:.0} | {:.2} | {:.2} | {:.0} | | | |",
            floor.rate, floor.p50_ms, floor.p99_ms, floor.cpu_us
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
        "ES256 issuance: {:.0} tokens/s, p99 {:.2} ms, server CPU {:.0} µs per token",
        w.rate, w.p99_ms, w.cpu_us
    );
}
