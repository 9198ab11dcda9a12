//! Issuance: building the claims, signing in the HSM with the app's `current` key, the
//! refresh token and the ledger row; and the readiness probe that signs.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tracing::instrument;

use super::{IssueOptions, Issued, RefreshFormat, TokenError, TokenService};
use crate::auth::{REFRESH_PREFIX, Secret, digest};
use crate::hsm::HsmError;
use crate::jwt::{RESERVED_CLAIMS, b64};
use crate::keys::{LiveKey, monotonic_ulid, token_ulid};
use crate::statuslist::list_uri;
use crate::store::{AppRow, LedgerRow, RefreshRow, StatusEntry};

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

    /// The app's current key; [`TokenError::CurrentKeyRefused`] when the HSM did not
    /// confirm it (see [`crate::keys::Registry`]).
    fn current_key(&self, app_id: &str) -> Result<Arc<LiveKey>, TokenError> {
        match self.inner.registry.current(app_id) {
            Some(k) => Ok(k),
            None if self.inner.registry.refused_current(app_id).is_some() => {
                Err(TokenError::CurrentKeyRefused)
            }
            None => Err(TokenError::NoCurrentKey),
        }
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
        let key = self.current_key(app_id)?;
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
                        parent_sha256: None,
                        superseded_at: None,
                    },
                )
                .await?;
            tx.commit().await?;
        }
        Ok(issued)
    }

    /// Sign an access token (and a refresh token when `family` is set) and write the ledger.
    pub(super) async fn sign_pair(
        &self,
        app: &AppRow,
        mut claims: Map<String, Value>,
        ttl: i64,
        family: Option<String>,
        opts: &IssueOptions,
    ) -> Result<Issued, TokenError> {
        let mut key = self.current_key(&app.id)?;
        // The database's clock (through this replica's measured offset): flush and logout
        // cut-offs are read from it, so a token's id sorts on the same time line.
        let now_ms = self.inner.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let jti = token_ulid(now_ms).to_string();
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
            key = self.current_key(&app.id)?;
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
}
