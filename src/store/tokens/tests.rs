//! The store's ledger, refresh and purge statements against a scratch SQLite store.

#![allow(clippy::unwrap_used)]

use super::ledger::{
    APP_UNEXPIRED, LIVE, LIVE_BY_KID, LIVE_OF_APP, SESSIONS, all_unexpired_sql, key_counts_sql,
    ledger_slot, sub_key,
};
use super::refresh::{
    APP_REFRESH_REVOKE, FAMILY_TOKENS, KEY_REFRESH_REVOKE, SUBJECT_REFRESH_REVOKE,
};
use super::{LedgerRow, PURGE_BATCH, PURGE_SLOTS, PURGED, purge_sql};
use crate::store::{Dialect, Store};

fn row(i: i64, exp: i64, refresh_exp: Option<i64>) -> LedgerRow {
    LedgerRow {
        jti: format!("01J{i:023}"),
        app_id: "app".into(),
        kid: "kid".into(),
        sub_sha256: Some(format!("{:064x}", i % 7)),
        iat: exp - 3600,
        exp,
        family: None,
        refresh_exp,
        meta: None,
        status: None,
    }
}

/// A store on a fresh SQLite file (the directory lives as long as the guard), with the
/// apps `app` and `other` (a ledger row finds its app's `ledger_key` by the app's id).
async fn scratch_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/p.db?mode=rwc", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    for id in ["app", "other"] {
        sqlx::query(
            "INSERT INTO apps (id, name, signing_alg, rsa_bits, rotation_period, verification_ttl, \
             token_ttl, refresh_ttl, subject_dn, access_token_sha256, created_at, updated_at) \
             VALUES ($1, $1, 'ES256', 0, 86400, 3600, 3600, 0, 'CN=t', $1, 0, 0)",
        )
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    }
    (dir, store)
}

async fn count(store: &Store, sql: &str) -> i64 {
    use sqlx::Row as _;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

/// Commits leave the log to the background checkpointer: SQLite's own checkpoint is only
/// a backstop at [`crate::store::WAL_BACKSTOP_FRAMES`], and one passive checkpoint copies
/// everything the ledger wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_log_is_checkpointed_off_the_commit_path() {
    let (dir, store) = scratch_store().await;
    let threshold = count(&store, "PRAGMA wal_autocheckpoint").await;
    assert_eq!(threshold, i64::from(crate::store::WAL_BACKSTOP_FRAMES));
    let now = 2_000_000_000;
    for b in 0..60 {
        let rows: Vec<LedgerRow> = (0..200).map(|i| row(b * 200 + i, now, None)).collect();
        store.insert_ledger(&rows).await.unwrap();
    }
    // More than SQLite's default threshold of 1,000 frames sits in the log, uncopied.
    let wal = dir.path().join("p.db-wal");
    let before = std::fs::metadata(&wal).unwrap().len();
    assert!(before > 1_000 * 4096, "log of {before} bytes");
    let c = store
        .checkpoint()
        .await
        .unwrap()
        .expect("SQLite checkpoints");
    assert!(c.log_frames > 1_000, "{c:?}");
    assert_eq!(
        c.checkpointed, c.log_frames,
        "a passive checkpoint with no reader copies all"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM tokens").await, 12_000);
}

/// More expired rows than several batches: every expired row goes, in batches, and
/// nothing live (or still refreshable) is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_every_expired_row_in_batches_and_nothing_else() {
    let (_dir, store) = scratch_store().await;
    let now = 2_000_000_000;
    let expired = 2 * PURGE_BATCH + 123;
    let mut rows: Vec<LedgerRow> = (0..expired)
        .map(|i| row(i, now - 1 - i % 50, None))
        .collect();
    // Live, expiring exactly at `now` + 1, and expired but with a live refresh token.
    rows.extend((0..300).map(|i| row(expired + i, now + 1 + i, None)));
    rows.extend((0..40).map(|i| row(expired + 300 + i, now - 5, Some(now + 60))));
    store.insert_ledger(&rows).await.unwrap();
    // A row expiring exactly now is expired (`exp <= now`).
    store
        .insert_ledger(&[row(9_999_999, now, None)])
        .await
        .unwrap();
    for i in 0..3 {
        sqlx::query("INSERT INTO denied_jti (jti, app_id, exp) VALUES ($1, 'app', $2)")
            .bind(format!("d{i}"))
            .bind(now - 1 + i)
            .execute(store.pool())
            .await
            .unwrap();
    }

    let purged = store.purge_expired(now).await.unwrap();
    assert_eq!(purged, u64::try_from(expired + 1 + 2).unwrap());
    assert_eq!(count(&store, "SELECT COUNT(*) FROM tokens").await, 340);
    assert_eq!(
        count(
            &store,
            &format!("SELECT COUNT(*) FROM tokens WHERE exp <= {now} AND refresh_exp IS NULL")
        )
        .await,
        0
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM denied_jti").await, 1);
    // Nothing left to purge: a second pass deletes nothing.
    assert_eq!(store.purge_expired(now).await.unwrap(), 0);
}

/// Every ledger read, refresh revocation and purge statement finds its rows through an
/// index: a table scan costs time in proportion to the whole ledger (10^7 rows at scale,
/// read inside a write transaction for family, key and subject revocation). Checked on SQLite's plans, which have no
/// statistics to hide a bad choice behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_statements_never_scan_a_table() {
    use sqlx::Row as _;
    let (_dir, store) = scratch_store().await;
    let mut statements = vec![
        ("sessions", SESSIONS.to_owned()),
        ("live by kid", format!("{LIVE_BY_KID}{LIVE} GROUP BY t.kid")),
        ("live of app", format!("{LIVE_OF_APP}{LIVE}")),
        ("key counts", key_counts_sql(3)),
        ("one app unexpired", APP_UNEXPIRED.to_owned()),
        ("all apps unexpired", all_unexpired_sql(Dialect::Sqlite)),
        ("key refresh revoke", KEY_REFRESH_REVOKE.to_owned()),
        ("subject refresh revoke", SUBJECT_REFRESH_REVOKE.to_owned()),
        ("app refresh revoke", APP_REFRESH_REVOKE.to_owned()),
        ("family tokens", FAMILY_TOKENS.to_owned()),
    ];
    for (table, key, expired) in PURGED {
        statements.push(("purge", purge_sql(table, key, expired)));
    }
    statements.push(("purge slots", PURGE_SLOTS.to_owned()));
    for (name, sql) in statements {
        let plan: Vec<String> =
            sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(store.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect();
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN ")),
            "{name} scans: {plan:?}"
        );
    }
}

/// A row's slot is the minute, hour or day of its `iat` by how long it lives (its
/// refresh token's life counts), plus the class, so classes never share a slot.
#[test]
fn slots_follow_the_life_of_the_row() {
    let iat = 1_999_999_999; // 2033-05-18 03:33:19 UTC
    assert_eq!(ledger_slot(iat, iat + 1), 1_999_999_980);
    assert_eq!(ledger_slot(iat, iat + 7_200), 1_999_999_980);
    assert_eq!(ledger_slot(iat, iat + 7_201), 1_999_998_000 + 1);
    assert_eq!(ledger_slot(iat, iat + 172_800), 1_999_998_000 + 1);
    assert_eq!(ledger_slot(iat, iat + 172_801), 1_999_987_200 + 2);
    assert_eq!(ledger_slot(iat, iat + 31_536_000 * 2), 1_999_987_200 + 2);
}

/// A subject digest's key is its first 7 hex digits as a number; anything that is not a
/// lowercase hex digest has none.
#[test]
fn a_subjects_key_is_its_digests_first_seven_hex_digits() {
    let tail = "0".repeat(57);
    assert_eq!(sub_key(&format!("0123abc{tail}")), Some(0x0012_3abc));
    assert_eq!(sub_key(&format!("fffffff{tail}")), Some(268_435_455));
    assert_eq!(sub_key(&format!("0000000{tail}")), Some(0));
    assert_eq!(sub_key(&format!("0123ABC{tail}")), None);
    assert_eq!(sub_key(&format!("-123abc{tail}")), None);
    assert_eq!(sub_key("0123ab"), None);
}

/// What a stored row carries besides the token's own fields, in figures: its slot (here
/// the minute of its `iat`), its subject's key, its app's `ledger_key`, and its slot's
/// end in `ledger_slots` rounded up to the minute. Every user of the ledger (the service,
/// the scale bench through `bench scale-ledger`) goes through `insert_ledger`, so these
/// figures hold for every row; a change to the formulas must change them here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_row_carries_its_slot_subject_key_and_app_key() {
    use sqlx::Row as _;
    let (_dir, store) = scratch_store().await;
    let iat = 1_999_999_999; // 2033-05-18 03:33:19 UTC
    let mut r = row(1, iat + 3_600, None);
    r.iat = iat;
    r.sub_sha256 = Some(format!("0123abc{}", "9".repeat(57)));
    store.insert_ledger(&[r.clone()]).await.unwrap();
    let got = sqlx::query(
        "SELECT t.slot, t.sub_key, t.app_key, a.ledger_key, s.until FROM tokens t \
         JOIN apps a ON a.id = t.app_id JOIN ledger_slots s ON s.slot = t.slot WHERE t.jti = $1",
    )
    .bind(&r.jti)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let col = |c: &str| got.try_get::<i64, _>(c).unwrap();
    assert_eq!(col("slot"), 1_999_999_980);
    assert_eq!(col("sub_key"), 0x0012_3abc);
    assert_eq!(col("app_key"), col("ledger_key"));
    assert_eq!(col("app_key"), 1, "the first app made");
    assert_eq!(
        col("until"),
        2_000_003_640,
        "2,000,003,599 rounded up to the minute"
    );
    assert_eq!(store.ledger_row(&r.jti).await.unwrap(), Some(r));
}

/// Rows of every slot class are found by every lookup by app and subject, and deleted
/// with their app; the purge drops the slots whose rows have all ended and keeps the
/// others; a late row in a slot the purge dropped records the slot again and is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_class_is_found_purged_and_recorded_again() {
    let (_dir, store) = scratch_store().await;
    let now = 2_000_000_000;
    let sub = format!("{:064x}", 3);
    let live = |i: i64, life: i64, refresh: Option<i64>| {
        let mut r = row(i, now + life, refresh.map(|x| now + x));
        r.iat = now;
        r.sub_sha256 = Some(sub.clone());
        r
    };
    // A minute slot, an hour slot (its refresh token lives a day), a day slot; one row
    // ending before the check, in a minute slot of its own; and another app's row.
    let mut rows = vec![
        live(1, 600, None),
        live(2, 600, Some(86_400)),
        live(3, 3 * 86_400, None),
    ];
    let mut ended = live(4, 30, None);
    ended.iat = now - 3_000;
    ended.exp = now - 2_900;
    rows.push(ended);
    let mut other = live(5, 600, None);
    other.app_id = "other".into();
    rows.push(other);
    store.insert_ledger(&rows).await.unwrap();
    let slots = count(&store, "SELECT COUNT(*) FROM ledger_slots").await;
    assert_eq!(
        slots, 4,
        "three classes at `now` and the minute of the ended row"
    );

    let jtis = |v: Vec<super::SessionRow>| v.into_iter().map(|s| s.jti).collect::<Vec<_>>();
    let sessions = jtis(store.sessions("app", &sub, now).await.unwrap());
    assert_eq!(
        sessions,
        [
            row(3, 0, None).jti,
            row(2, 0, None).jti,
            row(1, 0, None).jti
        ]
    );
    assert_eq!(
        store
            .live_token_counts("app", &["kid".to_owned()], now)
            .await
            .unwrap(),
        (3, 1)
    );
    // An hour on, the minute-slot row has expired; its refresh-token sibling has not.
    let later = now + 3_600;
    let sessions = jtis(store.sessions("app", &sub, later).await.unwrap());
    assert_eq!(sessions, [row(3, 0, None).jti, row(2, 0, None).jti]);

    // The purge at `now` takes the ended row and its minute, and nothing else.
    assert_eq!(store.purge_expired(now).await.unwrap(), 1);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM ledger_slots").await, 3);
    // Two hours on, the minute slot of `now` is dropped with its rows.
    assert_eq!(store.purge_expired(now + 7_200).await.unwrap(), 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM ledger_slots").await, 2);
    // A late row in that minute (a replica's clock behind) records it again.
    let mut late = live(6, 9_000, None);
    late.exp = now + 7_000;
    late.iat = now + 1;
    store.insert_ledger(&[late]).await.unwrap();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM ledger_slots").await, 3);
    let sessions = jtis(store.sessions("app", &sub, now + 6_000).await.unwrap());
    assert_eq!(
        sessions,
        [
            row(6, 0, None).jti,
            row(3, 0, None).jti,
            row(2, 0, None).jti
        ]
    );

    let mut tx = store.begin().await.unwrap();
    assert!(store.delete_app(&mut tx, "app").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(count(&store, "SELECT COUNT(*) FROM tokens").await, 0);
}

/// A key's and an app's live counts: a subject with tokens from two keys counts once,
/// expired tokens and other apps' tokens not at all; one app's figure matches its line in
/// the all-apps figures; a family's unexpired tokens are exactly the ones found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counts_and_family_tokens() {
    let (_dir, store) = scratch_store().await;
    let now = 2_000_000_000;
    let mut rows = Vec::new();
    for i in 0..30 {
        let mut r = row(i, now + 100, None);
        r.kid = if i % 2 == 0 { "k1" } else { "k2" }.into();
        r.family = (i % 10 == 0).then(|| "fam".to_owned());
        rows.push(r);
    }
    let mut expired = row(100, now - 1, None);
    expired.family = Some("fam".into());
    let mut other = row(101, now + 100, None);
    other.app_id = "other".into();
    other.kid = "k1".into();
    rows.extend([expired, other]);
    store.insert_ledger(&rows).await.unwrap();

    let kids = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // Subjects are i % 7: both keys signed for all seven.
    assert_eq!(
        store
            .live_token_counts("app", &kids(&["k1"]), now)
            .await
            .unwrap(),
        (15, 7)
    );
    assert_eq!(
        store
            .live_token_counts("app", &kids(&["k1", "k2"]), now)
            .await
            .unwrap(),
        (30, 7)
    );
    assert_eq!(
        store.live_token_counts("app", &[], now).await.unwrap(),
        (0, 0)
    );
    let one = store
        .live_token_counts_per_app(Some("app"), now)
        .await
        .unwrap();
    let all = store.live_token_counts_per_app(None, now).await.unwrap();
    assert_eq!(one.get("app"), Some(&30));
    assert_eq!(all.get("app"), Some(&30));
    assert_eq!(all.get("other"), Some(&1));

    let mut tx = store.begin().await.unwrap();
    let mut family = store.revoke_family(&mut tx, "fam", now).await.unwrap();
    tx.commit().await.unwrap();
    family.sort();
    let want: Vec<(String, i64)> = [0, 10, 20]
        .iter()
        .map(|i| (row(*i, 0, None).jti, now + 100))
        .collect();
    assert_eq!(family, want);
}
