//! Crash test behind `scripts/crash-test`: drive a mixed load (issuance, graceful rotation,
//! key revocation, emergency rotation) over several apps, SIGKILL the server at random
//! moments, restart it, and check the invariants after every restart:
//!
//! 1. exactly one `current` and one `next` key per app;
//! 2. every `next`, `current` and `previous` key has both HSM objects;
//! 3. no object with our label lacks a row, and nothing is left for the reconciler to fix
//!    (`hsm-rotator reconcile --dry-run` finds nothing);
//! 4. every token the client received, and did not (maybe) revoke, still introspects active;
//! 5. no revoked kid ever signs again.
//!
//! Usage: `crash KILLS [sqlite|postgres://...]`. Prints a summary line and exits non-zero on
//! any violation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::zombie_processes,
    missing_docs
)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Value, json};

struct TokenRec {
    app: String,
    token: String,
    kid: String,
    sent: Instant,
    received: Instant,
}

struct Emergency {
    app: String,
    sent: Instant,
    /// When the answer came, or (answer lost) when the server was killed.
    received: Option<Instant>,
    answered: bool,
}

#[derive(Default)]
struct Ledger {
    tokens: Vec<TokenRec>,
    /// Kids confirmed revoked (the revoke or emergency call answered 200).
    revoked: HashSet<String>,
    /// Kids whose revocation was attempted (answered or not).
    maybe_revoked: HashSet<String>,
    emergencies: Vec<Emergency>,
    requests: u64,
    violations: Vec<String>,
}

struct Env {
    bin: String,
    conf: String,
    pin: String,
    label: String,
    data: String,
    db: String,
}

/// `hsm-rotator init --json` on the run's store: the root key.
fn init(env: &Env) -> String {
    let out = Command::new(&env.bin)
        .args(["init", "--json"])
        .env("SOFTHSM2_CONF", &env.conf)
        .env("HSM_ROTATOR_PIN", &env.pin)
        .env("HSM_ROTATOR_TOKEN_LABEL", &env.label)
        .env("HSM_ROTATOR_DATA_DIR", &env.data)
        .env("HSM_ROTATOR_DATABASE_URL", &env.db)
        .output()
        .expect("run init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("init --json");
    v["root_key"].as_str().expect("root key").to_owned()
}

fn start(env: &Env) -> (Child, String) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server_log(env))
    {
        let _ = writeln!(f, "=== server started");
    }
    let mut child = Command::new(&env.bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SOFTHSM2_CONF", &env.conf)
        .env("HSM_ROTATOR_PIN", &env.pin)
        .env("HSM_ROTATOR_TOKEN_LABEL", &env.label)
        .env("HSM_ROTATOR_DATA_DIR", &env.data)
        .env("HSM_ROTATOR_DATABASE_URL", &env.db)
        .env("HSM_ROTATOR_JWKS_MAX_AGE", "0")
        // The port changes at every restart; the issuer must not.
        .env("HSM_ROTATOR_PUBLIC_URL", "http://crash.test")
        .env("HSM_ROTATOR_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(server_log(env))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .env(
            "RUST_LOG",
            // Key and HSM events at info: what `evidence` shows when a check fails.
            std::env::var("CRASH_RUST_LOG")
                .unwrap_or_else(|_| "warn,hsm_rotator::hsm=info,hsm_rotator::keys=info".into()),
        )
        .spawn()
        .expect("spawn server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(u) = line.strip_prefix("listening on ") {
            std::thread::spawn(move || for _ in lines {});
            return (child, u.to_owned());
        }
    }
}

/// The server log of the run (every incarnation appends to it).
fn server_log(env: &Env) -> String {
    format!("{}/server.log", env.data.trim_end_matches("/data"))
}

/// What a failing run needs to be understood without its work directory (CI keeps only
/// the output): which halves of `kid` the token still has, and what every server
/// incarnation logged about it.
fn evidence(env: &Env, kid: &str) {
    let listing = list_objects(env);
    let mut kind = "";
    for l in listing.lines() {
        if !l.starts_with(' ') {
            kind = l;
        } else if l.contains(kid) {
            eprintln!("EVIDENCE {kid}: token has {kind}");
        }
    }
    let log = std::fs::read_to_string(server_log(env)).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(kid) || l.starts_with("=== "))
        .collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("EVIDENCE {kid}: {l}");
    }
}

/// `pkcs11-tool --list-objects` on the run's token, logged in.
fn list_objects(env: &Env) -> String {
    let out = Command::new("pkcs11-tool")
        .args(["--module", "/usr/lib/softhsm/libsofthsm2.so"])
        .args(["--token-label", &env.label, "--login", "--pin", &env.pin])
        .arg("--list-objects")
        .env("SOFTHSM2_CONF", &env.conf)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn labels(env: &Env) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in list_objects(env).lines() {
        if let Some(kid) = l
            .trim()
            .strip_prefix("label:")
            .map(str::trim)
            .and_then(|l| l.strip_prefix("hsm-rotator/"))
            // `<store id>/<kid>` (or a legacy `<kid>`): the kid is the last part.
            .map(|l| l.rsplit('/').next().unwrap_or(l))
        {
            *m.entry(kid.to_owned()).or_default() += 1;
        }
    }
    m
}

async fn load(
    client: reqwest::Client,
    base: String,
    root: String,
    apps: Vec<(String, String)>,
    ledger: Arc<Mutex<Ledger>>,
    until: Instant,
) {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    use rand::SeedableRng as _;
    while Instant::now() < until {
        let (app, pk) = apps[rng.random_range(0..apps.len())].clone();
        let roll = rng.random_range(0..100);
        ledger.lock().unwrap().requests += 1;
        if roll < 70 {
            let revoked_before: HashSet<String> = ledger.lock().unwrap().revoked.clone();
            let sent = Instant::now();
            let r = client
                .post(format!("{base}/apps/{app}/tokens"))
                .bearer_auth(&pk)
                .json(&json!({"claims": {"sub": format!("u{}", rng.random_range(0..5))}}))
                .send()
                .await;
            if let Ok(r) = r
                && r.status() == 201
                && let Ok(v) = r.json::<Value>().await
            {
                let kid = v["kid"].as_str().unwrap().to_owned();
                let mut l = ledger.lock().unwrap();
                if revoked_before.contains(&kid) {
                    l.violations
                        .push(format!("revoked kid {kid} signed a new token"));
                }
                l.tokens.push(TokenRec {
                    app,
                    token: v["token"].as_str().unwrap().to_owned(),
                    kid,
                    sent,
                    received: Instant::now(),
                });
            }
        } else if roll < 88 {
            let _ = client
                .post(format!("{base}/apps/{app}/keys/rotate"))
                .header("Authorization", &root)
                .send()
                .await;
        } else if roll < 96 {
            // Revoke the current key.
            let Ok(r) = client
                .get(format!("{base}/apps/{app}/keys"))
                .header("Authorization", &root)
                .send()
                .await
            else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            let Some(cur) = v["keys"]
                .as_array()
                .and_then(|ks| ks.iter().find(|k| k["state"] == "current"))
                .map(|k| k["kid"].as_str().unwrap().to_owned())
            else {
                continue;
            };
            ledger.lock().unwrap().maybe_revoked.insert(cur.clone());
            if let Ok(r) = client
                .post(format!("{base}/apps/{app}/keys/{cur}/revoke"))
                .header("Authorization", &root)
                .send()
                .await
                && r.status() == 200
            {
                ledger.lock().unwrap().revoked.insert(cur);
            }
        } else {
            // Every key the app has may be revoked by this call.
            if let Ok(r) = client
                .get(format!("{base}/apps/{app}/keys"))
                .header("Authorization", &root)
                .send()
                .await
                && let Ok(v) = r.json::<Value>().await
            {
                let mut l = ledger.lock().unwrap();
                for k in v["keys"].as_array().into_iter().flatten() {
                    l.maybe_revoked
                        .insert(k["kid"].as_str().unwrap().to_owned());
                }
            }
            let idx = {
                let mut l = ledger.lock().unwrap();
                l.emergencies.push(Emergency {
                    app: app.clone(),
                    sent: Instant::now(),
                    received: None,
                    answered: false,
                });
                l.emergencies.len() - 1
            };
            if let Ok(r) = client
                .get(format!("{base}/root/{app}/rotate/pki"))
                .header("Authorization", &root)
                .send()
                .await
                && r.status() == 200
                && let Ok(v) = r.json::<Value>().await
            {
                let mut l = ledger.lock().unwrap();
                for k in v["revoked_kids"].as_array().unwrap() {
                    l.revoked.insert(k.as_str().unwrap().to_owned());
                    l.maybe_revoked.insert(k.as_str().unwrap().to_owned());
                }
                l.emergencies[idx].received = Some(Instant::now());
                l.emergencies[idx].answered = true;
            }
        }
    }
}

async fn check(
    env: &Env,
    client: &reqwest::Client,
    base: &str,
    root: &str,
    apps: &[(String, String)],
    ledger: &Arc<Mutex<Ledger>>,
) {
    let objects = labels(env);
    let mut v = Vec::new();
    for (app, _) in apps {
        let keys: Value = client
            .get(format!("{base}/apps/{app}/keys"))
            .header("Authorization", root)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys = keys["keys"].as_array().unwrap();
        let count = |s: &str| keys.iter().filter(|k| k["state"] == s).count();
        if count("current") != 1 || count("next") != 1 {
            v.push(format!(
                "app {app}: {} current, {} next",
                count("current"),
                count("next")
            ));
        }
        for k in keys
            .iter()
            .filter(|k| ["next", "current", "previous"].contains(&k["state"].as_str().unwrap()))
        {
            let kid = k["kid"].as_str().unwrap();
            if objects.get(kid) != Some(&2) {
                evidence(env, kid);
                v.push(format!(
                    "{} key {kid} has {} HSM objects",
                    k["state"],
                    objects.get(kid).unwrap_or(&0)
                ));
            }
        }
    }
    let out = Command::new(&env.bin)
        .args(["reconcile", "--dry-run", "--json"])
        .env("SOFTHSM2_CONF", &env.conf)
        .env("HSM_ROTATOR_PIN", &env.pin)
        .env("HSM_ROTATOR_TOKEN_LABEL", &env.label)
        .env("HSM_ROTATOR_DATA_DIR", &env.data)
        .env("HSM_ROTATOR_DATABASE_URL", &env.db)
        .env("HSM_ROTATOR_LOG_LEVEL", "error")
        .output()
        .unwrap();
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(r) => {
            for f in [
                "orphans_destroyed",
                "missing",
                "pending_undone",
                "pending_finished",
                "destroys_retried",
            ] {
                if !r[f].as_array().unwrap().is_empty() {
                    v.push(format!(
                        "after restart the reconciler still finds {f}: {}",
                        r[f]
                    ));
                }
            }
        }
        Err(_) => v.push(format!(
            "reconcile --dry-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
    let pk: HashMap<&str, &str> = apps.iter().map(|(a, p)| (a.as_str(), p.as_str())).collect();
    let n = ledger.lock().unwrap().tokens.len();
    for i in 0..n {
        let (app, token, kid) = {
            let l = ledger.lock().unwrap();
            let t = &l.tokens[i];
            (t.app.clone(), t.token.clone(), t.kid.clone())
        };
        let r: Value = client
            .post(format!("{base}/apps/{app}/tokens/introspect"))
            .bearer_auth(pk[app.as_str()])
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let active = r["active"] == true;
        let l = ledger.lock().unwrap();
        let t = &l.tokens[i];
        // Surely rejected: its key's revocation was confirmed, or an emergency rotation of
        // its app was confirmed and started after the token was received.
        let must_fail = l.revoked.contains(&kid)
            || l.emergencies
                .iter()
                .any(|e| e.app == app && e.answered && t.received < e.sent);
        // May be rejected: its key's revocation was attempted, or an emergency rotation of
        // its app overlapped or followed its issuance.
        let may_fail = l.maybe_revoked.contains(&kid)
            || l.emergencies
                .iter()
                .any(|e| e.app == app && e.received.is_none_or(|r| t.sent < r));
        if !active && !may_fail {
            v.push(format!(
                "token {i} of app {app} (kid {kid}) stopped verifying"
            ));
        }
        if active && must_fail {
            v.push(format!(
                "token {i} of app {app} (kid {kid}) still verifies after its revocation"
            ));
        }
    }
    ledger.lock().unwrap().violations.extend(v);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kills: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let env = Env {
        bin: std::env::var("CRASH_BIN").unwrap(),
        conf: std::env::var("SOFTHSM2_CONF").unwrap(),
        pin: std::env::var("CRASH_PIN").unwrap(),
        label: std::env::var("CRASH_LABEL").unwrap(),
        data: std::env::var("CRASH_DATA").unwrap(),
        db: std::env::var("CRASH_DB").unwrap(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let root = init(&env);
    let (mut child, mut base) = start(&env);
    let apps: Vec<(String, String)> = rt.block_on(async {
        let mut apps = Vec::new();
        for (i, alg) in ["ES256", "RS256", "EdDSA"].iter().enumerate() {
            let v: Value = client.post(format!("{base}/apps")).header("Authorization", &root).json(&json!({"name": format!("crash {i}"), "signing_alg": alg, "token_ttl": 86400, "verification_ttl": 172800})).send().await.unwrap().json().await.unwrap();
            apps.push((v["id"].as_str().unwrap().to_owned(), v["access_token"].as_str().unwrap().to_owned()));
        }
        apps
    });
    let started = Instant::now();
    let mut rng = rand::rng();
    for k in 0..kills {
        let run_for = Duration::from_millis(rng.random_range(200..1500));
        rt.block_on(async {
            let until = Instant::now() + run_for + Duration::from_secs(5);
            let mut tasks = Vec::new();
            for _ in 0..6 {
                tasks.push(tokio::spawn(load(
                    client.clone(),
                    base.clone(),
                    root.clone(),
                    apps.clone(),
                    ledger.clone(),
                    until,
                )));
            }
            tokio::time::sleep(run_for).await;
            let _ = child.kill();
            let _ = child.wait();
            for t in tasks {
                t.abort();
            }
            let now = Instant::now();
            for e in ledger
                .lock()
                .unwrap()
                .emergencies
                .iter_mut()
                .filter(|e| e.received.is_none())
            {
                e.received = Some(now);
            }
        });
        let (c, b) = start(&env);
        child = c;
        base = b;
        rt.block_on(check(&env, &client, &base, &root, &apps, &ledger));
        let l = ledger.lock().unwrap();
        eprintln!(
            "kill {}/{kills}: {} requests, {} tokens kept, {} violations",
            k + 1,
            l.requests,
            l.tokens.len(),
            l.violations.len()
        );
    }
    let _ = child.kill();
    let l = ledger.lock().unwrap();
    for v in &l.violations {
        eprintln!("VIOLATION: {v}");
    }
    println!(
        "crash test: {kills} kills survived, {} requests, {} tokens checked after every restart, {} violations, {:.0} s",
        l.requests,
        l.tokens.len(),
        l.violations.len(),
        started.elapsed().as_secs_f64()
    );
    if !l.violations.is_empty() {
        std::process::exit(1);
    }
}
