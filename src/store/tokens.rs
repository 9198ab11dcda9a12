//! The token ledger, refresh tokens, the jti deny-list and subject cut-offs.

use sqlx::Row as _;

use super::{Dialect, Store, StoreError, Tx, opt_i64};

/// Tokens of app `$1` that verify at time `$2` given the app cut-off `$3` ('' for none).
const LIVE: &str = concat!(
    "t.slot IN ",
    ledger_slots!("$2"),
    " AND t.app_key = ",
    app_key_of!("$1"),
    " AND t.app_id = $1 AND t.exp > $2 AND t.jti >= $3 \
    AND t.kid IN (SELECT k.kid FROM keys k WHERE k.app_id = $1 AND k.state IN ('next', 'current', 'previous')) \
    AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti)"
);

/// A subject's sessions (see [`Store::sessions`]); `$4` is the subject's [`sub_key`].
const SESSIONS: &str = concat!(
    "SELECT t.jti, t.kid, t.iat, t.exp, t.refresh_exp, t.meta FROM tokens t WHERE t.slot IN ",
    ledger_slots!("$3"),
    " AND t.app_key = ",
    app_key_of!("$1"),
    " AND t.sub_key = $4 AND t.app_id = $1 AND t.sub_sha256 = $2 \
    AND (t.exp > $3 OR COALESCE(t.refresh_exp, 0) > $3) \
    AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti) ORDER BY t.jti DESC"
);

/// Per-key live counts of an app (see [`Store::live_tokens_by_kid`]).
const LIVE_BY_KID: &str =
    "SELECT t.kid, COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE ";

/// Live counts of an app, all keys together (see [`Store::live_tokens_of_app`]).
const LIVE_OF_APP: &str =
    "SELECT COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE ";

/// Unexpired tokens of one app.
const APP_UNEXPIRED: &str = concat!(
    "SELECT app_id, COUNT(*) AS n FROM tokens WHERE slot IN ",
    ledger_slots!("$2"),
    " AND app_key = ",
    app_key_of!("$1"),
    " AND app_id = $1 AND exp > $2 GROUP BY app_id"
);

/// A subject's refresh tokens.
const SUBJECT_REFRESH_REVOKE: &str = "UPDATE refresh_tokens SET revoked_at = $1 \
    WHERE app_id = $2 AND sub_sha256 = $3 AND revoked_at IS NULL";

/// An app's refresh tokens.
const APP_REFRESH_REVOKE: &str =
    "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL";

/// Refresh tokens issued with the access tokens one key of an app signed.
const KEY_REFRESH_REVOKE: &str = concat!(
    "UPDATE refresh_tokens SET revoked_at = $1 WHERE app_id = $2 AND revoked_at IS NULL \
    AND jti IN (SELECT jti FROM tokens WHERE slot IN ",
    ledger_slots!("$1"),
    " AND app_key = ",
    app_key_of!("$2"),
    " AND app_id = $2 AND kid = $3)"
);

/// Unexpired access tokens of a refresh family.
const FAMILY_TOKENS: &str = "SELECT jti, exp FROM tokens WHERE family = $1 AND exp > $2";

/// Live tokens and distinct subjects of app `$1` at `$2` signed by any of `keys` kids (`$3`...).
fn key_counts_sql(keys: usize) -> String {
    let placeholders: Vec<String> = (0..keys).map(|i| format!("${}", i + 3)).collect();
    format!(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT sub_sha256) AS s FROM tokens \
         WHERE slot IN {} AND app_key = {} AND app_id = $1 AND exp > $2 AND kid IN ({})",
        ledger_slots!("$2"),
        app_key_of!("$1"),
        placeholders.join(", ")
    )
}

/// Unexpired tokens per app, every app. SQLite's planner, without statistics, would rather
/// walk `tokens_slot_app_sub` for the grouping and look every row up (3x slower at a million live
/// rows than reading `(exp, app_id)` alone), hence `INDEXED BY` there.
fn all_unexpired_sql(dialect: Dialect) -> String {
    let hint = match dialect {
        Dialect::Sqlite => " INDEXED BY tokens_exp_app",
        Dialect::Postgres => "",
    };
    format!("SELECT app_id, COUNT(*) AS n FROM tokens{hint} WHERE exp > $1 GROUP BY app_id")
}

/// One purge batch of `table`: up to `$2` rows matching `expired` at `$1`, by `key`.
fn purge_sql(table: &str, key: &str, expired: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {expired} LIMIT $2)"
    )
}

/// What the purge deletes, per table: `(table, key, expired at $1)`.
const PURGED: [(&str, &str, &str); 4] = [
    (
        "tokens",
        "jti",
        "exp <= $1 AND COALESCE(refresh_exp, 0) <= $1",
    ),
    ("denied_jti", "jti", "exp <= $1"),
    ("refresh_tokens", "token_sha256", "exp <= $1"),
    ("subject_cutoffs", "app_id, sub_sha256", "expires_at <= $1"),
];

/// The classes of ledger slots (migration 0006): `(longest lifetime, width)` in seconds. A
/// row's slot is the start of the period of its class that holds its `iat`, plus the class's
/// number (so that slots of different classes never share a value). Short-lived rows, the
/// bulk, go into minutes: every new entry of `tokens_slot_app_sub` lands in the current
/// minute's subtree, which stays small and in memory however large the ledger grows. Longer
/// lives take wider slots, so that the slots still holding live rows, which a lookup by app
/// seeks one by one, stay few: at most ~120 minutes, ~48 hours and ~366 days.
const SLOT_CLASSES: [(i64, i64); 3] = [(7_200, 60), (172_800, 3_600), (i64::MAX, 86_400)];

/// The expiry recorded in `ledger_slots` is rounded up to this, so that a slot's row changes
/// about once a minute, not with every ledger write.
const SLOT_UNTIL_ROUNDING: i64 = 60;

/// When a ledger row may be purged: the later of its expiry and its refresh token's.
fn ledger_until(r: &LedgerRow) -> i64 {
    r.exp.max(r.refresh_exp.unwrap_or(0))
}

/// A ledger row's slot (see [`SLOT_CLASSES`]); the SQL of migration 0006 computes the same
/// for the rows it found.
pub(crate) fn ledger_slot(iat: i64, until: i64) -> i64 {
    let lifetime = until - iat;
    let mut class = 0;
    while class + 1 < SLOT_CLASSES.len() && lifetime > SLOT_CLASSES[class].0 {
        class += 1;
    }
    let width = SLOT_CLASSES[class].1;
    iat - iat.rem_euclid(width) + class as i64
}

/// Slots whose every row has ended; run after the ledger's own purge.
const PURGE_SLOTS: &str = "DELETE FROM ledger_slots WHERE until <= $1";

/// A subject digest's key in `tokens_slot_app_sub` (migration 0005; 0006 put the slot in
/// front): its first 7 hex digits as a number, so that the index holds two small integers an entry instead of two strings.
/// Queries still compare the whole digest on the row. `None` for anything that is not a
/// lowercase hex digest (no ledger row holds one).
pub(crate) fn sub_key(sub_sha256: &str) -> Option<i64> {
    let head = sub_sha256.get(..7)?;
    if !head
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    i64::from_str_radix(head, 16).ok()
}

/// One issued JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// Token id (ULID).
    pub jti: String,
    /// App.
    pub app_id: String,
    /// Signing key.
    pub kid: String,
    /// SHA-256 (hex) of `sub`, when the token has one.
    pub sub_sha256: Option<String>,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Refresh family, when issued with a refresh token.
    pub family: Option<String>,
    /// Expiry of the refresh token issued with it.
    pub refresh_exp: Option<i64>,
    /// Client metadata (JSON), e.g. JWTPlus `ip` and `useragent`.
    pub meta: Option<String>,
    /// Its Token Status List entry, when its app publishes lists.
    pub status: Option<StatusEntry>,
}

/// Where a token's status bits are: one list of its app, one index for the access token and
/// one for the refresh JWT issued with it (JWTPlus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusEntry {
    /// The list (`status_lists.id`, not the number in its URI).
    pub list: i64,
    /// The access token's index.
    pub idx: i64,
    /// The refresh JWT's index.
    pub refresh_idx: Option<i64>,
}

/// A live session as listed for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Token id.
    pub jti: String,
    /// Signing key.
    pub kid: String,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Refresh-token expiry.
    pub refresh_exp: Option<i64>,
    /// Client metadata (JSON).
    pub meta: Option<String>,
}

/// A refresh token as stored (the token itself only as a digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    /// SHA-256 (hex) of the token.
    pub token_sha256: String,
    /// App.
    pub app_id: String,
    /// Family: every refresh token descending from one issuance.
    pub family: String,
    /// The access token issued with it.
    pub jti: String,
    /// SHA-256 of the subject.
    pub sub_sha256: Option<String>,
    /// The caller's claims, JSON, to re-issue.
    pub claims: String,
    /// Expiry.
    pub exp: i64,
    /// When it was exchanged.
    pub used_at: Option<i64>,
    /// When its family was revoked.
    pub revoked_at: Option<i64>,
}

/// Rows one purge statement deletes at most.
pub(crate) const PURGE_BATCH: i64 = 5_000;

/// Write `rows` (with their `slots`) and the `wanted` slot records inside `tx`.
async fn write_ledger(
    tx: &mut Tx,
    rows: &[LedgerRow],
    slots: &[i64],
    wanted: &std::collections::BTreeMap<i64, i64>,
) -> Result<(), StoreError> {
    // In slot order: PostgreSQL replicas writing the same slots lock them in one order.
    for (slot, until) in wanted {
        sqlx::query(
            "INSERT INTO ledger_slots (slot, until) VALUES ($1, $2) ON CONFLICT (slot) \
             DO UPDATE SET until = excluded.until WHERE ledger_slots.until < excluded.until",
        )
        .bind(slot)
        .bind(until)
        .execute(&mut **tx)
        .await?;
    }
    // Multi-row VALUES in chunks keeps round trips low under load.
    for (chunk, chunk_slots) in rows.chunks(100).zip(slots.chunks(100)) {
        let mut sql = String::from(
            "INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp, family, refresh_exp, meta, \
             sub_key, slot, status_list, status_idx, refresh_idx, app_key) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 14;
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 1..=14 {
                if c > 1 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", b + c));
            }
            // The app's key, looked up by its id (the row's second value).
            // (`app_key_of!`, on a placeholder counted at run time.)
            sql.push_str(&format!(
                ", (SELECT a.ledger_key FROM apps a WHERE a.id = ${}))",
                b + 2
            ));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (r, slot) in chunk.iter().zip(chunk_slots) {
            q = q
                .bind(&r.jti)
                .bind(&r.app_id)
                .bind(&r.kid)
                .bind(&r.sub_sha256)
                .bind(r.iat)
                .bind(r.exp)
                .bind(&r.family)
                .bind(r.refresh_exp)
                .bind(&r.meta)
                .bind(r.sub_sha256.as_deref().and_then(sub_key))
                .bind(slot)
                .bind(r.status.map(|s| s.list))
                .bind(r.status.map(|s| s.idx))
                .bind(r.status.and_then(|s| s.refresh_idx));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Append rows to the ledger in one transaction.
    ///
    /// The rows' slots are recorded in `ledger_slots` first, in the same transaction, so a
    /// lookup that lists the live slots finds every committed row; a slot this process has
    /// already recorded with a late enough expiry is not written again. On SQLite the
    /// transaction runs on the ledger's own connection ([`super::LEDGER_CACHE_KIB`]).
    ///
    /// # Errors
    /// Database failures (nothing is written then).
    pub async fn insert_ledger(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let slots: Vec<i64> = rows
            .iter()
            .map(|r| ledger_slot(r.iat, ledger_until(r)))
            .collect();
        let mut wanted = std::collections::BTreeMap::<i64, i64>::new();
        for (r, slot) in rows.iter().zip(&slots) {
            let rounded = (ledger_until(r) + SLOT_UNTIL_ROUNDING - 1)
                .div_euclid(SLOT_UNTIL_ROUNDING)
                * SLOT_UNTIL_ROUNDING;
            let e = wanted.entry(*slot).or_insert(rounded);
            *e = (*e).max(rounded);
        }
        {
            let known = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            wanted.retain(|slot, until| known.get(slot).is_none_or(|k| k < until));
        }
        let mut tx = self.begin_on(&self.ledger).await?;
        write_ledger(&mut tx, rows, &slots, &wanted).await?;
        tx.commit().await?;
        if !wanted.is_empty() {
            let mut known = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (slot, until) in wanted {
                let e = known.entry(slot).or_insert(until);
                *e = (*e).max(until);
            }
            // Slots whose rows have all expired may be purged (and written again if a late
            // row comes): forget them.
            if known.len() > 1_024 {
                let oldest = rows.iter().map(|r| r.iat).min().unwrap_or(0);
                known.retain(|_, until| *until > oldest);
            }
        }
        Ok(())
    }

    /// [`Self::insert_ledger`] inside the caller's transaction (`migrate jwtplus` writes an
    /// app's sessions with the app). The slots are written whatever this process recorded,
    /// and not recorded: the transaction may still roll back.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_ledger_tx(
        &self,
        tx: &mut Tx,
        rows: &[LedgerRow],
    ) -> Result<(), StoreError> {
        let slots: Vec<i64> = rows
            .iter()
            .map(|r| ledger_slot(r.iat, ledger_until(r)))
            .collect();
        let mut wanted = std::collections::BTreeMap::<i64, i64>::new();
        for (r, slot) in rows.iter().zip(&slots) {
            let rounded = (ledger_until(r) + SLOT_UNTIL_ROUNDING - 1)
                .div_euclid(SLOT_UNTIL_ROUNDING)
                * SLOT_UNTIL_ROUNDING;
            let e = wanted.entry(*slot).or_insert(rounded);
            *e = (*e).max(rounded);
        }
        write_ledger(tx, rows, &slots, &wanted).await
    }

    /// One ledger row.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ledger_row(&self, jti: &str) -> Result<Option<LedgerRow>, StoreError> {
        let row = sqlx::query(
            "SELECT jti, app_id, kid, sub_sha256, iat, exp, family, refresh_exp, meta, status_list, \
             status_idx, refresh_idx FROM tokens WHERE jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LedgerRow {
                jti: r.try_get("jti")?,
                app_id: r.try_get("app_id")?,
                kid: r.try_get("kid")?,
                sub_sha256: r.try_get("sub_sha256")?,
                iat: r.try_get("iat")?,
                exp: r.try_get("exp")?,
                family: r.try_get("family")?,
                refresh_exp: opt_i64(&r, "refresh_exp")?,
                meta: r.try_get("meta")?,
                status: match (opt_i64(&r, "status_list")?, opt_i64(&r, "status_idx")?) {
                    (Some(list), Some(idx)) => Some(StatusEntry {
                        list,
                        idx,
                        refresh_idx: opt_i64(&r, "refresh_idx")?,
                    }),
                    _ => None,
                },
            })
        })
        .transpose()
    }

    /// A subject's tokens that have not expired (or whose refresh token has not), newest
    /// first, excluding denied jtis.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sessions(
        &self,
        app_id: &str,
        sub_sha256: &str,
        now: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(SESSIONS)
            .bind(app_id)
            .bind(sub_sha256)
            .bind(now)
            .bind(sub_key(sub_sha256))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    jti: r.try_get("jti")?,
                    kid: r.try_get("kid")?,
                    iat: r.try_get("iat")?,
                    exp: r.try_get("exp")?,
                    refresh_exp: opt_i64(r, "refresh_exp")?,
                    meta: r.try_get("meta")?,
                })
            })
            .collect()
    }

    /// Live (unexpired) tokens of app `app_id` signed by any of `kids`, and their distinct
    /// subjects (a subject with tokens from two of the keys counts once).
    ///
    /// The ledger has no index by key (a per-key insertion point costs every issuance a page
    /// write once apps number in the thousands), so this reads the app's rows.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_token_counts(
        &self,
        app_id: &str,
        kids: &[String],
        now: i64,
    ) -> Result<(i64, i64), StoreError> {
        if kids.is_empty() {
            return Ok((0, 0));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(key_counts_sql(kids.len())))
            .bind(app_id)
            .bind(now);
        for kid in kids {
            q = q.bind(kid);
        }
        let r = q.fetch_one(&self.pool).await?;
        Ok((r.try_get("n")?, r.try_get("s")?))
    }

    /// Tokens of one app that still verify, per signing key: `(kid, tokens, subjects)`, for
    /// the blast-radius preview. "Still verify" means unexpired, not on the deny-list,
    /// issued at or after the app's cut-off `cutoff` (a ULID; tokens whose `jti` sorts
    /// before it are rejected) and signed by a published key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_tokens_by_kid(
        &self,
        app_id: &str,
        now: i64,
        cutoff: Option<&str>,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let sql = format!("{LIVE_BY_KID}{LIVE} GROUP BY t.kid");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app_id)
            .bind(now)
            .bind(cutoff.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("n")?, r.try_get("s")?)))
            .collect()
    }

    /// Tokens of one app that still verify (as in [`Self::live_tokens_by_kid`]) and their
    /// distinct subjects, all keys together.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_tokens_of_app(
        &self,
        app_id: &str,
        now: i64,
        cutoff: Option<&str>,
    ) -> Result<(i64, i64), StoreError> {
        let sql = format!("{LIVE_OF_APP}{LIVE}");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app_id)
            .bind(now)
            .bind(cutoff.unwrap_or(""))
            .fetch_one(&self.pool)
            .await?;
        Ok((r.try_get("n")?, r.try_get("s")?))
    }

    /// Unexpired tokens per app, for the app list: one app or (`None`) all of them.
    ///
    /// One app reads its own rows through `tokens_slot_app_sub`; all apps read only the
    /// `(exp, app_id)` index.
    ///
    /// # Errors
    /// Database failures.
    pub async fn live_token_counts_per_app(
        &self,
        app_id: Option<&str>,
        now: i64,
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let rows = match app_id {
            Some(id) => {
                sqlx::query(APP_UNEXPIRED)
                    .bind(id)
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(all_unexpired_sql(self.dialect)))
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| Ok((r.try_get("app_id")?, r.try_get("n")?)))
            .collect()
    }

    /// Put `jti` on the deny-list until `exp`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn deny_jti(
        &self,
        tx: &mut Tx,
        jti: &str,
        app_id: &str,
        exp: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO denied_jti (jti, app_id, exp) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(app_id)
            .bind(exp)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Every denied jti that has not expired: `(jti, app_id, exp)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn denied_jtis(&self, now: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT jti, app_id, exp FROM denied_jti WHERE exp > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("app_id")?, r.try_get("exp")?)))
            .collect()
    }

    /// Set a subject's cut-off (tokens of the subject with a lower jti are rejected).
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_subject_cutoff(
        &self,
        tx: &mut Tx,
        app_id: &str,
        sub_sha256: &str,
        cutoff: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO subject_cutoffs (app_id, sub_sha256, cutoff, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, sub_sha256) DO UPDATE SET cutoff = excluded.cutoff, expires_at = excluded.expires_at",
        )
        .bind(app_id)
        .bind(sub_sha256)
        .bind(cutoff)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every subject cut-off still in force: `(app_id, sub_sha256, cutoff)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn subject_cutoffs(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, sub_sha256, cutoff FROM subject_cutoffs WHERE expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("app_id")?,
                    r.try_get("sub_sha256")?,
                    r.try_get("cutoff")?,
                ))
            })
            .collect()
    }

    /// Revoke every refresh token of a subject (logout everywhere).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_subject_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        sub_sha256: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(SUBJECT_REFRESH_REVOKE)
            .bind(now)
            .bind(app_id)
            .bind(sub_sha256)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Revoke every refresh token of an app (flush, emergency rotation).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_app_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(APP_REFRESH_REVOKE)
            .bind(now)
            .bind(app_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Revoke the refresh tokens issued alongside access tokens that `kid` signed (a
    /// revoked key's sessions end with it).
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_key_refresh(
        &self,
        tx: &mut Tx,
        app_id: &str,
        kid: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(KEY_REFRESH_REVOKE)
            .bind(now)
            .bind(app_id)
            .bind(kid)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected())
    }

    /// Lock every row of a refresh family for the rest of `tx`, then report whether the
    /// token `token_sha256` (of that family) is still unrevoked.
    ///
    /// A refresh exchange calls this before storing its new refresh token, and reuse
    /// detection calls it before revoking the family, so the two serialise on the family's
    /// rows: the revocation (a later statement, with a later snapshot) sees the new token,
    /// or the exchange sees the revocation. On SQLite, `BEGIN IMMEDIATE` already
    /// serialises writers.
    ///
    /// # Errors
    /// Database failures.
    pub async fn lock_refresh_family(
        &self,
        tx: &mut Tx,
        family: &str,
        token_sha256: &str,
    ) -> Result<bool, StoreError> {
        sqlx::query("UPDATE refresh_tokens SET used_at = used_at WHERE family = $1")
            .bind(family)
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query(
            "SELECT 1 AS live FROM refresh_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(token_sha256)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.is_some())
    }

    /// Store a new refresh token.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_refresh(&self, tx: &mut Tx, r: &RefreshRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
        )
        .bind(&r.token_sha256)
        .bind(&r.app_id)
        .bind(&r.family)
        .bind(&r.jti)
        .bind(&r.sub_sha256)
        .bind(&r.claims)
        .bind(r.exp)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A refresh token by digest.
    ///
    /// # Errors
    /// Database failures.
    pub async fn refresh(
        &self,
        tx: &mut Tx,
        token_sha256: &str,
    ) -> Result<Option<RefreshRow>, StoreError> {
        let row = sqlx::query(
            "SELECT token_sha256, app_id, family, jti, sub_sha256, claims, exp, used_at, revoked_at \
             FROM refresh_tokens WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| {
            Ok(RefreshRow {
                token_sha256: r.try_get("token_sha256")?,
                app_id: r.try_get("app_id")?,
                family: r.try_get("family")?,
                jti: r.try_get("jti")?,
                sub_sha256: r.try_get("sub_sha256")?,
                claims: r.try_get("claims")?,
                exp: r.try_get("exp")?,
                used_at: opt_i64(&r, "used_at")?,
                revoked_at: opt_i64(&r, "revoked_at")?,
            })
        })
        .transpose()
    }

    /// Mark a refresh token used, if it was not yet (compare-and-swap).
    ///
    /// # Errors
    /// Database failures.
    pub async fn use_refresh(
        &self,
        tx: &mut Tx,
        token_sha256: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .bind(token_sha256)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Undo [`Self::use_refresh`] when no new pair could be issued.
    ///
    /// # Errors
    /// Database failures.
    pub async fn unuse_refresh(&self, token_sha256: &str) -> Result<(), StoreError> {
        self.unuse_refresh_on(&self.pool, token_sha256).await
    }

    /// Undo an exchange whose answer never reached the client: the new refresh token
    /// (`new_sha256`) is revoked and its access token denied, and the old one
    /// (`old_sha256`) can be used again, in one transaction, so the client's retry with
    /// the old token is an ordinary exchange, not a reuse that revokes the family.
    ///
    /// # Errors
    /// Database failures.
    pub async fn undo_exchange(
        &self,
        old_sha256: &str,
        new_sha256: Option<&str>,
        new_jti: &str,
        app_id: &str,
        new_exp: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if let Some(n) = new_sha256 {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE token_sha256 = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        self.deny_jti(&mut tx, new_jti, app_id, new_exp).await?;
        sqlx::query("UPDATE refresh_tokens SET used_at = NULL WHERE token_sha256 = $1 AND revoked_at IS NULL")
            .bind(old_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unuse_refresh_on(
        &self,
        pool: &sqlx::AnyPool,
        token_sha256: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE refresh_tokens SET used_at = NULL WHERE token_sha256 = $1 AND revoked_at IS NULL")
            .bind(token_sha256)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Revoke a whole refresh family; returns the access-token jtis issued in it with their
    /// expiry, so the caller can deny them.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_family(
        &self,
        tx: &mut Tx,
        family: &str,
        now: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family)
        .execute(&mut **tx)
        .await?;
        let rows = sqlx::query(FAMILY_TOKENS)
            .bind(family)
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("exp")?)))
            .collect()
    }

    /// Delete ledger, deny-list, refresh and cut-off rows past their expiry; returns the
    /// number of rows removed.
    ///
    /// Rows go in batches of `PURGE_BATCH` (5,000), each its own short statement: one `DELETE` of
    /// a million expired rows would hold SQLite's write lock (and grow the WAL) for seconds,
    /// stalling every issuance's ledger write behind it.
    ///
    /// # Errors
    /// Database failures (batches already deleted stay deleted).
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut n = 0;
        for (table, key, expired) in PURGED {
            let sql = purge_sql(table, key, expired);
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(now)
                    .bind(PURGE_BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                n += deleted;
                if deleted < u64::try_from(PURGE_BATCH).unwrap_or(u64::MAX) {
                    break;
                }
            }
        }
        // Every ledger row that ended by `now` is gone, so are the slots that held only such
        // rows (a few a minute; not counted as purged rows).
        sqlx::query(PURGE_SLOTS)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{
        APP_REFRESH_REVOKE, APP_UNEXPIRED, FAMILY_TOKENS, KEY_REFRESH_REVOKE, LIVE, LIVE_BY_KID,
        LIVE_OF_APP, LedgerRow, PURGE_BATCH, PURGE_SLOTS, PURGED, SESSIONS, SUBJECT_REFRESH_REVOKE,
        all_unexpired_sql, key_counts_sql, ledger_slot, purge_sql,
    };
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
    /// a backstop at [`super::super::WAL_BACKSTOP_FRAMES`], and one passive checkpoint copies
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
}
