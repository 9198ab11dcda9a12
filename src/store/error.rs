//! Store errors. Each one is counted once, where it is made, in
//! `hsm_rotator_store_errors_total` (by kind).

/// A store operation failed. Every state change is one transaction, so a failure leaves
/// nothing half-applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database driver failed (connection lost, constraint, I/O).
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The store does not exist (yet).
    #[error("{0}")]
    Missing(String),
    /// A `database_url` of an engine the store does not run on (MySQL/MariaDB: only
    /// `migrate jwtplus --from` reads it).
    #[error("{0}")]
    Unsupported(String),
    /// A row held a value the service cannot interpret.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        crate::metrics::store_error("db");
        Self::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        crate::metrics::store_error("migrate");
        Self::Migrate(e)
    }
}

impl StoreError {
    /// A row the service cannot interpret (counted like every store error).
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        crate::metrics::store_error("corrupt");
        Self::Corrupt(what.into())
    }
}
