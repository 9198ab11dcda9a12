//! `scripts/bench statuslist` (issue 24): what Token Status Lists cost.
//!
//! - `statuslist-http` (a server at `BENCH_URL`, `status_list_refresh` 1 s): ES256 issuance
//!   with lists on vs off, two apps on one server, in interleaved rounds (off/on, then
//!   on/off, ...) so that the machine's drift hits both alike; then the latency from a
//!   revocation's response to the first read of the list that shows it (clients polling
//!   every 20 ms, several revocations in flight). Creates the app `statuslist-scale` uses
//!   and writes its id to `BENCH_SL_APP_FILE`.
//! - `statuslist-scale` (in process, the server stopped, the store and token it used):
//!   fills one list of 2^21 entries (the size the allocator gives an app with 10^6 live
//!   tokens) with `BENCH_SL_TOKENS` (10^6) ledger rows through the store's own
//!   functions, then for 0 %, 0.1 %, 1 % and 10 % of them deny-listed: the time to compute
//!   the list from the store, compress and sign it in the HSM, and the signed token's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_rotator::app::AppState;
use hsm_rotator::clock::{Clock, SystemClock};
use hsm_rotator::store::{LedgerRow, StatusEntry};
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde_json::{Value, json};

use super::{Http, env, load, secs};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

impl Http {
    async fn patch_status_list(&self, id: &str) {
        let res = self
            .client
            .patch(format!("{}/apps/{id}", self.base))
            .header("Authorization", &self.root)
            .json(&json!({"status_list": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    async fn issue(&self, id: &str, pk: &str) -> String {
        let v: Value = self
            .client
            .post(format!("{}/apps/{id}/tokens", self.base))
            .bearer_auth(pk)
            .json(&json!({"claims": {"sub": "bench"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// The bit of `token` in the list it names, as served now.
    async fn bit(&self, token: &str) -> u8 {
        let c = claims(token);
        let sl = &c["status"]["status_list"];
        let list = self
            .client
            .get(sl["uri"].as_str().unwrap())
            .header("Accept", "application/statuslist+jwt")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lst = claims(&list)["status_list"]["lst"]
            .as_str()
            .unwrap()
            .to_owned();
        let bytes = hsm_rotator::statuslist::decompress(&lst).unwrap();
        hsm_rotator::statuslist::bit(&bytes, sl["idx"].as_u64().unwrap()).unwrap()
    }
}

pub(crate) fn http() {
    let rt = rt();
    let http = Arc::new(Http::new());
    let (off_id, off_pk) = rt.block_on(http.create("ES256", 0));
    let (on_id, on_pk) = rt.block_on(http.create("ES256", 0));
    rt.block_on(http.patch_status_list(&on_id));
    let (big, _) = rt.block_on(http.create("ES256", 0));
    rt.block_on(http.patch_status_list(&big));
    std::fs::write(env("BENCH_SL_APP_FILE"), &big).unwrap();

    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("| round | lists off /s | lists on /s | on / off | p99 off ms | p99 on ms |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let run = |id: &str, pk: &str| {
        let (h, id, pk) = (http.clone(), id.to_owned(), pk.to_owned());
        rt.block_on(load(32, secs(), move || {
            let (h, id, pk) = (h.clone(), id.clone(), pk.clone());
            async move {
                let _ = h.issue(&id, &pk).await;
            }
        }))
    };
    // Warm both paths (spare keys, list chunks, connections) before measuring.
    let _ = run(&off_id, &off_pk);
    let _ = run(&on_id, &on_pk);
    for r in 0..rounds {
        let (off, on) = if r % 2 == 0 {
            let off = run(&off_id, &off_pk);
            (off, run(&on_id, &on_pk))
        } else {
            let on = run(&on_id, &on_pk);
            (run(&off_id, &off_pk), on)
        };
        let ratio = on.0 / off.0;
        ratios.push(ratio);
        println!(
            "| {} ({}) | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} |",
            r + 1,
            if r % 2 == 0 { "off first" } else { "on first" },
            off.0,
            on.0,
            ratio,
            off.2,
            on.2
        );
    }
    println!(
        "\nMedian on / off over {rounds} rounds: **{:.3}** (cost {:.1} %).\n",
        median(&mut ratios),
        100.0 * (1.0 - median(&mut ratios))
    );

    // Revocation to visible: each worker issues a token, sees its bit 0, revokes it, and
    // polls the list until the bit reads 1.
    let samples: usize = std::env::var("BENCH_SL_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let workers = 8;
    let lat = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (h, id, pk) = (http.clone(), on_id.clone(), on_pk.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in (w..samples).step_by(workers) {
                    let t = h.issue(&id, &pk).await;
                    assert_eq!(h.bit(&t).await, 0);
                    let res = h
                        .client
                        .post(format!("{}/apps/{id}/tokens/revoke", h.base))
                        .bearer_auth(&pk)
                        .form(&[("token", t.as_str())])
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    let t0 = Instant::now();
                    while h.bit(&t).await == 0 {
                        assert!(t0.elapsed() < Duration::from_secs(60), "never visible");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    out.push(t0.elapsed().as_secs_f64());
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut lat = lat;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "| revocation → visible ({} samples, status_list_refresh {} s) | p50 s | p99 s | max s |",
        lat.len(),
        std::env::var("HSM_ROTATOR_STATUS_LIST_REFRESH").unwrap_or_else(|_| "10".into())
    );
    println!("|---|---|---|---|");
    println!(
        "| from the revoke response to the first list read showing it | {:.2} | {:.2} | {:.2} |",
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
}

pub(crate) fn scale() {
    let rt = rt();
    rt.block_on(async {
        let cfg = hsm_rotator::config::Config::load(None).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let state = AppState::connect(&cfg, clock.clone()).await.unwrap();
        let app_id = std::fs::read_to_string(env("BENCH_SL_APP_FILE"))
            .unwrap()
            .trim()
            .to_owned();
        let kid = state
            .registry
            .current(&app_id)
            .unwrap()
            .row
            .kid
            .to_string();
        let tokens: usize = std::env::var("BENCH_SL_TOKENS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000);
        let bits: i64 = 1 << 21;
        let now = clock.now();
        let (exp, until) = (now + 3_000, now + 3_600);

        // Fill: chunks of the one list, indexes shuffled within each chunk (as the
        // allocator hands them out), ledger rows written in batches by the store.
        let t0 = Instant::now();
        let mut jtis = Vec::with_capacity(tokens);
        let mut rng = rand::rng();
        let mut list = None;
        let mut batch = Vec::new();
        while jtis.len() < tokens {
            let chunk = state
                .store
                .reserve_status_chunk(&app_id, now, until, bits, 4_096, 0)
                .await
                .unwrap();
            assert_eq!(chunk.n, *list.get_or_insert(chunk.n), "one list");
            let mut idx: Vec<i64> = (chunk.start..chunk.start + chunk.len).collect();
            idx.shuffle(&mut rng);
            for i in idx.into_iter().take(tokens - jtis.len()) {
                let jti = ulid::Ulid::new().to_string();
                batch.push(LedgerRow {
                    jti: jti.clone(),
                    app_id: app_id.clone(),
                    kid: kid.clone(),
                    sub_sha256: Some(format!("{:064x}", rng.random::<u128>())),
                    iat: now,
                    exp,
                    family: None,
                    refresh_exp: None,
                    meta: None,
                    status: Some(StatusEntry {
                        list: chunk.list,
                        idx: i,
                        refresh_idx: None,
                    }),
                });
                jtis.push(jti);
            }
            if batch.len() >= 8_192 || jtis.len() == tokens {
                state.store.insert_ledger(&batch).await.unwrap();
                batch.clear();
            }
        }
        let n = list.unwrap();
        println!(
            "Filled {tokens} ledger rows into list {n} ({bits} entries) in {:.0} s.\n",
            t0.elapsed().as_secs_f64()
        );
        println!(
            "| live tokens | revoked | compute + compress + HSM sign + store, s | signed token bytes | `lst` bytes | HSM sign alone, ms |"
        );
        println!("|---|---|---|---|---|---|");
        jtis.shuffle(&mut rng);
        let mut denied = 0usize;
        for pct in [0.0, 0.1, 1.0, 10.0] {
            let want = (tokens as f64 * pct / 100.0) as usize;
            let mut tx = state.store.begin().await.unwrap();
            for j in &jtis[denied..want] {
                state.store.deny_jti(&mut tx, j, &app_id, exp).await.unwrap();
            }
            tx.commit().await.unwrap();
            denied = want;
            // A publisher with nothing cached: it computes the list from the store and,
            // its bits having changed, signs it.
            let p = hsm_rotator::statuslist::Publisher::new(
                state.store.clone(),
                state.registry.clone(),
                state.tokens.clone(),
                clock.clone(),
                10,
            );
            let t = Instant::now();
            let s = p.get(state.issuers(), &app_id, n).await.unwrap().unwrap();
            let took = t.elapsed().as_secs_f64();
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), "bench".into());
            claims.insert("status_list".into(), json!({"bits": 1, "lst": s.lst}));
            let t = Instant::now();
            let _ = state
                .tokens
                .sign_with_current(&app_id, hsm_rotator::statuslist::TYP, &claims)
                .await
                .unwrap();
            let sign_ms = t.elapsed().as_secs_f64() * 1000.0;
            println!(
                "| {tokens} | {denied} ({pct} %) | {took:.2} | {} | {} | {sign_ms:.1} |",
                s.token.len(),
                s.lst.len()
            );
        }
        state.hsm.close().await;
    });
}
