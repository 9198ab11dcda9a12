//! The key store: the only module with SQL.
//!
//! One [`Store`], two engines (SQLite by default, PostgreSQL for replicas) behind sqlx's
//! `Any` driver. The SQL is written once in the dialect both accept (`$n` placeholders,
//! `RETURNING`, partial unique indexes); where the engines differ ([`Dialect`]) the code
//! says so. Every state change runs in one transaction. Times are Unix seconds.

/// The `ledger_key` of the app whose id is placeholder `$p`, as a scalar subquery: the
/// ledger's `tokens_slot_app_sub` is on `(slot, app_key, sub_key)` (migrations 0005 and
/// 0006), so every query by app finds its rows through this and [`ledger_slots!`].
macro_rules! app_key_of {
    ($p:literal) => {
        concat!("(SELECT a.ledger_key FROM apps a WHERE a.id = ", $p, ")")
    };
}

/// The ledger slots (migration 0006) that may hold a row still alive after time `$p`, as a
/// list subquery for `t.slot IN ...`; with no argument, every slot not yet purged. A query
/// by app seeks `tokens_slot_app_sub` once per slot listed (a few dozen to a few hundred).
macro_rules! ledger_slots {
    () => {
        "(SELECT s.slot FROM ledger_slots s)"
    };
    ($p:literal) => {
        concat!(
            "(SELECT s.slot FROM ledger_slots s WHERE s.until > ",
            $p,
            ")"
        )
    };
}

mod apps;
pub mod audit;
mod error;
mod keys;
mod legacy;
pub mod lock;
mod notify;
mod statuslists;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor as _, Transaction};

pub use apps::{AppPolicy, AppRow};
pub use error::StoreError;
pub use keys::{KeyOrigin, KeyRow, Lease};
pub use legacy::{LEGACY_ROOT_SETTING, MIGRATED_ROOT_SETTING};
pub use lock::{LockError, StoreLock};
pub use notify::{Change, ChangeListener, Heard};
pub use statuslists::{StatusChunk, StatusFacts, StatusListFigures, StatusListRow};
pub use tokens::{LedgerRow, RefreshChild, RefreshRow, SessionRow, StatusEntry};

/// Setting that holds the store's id (see [`Store::store_id`]).
pub const STORE_ID_SETTING: &str = "store_id";

/// Which engine the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (one replica).
    Sqlite,
    /// PostgreSQL (any number of replicas).
    Postgres,
}

/// An open transaction.
pub type Tx = Transaction<'static, sqlx::Any>;

/// Handle on the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where ledger rows are written: on SQLite a connection of its own, kept open; on
    /// PostgreSQL the pool.
    ledger: AnyPool,
    dialect: Dialect,
    /// Ledger slots this process has recorded, with the expiry recorded for each (see
    /// `Store::insert_ledger`): a ledger write only touches `ledger_slots` when a row
    /// outlives what is recorded.
    slots: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<i64, i64>>>,
}

/// WAL size (frames, 4 KiB pages) at which a committing SQLite connection checkpoints the
/// log itself. It is a backstop: [`Store::run_checkpointer`] keeps the log copied well
/// before, so commits (every issuance waits for its ledger row's) do not pay for it.
pub const WAL_BACKSTOP_FRAMES: u32 = 10_000;

/// Interval of the background checkpointer ([`Store::run_checkpointer`]).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Page cache of the SQLite connection that writes the ledger, KiB (the pool's connections
/// keep SQLite's default of 2 MiB). A connection's cache only survives between its
/// transactions while no other connection writes, so the ledger writer, nearly the only
/// writer, keeps one connection: the pages each ledger write touches (the ends of the
/// table and of its indexes, the current slots of `tokens_slot_app_sub`) stay in it instead
/// of being read again from the file by whichever pooled connection comes next.
pub const LEDGER_CACHE_KIB: u32 = 16 * 1024;

/// How the store's connections are opened: `max` of them, SQLite's pragmas on each, and a
/// page cache of `cache_kib` where given.
fn pool_options(dialect: Dialect, max: u32, cache_kib: Option<u32>) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_FRAMES}"
                    )))
                    .await?;
                    if let Some(kib) = cache_kib {
                        conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}")))
                            .await?;
                    }
                }
                Ok(())
            })
        })
}

/// What one checkpoint of SQLite's write-ahead log did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Frames in the log.
    pub log_frames: i64,
    /// Frames copied into the database file (all of them when the checkpoint caught up).
    pub checkpointed: i64,
}

static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Create the store at `url` if it does not exist (the directory and file of a SQLite
    /// store), run the migrations and give the store its id: what `hsm-rotator init` does
    /// (and tests that need a bare store). `serve` and the other commands use
    /// [`Self::open`], which never creates a store.
    ///
    /// # Errors
    /// Connection or migration failures.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect_pool(url, true).await?;
        store.migrate().await?;
        store.ensure_store_id().await?;
        Ok(store)
    }

    /// Open the store that `hsm-rotator init` made at `url`, and bring its schema up to
    /// date. A missing SQLite file, a database without our tables, or a store without a
    /// root key is refused ([`StoreError::Missing`], naming where it looked): a mistyped
    /// `database_url` or a start from another directory must not make a fresh, empty
    /// store next to the real one (issue 25).
    ///
    /// # Errors
    /// [`StoreError::Missing`] as above; connection or migration failures.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        use sqlx::Row as _;
        let shown = crate::config::redact_url(url);
        let init_hint = "run `hsm-rotator init` with the same configuration first";
        if url.starts_with("sqlite:") {
            let Some(path) = sqlite_path(url) else {
                return Err(StoreError::Missing(format!(
                    "{shown} is an in-memory SQLite store, which no `init` can have made"
                )));
            };
            if !std::path::Path::new(&path).is_file() {
                let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone().into());
                return Err(StoreError::Missing(format!(
                    "no hsm-rotator store at {} (from {shown}): {init_hint}",
                    abs.display()
                )));
            }
        }
        let store = Self::connect_pool(url, false).await?;
        let made = match sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
            .fetch_one(&store.pool)
            .await
        {
            Ok(r) => r.try_get::<i64, _>("n")? > 0,
            // No migrations table: a database that `init` never touched.
            Err(sqlx::Error::Database(_)) => false,
            Err(e) => return Err(e.into()),
        };
        let root = if made {
            store
                .setting(crate::keys::registry::ROOT_SETTING)
                .await?
                .is_some()
        } else {
            false
        };
        if !made || !root {
            store.pool.close().await;
            store.ledger.close().await;
            return Err(StoreError::Missing(format!(
                "{shown} holds no initialised hsm-rotator store{}: {init_hint}",
                if made { " (it has no root key)" } else { "" }
            )));
        }
        store.migrate().await?;
        store.ensure_store_id().await?;
        Ok(store)
    }

    /// The pools on `url`; `create`: make a SQLite store's directory.
    async fn connect_pool(url: &str, create: bool) -> Result<Self, StoreError> {
        // sqlx's `mysql` feature (for `migrate jwtplus --from`) makes the `Any` driver take
        // mysql:// too; the store's SQL is written for SQLite and PostgreSQL only.
        if !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err(StoreError::Unsupported(format!(
                "database_url {} is not a SQLite (sqlite:) or PostgreSQL (postgres://) URL: the store runs on those two only (a MySQL/MariaDB database is only read, by `hsm-rotator migrate jwtplus --from`)",
                crate::config::redact_url(url)
            )));
        }
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        if dialect == Dialect::Sqlite
            && create
            && let Some(path) = sqlite_path(url)
            && let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // `init` makes the SQLite file; everything else opens an existing one.
        let url = match dialect {
            Dialect::Sqlite if create && !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let max = if dialect == Dialect::Sqlite { 8 } else { 16 };
        let pool = pool_options(dialect, max, None)
            .connect_with(opts.clone())
            .await?;
        // SQLite: the ledger writer's own connection (see `Store::insert_ledger`).
        let ledger = match dialect {
            Dialect::Sqlite => {
                pool_options(dialect, 1, Some(LEDGER_CACHE_KIB))
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(opts)
                    .await?
            }
            Dialect::Postgres => pool.clone(),
        };
        Ok(Self {
            pool,
            ledger,
            dialect,
            slots: std::sync::Arc::default(),
        })
    }

    /// Give the store its id (a ULID, once; a store from before ids existed gets one now).
    async fn ensure_store_id(&self) -> Result<(), StoreError> {
        if self.setting(STORE_ID_SETTING).await?.is_none()
            && self
                .insert_setting_if_absent(
                    STORE_ID_SETTING,
                    &crate::keys::monotonic_ulid().to_string(),
                )
                .await?
        {
            tracing::info!("store id assigned; new HSM objects carry it in their labels");
        }
        Ok(())
    }

    /// The store's id: every HSM object it makes carries it in its label, and the
    /// reconciler only ever touches objects that carry it.
    ///
    /// # Errors
    /// Store failures; [`StoreError::Missing`] if the store has none (not initialised).
    pub async fn store_id(&self) -> Result<String, StoreError> {
        self.setting(STORE_ID_SETTING).await?.ok_or_else(|| {
            StoreError::Missing("the store has no id; run `hsm-rotator init`".into())
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The PostgreSQL migrator takes an advisory lock, so replicas may start together.
        match self.dialect {
            Dialect::Sqlite => MIGRATE_SQLITE.run(&self.pool).await?,
            Dialect::Postgres => MIGRATE_POSTGRES.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The engine.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool (for the few callers that run ad-hoc health queries).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begin a write transaction. On SQLite it is `BEGIN IMMEDIATE`, taking the write lock
    /// at once, so two writers never deadlock upgrading a read lock.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        self.begin_on(&self.pool).await
    }

    /// [`Self::begin`] on `pool` (the store's pool or the ledger's connection).
    async fn begin_on(&self, pool: &AnyPool) -> Result<Tx, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => pool.begin().await?,
        })
    }

    /// Lock an app's row for the rest of `tx` (PostgreSQL; SQLite's write lock already
    /// serialises writers). Returns whether the app exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn lock_app(&self, tx: &mut Tx, app_id: &str) -> Result<bool, StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => "SELECT id FROM apps WHERE id = $1",
            Dialect::Postgres => "SELECT id FROM apps WHERE id = $1 FOR UPDATE",
        };
        Ok(sqlx::query(sql)
            .bind(app_id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some())
    }

    /// A trivial query: whether the database answers.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The database's clock now, in milliseconds since the epoch (PostgreSQL:
    /// `clock_timestamp()`, the time of the statement, not of its transaction).
    fn clock_sql(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS ms"
            }
            Dialect::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS ms"
            }
        }
    }

    /// The database's clock, read inside `tx`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn clock_ms_in(&self, tx: &mut Tx) -> Result<i64, StoreError> {
        use sqlx::Row as _;
        let row = sqlx::query(self.clock_sql()).fetch_one(&mut **tx).await?;
        Ok(row.try_get("ms")?)
    }

    /// The database's clock minus `host`'s, in milliseconds, measured over one round trip
    /// (the database's reading is taken as made half way through it), and that round trip.
    ///
    /// # Errors
    /// Database failures.
    pub async fn clock_offset_ms(
        &self,
        host: &dyn crate::clock::Clock,
    ) -> Result<(i64, i64), StoreError> {
        use sqlx::Row as _;
        let before = host.now_ms();
        let row = sqlx::query(self.clock_sql()).fetch_one(&self.pool).await?;
        let after = host.now_ms();
        let db: i64 = row.try_get("ms")?;
        Ok((db - before - (after - before) / 2, after - before))
    }

    /// SQLite: copy the write-ahead log into the database without waiting for readers or
    /// writers (`PRAGMA wal_checkpoint(PASSIVE)`). `None` on PostgreSQL.
    ///
    /// # Errors
    /// Database failures.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        use sqlx::Row as _;
        if self.dialect != Dialect::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(Checkpoint {
            log_frames: row.try_get(1)?,
            checkpointed: row.try_get(2)?,
        }))
    }

    /// SQLite: checkpoint the write-ahead log every `every`, off the request path. Left to
    /// SQLite, the commit that crosses its threshold copies the log (1,000 random pages at
    /// 10^7 ledger rows) and syncs the database file before it returns. On a ledger of 10^7
    /// rows over 10,000 apps that put the p99 of a commit at 20 ms, against 10-15 ms with the
    /// copy done here (Python `sqlite3` on this schema; the service's own figures, a smaller
    /// gain, are in BENCHMARKS.md). Returns at once on PostgreSQL.
    pub async fn run_checkpointer(self, every: Duration) {
        if self.dialect != Dialect::Sqlite {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let started = std::time::Instant::now();
            match self.checkpoint().await {
                Ok(Some(c)) => {
                    failing = false;
                    if c.checkpointed > 0 {
                        tracing::trace!(
                            frames = c.checkpointed,
                            log = c.log_frames,
                            ms = started.elapsed().as_millis(),
                            "WAL checkpoint"
                        );
                    }
                }
                Ok(None) => return,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "WAL checkpoint failed; commits checkpoint the log themselves until it works again");
                }
                Err(_) => {}
            }
        }
    }

    /// Read a setting.
    ///
    /// # Errors
    /// Database failures.
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        use sqlx::Row as _;
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("value")?),
            None => None,
        })
    }

    /// Insert a setting if absent; returns whether it was inserted.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_setting_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// [`Self::swap_setting`] inside `tx`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn swap_setting_tx(
        &self,
        tx: &mut Tx,
        key: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE settings SET value = $1 WHERE key = $2 AND value = $3")
            .bind(new)
            .bind(key)
            .bind(old)
            .execute(&mut **tx)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Replace a setting only if it still has `old`; returns whether it changed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn swap_setting(&self, key: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE settings SET value = $1 WHERE key = $2 AND value = $3")
            .bind(new)
            .bind(key)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// What `config check` found about a store's schema, read without changing anything.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SchemaStatus {
    /// Migrations this binary carries.
    pub known: usize,
    /// Of those, applied in the store.
    pub applied: usize,
    /// Known but not applied yet (`init` or the first `serve` applies them).
    pub pending: Vec<String>,
    /// Applied in the store but unknown to this binary (a newer version wrote it).
    pub unknown: Vec<i64>,
    /// Applied, but with a checksum other than this binary's (edited migration files).
    pub modified: Vec<i64>,
    /// Signing algorithms the store's apps use (the token must offer them).
    pub algorithms: Vec<String>,
}

impl SchemaStatus {
    /// Whether the schema is exactly what this binary expects.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.modified.is_empty()
    }
}

impl Store {
    /// Open the store at `url` without creating or migrating anything, and compare its
    /// applied migrations with this binary's.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if a SQLite file does not exist; connection failures.
    pub async fn inspect(url: &str) -> Result<SchemaStatus, StoreError> {
        use sqlx::Row as _;
        sqlx::any::install_default_drivers();
        let (migrator, url) = if url.starts_with("sqlite:") {
            let Some(path) = sqlite_path(url) else {
                return Err(StoreError::Missing(
                    "an in-memory SQLite store holds nothing to check".into(),
                ));
            };
            if !std::path::Path::new(&path).exists() {
                return Err(StoreError::Missing(format!(
                    "the SQLite file {path} does not exist yet; run `hsm-rotator init`"
                )));
            }
            (&MIGRATE_SQLITE, format!("sqlite://{path}?mode=ro"))
        } else {
            (&MIGRATE_POSTGRES, url.to_owned())
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(AnyConnectOptions::from_str(&url)?)
            .await?;
        let rows = match sqlx::query(
            "SELECT version, checksum FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(rows) => rows,
            // No migrations table: a fresh, empty database.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut applied = std::collections::HashMap::new();
        for r in rows {
            let v: i64 = r.try_get("version")?;
            let sum: Vec<u8> = r.try_get("checksum")?;
            applied.insert(v, sum);
        }
        let mut algorithms = Vec::new();
        if !applied.is_empty() {
            for r in sqlx::query("SELECT DISTINCT signing_alg FROM apps ORDER BY signing_alg")
                .fetch_all(&pool)
                .await?
            {
                algorithms.push(r.try_get::<String, _>("signing_alg")?);
            }
        }
        pool.close().await;
        let mut status = SchemaStatus {
            algorithms,
            ..SchemaStatus::default()
        };
        for m in migrator.iter() {
            status.known += 1;
            match applied.remove(&m.version) {
                Some(sum) => {
                    status.applied += 1;
                    if sum.as_slice() != m.checksum.as_ref() {
                        status.modified.push(m.version);
                    }
                }
                None => status
                    .pending
                    .push(format!("{} {}", m.version, m.description)),
            }
        }
        status.unknown = applied.into_keys().collect();
        status.unknown.sort_unstable();
        Ok(status)
    }
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// Read an optional i64 column.
pub(crate) fn opt_i64(row: &sqlx::any::AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    use sqlx::Row as _;
    Ok(row.try_get::<Option<i64>, _>(col)?)
}
