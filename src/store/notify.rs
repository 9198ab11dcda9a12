//! Change propagation between replicas (PostgreSQL `LISTEN/NOTIFY`).
//!
//! Every change that verification depends on is published after it commits; every replica
//! applies it to its registry. Notifications sent while a listener was disconnected are
//! lost, so a reconnect tells the caller to reload everything. SQLite has one replica and
//! publishes nothing.

use sqlx::postgres::PgListener;

use super::{Dialect, Store, StoreError};

/// The notification channel.
const CHANNEL: &str = "hsm_rotator";

/// One change, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An app or its keys changed: reload the app.
    App(String),
    /// A token id was deny-listed until `exp`.
    Jti(String, i64),
    /// A subject logged out: `(app, sub_sha256, cutoff)`.
    Subject(String, String, String),
    /// The root key changed.
    Root,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Self::App(id) => format!("app {id}"),
            Self::Jti(jti, exp) => format!("jti {jti} {exp}"),
            Self::Subject(app, sub, cutoff) => format!("sub {app} {sub} {cutoff}"),
            Self::Root => "root".into(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(' ');
        match (it.next()?, it.next(), it.next(), it.next()) {
            ("app", Some(id), None, None) => Some(Self::App(id.into())),
            ("jti", Some(j), Some(e), None) => Some(Self::Jti(j.into(), e.parse().ok()?)),
            ("sub", Some(a), Some(s), Some(c)) => Some(Self::Subject(a.into(), s.into(), c.into())),
            ("root", None, None, None) => Some(Self::Root),
            _ => None,
        }
    }
}

impl Store {
    /// Publish a change to the other replicas (best effort: a lost notification is caught
    /// by their periodic reload).
    pub async fn publish(&self, change: &Change) {
        if self.dialect != Dialect::Postgres {
            return;
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(change.encode())
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not publish a change; other replicas catch up at their next reload");
        }
    }
}

/// What a listener hands back.
#[derive(Debug)]
pub enum Heard {
    /// A change to apply.
    Change(Change),
    /// The connection was (re)made: changes may have been missed, reload everything.
    Reconnected,
}

/// A listener on the change channel that reconnects by itself.
pub struct ChangeListener {
    url: String,
    inner: Option<PgListener>,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// A listener for the PostgreSQL database at `url` (connects on first use).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            inner: None,
        }
    }

    /// The next change, or [`Heard::Reconnected`] after a (re)connection.
    ///
    /// # Errors
    /// The database cannot be reached now; call again later.
    pub async fn next(&mut self) -> Result<Heard, StoreError> {
        let Some(listener) = self.inner.as_mut() else {
            let mut l = PgListener::connect(&self.url).await?;
            l.listen(CHANNEL).await?;
            self.inner = Some(l);
            return Ok(Heard::Reconnected);
        };
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(c) = Change::decode(n.payload()) {
                        return Ok(Heard::Change(c));
                    }
                }
                // The connection dropped; sqlx reconnects on the next call, but whatever was
                // sent meanwhile is lost.
                Ok(None) => return Ok(Heard::Reconnected),
                Err(e) => {
                    self.inner = None;
                    return Err(e.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::App("01ARZ3NDEKTSV4RRFFQ69G5FAV".into()),
            Change::Jti("01ARZ3NDEKTSV4RRFFQ69G5FAV".into(), 1_900_000_000),
            Change::Subject(
                "a".into(),
                "ab12".into(),
                "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            ),
            Change::Root,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("bogus"), None);
    }
}
