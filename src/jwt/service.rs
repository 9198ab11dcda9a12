//! Issuing, refreshing, verifying and revoking an app's tokens.
//!
//! Issuance builds the compact JWS itself, signs it in the HSM with the app's `current`
//! key, writes the ledger row (batched with concurrent issuances into one transaction)
//! and only then hands the token out. Verification never touches the HSM: signatures are
//! checked against the registry's in-memory public keys, and revocation state (deny-list,
//! app and subject cut-offs) is in memory too.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{instrument, warn};
use ulid::Ulid;

use super::{Issuers, RESERVED_CLAIMS, b64, parse};
use crate::alg::Algorithm;
use crate::auth::{REFRESH_PREFIX, Secret, digest};
use crate::clock::Clock;
use crate::hsm::{Hsm, HsmError};
use crate::keys::{KeyState, Kid, LiveKey, Registry, monotonic_ulid};
use crate::statuslist::{Allocator, list_uri};
use crate::store::{AppRow, LedgerRow, RefreshRow, SessionRow, StatusEntry, Store, StoreError};

/// Why issuance, refresh or revocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The caller tried to set a claim the service sets.
    #[error("claim {0:?} is set by the service and cannot be supplied")]
    ReservedClaim(String),
    /// `sub` is not a string (RFC 7519 §4.1.2: a StringOrURI): a numeric subject could
    /// never be logged out, since logout names subjects by string.
    #[error("claim \"sub\" must be a string")]
    SubjectNotString,
    /// Requested lifetime out of range.
    #[error("ttl must be between 1 and the app's token_ttl ({0} seconds)")]
    Ttl(i64),
    /// The app has no current key (being repaired).
    #[error("the app has no current signing key")]
    NoCurrentKey,
    /// Unknown, expired, revoked or foreign refresh token.
    #[error("the refresh token is invalid, expired or revoked")]
    InvalidRefresh,
    /// A spent refresh token was presented again: its family is revoked.
    #[error("the refresh token was already used; its whole family has been revoked")]
    RefreshReused,
    /// The ledger could not be written.
    #[error("ledger write failed: {0}")]
    Ledger(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HSM failure.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// Why a token is not active (kept for logs and metrics; clients only see `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a compact JWS, or bad base64/JSON.
    Malformed,
    /// `alg` is not one we sign with, or does not match the key.
    Algorithm,
    /// A `crit` header we cannot honour.
    Critical,
    /// Not an access token (a refresh JWT, or another `typ`).
    WrongType,
    /// `kid` missing, unknown, or of another app.
    UnknownKey,
    /// Key retired, revoked, or past its verification window.
    KeyInactive,
    /// Signature does not verify.
    Signature,
    /// `exp` missing or passed.
    Expired,
    /// `nbf` in the future.
    NotYetValid,
    /// `iss` is not the app's issuer.
    Issuer,
    /// `jti` missing or not ours.
    NoJti,
    /// `jti` deny-listed.
    Revoked,
    /// Issued before the app's cut-off.
    CutOff,
    /// Issued before its subject logged out.
    LoggedOut,
}

/// An issued token pair.
#[derive(Debug)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Key that signed it.
    pub kid: Kid,
    /// Token id.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// Refresh token, when the app has `refresh_ttl` > 0.
    pub refresh_token: Option<Secret>,
    /// Its expiry.
    pub refresh_exp: Option<i64>,
}

/// How refresh tokens look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshFormat {
    /// Opaque `rt_...` strings (native API).
    Opaque,
    /// Signed JWTs with header `typ: refresh+jwt` (JWTPlus clients validate the format).
    Jwt,
}

/// Options of one issuance.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// `iss` of the token.
    pub issuer: String,
    /// Requested lifetime (default: the app's `token_ttl`).
    pub ttl: Option<i64>,
    /// Also set `jid` (= `jti`), as JWTPlus clients expect.
    pub with_jid: bool,
    /// Refresh-token format.
    pub refresh: RefreshFormat,
    /// Client metadata kept in the ledger (JSON object), e.g. JWTPlus `ip`/`useragent`.
    pub meta: Option<Value>,
}

type LedgerAck = oneshot::Sender<Result<(), String>>;

struct Inner {
    store: Store,
    hsm: Hsm,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    ledger: mpsc::Sender<(LedgerRow, LedgerAck)>,
    audit: crate::audit::Audit,
    status: Allocator,
}

/// The token service. Cheap to clone.
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenService")
    }
}

/// Most ledger rows written in one transaction.
const LEDGER_BATCH: usize = 256;

async fn ledger_writer(store: Store, mut rx: mpsc::Receiver<(LedgerRow, LedgerAck)>) {
    let mut batch = Vec::with_capacity(LEDGER_BATCH);
    while rx.recv_many(&mut batch, LEDGER_BATCH).await > 0 {
        let (rows, acks): (Vec<LedgerRow>, Vec<LedgerAck>) = batch.drain(..).unzip();
        let started = std::time::Instant::now();
        let result = store.insert_ledger(&rows).await.map_err(|e| e.to_string());
        crate::metrics::ledger_batch(rows.len(), started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            warn!(error = %e, rows = rows.len(), "ledger batch failed");
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

fn reserved_check(claims: &Map<String, Value>) -> Result<(), TokenError> {
    if let Some(c) = RESERVED_CLAIMS.iter().find(|c| claims.contains_key(**c)) {
        return Err(TokenError::ReservedClaim((*c).to_owned()));
    }
    match claims.get("sub") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(TokenError::SubjectNotString),
    }
}

impl TokenService {
    /// A service; spawns the ledger writer on the current runtime.
    pub fn new(
        store: Store,
        hsm: Hsm,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        audit: crate::audit::Audit,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(ledger_writer(store.clone(), rx));
        Self {
            inner: Arc::new(Inner {
                status: Allocator::new(store.clone()),
                store,
                hsm,
                registry,
                clock,
                ledger: tx,
                audit,
            }),
        }
    }

    fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Sign `header.payload` for `claims` with `key`; returns the compact JWS.
    async fn sign(
        &self,
        key: &LiveKey,
        typ: &str,
        claims: &Map<String, Value>,
    ) -> Result<String, TokenError> {
        let alg = key.row.algorithm;
        let header = json!({"alg": alg.as_str(), "typ": typ, "kid": key.row.kid.to_string()});
        let mut input = b64(header.to_string().as_bytes());
        input.push('.');
        input.push_str(&b64(Value::Object(claims.clone()).to_string().as_bytes()));
        let sig = match self
            .inner
            .hsm
            .sign(key.row.kid, alg, input.clone().into_bytes())
            .await
        {
            // The store says this key exists: the token may have been away and come back.
            Err(HsmError::KeyNotFound(k)) if self.inner.hsm.recover(k).await.unwrap_or(false) => {
                self.inner
                    .hsm
                    .sign(key.row.kid, alg, input.clone().into_bytes())
                    .await?
            }
            other => other?,
        };
        input.push('.');
        input.push_str(&b64(&sig));
        Ok(input)
    }

    /// Sign `claims` as a `typ` JWT with `app_id`'s current key (status list tokens).
    ///
    /// # Errors
    /// [`TokenError::NoCurrentKey`], HSM failures.
    pub async fn sign_with_current(
        &self,
        app_id: &str,
        typ: &str,
        claims: &Map<String, Value>,
    ) -> Result<String, TokenError> {
        let key = self
            .inner
            .registry
            .current(app_id)
            .ok_or(TokenError::NoCurrentKey)?;
        self.sign(&key, typ, claims).await
    }

    /// Issue a token for `app` with the caller's `claims`.
    ///
    /// # Errors
    /// [`TokenError::ReservedClaim`], [`TokenError::Ttl`], HSM and ledger failures.
    #[instrument(skip_all, fields(app_id = %app.id))]
    pub async fn issue(
        &self,
        app: &AppRow,
        claims: Map<String, Value>,
        opts: &IssueOptions,
    ) -> Result<Issued, TokenError> {
        reserved_check(&claims)?;
        if app.status_list && claims.contains_key("status") {
            return Err(TokenError::ReservedClaim("status".into()));
        }
        let ttl = opts.ttl.unwrap_or(app.token_ttl);
        if ttl < 1 || ttl > app.token_ttl {
            return Err(TokenError::Ttl(app.token_ttl));
        }
        let family = (app.refresh_ttl > 0).then(|| monotonic_ulid().to_string());
        let issued = self
            .sign_pair(app, claims.clone(), ttl, family.clone(), opts)
            .await?;
        if let (Some(rt), Some(family), Some(exp)) =
            (&issued.refresh_token, family, issued.refresh_exp)
        {
            let mut tx = self.inner.store.begin().await?;
            self.inner
                .store
                .insert_refresh(
                    &mut tx,
                    &RefreshRow {
                        token_sha256: rt.digest(),
                        app_id: app.id.clone(),
                        family,
                        jti: issued.jti.clone(),
                        sub_sha256: claims.get("sub").and_then(Value::as_str).map(digest),
                        claims: Value::Object(claims).to_string(),
                        exp,
                        used_at: None,
                        revoked_at: None,
                    },
                )
                .await?;
            tx.commit().await?;
        }
        Ok(issued)
    }

    /// Sign an access token (and a refresh token when `family` is set) and write the ledger.
    async fn sign_pair(
        &self,
        app: &AppRow,
        mut claims: Map<String, Value>,
        ttl: i64,
        family: Option<String>,
        opts: &IssueOptions,
    ) -> Result<Issued, TokenError> {
        let mut key = self
            .inner
            .registry
            .current(&app.id)
            .ok_or(TokenError::NoCurrentKey)?;
        let now = self.now();
        let jti = monotonic_ulid().to_string();
        let nbf = now + app.token_nbf;
        let exp = now + ttl;
        let sub_sha256 = claims.get("sub").and_then(Value::as_str).map(digest);
        claims.insert("iss".into(), opts.issuer.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), nbf.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), jti.clone().into());
        if opts.with_jid {
            claims.insert("jid".into(), jti.clone().into());
        }
        let refresh_exp = family.as_ref().map(|_| now + app.refresh_ttl);
        let refresh_jwt = family.is_some() && opts.refresh == RefreshFormat::Jwt;
        // The Token Status List entry (issue 24): indexes from this replica's reserved
        // chunk, in memory; the ledger row below records them.
        let status = if app.status_list {
            let until = exp.max(refresh_exp.unwrap_or(0));
            let a = self
                .inner
                .status
                .allocate(app, if refresh_jwt { 2 } else { 1 }, until, now)
                .await?;
            let entry = StatusEntry {
                list: a.list,
                idx: a.idx[0],
                refresh_idx: a.idx.get(1).copied(),
            };
            claims.insert(
                "status".into(),
                json!({"status_list": {"idx": entry.idx, "uri": list_uri(&opts.issuer, a.n)}}),
            );
            Some((entry, a.n))
        } else {
            None
        };
        let mut token = self.sign(&key, "JWT", &claims).await?;
        // A revocation may have committed while we signed: a revoked key leaves the
        // registry, and a token it signed is never handed out. Sign again with the key
        // that is current now.
        for _ in 0..3 {
            if self.inner.registry.key(&key.row.kid).is_some() {
                break;
            }
            key = self
                .inner
                .registry
                .current(&app.id)
                .ok_or(TokenError::NoCurrentKey)?;
            token = self.sign(&key, "JWT", &claims).await?;
        }
        if self.inner.registry.key(&key.row.kid).is_none() {
            return Err(TokenError::NoCurrentKey);
        }
        let (refresh_token, refresh_exp) = match (&family, refresh_exp) {
            (Some(_), Some(rexp)) => {
                let rt = match opts.refresh {
                    RefreshFormat::Opaque => Secret::generate(REFRESH_PREFIX),
                    RefreshFormat::Jwt => {
                        let mut rc = Map::new();
                        rc.insert("iss".into(), opts.issuer.clone().into());
                        rc.insert("iat".into(), now.into());
                        rc.insert("nbf".into(), (now + app.refresh_nbf).into());
                        rc.insert("exp".into(), rexp.into());
                        rc.insert("jti".into(), monotonic_ulid().to_string().into());
                        rc.insert("jid".into(), jti.clone().into());
                        rc.insert("type".into(), "refresh".into());
                        if let Some((
                            StatusEntry {
                                refresh_idx: Some(i),
                                ..
                            },
                            n,
                        )) = status
                        {
                            rc.insert(
                                "status".into(),
                                json!({"status_list": {"idx": i, "uri": list_uri(&opts.issuer, n)}}),
                            );
                        }
                        Secret::from_string(self.sign(&key, "refresh+jwt", &rc).await?)
                    }
                };
                (Some(rt), Some(rexp))
            }
            _ => (None, None),
        };
        let row = LedgerRow {
            jti: jti.clone(),
            app_id: app.id.clone(),
            kid: key.row.kid.to_string(),
            sub_sha256,
            iat: now,
            exp,
            family,
            refresh_exp,
            meta: opts.meta.as_ref().map(Value::to_string),
            status: status.map(|(e, _)| e),
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        self.inner
            .ledger
            .send((row, ack_tx))
            .await
            .map_err(|_| TokenError::Ledger("ledger writer stopped".into()))?;
        ack_rx
            .await
            .map_err(|_| TokenError::Ledger("ledger writer stopped".into()))?
            .map_err(TokenError::Ledger)?;
        Ok(Issued {
            token,
            kid: key.row.kid,
            jti,
            iat: now,
            nbf,
            exp,
            refresh_token,
            refresh_exp,
        })
    }

    /// Exchange a refresh token (single use) for a new pair. Presenting a spent one
    /// revokes its whole family.
    ///
    /// # Errors
    /// [`TokenError::InvalidRefresh`], [`TokenError::RefreshReused`], HSM and store failures.
    #[instrument(skip_all, fields(app_id = %app.id))]
    pub async fn refresh(
        &self,
        app: &AppRow,
        refresh_token: &str,
        opts: &IssueOptions,
    ) -> Result<Issued, TokenError> {
        let store = &self.inner.store;
        let hash = digest(refresh_token.trim());
        let now = self.now();
        // Spend the token first, in a short transaction: two concurrent exchanges of one
        // token cannot both pass the compare-and-swap.
        let mut tx = store.begin().await?;
        let row = store
            .refresh(&mut tx, &hash)
            .await?
            .ok_or(TokenError::InvalidRefresh)?;
        if row.app_id != app.id || row.revoked_at.is_some() || row.exp <= now {
            return Err(TokenError::InvalidRefresh);
        }
        if row.used_at.is_some() || !store.use_refresh(&mut tx, &hash, now).await? {
            // Wait for any exchange of this family in flight, so its new token is revoked too.
            store
                .lock_refresh_family(&mut tx, &row.family, &hash)
                .await?;
            let denied = store.revoke_family(&mut tx, &row.family, now).await?;
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
                    serde_json::json!({"family": row.family}),
                )
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            for (jti, exp) in denied {
                self.inner.registry.denied(jti, exp).await;
            }
            warn!(family = %row.family, "refresh token reuse: family revoked");
            return Err(TokenError::RefreshReused);
        }
        // Logged out or flushed since: the refresh token died with its access token.
        let access_rejected = Ulid::from_string(&row.jti)
            .map_or(true, |j| self.cut_off(app, row.sub_sha256.as_deref(), j));
        if access_rejected {
            return Err(TokenError::InvalidRefresh);
        }
        tx.commit().await?;
        // The token is spent. Until the new pair is stored, a failure gives it back, so
        // the client's retry is not taken for reuse (which would end its session). The
        // exchange runs in a task of its own: a client that goes away mid-way cannot stop
        // it between spending the token and storing (or giving back) the new one, which
        // would turn its retry into a false reuse that revokes the whole family.
        let this = self.clone();
        let app = app.clone();
        let opts = opts.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::audit::carry(async move {
            let result = this.exchange(&app, &row, &hash, &opts).await;
            if let Err(e) = &result
                && !matches!(e, TokenError::RefreshReused)
            {
                let _ = this.inner.store.unuse_refresh(&hash).await;
            }
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
        }));
        answered.await.map_err(|_| {
            TokenError::Store(StoreError::corrupt(
                "the refresh exchange task failed".to_owned(),
            ))
        })?
    }

    /// The second half of [`Self::refresh`]: sign the new pair, then store its refresh
    /// token and retire the old access token, unless the family was revoked meanwhile.
    async fn exchange(
        &self,
        app: &AppRow,
        row: &RefreshRow,
        hash: &str,
        opts: &IssueOptions,
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
                    },
                )
                .await?;
        }
        // Refreshing retires the access token it was issued with.
        if let Some(old) = &old {
            store.deny_jti(&mut tx, &old.jti, &app.id, old.exp).await?;
        }
        tx.commit().await?;
        if let Some(old) = old {
            self.inner.registry.denied(old.jti, old.exp).await;
        }
        Ok(issued)
    }

    /// Whether a token with this jti (and subject digest) falls before a cut-off.
    fn cut_off(&self, app: &AppRow, sub_sha256: Option<&str>, jti: Ulid) -> bool {
        if app
            .cutoff
            .as_deref()
            .and_then(|c| Ulid::from_string(c).ok())
            .is_some_and(|c| jti < c)
        {
            return true;
        }
        sub_sha256
            .and_then(|s| self.inner.registry.subject_cutoff(&app.id, s))
            .is_some_and(|c| jti < c)
    }

    /// Sign a probe with some app's current key: whether the service can sign right now.
    /// `Ok(false)` when there is no app to sign for.
    ///
    /// # Errors
    /// The HSM failure that prevents signing.
    pub async fn probe(&self) -> Result<bool, HsmError> {
        let Some(key) = self.inner.registry.apps().iter().find_map(|a| {
            // An app whose algorithm the token cannot sign with (a store moved to
            // another token) would keep the service unready for nothing.
            self.inner
                .registry
                .current(&a.id)
                .filter(|k| self.inner.hsm.signs(k.row.algorithm))
        }) else {
            return Ok(false);
        };
        match self
            .inner
            .hsm
            .sign(key.row.kid, key.row.algorithm, b"readyz".to_vec())
            .await
        {
            Err(HsmError::KeyNotFound(k)) if self.inner.hsm.recover(k).await.unwrap_or(false) => {
                self.inner
                    .hsm
                    .sign(key.row.kid, key.row.algorithm, b"readyz".to_vec())
                    .await?;
            }
            other => {
                other?;
            }
        }
        Ok(true)
    }

    /// Verify `token` for `app`: its claims if active now, else why not.
    pub async fn verify(
        &self,
        app: &AppRow,
        issuers: &Issuers,
        token: &str,
    ) -> Result<Map<String, Value>, Rejection> {
        let c = parse(token.trim()).ok_or(Rejection::Malformed)?;
        if c.header.crit.is_some() {
            return Err(Rejection::Critical);
        }
        if c.header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT") && !t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err(Rejection::WrongType);
        }
        let alg: Algorithm = c.header.alg.parse().map_err(|_| Rejection::Algorithm)?;
        let kid: Kid = c
            .header
            .kid
            .as_deref()
            .and_then(|k| k.parse().ok())
            .ok_or(Rejection::UnknownKey)?;
        let key = self
            .inner
            .registry
            .key_or_load(&kid)
            .await
            .ok()
            .flatten()
            .ok_or(Rejection::UnknownKey)?;
        if key.row.app_id.as_deref() != Some(app.id.as_str()) {
            return Err(Rejection::UnknownKey);
        }
        if key.row.algorithm != alg {
            return Err(Rejection::Algorithm);
        }
        let now = self.now();
        match key.row.state {
            KeyState::Next | KeyState::Current => {}
            KeyState::Previous => {
                let until = key.row.deactivated_at.unwrap_or(0) + app.verification_ttl;
                if now >= until {
                    return Err(Rejection::KeyInactive);
                }
            }
            _ => return Err(Rejection::KeyInactive),
        }
        if !key
            .verifier
            .verify(c.signing_input.as_bytes(), &c.signature)
        {
            return Err(Rejection::Signature);
        }
        let mut claims = c.claims;
        let jwtplus = super::legacy::jwtplus_token(app, &key.row, &mut claims)?;
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        match num("exp") {
            Some(exp) if exp > now => {}
            _ => return Err(Rejection::Expired),
        }
        if num("nbf").is_some_and(|nbf| nbf > now) {
            return Err(Rejection::NotYetValid);
        }
        if !jwtplus
            && !claims
                .get("iss")
                .and_then(Value::as_str)
                .is_some_and(|iss| issuers.accepts(&app.id, iss))
        {
            return Err(Rejection::Issuer);
        }
        let jti_str = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or(Rejection::NoJti)?;
        let jti = Ulid::from_string(jti_str).map_err(|_| Rejection::NoJti)?;
        if self.inner.registry.is_denied(jti_str) {
            return Err(Rejection::Revoked);
        }
        let sub = claims.get("sub").and_then(Value::as_str).map(digest);
        if app
            .cutoff
            .as_deref()
            .and_then(|c| Ulid::from_string(c).ok())
            .is_some_and(|c| jti < c)
        {
            return Err(Rejection::CutOff);
        }
        if sub
            .as_deref()
            .and_then(|s| self.inner.registry.subject_cutoff(&app.id, s))
            .is_some_and(|c| jti < c)
        {
            return Err(Rejection::LoggedOut);
        }
        let mut out = claims;
        out.insert("kid".into(), kid.to_string().into());
        Ok(out)
    }

    /// RFC 7009: deny-list a token of `app` (a refresh token revokes its family). Unknown or
    /// invalid tokens are ignored, as the RFC says.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke(
        &self,
        app: &AppRow,
        issuers: &Issuers,
        token: &str,
    ) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let now = self.now();
        let hash = digest(token.trim());
        let verified = self.verify(app, issuers, token).await;
        let mut tx = store.begin().await?;
        if let Some(r) = store.refresh(&mut tx, &hash).await?
            && r.app_id == app.id
        {
            let denied = store.revoke_family(&mut tx, &r.family, now).await?;
            for (jti, exp) in &denied {
                store.deny_jti(&mut tx, jti, &app.id, *exp).await?;
            }
            self.inner
                .audit
                .record_in(
                    &mut tx,
                    "token.revoke",
                    &app.id,
                    "ok",
                    serde_json::json!({"refresh_family": r.family}),
                )
                .await?;
            tx.commit().await?;
            self.inner.audit.committed();
            for (jti, exp) in denied {
                self.inner.registry.denied(jti, exp).await;
            }
            crate::metrics::revocation("token");
            return Ok(());
        }
        let Ok(claims) = verified else {
            return Ok(());
        };
        let (Some(jti), Some(exp)) = (
            claims.get("jti").and_then(Value::as_str),
            claims.get("exp").and_then(Value::as_i64),
        ) else {
            return Ok(());
        };
        store.deny_jti(&mut tx, jti, &app.id, exp).await?;
        self.inner
            .audit
            .record_in(
                &mut tx,
                "token.revoke",
                &app.id,
                "ok",
                serde_json::json!({"jti": jti}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        self.inner.registry.denied(jti.to_owned(), exp).await;
        crate::metrics::revocation("token");
        Ok(())
    }

    /// Log a subject out everywhere: every token of `sub` issued so far is rejected and its
    /// refresh tokens revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn logout_subject(&self, app: &AppRow, sub: &str) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let now = self.now();
        let sub_hash = digest(sub);
        let cutoff = monotonic_ulid();
        let until = now + app.token_ttl.max(app.refresh_ttl) + 1;
        let mut tx = store.begin().await?;
        store
            .set_subject_cutoff(&mut tx, &app.id, &sub_hash, &cutoff.to_string(), until)
            .await?;
        store
            .revoke_subject_refresh(&mut tx, &app.id, &sub_hash, now)
            .await?;
        self.inner
            .audit
            .record_in(
                &mut tx,
                "subject.logout",
                &app.id,
                "ok",
                serde_json::json!({"sub_sha256": sub_hash}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        self.inner
            .registry
            .subject_logged_out(&app.id, &sub_hash, cutoff)
            .await;
        crate::metrics::revocation("subject");
        Ok(())
    }

    /// Reject every token of the app issued so far.
    ///
    /// # Errors
    /// Store failures.
    pub async fn flush(&self, app: &AppRow) -> Result<(), TokenError> {
        let store = &self.inner.store;
        let cutoff = monotonic_ulid().to_string();
        let mut tx = store.begin().await?;
        store.set_cutoff(&mut tx, &app.id, &cutoff).await?;
        store
            .revoke_app_refresh(&mut tx, &app.id, self.now())
            .await?;
        self.inner
            .audit
            .record_in(&mut tx, "app.flush", &app.id, "ok", serde_json::json!({}))
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        self.inner
            .registry
            .patch_app(&app.id, |a| a.cutoff = Some(cutoff));
        crate::metrics::revocation("app");
        let registry = self.inner.registry.clone();
        let id = app.id.clone();
        let _ = tokio::spawn(async move { registry.app_changed(&id).await }).await;
        Ok(())
    }

    /// A subject's live sessions, from the ledger, without revoked ones.
    ///
    /// # Errors
    /// Store failures.
    pub async fn sessions(&self, app: &AppRow, sub: &str) -> Result<Vec<SessionRow>, TokenError> {
        let sub_hash = digest(sub);
        let rows = self
            .inner
            .store
            .sessions(&app.id, &sub_hash, self.now())
            .await?;
        Ok(rows
            .into_iter()
            .filter(|r| {
                Ulid::from_string(&r.jti).is_ok_and(|j| !self.cut_off(app, Some(&sub_hash), j))
                    && !self.inner.registry.is_denied(&r.jti)
            })
            .collect())
    }

    /// Log one session out: deny-list its access token and revoke its refresh family.
    ///
    /// # Errors
    /// Store failures.
    pub async fn end_session(&self, app: &AppRow, jti: &str) -> Result<bool, TokenError> {
        let store = &self.inner.store;
        let Some(row) = store.ledger_row(jti).await? else {
            return Ok(false);
        };
        if row.app_id != app.id {
            return Ok(false);
        }
        let now = self.now();
        let mut tx = store.begin().await?;
        store.deny_jti(&mut tx, &row.jti, &app.id, row.exp).await?;
        let mut denied = vec![(row.jti.clone(), row.exp)];
        if let Some(f) = &row.family {
            for (j, e) in store.revoke_family(&mut tx, f, now).await? {
                store.deny_jti(&mut tx, &j, &app.id, e).await?;
                denied.push((j, e));
            }
        }
        self.inner
            .audit
            .record_in(
                &mut tx,
                "session.end",
                &app.id,
                "ok",
                serde_json::json!({"jti": jti}),
            )
            .await?;
        tx.commit().await?;
        self.inner.audit.committed();
        for (j, e) in denied {
            self.inner.registry.denied(j, e).await;
        }
        crate::metrics::revocation("token");
        Ok(true)
    }
}

impl From<sqlx::Error> for TokenError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}
