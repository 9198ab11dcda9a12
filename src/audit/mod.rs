//! The audit log: every rotation, revocation, key creation and destruction, root-key
//! rotation, access-token regeneration, app change and authentication failure, as an
//! append-only, hash-chained record in the store. The chain head is signed from time to
//! time by a dedicated audit key in the HSM; `hsm-rotator audit verify` checks the chain
//! and the signatures and names the first broken record. Nothing secret is recorded.
//!
//! Who did it and in which request come from a task-local context set by the HTTP
//! middleware (request id), the auth checks (actor) and the background tasks.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{error, info};

use crate::alg::{Algorithm, KeySpec};
use crate::clock::Clock;
use crate::hsm::Hsm;
use crate::keys::{Kid, monotonic_ulid};
use crate::pubkey::PublicKey;
use crate::store::audit::{AuditRow, GENESIS, record_hash};
use crate::store::{Store, StoreError};

/// Setting keys of the audit key.
const AUDIT_KID: &str = "audit_kid";
const AUDIT_SPKI: &str = "audit_spki_hex";

#[derive(Debug, Clone, Default)]
struct Ctx {
    actor: String,
    request_id: String,
    client: Option<std::net::IpAddr>,
}

tokio::task_local! {
    static CTX: Arc<Mutex<Ctx>>;
}

/// Run `f` with an audit context (actor and request id).
pub async fn scope<F: std::future::Future>(actor: &str, request_id: &str, f: F) -> F::Output {
    request_scope(actor, request_id, None, f).await
}

/// Run `f` with an audit context that also names the client's address.
pub async fn request_scope<F: std::future::Future>(
    actor: &str,
    request_id: &str,
    client: Option<std::net::IpAddr>,
    f: F,
) -> F::Output {
    let ctx = Arc::new(Mutex::new(Ctx {
        actor: actor.to_owned(),
        request_id: request_id.to_owned(),
        client,
    }));
    CTX.scope(ctx, f).await
}

/// The address of the client of the current request, if known.
pub fn client() -> Option<std::net::IpAddr> {
    current().client
}

/// Name the actor of the current request (after authentication).
pub fn set_actor(actor: &str) {
    let _ = CTX.try_with(|c| {
        if let Ok(mut c) = c.lock() {
            c.actor = actor.to_owned();
        }
    });
}

fn current() -> Ctx {
    CTX.try_with(|c| c.lock().map(|c| c.clone()).unwrap_or_default())
        .unwrap_or_else(|_| Ctx {
            actor: "system".into(),
            request_id: String::new(),
            client: None,
        })
}

/// The audit log writer. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    /// A writer on `store`.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Append a record. A failure to write is logged loudly; the action it describes has
    /// already happened and is not undone.
    pub async fn record(&self, action: &str, target: &str, outcome: &str, details: Value) {
        let ctx = current();
        let row = AuditRow {
            seq: 0,
            id: monotonic_ulid().to_string(),
            at: self.clock.now(),
            actor: ctx.actor,
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            request_id: ctx.request_id,
            details: details.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        if let Err(e) = self.store.append_audit(row).await {
            error!(action, target, error = %e, "AUDIT RECORD LOST: could not append to the audit log");
        }
    }

    /// The audit key (created in the HSM on first use): its kid.
    async fn audit_key(&self, hsm: &Hsm) -> Result<Kid, AuditError> {
        if let Some(k) = self.store.setting(AUDIT_KID).await? {
            return k
                .parse()
                .map_err(|_| AuditError::Corrupt("audit_kid setting".into()));
        }
        let kid = Kid::generate();
        // The setting names the key before it exists, so the reconciler never sees an
        // object no row knows.
        if !self
            .store
            .insert_setting_if_absent(AUDIT_KID, &kid.to_string())
            .await?
        {
            return Box::pin(self.audit_key(hsm)).await;
        }
        let public = hsm.generate(kid, KeySpec::new(Algorithm::ES256, 0)).await?;
        let spki = public
            .to_spki_der()
            .map_err(|e| AuditError::Corrupt(e.to_string()))?;
        self.store
            .insert_setting_if_absent(AUDIT_SPKI, &crate::pubkey::hex(&spki))
            .await?;
        info!(%kid, "audit key created in the HSM");
        Ok(kid)
    }

    /// Sign the chain head with the audit key if it moved since the last seal.
    ///
    /// # Errors
    /// Store or HSM failures.
    pub async fn seal(&self, hsm: &Hsm) -> Result<Option<i64>, AuditError> {
        let Some(head) = self.store.audit_head().await? else {
            return Ok(None);
        };
        if self.store.last_seal().await? >= head.seq {
            return Ok(None);
        }
        let kid = self.audit_key(hsm).await?;
        let sig = hsm
            .sign(kid, Algorithm::ES256, head.hash.clone().into_bytes())
            .await?;
        self.store
            .insert_seal(
                head.seq,
                &head.hash,
                &kid.to_string(),
                &sig,
                self.clock.now(),
            )
            .await?;
        Ok(Some(head.seq))
    }

    /// The audit key's kid, if one exists (the reconciler must not take it for an orphan).
    ///
    /// # Errors
    /// Store failures.
    pub async fn audit_kid(store: &Store) -> Result<Option<Kid>, StoreError> {
        Ok(store.setting(AUDIT_KID).await?.and_then(|k| k.parse().ok()))
    }
}

/// Audit failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// HSM failure.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// Unreadable audit data.
    #[error("audit data unreadable: {0}")]
    Corrupt(String),
}

/// What `audit verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Records checked.
    pub records: i64,
    /// Seals whose signature verified.
    pub seals: usize,
    /// The first problem: `(seq, what)`.
    pub broken: Option<(i64, String)>,
}

/// Check the whole chain and every seal.
///
/// # Errors
/// Store failures (a broken chain is a result, not an error).
pub async fn verify(store: &Store) -> Result<Verification, AuditError> {
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_owned();
    let mut hashes = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 1000).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            after = r.seq;
            let broken = |what: String| Verification {
                records: expected_seq - 1,
                seals: 0,
                broken: Some((expected_seq, what)),
            };
            if r.seq != expected_seq {
                return Ok(broken(format!(
                    "record {expected_seq} is missing (next present is {})",
                    r.seq
                )));
            }
            if r.prev_hash != prev {
                return Ok(broken(format!(
                    "record {} ({}) does not follow record {}: prev_hash mismatch",
                    r.seq,
                    r.id,
                    r.seq - 1
                )));
            }
            if record_hash(&r) != r.hash {
                return Ok(broken(format!(
                    "record {} ({}) was altered: its hash does not match its fields",
                    r.seq, r.id
                )));
            }
            prev = r.hash.clone();
            hashes.insert(r.seq, r.hash);
            expected_seq += 1;
        }
    }
    let records = expected_seq - 1;
    let spki = store.setting(AUDIT_SPKI).await?;
    let mut seals = 0;
    for (seq, hash, _kid, sig) in store.seals().await? {
        let fail = |what: String| Verification {
            records,
            seals,
            broken: Some((seq, what)),
        };
        if hashes.get(&seq) != Some(&hash) {
            return Ok(fail(format!(
                "seal of record {seq} does not match the chain"
            )));
        }
        let Some(spki) = spki.as_deref().and_then(hex_decode) else {
            return Ok(fail("no audit public key to check seals with".into()));
        };
        let ok = PublicKey::from_spki_der(&spki)
            .ok()
            .and_then(|pk| crate::jwt::verify::Verifier::new(&pk, Algorithm::ES256).ok())
            .is_some_and(|v| v.verify(hash.as_bytes(), &sig));
        if !ok {
            return Ok(fail(format!(
                "seal of record {seq} has an invalid signature"
            )));
        }
        seals += 1;
    }
    Ok(Verification {
        records,
        seals,
        broken: None,
    })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}
