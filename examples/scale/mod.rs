//! `scripts/bench scale`: how each cost grows with the number of apps (keys on the token)
//! and ledger rows. The script drives the stages (populate, fill the ledger, restart,
//! measure); this module does the HTTP, store and PKCS#11 parts and the report.
//!
//! - `scale-populate`: grow the app set to `BENCH_APPS` through the API (create, then one
//!   rotation, so every app has `next`, `current` and `previous` keys). The first stage
//!   makes `BENCH_RSA_APPS` RS256 (RSA-2048) apps; every other app is ES256. Apps are
//!   appended to `BENCH_APPS_FILE` (`id alg access-token`).
//! - `scale-ledger FROM TO`: grow the stopped stage's ledger through the store (see
//!   `ledger.rs`).
//! - `scale-measure`: one stage's figures as `key value` lines on stdout.
//! - `scale-report DIR`: the stages' files (`DIR/stage-*.kv`) as Markdown tables, with
//!   ratios against the first stage, and `DIR/scale.dat` for gnuplot.
//! - `scale-issue`: ES256 issuance alone, on a kept stage and its anchor, round after round,
//!   with each server's ledger batches and transaction times (for comparing builds).
//! - `scale-sign`: raw `C_Sign` over 2,000 of the kept stage's keys against 8 of them, in
//!   this process: what the spread of `scale-issue`'s load costs SoftHSM2 alone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use hsm_rotator::keys::Kid;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Http, MODULE, bench_slot, env, load, secs};

pub(crate) mod ledger;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
struct App {
    id: String,
    alg: String,
    token: String,
}

fn read_apps() -> Vec<App> {
    read_apps_from(&env("BENCH_APPS_FILE"))
}

fn read_apps_from(path: &str) -> Vec<App> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some(App {
                id: it.next()?.to_owned(),
                alg: it.next()?.to_owned(),
                token: it.next()?.to_owned(),
            })
        })
        .collect()
}

async fn post(h: &Http, path: &str, auth: &str, body: Value) -> (u16, Value) {
    let res = h
        .client
        .post(format!("{}{path}", h.base))
        .header("Authorization", auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Sequential GETs of `paths` (with the root key): each one's latency, ms.
async fn get_latencies(h: &Http, paths: impl Iterator<Item = String>) -> Vec<f64> {
    let mut lat = Vec::new();
    for path in paths {
        let t = Instant::now();
        let res = h
            .client
            .get(format!("{}{path}", h.base))
            .header("Authorization", &h.root)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let _ = res.bytes().await;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

/// Create apps until there are `BENCH_APPS`, each rotated once.
pub(crate) fn populate() {
    let target = env_usize("BENCH_APPS", 10);
    let rsa = env_usize("BENCH_RSA_APPS", 2);
    let have = read_apps().len();
    if have >= target {
        return;
    }
    let http = Arc::new(Http::new());
    let next = Arc::new(AtomicUsize::new(have));
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..env_usize("BENCH_POPULATE_CLIENTS", 8) {
            let (http, next, made, retries) =
                (http.clone(), next.clone(), made.clone(), retries.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= target {
                        break;
                    }
                    let alg = if i < rsa { "RS256" } else { "ES256" };
                    let mut body = json!({"name": format!("scale {i}"), "signing_alg": alg, "token_ttl": 3600});
                    if alg == "RS256" {
                        body["rsa_bits"] = json!(2048);
                    }
                    // Concurrent creators can drain the spare pool between its refill
                    // and their take; the server then answers 500 "retry" (counted).
                    let (mut status, mut v) = (0, Value::Null);
                    for _ in 0..5 {
                        (status, v) = post(&http, "/apps", &http.root, body.clone()).await;
                        if status != 500 {
                            break;
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        eprintln!("app creation answered 500, retrying: {v}");
                    }
                    assert_eq!(status, 201, "{v}");
                    let id = v["id"].as_str().unwrap().to_owned();
                    let token = v["access_token"].as_str().unwrap().to_owned();
                    let (status, v) =
                        post(&http, &format!("/apps/{id}/keys/rotate"), &http.root, json!({}))
                            .await;
                    assert_eq!(status, 200, "{v}");
                    made.lock().unwrap().push(App {
                        id,
                        alg: alg.to_owned(),
                        token,
                    });
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let made = made.lock().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(env("BENCH_APPS_FILE"))
        .unwrap();
    for a in made.iter() {
        writeln!(f, "{} {} {}", a.id, a.alg, a.token).unwrap();
    }
    eprintln!(
        "populated {} apps ({} key pairs) in {:.1} s ({} creations retried after a 500)",
        made.len(),
        3 * made.len(),
        started.elapsed().as_secs_f64(),
        retries.load(Ordering::Relaxed)
    );
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue one token per app of `apps` (for introspection).
async fn tokens_for(http: &Http, apps: &[App]) -> Vec<(App, String)> {
    let mut out = Vec::new();
    for a in apps {
        let (status, v) = post(
            http,
            &format!("/apps/{}/tokens", a.id),
            &format!("Bearer {}", a.token),
            json!({"claims": {"sub": "scale"}}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        out.push((a.clone(), v["token"].as_str().unwrap().to_owned()));
    }
    out
}

/// About `BENCH_SPREAD` (2,000) of `apps`, evenly spaced: the load is spread over many apps,
/// so the handle cache, the registry and the ledger's indexes are read at many keys, not one.
fn spread(apps: &[App]) -> Vec<App> {
    let step = (apps.len() / env_usize("BENCH_SPREAD", 2000).max(1)).max(1);
    apps.iter().step_by(step).cloned().collect()
}

/// The anchor server at `base` (with the same root key as the measured one).
fn anchor_http(base: String) -> Arc<Http> {
    Arc::new(Http {
        client: reqwest::Client::new(),
        base,
        root: env("BENCH_ROOT"),
    })
}

/// Whether the issuance load gives every token its own subject (`BENCH_SUBJECTS=random`, as
/// a service with many users sees) rather than `sub: bench` for all (the default: the
/// ledger's best case, every app's rows at one place of its subject index).
fn random_subjects() -> bool {
    std::env::var("BENCH_SUBJECTS").is_ok_and(|s| s == "random")
}

/// Issuance load over `apps` (round robin): issuance/s and its p99 (ms).
fn issue_load(rt: &tokio::runtime::Runtime, http: &Arc<Http>, apps: Arc<Vec<App>>) -> [f64; 2] {
    let n = Arc::new(AtomicU64::new(0));
    let random = random_subjects();
    let h = http.clone();
    let (rate, _, p99) = rt.block_on(load(32, secs(), move || {
        let h = h.clone();
        let i = n.fetch_add(1, Ordering::Relaxed);
        let app = apps[(i as usize) % apps.len()].clone();
        let sub = if random {
            format!("user-{}-{i}", std::process::id())
        } else {
            "bench".to_owned()
        };
        async move {
            let (status, v) = post(
                &h,
                &format!("/apps/{}/tokens", app.id),
                &format!("Bearer {}", app.token),
                json!({"claims": {"sub": sub}}),
            )
            .await;
            assert_eq!(status, 201, "{v}");
        }
    }));
    [rate, p99]
}

/// Issuance then introspection load over `apps` (round robin): issuance/s, its p99 (ms),
/// introspection/s, its p99 (ms).
fn http_load(http: &Arc<Http>, apps: Vec<App>) -> [f64; 4] {
    let rt = rt();
    let apps = Arc::new(apps);
    let [issue_rate, issue_p99] = issue_load(&rt, http, apps.clone());
    let sample: Vec<App> = apps.iter().take(500).cloned().collect();
    let tokens = Arc::new(rt.block_on(tokens_for(http, &sample)));
    let n = Arc::new(AtomicU64::new(0));
    let (h, c) = (http.clone(), n.clone());
    let (rate, _, p99) = rt.block_on(load(32, secs(), move || {
        let h = h.clone();
        let (app, token) =
            tokens[(c.fetch_add(1, Ordering::Relaxed) as usize) % tokens.len()].clone();
        async move {
            let (status, v) = post(
                &h,
                &format!("/apps/{}/tokens/introspect", app.id),
                &format!("Bearer {}", app.token),
                json!({"token": token}),
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(v["active"], true, "{v}");
        }
    }));
    [issue_rate, issue_p99, rate, p99]
}

/// The ledger writer's totals from a server's `/metrics`: transactions, rows, seconds.
async fn ledger_totals(http: &Http) -> [f64; 3] {
    let text = http.get_text("/metrics").await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    [
        value("hsm_rotator_ledger_batch_rows_count"),
        value("hsm_rotator_ledger_batch_rows_sum"),
        value("hsm_rotator_ledger_commit_duration_seconds_sum"),
    ]
}

/// CPU time (user + system) `pid` has used, seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; clock ticks of 1/100 s.
    (f[11] + f[12]) / 100.0
}

/// `read`-family system calls (`read`, `pread64`, `readv`; not `recv`) and bytes read from
/// storage by process `pid` (`syscr` and `read_bytes` of `/proc/PID/io`).
fn read_counters(pid: &str) -> [f64; 2] {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let value = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    [value("syscr:"), value("read_bytes:")]
}

/// One issuance run on the server `http` (process `pid`): issuance/s, p99 ms, mean rows per
/// ledger transaction and mean ledger transaction time (ms) from the server's own metrics,
/// the server's CPU time per token (µs), and its read system calls and KiB read from storage
/// per token.
fn issue_run(
    rt: &tokio::runtime::Runtime,
    (http, pid): (&Arc<Http>, &str),
    apps: &Arc<Vec<App>>,
) -> [f64; 7] {
    let before = rt.block_on(ledger_totals(http));
    let cpu = cpu_seconds(pid);
    let reads = read_counters(pid);
    let [rate, p99] = issue_load(rt, http, apps.clone());
    let cpu = cpu_seconds(pid) - cpu;
    let reads_after = read_counters(pid);
    let reads: [f64; 2] = std::array::from_fn(|i| reads_after[i] - reads[i]);
    let after = rt.block_on(ledger_totals(http));
    let [commits, rows, seconds] = std::array::from_fn(|i| after[i] - before[i]);
    let tokens = (rate * secs()).max(1.0);
    [
        rate,
        p99,
        rows / commits.max(1.0),
        1e3 * seconds / commits.max(1.0),
        1e6 * cpu / tokens,
        reads[0] / tokens,
        reads[1] / 1024.0 / tokens,
    ]
}

/// `scale-issue`: ES256 issuance alone on a kept stage (`BENCH_URL`, process `BENCH_PID`, its
/// apps in `BENCH_APPS_FILE`) and on the anchor (`BENCH_ANCHOR_URL`, `BENCH_ANCHOR_PID`),
/// `BENCH_ROUNDS` rounds of big, anchor, anchor, big, each figure with the ledger writer's
/// batch and transaction time and the server's CPU per token: for profiling the issuance
/// path and comparing builds on the same store.
pub(crate) fn issue_only() {
    let rt = rt();
    let big = Arc::new(Http::new());
    let anchor = anchor_http(env("BENCH_ANCHOR_URL"));
    let es = |apps: Vec<App>| -> Arc<Vec<App>> {
        let es: Vec<App> = apps.into_iter().filter(|a| a.alg == "ES256").collect();
        Arc::new(spread(&es))
    };
    let big_apps = es(read_apps());
    let anchor_apps = es(read_apps_from(&env("BENCH_ANCHOR_APPS_FILE")));
    println!(
        "| round | stage/s | anchor/s | stage / anchor | p99 ms, stage / anchor | rows per ledger transaction, stage / anchor | ledger transaction ms, stage / anchor | server CPU µs per token, stage / anchor | read calls per token, stage / anchor | KiB from storage per token, stage / anchor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (big_pid, anchor_pid) = (env("BENCH_PID"), env("BENCH_ANCHOR_PID"));
    let mean = |a: [f64; 7], b: [f64; 7]| std::array::from_fn::<f64, 7, _>(|i| (a[i] + b[i]) / 2.0);
    for round in 1..=env_usize("BENCH_ROUNDS", 3) {
        let b1 = issue_run(&rt, (&big, &big_pid), &big_apps);
        let a1 = issue_run(&rt, (&anchor, &anchor_pid), &anchor_apps);
        let a2 = issue_run(&rt, (&anchor, &anchor_pid), &anchor_apps);
        let b2 = issue_run(&rt, (&big, &big_pid), &big_apps);
        let (b, a) = (mean(b1, b2), mean(a1, a2));
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {:.0} / {:.0} | {:.1} / {:.1} | {:.2} / {:.2} |",
            b[0],
            a[0],
            b[0] / a[0],
            b[1],
            a[1],
            b[2],
            a[2],
            b[3],
            a[3],
            b[4],
            a[4],
            b[5],
            a[5],
            b[6],
            a[6]
        );
    }
}

/// The load figures of `apps` on `big`, and, when an anchor server is given, of its apps in
/// the same window: big, anchor, anchor, big, so that a drift of the shared machine during
/// the window falls on both alike; each figure is the mean of its two runs.
fn side_by_side(
    big: (&Arc<Http>, &[App]),
    anchor: Option<(&Arc<Http>, &[App])>,
    prefix: &str,
    out: &mut Vec<(String, f64)>,
) {
    let names = [
        "issue_rate",
        "issue_p99",
        "introspect_rate",
        "introspect_p99",
    ];
    let mean = |a: [f64; 4], b: [f64; 4]| std::array::from_fn::<f64, 4, _>(|i| (a[i] + b[i]) / 2.0);
    let (b, a) = match anchor {
        Some((ah, aa)) => {
            let b1 = http_load(big.0, big.1.to_vec());
            let a1 = http_load(ah, aa.to_vec());
            let a2 = http_load(ah, aa.to_vec());
            let b2 = http_load(big.0, big.1.to_vec());
            (mean(b1, b2), Some(mean(a1, a2)))
        }
        None => (http_load(big.0, big.1.to_vec()), None),
    };
    for (i, n) in names.iter().enumerate() {
        out.push((format!("{prefix}_{n}"), b[i]));
        if let Some(a) = a {
            out.push((format!("anchor_{prefix}_{n}"), a[i]));
        }
    }
}

/// SoftHSM's object search is a scan over every object of the token: time a search by
/// `CKA_ID` (what a handle-cache miss costs) against a `C_Sign` with a known handle (what
/// the cached path costs), in this process's own session.
///
/// Also what SoftHSM2 itself holds in memory for this token: the growth of this process's
/// resident set from loading the module to a logged-in session (SoftHSM2 reads every object
/// of the token into memory at `C_Initialize`), the same cost the server pays in its process.
fn softhsm_search(kid: Kid, out: &mut Vec<(String, f64)>) {
    let me = std::process::id().to_string();
    let (before, _) = memory(&me);
    let t = Instant::now();
    let pkcs11 = Pkcs11::new(MODULE).unwrap();
    let _ = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = bench_slot(&pkcs11);
    let s = pkcs11.open_rw_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&env("BENCH_PIN").into()));
    out.push(("softhsm_open_s".into(), t.elapsed().as_secs_f64()));
    out.push(("softhsm_rss_mb".into(), memory(&me).0 - before));
    let find = || {
        s.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(kid.cka_id().to_vec()),
        ])
        .unwrap()
    };
    let t = Instant::now();
    let h = find()[0];
    out.push((
        "softhsm_first_find_ms".into(),
        t.elapsed().as_secs_f64() * 1e3,
    ));
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        assert_eq!(find().len(), 1);
    }
    out.push((
        "softhsm_find_ms".into(),
        t.elapsed().as_secs_f64() * 1e3 / f64::from(n),
    ));
    let digest = sha2::Sha256::digest(b"scale").to_vec();
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        s.sign(&Mechanism::Ecdsa, h, &digest).unwrap();
    }
    out.push((
        "softhsm_sign_ms".into(),
        t.elapsed().as_secs_f64() * 1e3 / f64::from(n),
    ));
    // Making and destroying a token key pair (P-256), as a revocation or retirement does.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (mut gen_ms, mut destroy_ms) = (0.0, 0.0);
    let n = 5;
    for _ in 0..n {
        let t = Instant::now();
        let (public, private) = s
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(true),
                    Attribute::EcParams(p256.clone()),
                    Attribute::Verify(true),
                    Attribute::Label(b"scale-bench".to_vec()),
                ],
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Sign(true),
                    Attribute::Label(b"scale-bench".to_vec()),
                ],
            )
            .unwrap();
        gen_ms += t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        s.destroy_object(private).unwrap();
        s.destroy_object(public).unwrap();
        destroy_ms += t.elapsed().as_secs_f64() * 1e3;
    }
    out.push(("softhsm_generate_ms".into(), gen_ms / f64::from(n)));
    out.push(("softhsm_destroy_ms".into(), destroy_ms / f64::from(n)));
}

/// One stage's figures (the server at `BENCH_URL`, process `BENCH_PID`).
pub(crate) fn measure() {
    let pid = env("BENCH_PID");
    let http = Arc::new(Http::new());
    let apps = read_apps();
    let mut out: Vec<(String, f64)> = Vec::new();
    let (rss, _) = memory(&pid);
    out.push(("rss_rest_mb".into(), rss));
    let es: Vec<App> = apps.iter().filter(|a| a.alg == "ES256").cloned().collect();
    let rs: Vec<App> = apps.iter().filter(|a| a.alg == "RS256").cloned().collect();
    let es_load = spread(&es);
    // The 10-app anchor (a copy of the first stage's token and store, its own server),
    // measured in the same window, when the script started one.
    let anchor = std::env::var("BENCH_ANCHOR_URL").ok().map(|base| {
        (
            anchor_http(base),
            read_apps_from(&env("BENCH_ANCHOR_APPS_FILE")),
        )
    });
    let of = |alg: &str, apps: &[App]| -> Vec<App> {
        apps.iter().filter(|a| a.alg == alg).cloned().collect()
    };
    let anchor_es = anchor.as_ref().map(|(h, a)| (h, of("ES256", a)));
    let anchor_rs = anchor.as_ref().map(|(h, a)| (h, of("RS256", a)));
    side_by_side(
        (&http, &es_load),
        anchor_es.as_ref().map(|(h, a)| (*h, a.as_slice())),
        "es256",
        &mut out,
    );
    side_by_side(
        (&http, &rs),
        anchor_rs.as_ref().map(|(h, a)| (*h, a.as_slice())),
        "rs256",
        &mut out,
    );
    let (rss, hwm) = memory(&pid);
    out.push(("rss_load_mb".into(), rss));
    out.push(("hwm_mb".into(), hwm));

    let rt = rt();
    rt.block_on(async {
        // JWKS: sequential GETs over many apps.
        let spread = |n: usize| (0..n).map(|i| &es[(i * 7919) % es.len()]);
        let paths = spread(300).map(|a| format!("/apps/{}/.well-known/jwks.json", a.id));
        let mut lat = get_latencies(&http, paths).await;
        out.push(("jwks_p50".into(), pct(&mut lat, 0.5)));
        out.push(("jwks_p99".into(), pct(&mut lat, 0.99)));
        // One app's view (key and live-token counts) and the whole app list.
        let mut lat = get_latencies(&http, spread(50).map(|a| format!("/apps/{}", a.id))).await;
        out.push(("app_view_p50".into(), pct(&mut lat, 0.5)));
        out.push(("app_view_p99".into(), pct(&mut lat, 0.99)));
        let mut lat = get_latencies(&http, (0..3).map(|_| "/apps".to_owned())).await;
        out.push(("app_list_p50".into(), pct(&mut lat, 0.5)));

        // Rotation and emergency rotation (revoking the current key) on distinct apps,
        // each after the spare pool has refilled.
        let n = env_usize("BENCH_ROTATIONS", 20).min(es.len() / 2).max(1);
        let (mut rot, mut emer) = (Vec::new(), Vec::new());
        for i in 0..n {
            let a = &es[(i * 2 + 1) * es.len() / (2 * n + 1)];
            http.spares_ready("ES256").await;
            let t = Instant::now();
            let (status, v) = post(
                &http,
                &format!("/apps/{}/keys/rotate", a.id),
                &http.root,
                json!({}),
            )
            .await;
            rot.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{v}");
            let b = &es[(i * 2 + 2) * es.len() / (2 * n + 1)];
            let kid = http.current_kid(&b.id).await;
            http.spares_ready("ES256").await;
            let t = Instant::now();
            let (status, v) = post(
                &http,
                &format!("/apps/{}/keys/{kid}/revoke", b.id),
                &http.root,
                json!({}),
            )
            .await;
            emer.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{v}");
        }
        out.push(("rotate_p50".into(), pct(&mut rot, 0.5)));
        out.push(("rotate_p99".into(), pct(&mut rot, 0.99)));
        out.push(("revoke_p50".into(), pct(&mut emer, 0.5)));
        out.push(("revoke_p99".into(), pct(&mut emer, 0.99)));

        // Emergency rotation (JWTPlus `rotate/pki`): all three keys of the app revoked and
        // destroyed, new current and next keys, a cut-off.
        let n = env_usize("BENCH_EMERGENCIES", 10).min(es.len() / 3).max(1);
        let mut lat = Vec::new();
        for i in 0..n {
            let a = &es[(i * 2 + 1) * es.len() / (2 * n + 1) + 1];
            http.spares_ready("ES256").await;
            let t = Instant::now();
            let (status, v) = post(
                &http,
                &format!("/root/{}/rotate/pki", a.id),
                &http.root,
                json!({}),
            )
            .await;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{v}");
            assert!(v["revoked_kids"].as_array().map_or(0, Vec::len) >= 2, "{v}");
        }
        out.push(("emergency_p50".into(), pct(&mut lat, 0.5)));
        out.push(("emergency_max".into(), pct(&mut lat, 1.0)));
    });
    let kid: Kid = rt.block_on(http.current_kid(&es[es.len() / 3].id));
    softhsm_search(kid, &mut out);
    for (k, v) in out {
        println!("{k} {v:.3}");
    }
}

fn read_kv(path: &std::path::Path) -> BTreeMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Tables (with ratios against the first stage) and `scale.dat` for the plot.
pub(crate) fn report() {
    let dir = std::path::PathBuf::from(std::env::args().nth(2).expect("scale-report DIR"));
    let mut stages: Vec<BTreeMap<String, f64>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("stage-") && n.ends_with(".kv"))
        })
        .map(|p| read_kv(&p))
        .collect();
    stages.sort_by(|a, b| a.get("apps").partial_cmp(&b.get("apps")).unwrap());
    let get = |s: &BTreeMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(f64::NAN);
    let header = |cols: &[&str]| {
        println!("| figure | {} |", cols.join(" | "));
        println!("|---|{}", "---|".repeat(cols.len()));
    };
    let cols: Vec<String> = stages
        .iter()
        .map(|s| {
            format!(
                "{} apps, {} rows",
                get(s, "apps") as u64,
                fmt_rows(get(s, "rows"))
            )
        })
        .collect();
    let mut cols_ratio: Vec<String> = cols.clone();
    for c in cols_ratio.iter_mut().skip(1) {
        c.push_str(" (× first)");
    }
    header(&cols_ratio.iter().map(String::as_str).collect::<Vec<_>>());
    let rows: &[(&str, &str, usize)] = &[
        ("key pairs on the token", "hsm_keys", 0),
        ("start-up to ready, s", "startup_s", 2),
        ("  handle cache load, ms", "cache_load_ms", 0),
        ("  reconciliation, ms", "reconcile_ms", 0),
        ("RSS at rest, MiB", "rss_rest_mb", 1),
        ("RSS after load, MiB", "rss_load_mb", 1),
        ("peak RSS (VmHWM), MiB", "hwm_mb", 1),
        (
            "  SoftHSM2's share: the token opened in the bench process, MiB",
            "softhsm_rss_mb",
            1,
        ),
        ("  the rest (peak − SoftHSM2's share), MiB", "own_mb", 1),
        ("ES256 issuance/s", "es256_issue_rate", 0),
        ("ES256 issuance p99, ms", "es256_issue_p99", 2),
        ("ES256 introspection/s", "es256_introspect_rate", 0),
        ("ES256 introspection p99, ms", "es256_introspect_p99", 2),
        ("RS256 issuance/s", "rs256_issue_rate", 0),
        ("RS256 issuance p99, ms", "rs256_issue_p99", 2),
        ("RS256 introspection/s", "rs256_introspect_rate", 0),
        ("RS256 introspection p99, ms", "rs256_introspect_p99", 2),
        ("JWKS p50, ms", "jwks_p50", 2),
        ("JWKS p99, ms", "jwks_p99", 2),
        ("app view (`GET /apps/{id}`) p50, ms", "app_view_p50", 2),
        ("app view (`GET /apps/{id}`) p99, ms", "app_view_p99", 2),
        (
            "app list (`GET /apps`, every app) p50 of 3, ms",
            "app_list_p50",
            0,
        ),
        ("rotation p50, ms", "rotate_p50", 1),
        ("rotation p99, ms", "rotate_p99", 1),
        ("key revocation (current key) p50, ms", "revoke_p50", 1),
        ("key revocation (current key) p99, ms", "revoke_p99", 1),
        (
            "emergency rotation (`rotate/pki`) p50, ms",
            "emergency_p50",
            1,
        ),
        (
            "emergency rotation (`rotate/pki`) max, ms",
            "emergency_max",
            1,
        ),
        ("scheduler tick (1 % due), ms", "tick_total_ms", 0),
        ("  apps rotated in that tick", "tick_rotated", 0),
        ("  rotation phase, ms", "tick_rotate_ms", 0),
        ("  retirement phase, ms", "tick_retire_ms", 0),
        ("ledger purge (10 % expired), ms", "purge_ms", 0),
        ("  rows purged", "purged", 0),
        (
            "database MiB per million ledger rows",
            "db_mib_per_million",
            0,
        ),
        ("SoftHSM C_FindObjects by CKA_ID, ms", "softhsm_find_ms", 2),
        (
            "SoftHSM C_Sign ES256 (known handle), ms",
            "softhsm_sign_ms",
            3,
        ),
        (
            "SoftHSM P-256 key pair generation (bench process), ms",
            "softhsm_generate_ms",
            1,
        ),
        (
            "SoftHSM C_DestroyObject, both halves (bench process), ms",
            "softhsm_destroy_ms",
            1,
        ),
        (
            "SoftHSM C_Initialize + login (bench process), s",
            "softhsm_open_s",
            1,
        ),
    ];
    for s in &mut stages {
        let own = get(s, "hwm_mb") - get(s, "softhsm_rss_mb");
        s.insert("own_mb".into(), own);
    }
    let base = stages[0].clone();
    for (name, key, prec) in rows {
        let b = get(&base, key);
        let cells: Vec<String> = stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v = get(s, key);
                if v.is_nan() {
                    return "—".into();
                }
                let cell = format!("{v:.prec$}", prec = *prec);
                if i == 0 || b.is_nan() || b == 0.0 {
                    cell
                } else {
                    format!("{cell} ({:.2})", v / b)
                }
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    // Side by side with the 10-app anchor, measured in the same window as each stage.
    if stages
        .iter()
        .any(|s| s.contains_key("anchor_es256_issue_rate"))
    {
        println!();
        header(&cols.iter().map(String::as_str).collect::<Vec<_>>());
        for (alg, what, key, prec) in [
            ("ES256", "issuance/s", "es256_issue_rate", 0),
            ("ES256", "issuance p99, ms", "es256_issue_p99", 2),
            ("ES256", "introspection/s", "es256_introspect_rate", 0),
            ("ES256", "introspection p99, ms", "es256_introspect_p99", 2),
            ("RS256", "issuance/s", "rs256_issue_rate", 0),
            ("RS256", "issuance p99, ms", "rs256_issue_p99", 2),
            ("RS256", "introspection/s", "rs256_introspect_rate", 0),
            ("RS256", "introspection p99, ms", "rs256_introspect_p99", 2),
        ] {
            let cells: Vec<String> = stages
                .iter()
                .map(|s| {
                    let (v, a) = (get(s, key), get(s, &format!("anchor_{key}")));
                    format!("{v:.prec$} / {a:.prec$} = {:.2}", v / a)
                })
                .collect();
            println!(
                "| {alg} {what}: this stage / anchor | {} |",
                cells.join(" | ")
            );
        }
    }
    let mut dat = String::from(
        "# apps rows, then each figure / the first stage's: startup_s rss_load_mb es256_issue_p99 es256_introspect_p99 jwks_p99 rotate_p99 tick_total_ms purge_ms softhsm_find_ms softhsm_sign_ms es256_issue_rate\n",
    );
    for s in &stages {
        let keys = [
            "apps",
            "rows",
            "startup_s",
            "rss_load_mb",
            "es256_issue_p99",
            "es256_introspect_p99",
            "jwks_p99",
            "rotate_p99",
            "tick_total_ms",
            "purge_ms",
            "softhsm_find_ms",
            "softhsm_sign_ms",
            "es256_issue_rate",
        ];
        // Apps and rows as they are; every cost as a multiple of the first stage's.
        let line: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                if i < 2 {
                    format!("{}", get(s, k))
                } else {
                    format!("{}", get(s, k) / get(&base, k))
                }
            })
            .collect();
        dat.push_str(&line.join(" "));
        dat.push('\n');
    }
    std::fs::write(dir.join("scale.dat"), dat).unwrap();
}

fn fmt_rows(n: f64) -> String {
    if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// `scale-sign`: SoftHSM2's own cost of a load spread over many keys, without the service.
/// In this process, on the token of `SOFTHSM2_CONF`: raw ES256 `C_Sign` (P-256, a SHA-256
/// digest) from 2 threads, each with its own session, round-robin over 2,000 of the
/// token's P-256 private keys (spread evenly over them) and over 8 of them, alternated
/// 8 / 2,000 / 2,000 / 8 for `BENCH_ROUNDS` rounds. The ratio is what SoftHSM2 alone loses
/// to the spread that `scale-issue` puts on the server; handles come from one listing pass,
/// so no search is timed.
pub(crate) fn sign_spread() {
    let pkcs11 = Pkcs11::new(MODULE).unwrap();
    let _ = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = bench_slot(&pkcs11);
    let s = pkcs11.open_ro_session(slot).unwrap();
    let _ = s.login(UserType::User, Some(&env("BENCH_PIN").into()));
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let all = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::EcParams(p256),
        ])
        .unwrap();
    let step = (all.len() / 2000).max(1);
    let many: Vec<_> = all.iter().step_by(step).take(2000).copied().collect();
    let few: Vec<_> = many.iter().take(8).copied().collect();
    let digest = sha2::Sha256::digest(b"scale").to_vec();
    let rate = |keys: &[cryptoki::object::ObjectHandle]| -> f64 {
        let count = AtomicU64::new(0);
        let next = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let s = pkcs11.open_ro_session(slot).unwrap();
                    while t.elapsed().as_secs_f64() < secs() {
                        let h = keys[next.fetch_add(1, Ordering::Relaxed) % keys.len()];
                        s.sign(&Mechanism::Ecdsa, h, &digest).unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
    };
    println!(
        "| round | C_Sign/s over {} keys | over {} keys | {} keys / {} keys |",
        many.len(),
        few.len(),
        many.len(),
        few.len()
    );
    println!("|---|---|---|---|");
    for round in 1..=env_usize("BENCH_ROUNDS", 3) {
        let f1 = rate(&few);
        let m1 = rate(&many);
        let m2 = rate(&many);
        let f2 = rate(&few);
        let (m, f) = ((m1 + m2) / 2.0, (f1 + f2) / 2.0);
        println!("| {round} | {m:.0} | {f:.0} | {:.2} |", m / f);
    }
}
