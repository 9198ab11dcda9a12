//! Token Status Lists (issue 24): the lists of each app, the chunks of indexes handed to
//! replicas, the ledger's truth about each entry, and the last signed list.

use sqlx::Row as _;

use super::{Store, StoreError, opt_i64};

/// Odd stride of the chunk permutation (see migration 0011): with a power-of-two number
/// of chunks, `k -> (k * STRIDE + seed) mod chunks` visits every chunk once.
const STRIDE: i64 = 2_654_435_761;

/// One list as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListRow {
    /// Global id (what ledger rows point at).
    pub id: i64,
    /// App.
    pub app_id: String,
    /// Number in the app's URIs (`/apps/{id}/statuslists/{n}`).
    pub n: i64,
    /// Entries (one bit each).
    pub bits: i64,
    /// Latest time a token of the list may still be valid.
    pub until: i64,
    /// Chunks handed out so far.
    pub handed: i64,
    /// Entries per chunk.
    pub chunk: i64,
    /// The last signed status list token.
    pub token: Option<String>,
    /// SHA-256 (hex) of the bits that token carries.
    pub lst_sha256: Option<String>,
    /// When it was signed.
    pub signed_at: Option<i64>,
}

/// A range of indexes of one list, handed to one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChunk {
    /// The list's global id.
    pub list: i64,
    /// The list's number.
    pub n: i64,
    /// First index.
    pub start: i64,
    /// Number of indexes.
    pub len: i64,
}

/// One ledger row of a list, with what the revocation state says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFacts {
    /// Token id.
    pub jti: String,
    /// Signing key.
    pub kid: String,
    /// Subject digest.
    pub sub_sha256: Option<String>,
    /// The access token's index.
    pub idx: i64,
    /// The refresh JWT's index.
    pub refresh_idx: Option<i64>,
    /// The jti is deny-listed.
    pub denied: bool,
    /// The refresh token issued with it was used or revoked.
    pub refresh_spent: bool,
}

/// What the app view shows of one list: no token, only its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListFigures {
    /// App.
    pub app_id: String,
    /// Number in the app's URIs.
    pub n: i64,
    /// Entries (one bit each).
    pub bits: i64,
    /// When its token was last signed (never: `None`).
    pub signed_at: Option<i64>,
    /// Bytes of that token.
    pub token_bytes: Option<i64>,
}

const LIST_COLS: &str =
    "id, app_id, n, bits, until, handed, chunk, token, lst_sha256, signed_at FROM status_lists";

fn list_from_row(r: &sqlx::any::AnyRow) -> Result<StatusListRow, StoreError> {
    Ok(StatusListRow {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        n: r.try_get("n")?,
        bits: r.try_get("bits")?,
        until: r.try_get("until")?,
        handed: r.try_get("handed")?,
        chunk: r.try_get("chunk")?,
        token: r.try_get("token")?,
        lst_sha256: r.try_get("lst_sha256")?,
        signed_at: opt_i64(r, "signed_at")?,
    })
}

/// The ledger rows of list `$1` that are still valid at `$2` (their access or refresh
/// token), with the per-row revocation facts; cut-offs and key states are per app and
/// joined in memory.
const FACTS: &str = "SELECT t.jti, t.kid, t.sub_sha256, t.status_idx, t.refresh_idx, \
    CASE WHEN EXISTS (SELECT 1 FROM denied_jti d WHERE d.jti = t.jti) THEN 1 ELSE 0 END AS denied, \
    CASE WHEN t.refresh_idx IS NULL THEN 0 ELSE COALESCE((SELECT MAX(CASE WHEN r.used_at IS NULL \
    AND r.revoked_at IS NULL THEN 0 ELSE 1 END) FROM refresh_tokens r WHERE r.family = t.family \
    AND r.jti = t.jti), 0) END AS refresh_spent \
    FROM tokens t WHERE t.status_list = $1 AND (t.exp > $2 OR COALESCE(t.refresh_exp, 0) > $2)";

impl Store {
    /// Hand out the next chunk of `app_id`'s open list, covering tokens valid until `until`.
    /// With no open list, a list whose tokens have all expired is reused (its number kept),
    /// else a new one of `bits` entries (a power of two) in chunks of `chunk` is made.
    ///
    /// # Errors
    /// Database failures; an app that is gone.
    pub async fn reserve_status_chunk(
        &self,
        app_id: &str,
        now: i64,
        until: i64,
        bits: i64,
        chunk: i64,
        seed: i64,
    ) -> Result<StatusChunk, StoreError> {
        let mut tx = self.begin().await?;
        if !self.lock_app(&mut tx, app_id).await? {
            return Err(StoreError::corrupt(format!("app {app_id} is gone")));
        }
        let open = sqlx::query(
            "SELECT id, n, bits, chunk, handed, seed FROM status_lists \
             WHERE app_id = $1 AND handed * chunk < bits ORDER BY n LIMIT 1",
        )
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, n, list_bits, list_chunk, handed, list_seed) = match open {
            Some(r) => (
                r.try_get::<i64, _>("id")?,
                r.try_get::<i64, _>("n")?,
                r.try_get::<i64, _>("bits")?,
                r.try_get::<i64, _>("chunk")?,
                r.try_get::<i64, _>("handed")?,
                r.try_get::<i64, _>("seed")?,
            ),
            None => {
                let spent = sqlx::query(
                    "SELECT id, n FROM status_lists WHERE app_id = $1 AND until <= $2 \
                     ORDER BY n LIMIT 1",
                )
                .bind(app_id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                match spent {
                    Some(r) => {
                        let id: i64 = r.try_get("id")?;
                        // Every token of the list has expired: its entries are free again.
                        // The old signed list goes too; it described other tokens.
                        sqlx::query(
                            "UPDATE status_lists SET bits = $1, chunk = $2, handed = 0, seed = $3, \
                             until = $4, token = NULL, lst_sha256 = NULL, signed_at = NULL \
                             WHERE id = $5",
                        )
                        .bind(bits)
                        .bind(chunk)
                        .bind(seed)
                        .bind(until)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        (id, r.try_get("n")?, bits, chunk, 0, seed)
                    }
                    None => {
                        let n: i64 = sqlx::query(
                            "SELECT COALESCE(MAX(n), 0) + 1 AS n FROM status_lists WHERE app_id = $1",
                        )
                        .bind(app_id)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                        let id: i64 = sqlx::query(
                            "INSERT INTO status_lists (app_id, n, bits, chunk, handed, seed, until, \
                             created_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7) RETURNING id",
                        )
                        .bind(app_id)
                        .bind(n)
                        .bind(bits)
                        .bind(chunk)
                        .bind(seed)
                        .bind(until)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("id")?;
                        (id, n, bits, chunk, 0, seed)
                    }
                }
            }
        };
        sqlx::query(
            "UPDATE status_lists SET handed = handed + 1, \
             until = CASE WHEN until < $1 THEN $1 ELSE until END WHERE id = $2",
        )
        .bind(until)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let chunks = (list_bits / list_chunk.max(1)).max(1);
        let k = handed
            .wrapping_mul(STRIDE)
            .wrapping_add(list_seed)
            .rem_euclid(chunks);
        Ok(StatusChunk {
            list: id,
            n,
            start: k * list_chunk,
            len: list_chunk,
        })
    }

    /// The lists of `app_id` (every app: `None`), by app and number.
    ///
    /// # Errors
    /// Database failures.
    pub async fn status_lists(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<StatusListRow>, StoreError> {
        let rows = match app_id {
            Some(a) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {LIST_COLS} WHERE app_id = $1 ORDER BY n"
                )))
                .bind(a)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {LIST_COLS} ORDER BY app_id, n"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(list_from_row).collect()
    }

    /// The figures of the lists of `app_id` (every app: `None`), by app and number; the
    /// tokens themselves stay in the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn status_list_figures(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<StatusListFigures>, StoreError> {
        const COLS: &str = "SELECT app_id, n, bits, signed_at, \
            CAST(LENGTH(token) AS BIGINT) AS token_bytes FROM status_lists";
        let rows = match app_id {
            Some(a) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{COLS} WHERE app_id = $1 ORDER BY n"
                )))
                .bind(a)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{COLS} ORDER BY app_id, n")))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(StatusListFigures {
                    app_id: r.try_get("app_id")?,
                    n: r.try_get("n")?,
                    bits: r.try_get("bits")?,
                    signed_at: opt_i64(r, "signed_at")?,
                    token_bytes: opt_i64(r, "token_bytes")?,
                })
            })
            .collect()
    }

    /// The apps that issued the tokens `jtis` (those the ledger knows), to rebuild only
    /// their lists after a deny-listing.
    ///
    /// # Errors
    /// Database failures.
    pub async fn apps_of_jtis(
        &self,
        jtis: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut apps = std::collections::HashSet::new();
        for part in jtis.chunks(500) {
            let marks: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT DISTINCT app_id FROM tokens WHERE status_list IS NOT NULL AND jti IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for j in part {
                q = q.bind(j);
            }
            for r in q.fetch_all(&self.pool).await? {
                apps.insert(r.try_get("app_id")?);
            }
        }
        Ok(apps)
    }

    /// List `n` of `app_id`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn status_list(
        &self,
        app_id: &str,
        n: i64,
    ) -> Result<Option<StatusListRow>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LIST_COLS} WHERE app_id = $1 AND n = $2"
        )))
        .bind(app_id)
        .bind(n)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(list_from_row)
        .transpose()
    }

    /// The entries of list `list` still valid at `now`, with their revocation facts.
    ///
    /// # Errors
    /// Database failures.
    pub async fn status_facts(&self, list: i64, now: i64) -> Result<Vec<StatusFacts>, StoreError> {
        let rows = sqlx::query(FACTS)
            .bind(list)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StatusFacts {
                    jti: r.try_get("jti")?,
                    kid: r.try_get("kid")?,
                    sub_sha256: r.try_get("sub_sha256")?,
                    idx: r.try_get("status_idx")?,
                    refresh_idx: opt_i64(r, "refresh_idx")?,
                    denied: r.try_get::<i64, _>("denied")? != 0,
                    refresh_spent: r.try_get::<i64, _>("refresh_spent")? != 0,
                })
            })
            .collect()
    }

    /// An app's subject cut-offs: `(sub_sha256, cutoff)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn subject_cutoffs_of_app(
        &self,
        app_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT sub_sha256, cutoff FROM subject_cutoffs WHERE app_id = $1")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("sub_sha256")?, r.try_get("cutoff")?)))
            .collect()
    }

    /// Keys of an app and their states: `(kid, state)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn key_states_of_app(
        &self,
        app_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT kid, state FROM keys WHERE app_id = $1")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kid")?, r.try_get("state")?)))
            .collect()
    }

    /// Record a newly signed list, unless another replica recorded one since `seen`
    /// (the `signed_at` read before signing). Returns whether it was recorded.
    ///
    /// # Errors
    /// Database failures.
    pub async fn save_status_token(
        &self,
        list: i64,
        token: &str,
        lst_sha256: &str,
        signed_at: i64,
        seen: Option<i64>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE status_lists SET token = $1, lst_sha256 = $2, signed_at = $3 \
             WHERE id = $4 AND COALESCE(signed_at, -1) = $5",
        )
        .bind(token)
        .bind(lst_sha256)
        .bind(signed_at)
        .bind(list)
        .bind(seen.unwrap_or(-1))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
