//! The token ledger, refresh tokens, the jti deny-list and subject cut-offs.
//!
//! `ledger` holds the ledger, `refresh` the refresh families, `revocations` the
//! deny-list and subject cut-offs; the purge of all four tables is here.

use super::{Store, StoreError};

mod ledger;
mod refresh;
mod revocations;
#[cfg(test)]
mod tests;

pub use ledger::{LedgerRow, SessionRow, StatusEntry};
pub use refresh::{RefreshChild, RefreshRow};

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

/// Slots whose every row has ended; run after the ledger's own purge.
const PURGE_SLOTS: &str = "DELETE FROM ledger_slots WHERE until <= $1";

/// Rows one purge statement deletes at most.
pub(crate) const PURGE_BATCH: i64 = 5_000;

impl Store {
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
