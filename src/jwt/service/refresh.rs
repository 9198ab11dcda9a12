//! Refresh: exchanging a single-use refresh token for a new pair, and revoking its
//! family when a spent one comes back.

use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::{info, instrument, warn};
use ulid::Ulid;

use super::{IssueOptions, Issued, TokenError, TokenService};
use crate::auth::digest;
use crate::store::{AppRow, RefreshRow, StoreError, Tx};

/// What a spent refresh token presented again does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReuse {
    /// The native API: reuse revokes the whole family, except for a retry: the token was
    /// spent at most `grace` seconds ago and no successor of it was used yet (its client
    /// most likely never got the answer). A retry gets a fresh pair, and the unused
    /// successor (with its access token) is superseded: presented later, it is reuse.
    /// `grace` 0 turns retries off (`refresh_reuse_grace`).
    RevokeFamily {
        /// Seconds after the spend during which a retry is let through.
        grace: i64,
    },
    /// JWTPlus renew: JWTPlus has no reuse detection (a renewed token is simply not
    /// found), so reuse is only audited (`token.refresh_reuse`, `not_revoked_compat`) and
    /// answered as an invalid token; nothing is revoked.
    AuditOnly,
}

/// How an exchange of a token stores its new pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// The token's first exchange: it loses to a retry that stored a successor first.
    First,
    /// A retry within the grace: it supersedes the successors stored before it.
    Retry,
}

/// Whether a refresh JWT's `nbf` is still ahead: JWTPlus issues refresh tokens that only
/// become usable `refresh_nbf` seconds after issuance, and its renew finds no row for one
/// before that (`refresh_token_nbf < now`), so it is invalid here too, spent or not.
/// The payload is read without checking its signature: the token's digest matched a
/// stored refresh token, so it is one this service issued (or imported from JWTPlus)
/// byte for byte. Opaque refresh tokens carry no `nbf`.
fn not_yet_valid(refresh_token: &str, now: i64) -> bool {
    crate::jwt::parse(refresh_token)
        .and_then(|c| c.claims.get("nbf").and_then(Value::as_i64))
        .is_some_and(|nbf| nbf > now)
}

impl TokenService {
    /// Exchange a refresh token (single use) for a new pair. Presenting a spent one does
    /// what `on_reuse` says (see [`OnReuse`]); one whose `nbf` is ahead is invalid and
    /// changes nothing.
    ///
    /// # Errors
    /// [`TokenError::InvalidRefresh`], [`TokenError::RefreshReused`], HSM and store failures.
    #[instrument(skip_all, fields(app_id = %app.id))]
    pub async fn refresh(
        &self,
        app: &AppRow,
        refresh_token: &str,
        opts: &IssueOptions,
        on_reuse: OnReuse,
    ) -> Result<Issued, TokenError> {
        // The whole exchange runs in a task of its own: a client that goes away mid-way
        // cannot stop it between spending the token (whose commit may land after the
        // request is dropped) and storing (or giving back) the new one, which would turn
        // its retry into a false reuse that revokes the whole family.
        let hash = digest(refresh_token.trim());
        let this = self.clone();
        let app = app.clone();
        let opts = opts.clone();
        let token = refresh_token.trim().to_owned();
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::audit::carry(async move {
            // A client that hung up on an exchange retries at once, often before this
            // replica has given its token back: the retry waits for that exchange here.
            let lock = this.exchange_lock(&hash);
            let held = lock.lock().await;
            this.spend_and_exchange_once(&app, &token, &hash, &opts, on_reuse, answer)
                .await;
            drop(held);
            this.exchange_done(&hash, lock);
        }));
        answered.await.map_err(|_| {
            TokenError::Store(StoreError::corrupt(
                "the refresh exchange task failed".to_owned(),
            ))
        })?
    }

    /// The lock of the exchanges of one refresh token (by digest) in this process.
    fn exchange_lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self
            .inner
            .exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(hash.to_owned()).or_default().clone()
    }

    /// Forget the lock of `hash` when no other exchange holds or waits for it.
    fn exchange_done(&self, hash: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut m = self
            .inner
            .exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(lock);
        if m.get(hash).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(hash);
        }
    }

    /// One exchange, answered on `answer`; withdrawn if nobody is there to take it.
    async fn spend_and_exchange_once(
        &self,
        app: &AppRow,
        token: &str,
        hash: &str,
        opts: &IssueOptions,
        on_reuse: OnReuse,
        answer: tokio::sync::oneshot::Sender<Result<Issued, TokenError>>,
    ) {
        let this = self;
        let hash = hash.to_owned();
        {
            let result = this
                .spend_and_exchange(app, token, &hash, opts, on_reuse)
                .await;
            // The client went away before its answer: the new pair never reached it, so
            // it is withdrawn and the old token given back for the client's retry.
            if let Err(Ok(issued)) = answer.send(result) {
                let undone = this
                    .inner
                    .store
                    .undo_exchange(
                        &hash,
                        issued.refresh_token.as_ref().map(|t| t.digest()).as_deref(),
                        &issued.jti,
                        &app.id,
                        issued.exp,
                        this.now(),
                    )
                    .await;
                match undone {
                    Ok(()) => this.inner.registry.denied(issued.jti, issued.exp).await,
                    Err(e) => {
                        warn!(error = %e, "could not withdraw a refresh exchange its client never received")
                    }
                }
            }
        }
    }

    /// [`Self::refresh`] in its task: spend the token (or detect its reuse, or a retry
    /// within the grace), then [`Self::exchange`] it; a failed exchange gives the token back.
    async fn spend_and_exchange(
        &self,
        app: &AppRow,
        refresh_token: &str,
        hash: &str,
        opts: &IssueOptions,
        on_reuse: OnReuse,
    ) -> Result<Issued, TokenError> {
        let store = &self.inner.store;
        let now = self.now();
        // Spend the token first, in a short transaction: two concurrent exchanges of one
        // token cannot both pass the compare-and-swap.
        let mut tx = store.begin().await?;
        let mut row = store
            .refresh(&mut tx, hash)
            .await?
            .ok_or(TokenError::InvalidRefresh)?;
        if row.app_id != app.id || row.exp <= now || not_yet_valid(refresh_token, now) {
            return Err(TokenError::InvalidRefresh);
        }
        let mut mode = Exchange::First;
        if row.superseded_at.is_some()
            || row.used_at.is_some()
            || (row.revoked_at.is_none() && !store.use_refresh(&mut tx, hash, now).await?)
        {
            // Spent: wait for any exchange of this family in flight (so its new token is
            // revoked too, or its successor is seen), then decide on what the store holds.
            store
                .lock_refresh_family(&mut tx, &row.family, hash)
                .await?;
            row = store
                .refresh(&mut tx, hash)
                .await?
                .ok_or(TokenError::InvalidRefresh)?;
            if row.superseded_at.is_none() && row.revoked_at.is_none() && row.used_at.is_none() {
                // Given back meanwhile (its exchange failed or was never delivered).
                if !store.use_refresh(&mut tx, hash, now).await? {
                    return Err(TokenError::InvalidRefresh);
                }
            } else if row.revoked_at.is_some() && row.superseded_at.is_none() {
                return Err(TokenError::InvalidRefresh);
            } else if self.retry_allowed(&mut tx, &row, on_reuse, now).await? {
                mode = Exchange::Retry;
            } else {
                return Err(self.reused(tx, app, &row.family, on_reuse, now).await?);
            }
        } else if row.revoked_at.is_some() {
            return Err(TokenError::InvalidRefresh);
        }
        // Logged out or flushed since: the refresh token died with its access token.
        let access_rejected = Ulid::from_string(&row.jti)
            .map_or(true, |j| self.cut_off(app, row.sub_sha256.as_deref(), j));
        if access_rejected {
            return Err(TokenError::InvalidRefresh);
        }
        tx.commit().await?;
        // The token is spent. Until the new pair is stored, a failure gives it back, so
        // the client's retry is not taken for reuse (which would end its session); the
        // store keeps it spent if a successor of it lives.
        let result = self.exchange(app, &row, hash, opts, mode).await;
        if let Err(e) = &result
            && !matches!(e, TokenError::RefreshReused)
        {
            let _ = store.unuse_refresh(hash).await;
        }
        result
    }

    /// Whether a spent token presented again is a retry the grace lets through: spent at
    /// most `grace` seconds ago, not itself superseded, and no successor of it used yet.
    async fn retry_allowed(
        &self,
        tx: &mut Tx,
        row: &RefreshRow,
        on_reuse: OnReuse,
        now: i64,
    ) -> Result<bool, TokenError> {
        let OnReuse::RevokeFamily { grace } = on_reuse else {
            return Ok(false);
        };
        let Some(used_at) = row.used_at else {
            return Ok(false);
        };
        if grace <= 0 || row.superseded_at.is_some() || now.saturating_sub(used_at) > grace {
            return Ok(false);
        }
        let children = self
            .inner
            .store
            .refresh_children(tx, &row.token_sha256)
            .await?;
        Ok(!children.iter().any(|c| c.used))
    }

    /// A spent refresh token came back outside the grace (or its successor was used, or it
    /// was superseded): revoke its family (native), or only audit it (JWTPlus, which has
    /// no reuse detection: the token is simply not found). Commits `tx`; returns the error
    /// to answer.
    async fn reused(
        &self,
        mut tx: Tx,
        app: &AppRow,
        family: &str,
        on_reuse: OnReuse,
        now: i64,
    ) -> Result<TokenError, TokenError> {
        let store = &self.inner.store;
        if on_reuse == OnReuse::AuditOnly {
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "token.refresh_reuse",
                    &app.id,
                    "not_revoked_compat",
                    serde_json::json!({"family": family, "compat": "jwtplus"}),
                )
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            warn!(%family, "refresh token reuse on a compat route: audited, family not revoked");
            return Ok(TokenError::InvalidRefresh);
        }
        let denied = store.revoke_family(&mut tx, family, now).await?;
        for (jti, exp) in &denied {
            store.deny_jti(&mut tx, jti, &app.id, *exp).await?;
        }
        self.inner
            .audit
            .record_in(
                &mut tx,
                "token.refresh_reuse",
                &app.id,
                "family_revoked",
                serde_json::json!({"family": family}),
            )
            .await?;
        self.commit_denials(tx, denied).await?;
        warn!(%family, "refresh token reuse: family revoked");
        Ok(TokenError::RefreshReused)
    }

    /// The second half of [`Self::refresh`]: sign the new pair, then store its refresh
    /// token and retire the old access token, unless the family was revoked meanwhile.
    async fn exchange(
        &self,
        app: &AppRow,
        row: &RefreshRow,
        hash: &str,
        opts: &IssueOptions,
        mode: Exchange,
    ) -> Result<Issued, TokenError> {
        let store = &self.inner.store;
        let claims: Map<String, Value> =
            serde_json::from_str(&row.claims).map_err(|e| StoreError::corrupt(e.to_string()))?;
        let issued = self
            .sign_pair(app, claims, app.token_ttl, Some(row.family.clone()), opts)
            .await?;
        let old = store.ledger_row(&row.jti).await?;
        let mut tx = store.begin().await?;
        if !store
            .lock_refresh_family(&mut tx, &row.family, hash)
            .await?
        {
            // Reuse was detected while we signed: the family is revoked, and the pair just
            // signed must never work.
            store
                .deny_jti(&mut tx, &issued.jti, &app.id, issued.exp)
                .await?;
            tx.commit().await?;
            self.inner.registry.denied(issued.jti, issued.exp).await;
            return Err(TokenError::RefreshReused);
        }
        // The successors of the old token stored so far: a first exchange that finds one
        // lost to a retry (which supersedes it); a retry supersedes the ones never used,
        // and one that was used makes it reuse after all.
        let children = store.refresh_children(&mut tx, hash).await?;
        let lost = match mode {
            Exchange::First => !children.is_empty(),
            Exchange::Retry => children.iter().any(|c| c.used),
        };
        if lost {
            store
                .deny_jti(&mut tx, &issued.jti, &app.id, issued.exp)
                .await?;
            let error = if mode == Exchange::Retry {
                let now = self.now();
                self.reused(
                    tx,
                    app,
                    &row.family,
                    OnReuse::RevokeFamily { grace: 0 },
                    now,
                )
                .await?
            } else {
                tx.commit().await?;
                TokenError::InvalidRefresh
            };
            self.inner.registry.denied(issued.jti, issued.exp).await;
            return Err(error);
        }
        let mut superseded = Vec::new();
        if mode == Exchange::Retry {
            let now = self.now();
            for c in &children {
                if store
                    .supersede_refresh(&mut tx, &c.token_sha256, now)
                    .await?
                {
                    store.deny_jti(&mut tx, &c.jti, &app.id, c.exp).await?;
                    superseded.push((c.jti.clone(), c.exp));
                }
            }
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "token.refresh_retried",
                    &app.id,
                    "ok",
                    serde_json::json!({
                        "family": row.family,
                        "superseded_jtis": superseded.iter().map(|(j, _)| j).collect::<Vec<_>>(),
                    }),
                )
                .await?;
        }
        if let (Some(rt), Some(exp)) = (&issued.refresh_token, issued.refresh_exp) {
            store
                .insert_refresh(
                    &mut tx,
                    &RefreshRow {
                        token_sha256: rt.digest(),
                        app_id: app.id.clone(),
                        family: row.family.clone(),
                        jti: issued.jti.clone(),
                        sub_sha256: row.sub_sha256.clone(),
                        claims: row.claims.clone(),
                        exp,
                        used_at: None,
                        revoked_at: None,
                        parent_sha256: Some(hash.to_owned()),
                        superseded_at: None,
                    },
                )
                .await?;
        }
        // Refreshing retires the access token it was issued with.
        if let Some(old) = &old {
            store.deny_jti(&mut tx, &old.jti, &app.id, old.exp).await?;
        }
        tx.commit().await?;
        if mode == Exchange::Retry {
            self.inner.audit.committed();
            info!(family = %row.family, superseded = superseded.len(), "refresh retried within the reuse grace");
        }
        for (jti, exp) in superseded {
            self.inner.registry.denied(jti, exp).await;
        }
        if let Some(old) = old {
            self.inner.registry.denied(old.jti, old.exp).await;
        }
        Ok(issued)
    }
}
