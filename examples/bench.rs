//! Benchmarks behind `scripts/bench` (not tests: figures are ratios measured side by side in
//! one run, on one token, because the machines are shared and noisy).
//!
//! - `hsm`: signatures per second through the session pool vs a raw single-session
//!   `C_Sign` loop on the same token, per algorithm, for 1 and 2 threads.
//! - `http`: issuance, introspection and JWKS under `wrk`, each beside its anchor from the
//!   same run (see `http/mod.rs`).
//! - `issue`: HTTP issuance rate vs the raw 2-thread `C_Sign` rate on the same key (reqwest
//!   load generator, for what wrk cannot do).
//! - `introspect`: HTTP introspection rate vs in-process jsonwebtoken verification.
//! - `rotate`: latency of `POST /apps/{id}/keys/rotate` per algorithm (p50, p99).
//! - `scale-populate`, `scale-ledger`, `scale-measure`, `scale-report`, `scale-issue`, `scale-sign`: the growth curves of
//!   `scripts/bench scale` (apps created through the API, figures at each size written as
//!   `key value` lines, then tables and the plot's data file).
//! - `statuslist-http`, `statuslist-scale`: what Token Status Lists cost (see
//!   `statuslist/mod.rs`).
//!
//! Environment (set by `scripts/bench`): `SOFTHSM2_CONF`, `BENCH_PIN`, `BENCH_LABEL`,
//! `BENCH_URL`, `BENCH_ROOT` (for the HTTP benchmarks).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use hsm_rotator::alg::{Algorithm, KeySpec};
use hsm_rotator::hsm::{Hsm, HsmConfig};
use hsm_rotator::keys::Kid;
use serde_json::{Value, json};
use sha2::Digest as _;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set (run through scripts/bench)"))
}

fn secs() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// The slot of the bench token (`BENCH_LABEL`).
fn bench_slot(pkcs11: &Pkcs11) -> cryptoki::slot::Slot {
    pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == env("BENCH_LABEL"))
        .unwrap()
}

/// Raw `C_Sign` rate: `threads` threads, each with its own logged-in session, for `secs`.
fn raw_rate(pkcs11: &Pkcs11, kid: Kid, alg: Algorithm, threads: usize, secs: f64) -> f64 {
    let slot = bench_slot(pkcs11);
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let input = b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9".to_vec();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (count, stop, input) = (count.clone(), stop.clone(), input.clone());
            scope.spawn(move || {
                let s = pkcs11.open_rw_session(slot).unwrap();
                let _ = s.login(UserType::User, Some(&env("BENCH_PIN").into()));
                let h = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(kid.cka_id().to_vec()),
                    ])
                    .unwrap()[0];
                let pss = |hash, mgf, len: u64| PkcsPssParams {
                    hash_alg: hash,
                    mgf,
                    s_len: len.into(),
                };
                let mech = match alg {
                    Algorithm::RS256 => Mechanism::Sha256RsaPkcs,
                    Algorithm::PS256 => Mechanism::Sha256RsaPkcsPss(pss(
                        cryptoki::mechanism::MechanismType::SHA256,
                        PkcsMgfType::MGF1_SHA256,
                        32,
                    )),
                    Algorithm::EdDSA => {
                        Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
                    }
                    _ => Mechanism::Ecdsa,
                };
                while !stop.load(Ordering::Relaxed) {
                    let data = match alg {
                        Algorithm::ES256 => sha2::Sha256::digest(&input).to_vec(),
                        Algorithm::ES384 => sha2::Sha384::digest(&input).to_vec(),
                        Algorithm::ES512 => sha2::Sha512::digest(&input).to_vec(),
                        _ => input.clone(),
                    };
                    s.sign(&mech, h, &data).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / secs
}

/// Pool rate: `threads` concurrent tasks calling `Hsm::sign`.
async fn pool_rate(hsm: &Hsm, kid: Kid, alg: Algorithm, threads: usize, secs: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let (hsm, count) = (hsm.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                hsm.sign(
                    kid,
                    alg,
                    b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9".to_vec(),
                )
                .await
                .unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / secs
}

/// The service's session pool on the bench token (`BENCH_LABEL`, `BENCH_PIN`), opened on
/// `rt`: `sessions` sessions; `store_id` as the objects it makes are labelled (`None`: a
/// tool's handle, which uses every object of the token).
fn bench_pool(rt: &tokio::runtime::Runtime, sessions: usize, store_id: Option<&str>) -> Hsm {
    rt.block_on(Hsm::connect(HsmConfig {
        module: MODULE.into(),
        token_label: env("BENCH_LABEL"),
        pin: env("BENCH_PIN").into(),
        sessions,
        store_id: store_id.map(Into::into),
    }))
    .unwrap()
}

fn bench_hsm() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hsm = bench_pool(&rt, 4, Some("BENCH"));
    let raw = Pkcs11::new(MODULE).unwrap();
    let _ = raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    // Raw and pool alternate, `BENCH_ROUNDS` times each (default 3), and the row gives the
    // median of the per-round ratios: on a shared machine a burst of other work then hits
    // one round of one side, not the whole figure.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "| algorithm | threads | raw C_Sign/s (median) | pool sign/s (median) | pool / raw (median of {rounds} alternated rounds) | range |"
    );
    println!("|---|---|---|---|---|---|");
    let specs = [
        ("RS256 (RSA-2048)", KeySpec::new(Algorithm::RS256, 2048)),
        ("PS256 (RSA-2048)", KeySpec::new(Algorithm::PS256, 2048)),
        ("RS256 (RSA-4096)", KeySpec::new(Algorithm::RS256, 4096)),
        ("ES256", KeySpec::new(Algorithm::ES256, 0)),
        ("ES384", KeySpec::new(Algorithm::ES384, 0)),
        ("ES512", KeySpec::new(Algorithm::ES512, 0)),
        ("EdDSA", KeySpec::new(Algorithm::EdDSA, 0)),
    ];
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, spec) in specs {
        let kid = Kid::generate();
        rt.block_on(hsm.generate(kid, spec)).unwrap();
        for threads in [1, 2] {
            let (mut raws, mut pools, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds.max(1) {
                let r = raw_rate(&raw, kid, spec.alg, threads, secs());
                let p = rt.block_on(pool_rate(&hsm, kid, spec.alg, threads, secs()));
                raws.push(r);
                pools.push(p);
                ratios.push(p / r);
            }
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            println!(
                "| {name} | {threads} | {:.0} | {:.0} | {:.1} % | {:.1}-{:.1} % |",
                median(&mut raws),
                median(&mut pools),
                100.0 * median(&mut ratios),
                100.0 * lo,
                100.0 * hi
            );
        }
        rt.block_on(hsm.destroy(kid)).unwrap();
    }
}

struct Http {
    client: reqwest::Client,
    base: String,
    root: String,
}

impl Http {
    fn new() -> Self {
        Self {
            client: reqwest::Client::new(),
            base: env("BENCH_URL"),
            root: env("BENCH_ROOT"),
        }
    }

    async fn create(&self, alg: &str, bits: u32) -> (String, String) {
        let mut body =
            json!({"name": format!("bench {alg} {bits}"), "signing_alg": alg, "token_ttl": 3600});
        if bits > 0 {
            body["rsa_bits"] = json!(bits);
        }
        let v: Value = self
            .client
            .post(format!("{}/apps", self.base))
            .header("Authorization", &self.root)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["access_token"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET path` (with the root key when `as_root`), its JSON body.
    async fn get_json(&self, path: &str, as_root: bool) -> Value {
        let mut rb = self.client.get(format!("{}{path}", self.base));
        if as_root {
            rb = rb.header("Authorization", &self.root);
        }
        rb.send().await.unwrap().json().await.unwrap()
    }

    /// `GET path` without credentials, its body as text (`/metrics`).
    async fn get_text(&self, path: &str) -> String {
        let res = self.client.get(format!("{}{path}", self.base)).send();
        res.await.unwrap().text().await.unwrap()
    }

    /// Wait until the spare pool for `spec` holds at least two keys (as between real
    /// rotations).
    async fn spares_ready(&self, spec: &str) {
        for _ in 0..600 {
            let v = self.get_json("/readyz", false).await;
            if v["spares"][spec].as_u64().unwrap_or(0) >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn current_kid(&self, id: &str) -> Kid {
        let v = self.get_json(&format!("/apps/{id}/keys"), true).await;
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["state"] == "current")
            .unwrap()["kid"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// Run `concurrency` request loops for `secs`; returns (requests/s, p50 ms, p99 ms).
async fn load<F, Fut>(concurrency: usize, secs: f64, f: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                f().await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

fn bench_issue() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = Pkcs11::new(MODULE).unwrap();
    let _ = raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let http = Arc::new(Http::new());
    println!(
        "| algorithm | raw C_Sign/s (2 threads) | HTTP issuance/s (32 clients) | issuance / raw | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (alg, a) in [("RS256", Algorithm::RS256), ("ES256", Algorithm::ES256)] {
        let (id, pk) = rt.block_on(http.create(alg, if alg == "RS256" { 2048 } else { 0 }));
        let kid = rt.block_on(http.current_kid(&id));
        let r = raw_rate(&raw, kid, a, 2, secs());
        let h = http.clone();
        let (rate, p50, p99) = rt.block_on(load(32, secs(), move || {
            let (h, id, pk) = (h.clone(), id.clone(), pk.clone());
            async move {
                let res = h
                    .client
                    .post(format!("{}/apps/{id}/tokens", h.base))
                    .bearer_auth(&pk)
                    .json(&json!({"claims": {"sub": "bench"}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let _ = res.bytes().await;
            }
        }));
        println!(
            "| {alg} | {r:.0} | {rate:.0} | {:.1} % | {p50:.2} | {p99:.2} |",
            100.0 * rate / r
        );
    }
}

/// The key and validation that verify `token` (signed with `alg`) against `jwks`, as the
/// introspection anchor does.
fn verifier(
    jwks: &Value,
    token: &str,
    alg: &str,
) -> (jsonwebtoken::DecodingKey, jsonwebtoken::Validation) {
    let kid = token
        .split('.')
        .next()
        .map(|h| {
            use base64::Engine as _;
            let h: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .unwrap(),
            )
            .unwrap();
            h["kid"].as_str().unwrap().to_owned()
        })
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap()
            .clone(),
    )
    .unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg.parse().unwrap());
    validation.validate_aud = false;
    (key, validation)
}

/// In-process verification rate: `jsonwebtoken` checking `token` (signed with `alg`)
/// against its key from `jwks` (its app's JWKS), 2 threads for `secs`.
fn verify_rate(jwks: &Value, token: &str, alg: &str, secs: f64) -> f64 {
    let (key, validation) = verifier(jwks, token, alg);
    let count = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / secs
}

fn bench_introspect() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = Arc::new(Http::new());
    println!(
        "| algorithm | in-process verify/s (2 threads) | HTTP introspection/s (32 clients) | introspection / verify | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for alg in ["RS256", "ES256"] {
        let (id, pk) = rt.block_on(http.create(alg, if alg == "RS256" { 2048 } else { 0 }));
        let token: String = rt.block_on(async {
            let v: Value = http
                .client
                .post(format!("{}/apps/{id}/tokens", http.base))
                .bearer_auth(&pk)
                .json(&json!({"claims": {"sub": "bench"}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["token"].as_str().unwrap().to_owned()
        });
        let jwks = rt.block_on(http.get_json(&format!("/apps/{id}/.well-known/jwks.json"), false));
        let verify = verify_rate(&jwks, &token, alg, secs());
        let h = http.clone();
        let (rate, p50, p99) = rt.block_on(load(32, secs(), move || {
            let (h, id, pk, token) = (h.clone(), id.clone(), pk.clone(), token.clone());
            async move {
                let v: Value = h
                    .client
                    .post(format!("{}/apps/{id}/tokens/introspect", h.base))
                    .bearer_auth(&pk)
                    .json(&json!({"token": token}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["active"], true);
            }
        }));
        println!(
            "| {alg} | {verify:.0} | {rate:.0} | {:.1} % | {p50:.2} | {p99:.2} |",
            100.0 * rate / verify
        );
    }
}

fn bench_rotate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = Http::new();
    let n: usize = std::env::var("BENCH_ROTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    println!("| algorithm | rotations | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (alg, bits) in [
        ("RS256", 2048),
        ("RS256", 4096),
        ("PS256", 2048),
        ("ES256", 0),
        ("ES384", 0),
        ("ES512", 0),
        ("EdDSA", 0),
    ] {
        let mut lat = Vec::new();
        rt.block_on(async {
            let (id, _) = http.create(alg, bits).await;
            let spec = if bits > 0 {
                format!("{alg}/{bits}")
            } else {
                alg.to_owned()
            };
            for _ in 0..n {
                // Let the spare pool refill, as it does between real rotations.
                http.spares_ready(&spec).await;
                let t = Instant::now();
                let res = http
                    .client
                    .post(format!("{}/apps/{id}/keys/rotate", http.base))
                    .header("Authorization", &http.root)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let name = if bits > 0 {
            format!("{alg} (RSA-{bits})")
        } else {
            alg.to_owned()
        };
        println!(
            "| {name} | {n} | {:.1} | {:.1} | {:.1} |",
            pct(0.5),
            pct(0.99),
            lat[lat.len() - 1]
        );
    }
}

/// Two replicas on one PostgreSQL database: revocation propagation delay A → B, and
/// issuance throughput with one replica vs two on the same machine.
fn bench_replicas() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = Arc::new(Http::new());
    let b = Arc::new(Http {
        client: reqwest::Client::new(),
        base: env("BENCH_URL_B"),
        root: env("BENCH_ROOT"),
    });
    let n: usize = std::env::var("BENCH_REVOCATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (id, pk) = rt.block_on(a.create("ES256", 0));
    let mut delays = Vec::new();
    rt.block_on(async {
        for _ in 0..n {
            let v: Value = a
                .client
                .post(format!("{}/apps/{id}/tokens", a.base))
                .bearer_auth(&pk)
                .json(&json!({"claims": {"sub": "p"}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = v["token"].as_str().unwrap().to_owned();
            let active = |h: Arc<Http>, token: String, id: String, pk: String| async move {
                let v: Value = h
                    .client
                    .post(format!("{}/apps/{id}/tokens/introspect", h.base))
                    .bearer_auth(&pk)
                    .json(&json!({"token": token}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["active"] == true
            };
            assert!(active(b.clone(), token.clone(), id.clone(), pk.clone()).await);
            let res = a
                .client
                .post(format!("{}/apps/{id}/tokens/revoke", a.base))
                .bearer_auth(&pk)
                .json(&json!({"token": token}))
                .send()
                .await
                .unwrap();
            // The clock starts when A has answered: the revocation is committed there.
            let t = Instant::now();
            assert_eq!(res.status(), 200);
            while active(b.clone(), token.clone(), id.clone(), pk.clone()).await {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "revocation never reached B"
                );
            }
            delays.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    });
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!("| revocations | propagation p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| {n} | {:.2} | {:.2} | {:.2} |",
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1]
    );
    println!();
    println!("| replicas | ES256 issuance/s (32 clients) | p99 ms |");
    println!("|---|---|---|");
    for targets in [vec![a.clone()], vec![a.clone(), b.clone()]] {
        let k = targets.len();
        let (id, pk) = (id.clone(), pk.clone());
        let next = Arc::new(AtomicU64::new(0));
        let (rate, _, p99) = rt.block_on(load(32, secs(), move || {
            let h =
                targets[(next.fetch_add(1, Ordering::Relaxed) as usize) % targets.len()].clone();
            let (id, pk) = (id.clone(), pk.clone());
            async move {
                let res = h
                    .client
                    .post(format!("{}/apps/{id}/tokens", h.base))
                    .bearer_auth(&pk)
                    .json(&json!({"claims": {"sub": "bench"}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let _ = res.bytes().await;
            }
        }));
        println!("| {k} | {rate:.0} | {p99:.2} |");
    }
}

#[path = "http/mod.rs"]
mod http;
#[path = "scale/mod.rs"]
mod scale;
#[path = "statuslist/mod.rs"]
mod statuslist;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("scale-populate") => scale::populate(),
        Some("scale-ledger") => scale::ledger::fill(),
        Some("scale-measure") => scale::measure(),
        Some("scale-report") => scale::report(),
        Some("scale-issue") => scale::issue_only(),
        Some("scale-sign") => scale::sign_spread(),
        Some("statuslist-http") => statuslist::http(),
        Some("statuslist-scale") => statuslist::scale(),
        Some("hsm") => bench_hsm(),
        Some("http") => http::run(),
        Some("http-profile") => http::profile(),
        Some("issue") => bench_issue(),
        Some("introspect") => bench_introspect(),
        Some("rotate") => bench_rotate(),
        Some("replicas") => bench_replicas(),
        _ => {
            eprintln!("usage: bench hsm|http|issue|introspect|rotate|replicas");
            std::process::exit(2);
        }
    }
}
