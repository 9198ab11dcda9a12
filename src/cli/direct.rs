//! Direct mode: the CLI opens the store and the HSM itself, through the same
//! [`AppState::connect`] and services as the server, so there is one implementation of
//! every operation.

use std::sync::Arc;

use crate::app::AppState;
use crate::config::Config;
use crate::store::{LockError, StoreLock};

/// The store and the HSM, opened in this process.
pub struct Direct {
    state: AppState,
    _lock: Option<StoreLock>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("base", &self.state.base_url())
            .finish()
    }
}

impl Direct {
    /// Open the store and the HSM. A command that changes apps or keys passes `write`:
    /// on SQLite it then takes the store lock first, and is refused while a server runs
    /// (the server could not see the change; see [`crate::store::lock`]).
    ///
    /// # Errors
    /// The lock is held; the store or the HSM cannot be opened.
    pub async fn open(cfg: &Config, write: bool) -> anyhow::Result<Self> {
        let lock = if write {
            match StoreLock::try_acquire(&cfg.database_url()) {
                Ok(l) => l,
                Err(e @ LockError::Held(_)) => anyhow::bail!(
                    "{e}. A running server would not see a change written here; send it through the server instead: add --url http://HOST:PORT and set HSM_ROTATOR_ROOT_KEY"
                ),
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        // Its issuers are those a server on this configuration advertises: `public_url`,
        // else the listen address (set public_url when tokens issued here must verify at a
        // server behind a proxy, or listening on port 0).
        // On the database's clock, as a server is: a flush or logout run here sets the
        // same cut-off a server would.
        let clock = Arc::new(crate::clock::DatabaseClock::new(crate::app::host_clock()?));
        let state = AppState::connect(cfg, clock.clone()).await?;
        crate::app::sync_clock(&state.store, &clock).await;
        Ok(Self { state, _lock: lock })
    }

    /// The services.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// An app's issuer (`<base>/apps/<id>`), as the server computes it.
    pub fn issuer(&self, app_id: &str) -> String {
        self.state.issuer(app_id)
    }

    /// Log out of the token.
    pub async fn close(&self) {
        self.state.hsm.close().await;
    }
}
