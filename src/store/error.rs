//! Store errors.

/// A store operation failed. Every state change is one transaction, so a failure leaves
/// nothing half-applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database driver failed (connection lost, constraint, I/O).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store does not exist (yet).
    #[error("{0}")]
    Missing(String),
    /// A row held a value the service cannot interpret.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}
