//! Audit rows: append with a hash chain (in the change's own transaction), page through,
//! and store the HSM MACs that seal them.

use sqlx::Row as _;

use super::{Store, StoreError};

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Position in the chain (1, 2, 3, ...: dense, so a deletion shows).
    pub seq: i64,
    /// ULID.
    pub id: String,
    /// When (Unix seconds).
    pub at: i64,
    /// Who: `root`, `app:<id>`, `scheduler`, `reconciler`, `cli`, `anonymous`.
    pub actor: String,
    /// What (`key.rotate`, `token.revoke`, `auth.failure`, ...).
    pub action: String,
    /// On what (an app id, a kid, ...).
    pub target: String,
    /// `ok` or `denied` or an error code.
    pub outcome: String,
    /// The request that caused it (`X-Request-Id`), or empty.
    pub request_id: String,
    /// JSON details (never secrets).
    pub details: String,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this record's fields.
    pub hash: String,
}

/// What [`Store::audit_search`] matches; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// An app id: records about the app or any of its keys.
    pub app: Option<String>,
    /// Exact actor (`root`, `app:<id>`, `scheduler`, ...).
    pub actor: Option<String>,
    /// Exact action (`key.revoke`, `app.create`, ...).
    pub action: Option<String>,
}

/// The hash of a record given its predecessor's hash: SHA-256 (hex) of the JSON array of
/// every field, so no two different records serialise alike.
pub fn record_hash(r: &AuditRow) -> String {
    let canonical = serde_json::json!([
        r.prev_hash,
        r.seq,
        r.id,
        r.at,
        r.actor,
        r.action,
        r.target,
        r.outcome,
        r.request_id,
        r.details
    ])
    .to_string();
    crate::pubkey::hex(&<sha2::Sha256 as sha2::Digest>::digest(
        canonical.as_bytes(),
    ))
}

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn row(r: &sqlx::any::AnyRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        request_id: r.try_get("request_id")?,
        details: r.try_get("details")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

const COLS: &str =
    "seq, id, at, actor, action, target, outcome, request_id, details, prev_hash, hash";

impl Store {
    /// Append a record at the head of the chain in its own transaction (its `seq`,
    /// `prev_hash` and `hash` are filled in here). Changes append in their own transaction
    /// instead, with [`Self::append_audit_tx`].
    ///
    /// # Errors
    /// Database failures.
    pub async fn append_audit(&self, r: AuditRow) -> Result<AuditRow, StoreError> {
        let mut tx = self.begin().await?;
        let r = self.append_audit_tx(&mut tx, r).await?;
        tx.commit().await?;
        crate::metrics::audit_appended();
        Ok(r)
    }

    /// Append a record at the head of the chain inside `tx`, so that it commits (or not)
    /// with the change it describes. Appenders serialise on the chain head: on SQLite the
    /// write transaction already does; on PostgreSQL a transaction-scoped advisory lock,
    /// held until `tx` ends, so call this last, just before committing.
    ///
    /// # Errors
    /// Database failures.
    pub async fn append_audit_tx(
        &self,
        tx: &mut super::Tx,
        mut r: AuditRow,
    ) -> Result<AuditRow, StoreError> {
        if self.dialect == super::Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_HEAD_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
        (r.seq, r.prev_hash) = match head {
            Some(h) => (h.try_get::<i64, _>("seq")? + 1, h.try_get("hash")?),
            None => (1, GENESIS.to_owned()),
        };
        r.hash = record_hash(&r);
        sqlx::query(
            "INSERT INTO audit_log (seq, id, at, actor, action, target, outcome, request_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(r.seq)
        .bind(&r.id)
        .bind(r.at)
        .bind(&r.actor)
        .bind(&r.action)
        .bind(&r.target)
        .bind(&r.outcome)
        .bind(&r.request_id)
        .bind(&r.details)
        .bind(&r.prev_hash)
        .bind(&r.hash)
        .execute(&mut **tx)
        .await?;
        Ok(r)
    }

    /// Records with `seq > after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!("SELECT {COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// Records matching a filter, at most `limit`: newest first with `seq < cursor` when
    /// `desc` (no bound when `cursor` is 0), else oldest first with `seq > cursor`. `app`
    /// matches records whose target is the app or one of its keys; `actor` and `action`
    /// match exactly.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_search(
        &self,
        f: &AuditFilter,
        desc: bool,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let before = if desc { cursor } else { 0 };
        let after = if desc { 0 } else { cursor };
        let mut sql = format!("SELECT {COLS} FROM audit_log WHERE seq > $1");
        let mut n = 1;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if before > 0 {
            sql += &format!(" AND seq < {}", param());
        }
        if f.app.is_some() {
            let (a, b) = (param(), param());
            sql += &format!(
                " AND (target = {a} OR target IN (SELECT kid FROM keys WHERE app_id = {b}))"
            );
        }
        if f.actor.is_some() {
            sql += &format!(" AND actor = {}", param());
        }
        if f.action.is_some() {
            sql += &format!(" AND action = {}", param());
        }
        let order = if desc { "DESC" } else { "ASC" };
        sql += &format!(" ORDER BY seq {order} LIMIT {}", param());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after);
        if before > 0 {
            q = q.bind(before);
        }
        if let Some(a) = &f.app {
            q = q.bind(a.clone()).bind(a.clone());
        }
        if let Some(a) = &f.actor {
            q = q.bind(a.clone());
        }
        if let Some(a) = &f.action {
            q = q.bind(a.clone());
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(row).collect()
    }

    /// The newest record.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_head(&self) -> Result<Option<AuditRow>, StoreError> {
        let sql = format!("SELECT {COLS} FROM audit_log ORDER BY seq DESC LIMIT 1");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// The record at `seq`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_record(&self, seq: i64) -> Result<Option<AuditRow>, StoreError> {
        let sql = format!("SELECT {COLS} FROM audit_log WHERE seq = $1");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Store the HSM MACs (hex) of records, `(seq, mac)`, sealed at `at`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_audit_macs(
        &self,
        macs: &[(i64, String)],
        at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for (seq, mac) in macs {
            sqlx::query("INSERT INTO audit_macs (seq, mac, at) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING")
                .bind(seq)
                .bind(mac)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The MACs of records `from..=to`: `(seq, mac)`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_macs(&self, from: i64, to: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, mac FROM audit_macs WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("mac")?)))
            .collect()
    }

    /// The highest sealed record's seq (0 when none is).
    ///
    /// # Errors
    /// Database failures.
    pub async fn last_audit_mac(&self) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM audit_macs")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("s")?)
    }
}

/// PostgreSQL advisory lock serialising appends to the audit chain ("hsmaud").
const AUDIT_HEAD_LOCK: i64 = 0x6873_6d61_7564;
