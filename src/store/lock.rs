//! One writer process per SQLite store.
//!
//! A server keeps an in-memory registry of apps, keys and revocations. On PostgreSQL every
//! change is published (`LISTEN/NOTIFY`) and every process applies it; SQLite publishes
//! nothing, so a change written by a second process (a CLI command in direct mode) would
//! stay invisible to a running server: a revoked key would keep verifying there. Rather
//! than poll for such changes, the server and every direct-mode write hold an exclusive
//! advisory lock on a file next to the database (`<db>.lock`) for as long as they run, so
//! the two never overlap: the CLI is told to go through the server (`--url`) instead. The
//! kernel releases the lock when the process ends, however it ends (SIGKILL included).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

/// Why the store lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another hsm-rotator process is using the SQLite store {0} (a running server, or a command writing to it directly)"
    )]
    Held(PathBuf),
    /// The lock file could not be opened.
    #[error("cannot open the store lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive hold on a SQLite store, released on drop (or when the process ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Take the lock of the store at `url` without waiting. `Ok(None)` for stores that need
    /// none (PostgreSQL, in-memory SQLite) and for a SQLite file that does not exist: no
    /// store, nothing to guard (opening it then fails, and nothing, not even a directory,
    /// is left behind).
    ///
    /// # Errors
    /// [`LockError::Held`] if another process has it; [`LockError::Io`] if the lock file
    /// cannot be created.
    pub fn try_acquire(url: &str) -> Result<Option<Self>, LockError> {
        let Some(db) = super::sqlite_path(url) else {
            return Ok(None);
        };
        let db = PathBuf::from(db);
        if !db.is_file() {
            return Ok(None);
        }
        let path = PathBuf::from(format!("{}.lock", db.display()));
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let file = opts.open(&path).map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file, path })),
            Err(TryLockError::WouldBlock) => Err(LockError::Held(db)),
            Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/s.db?mode=rwc", dir.path().display());
        assert!(StoreLock::try_acquire(&url).expect("no store").is_none());
        std::fs::write(dir.path().join("s.db"), b"").expect("store file");
        let first = StoreLock::try_acquire(&url)
            .expect("first")
            .expect("sqlite");
        assert!(matches!(
            StoreLock::try_acquire(&url),
            Err(LockError::Held(_))
        ));
        drop(first);
        assert!(StoreLock::try_acquire(&url).expect("again").is_some());
        assert!(
            StoreLock::try_acquire("postgres://u@h/db")
                .expect("pg")
                .is_none()
        );
    }
}
