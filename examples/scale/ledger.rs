//! `scale-ledger FROM TO`: grow a stopped stage's ledger from `FROM` to `TO` rows through
//! the store's own batch insert ([`hsm_rotator::store::Store::insert_ledger`], the one the
//! service's ledger writer uses), so that the rows' slots, subject keys, app keys and
//! `ledger_slots` come from the one place that defines them.
//!
//! Row `i` goes to app `i % apps` (apps with a current key, by id; under that key), its jti
//! is ULID-shaped and increases with `i`, its subject digest is random, it lives one hour
//! (a minute slot) and was issued over the last half hour; every tenth row has already
//! expired (for the purge). The store is the one `HSM_ROTATOR_DATA_DIR` /
//! `HSM_ROTATOR_DATABASE_URL` name, as for the server; the server must be stopped.

use std::time::Instant;

use hsm_rotator::clock::{Clock as _, SystemClock};
use hsm_rotator::keys::KeyState;
use hsm_rotator::store::{LedgerRow, Store};

/// Rows per `insert_ledger` call (one transaction each).
const BATCH: u64 = 20_000;

/// The arguments `FROM TO` after the subcommand.
fn range() -> (u64, u64) {
    let args: Vec<u64> = std::env::args()
        .skip(2)
        .map(|a| a.parse().expect("usage: bench scale-ledger FROM TO"))
        .collect();
    match args[..] {
        [from, to] => (from, to),
        _ => panic!("usage: bench scale-ledger FROM TO"),
    }
}

/// Ledger row `i` of a stage filled at `now` (see the module header).
fn row(i: u64, now: i64, app: &(String, String), rng: &mut impl rand::Rng) -> LedgerRow {
    let age = i64::try_from(i % 1_800).unwrap();
    let iat = now - 1_800 + age;
    let exp = if i.is_multiple_of(10) {
        now - 60
    } else {
        iat + 3_600
    };
    LedgerRow {
        jti: format!(
            "0{:09X}{:016X}",
            17_000_000_000 + i,
            rng.random::<u64>() >> 4
        ),
        app_id: app.0.clone(),
        kid: app.1.clone(),
        sub_sha256: Some(format!(
            "{:032x}{:032x}",
            rng.random::<u128>(),
            rng.random::<u128>()
        )),
        iat,
        exp,
        family: None,
        refresh_exp: None,
        meta: None,
        status: None,
    }
}

pub(crate) fn fill() {
    let (from, to) = range();
    super::rt().block_on(async {
        let cfg = hsm_rotator::config::Config::load(None).unwrap();
        let store = Store::open(&cfg.database_url()).await.unwrap();
        let mut apps: Vec<(String, String)> = store
            .keys_in_state(KeyState::Current)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|k| Some((k.app_id?, k.kid.to_string())))
            .collect();
        apps.sort();
        assert!(!apps.is_empty(), "no app with a current key");
        let now = SystemClock.now();
        let mut rng = rand::rng();
        let t0 = Instant::now();
        let mut i = from;
        while i < to {
            let end = to.min(i + BATCH);
            let batch: Vec<LedgerRow> = (i..end)
                .map(|i| {
                    let app = &apps[usize::try_from(i).unwrap() % apps.len()];
                    row(i, now, app, &mut rng)
                })
                .collect();
            store.insert_ledger(&batch).await.unwrap();
            i = end;
        }
        eprintln!(
            "ledger: rows {from}..{to} over {} apps in {:.1} s",
            apps.len(),
            t0.elapsed().as_secs_f64()
        );
    });
}
