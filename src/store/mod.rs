//! The key store: the only module with SQL.

mod error;

pub use error::StoreError;
