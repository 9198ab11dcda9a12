//! The token ledger: one row per issued JWT, its slot and subject keys, and the lookups by
//! app, key and subject.

use sqlx::Row as _;

use crate::store::{Dialect, Store, StoreError, Tx, opt_i64};

/// Rows per multi-row ledger `INSERT`.
const LEDGER_CHUNK: usize = 100;

/// Tokens of app `$1` that verify at time `$2` given the app cut-off `$3` ('' for none).
pub(super) const LIVE: &str = concat!(
    "t.slot IN ",
    ledger_slots!("$2"),
    " AND t.app_key = ",
    app_key_of!("$1"),
    " AND t.app_id = $1 AND t.exp > $2 AND t.jti >= $3 \
    AND t.kid IN (SELECT k.kid FROM keys k WHERE k.app_id = $1 AND k.state IN ('next', 'current', 'previous')) \
    AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti)"
);

/// A subject's sessions (see [`Store::sessions`]); `$4` is the subject's [`sub_key`].
pub(super) const SESSIONS: &str = concat!(
    "SELECT t.jti, t.kid, t.iat, t.exp, t.refresh_exp, t.meta FROM tokens t WHERE t.slot IN ",
    ledger_slots!("$3"),
    " AND t.app_key = ",
    app_key_of!("$1"),
    " AND t.sub_key = $4 AND t.app_id = $1 AND t.sub_sha256 = $2 \
    AND (t.exp > $3 OR COALESCE(t.refresh_exp, 0) > $3) \
    AND NOT EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti) ORDER BY t.jti DESC"
);

/// Per-key live counts of an app (see [`Store::live_tokens_by_kid`]).
pub(super) const LIVE_BY_KID: &str =
    "SELECT t.kid, COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE ";

/// Live counts of an app, all keys together (see [`Store::live_tokens_of_app`]).
pub(super) const LIVE_OF_APP: &str =
    "SELECT COUNT(*) AS n, COUNT(DISTINCT t.sub_sha256) AS s FROM tokens t WHERE ";

/// Unexpired tokens of one app.
pub(super) const APP_UNEXPIRED: &str = concat!(
    "SELECT app_id, COUNT(*) AS n FROM tokens WHERE slot IN ",
    ledger_slots!("$2"),
    " AND app_key = ",
    app_key_of!("$1"),
    " AND app_id = $1 AND exp > $2 GROUP BY app_id"
);

/// Live tokens and distinct subjects of app `$1` at `$2` signed by any of `keys` kids (`$3`...).
pub(super) fn key_counts_sql(keys: usize) -> String {
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
pub(super) fn all_unexpired_sql(dialect: Dialect) -> String {
    let hint = match dialect {
        Dialect::Sqlite => " INDEXED BY tokens_exp_app",
        Dialect::Postgres => "",
    };
    format!("SELECT app_id, COUNT(*) AS n FROM tokens{hint} WHERE exp > $1 GROUP BY app_id")
}

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

impl Store {
    /// Append rows to the ledger in one transaction.
    ///
    /// The rows' slots are recorded in `ledger_slots` first, in the same transaction, so a
    /// lookup that lists the live slots finds every committed row; a slot this process has
    /// already recorded with a late enough expiry is not written again. On SQLite the
    /// transaction runs on the ledger's own connection ([`crate::store::LEDGER_CACHE_KIB`]).
    ///
    /// # Errors
    /// Database failures (nothing is written then).
    pub async fn insert_ledger(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (slots, mut wanted) = ledger_slots_of(rows);
        {
            let known = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            wanted.retain(|slot, until| known.get(slot).is_none_or(|k| k < until));
        }
        if wanted.is_empty() && rows.len() <= LEDGER_CHUNK {
            // The common batch under load: one statement, atomic on its own, so no BEGIN and
            // COMMIT round trips (each a hand-off to SQLite's connection thread and back:
            // about a third of an ES256 token's server CPU went to the ledger).
            self.ledger_insert(rows, &slots)
                .execute(&self.ledger)
                .await?;
        } else {
            let mut tx = self.begin_on(&self.ledger).await?;
            self.write_ledger(&mut tx, rows, &slots, &wanted).await?;
            tx.commit().await?;
        }
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
        let (slots, wanted) = ledger_slots_of(rows);
        self.write_ledger(tx, rows, &slots, &wanted).await
    }

    /// Write `rows` (with their `slots`) and the `wanted` slot records inside `tx`.
    async fn write_ledger(
        &self,
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
        for (chunk, chunk_slots) in rows.chunks(LEDGER_CHUNK).zip(slots.chunks(LEDGER_CHUNK)) {
            self.ledger_insert(chunk, chunk_slots)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// One multi-row `INSERT` of `chunk` (at most [`LEDGER_CHUNK`] rows) with their slots.
    fn ledger_insert<'q>(
        &self,
        chunk: &'q [LedgerRow],
        chunk_slots: &'q [i64],
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        // SQLite gets anonymous `?` placeholders: sqlx asks SQLite for each numbered one's
        // name, which SQLite finds by walking the statement's list of names, so a chunk's
        // 1,400 `$n` cost ~10^6 steps (half the CPU of a bulk fill); `?` binds in order.
        let anonymous = self.dialect == Dialect::Sqlite;
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
                if anonymous {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${}", b + c));
                }
            }
            // The app's key, looked up by its id (`app_key_of!` on a placeholder counted
            // at run time): the row's second value, bound once more when anonymous.
            if anonymous {
                sql.push_str(", (SELECT a.ledger_key FROM apps a WHERE a.id = ?))");
            } else {
                sql.push_str(&format!(
                    ", (SELECT a.ledger_key FROM apps a WHERE a.id = ${}))",
                    b + 2
                ));
            }
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
            if anonymous {
                q = q.bind(&r.app_id);
            }
        }
        q
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
}

/// Each row's slot, and the `until` each touched slot needs (rounded up).
fn ledger_slots_of(rows: &[LedgerRow]) -> (Vec<i64>, std::collections::BTreeMap<i64, i64>) {
    let slots: Vec<i64> = rows
        .iter()
        .map(|r| ledger_slot(r.iat, ledger_until(r)))
        .collect();
    let mut wanted = std::collections::BTreeMap::<i64, i64>::new();
    for (r, slot) in rows.iter().zip(&slots) {
        let rounded = (ledger_until(r) + SLOT_UNTIL_ROUNDING - 1).div_euclid(SLOT_UNTIL_ROUNDING)
            * SLOT_UNTIL_ROUNDING;
        let e = wanted.entry(*slot).or_insert(rounded);
        *e = (*e).max(rounded);
    }
    (slots, wanted)
}
