//! The audit log: every rotation, revocation, key creation and destruction, root-key
//! rotation, access-token regeneration, app change and authentication failure, as an
//! append-only, hash-chained record in the store, written in the transaction of the change
//! it describes. Moments later the sealer gives each record an HMAC computed in the HSM
//! with a secret key that never leaves it, and moves a high-water mark kept in the HSM;
//! `hsm-rotator audit verify` (which needs the HSM) checks the chain, every seal and the
//! mark, and names the first broken record. Someone who can write the database but not use
//! the HSM can neither recompute a seal nor delete seals unnoticed. Nothing secret is
//! recorded.
//!
//! Who did it and in which request come from a task-local context set by the HTTP
//! middleware (request id), the auth checks (actor) and the background tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::hsm::Hsm;
use crate::keys::monotonic_ulid;
use crate::store::audit::{AuditRow, GENESIS, record_hash};
use crate::store::{Store, StoreError, Tx};

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

/// `f` with the current audit context (actor, request id), for a task spawned to finish
/// work that a client going away must not cancel: its records still name who asked.
pub fn carry<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    let ctx = CTX.try_with(Arc::clone).ok();
    async move {
        match ctx {
            Some(c) => CTX.scope(c, f).await,
            None => f.await,
        }
    }
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
    /// Woken on every append, so the sealer seals within moments.
    appended: Arc<Notify>,
    /// One seal pass at a time in this process.
    sealing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

/// How often the sealer runs when nothing wakes it (it also runs after every append).
pub const SEAL_EVERY: Duration = Duration::from_secs(5);

/// How long the sealer, woken by an append, waits for more before sealing.
const SEAL_GATHER: Duration = Duration::from_millis(200);

impl Audit {
    /// A writer on `store`.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            appended: Arc::default(),
            sealing: Arc::default(),
        }
    }

    fn row(&self, action: &str, target: &str, outcome: &str, details: &Value) -> AuditRow {
        let ctx = current();
        AuditRow {
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
        }
    }

    /// Append a record on its own, for events that change nothing in the store (an
    /// authentication failure, an HSM object destroyed). A failure to write is logged
    /// loudly; the event it describes has already happened. Changes to the store record in
    /// their own transaction instead ([`Self::record_in`]).
    pub async fn record(&self, action: &str, target: &str, outcome: &str, details: Value) {
        let row = self.row(action, target, outcome, &details);
        match self.store.append_audit(row).await {
            Ok(_) => self.appended.notify_one(),
            Err(e) => {
                error!(action, target, error = %e, "AUDIT RECORD LOST: could not append to the audit log");
            }
        }
    }

    /// Append a record inside the transaction of the change it describes: both commit or
    /// neither does, so no timeout or dropped connection between them can keep the change
    /// and lose its record. Call it last before committing (on PostgreSQL it holds the
    /// chain-head lock until `tx` ends), then [`Self::committed`] after the commit.
    ///
    /// # Errors
    /// Database failures (the caller's transaction then fails as a whole).
    pub async fn record_in(
        &self,
        tx: &mut Tx,
        action: &str,
        target: &str,
        outcome: &str,
        details: Value,
    ) -> Result<(), StoreError> {
        let row = self.row(action, target, outcome, &details);
        self.store.append_audit_tx(tx, row).await?;
        crate::metrics::audit_appended();
        Ok(())
    }

    /// A transaction holding records committed: wake the sealer.
    pub fn committed(&self) {
        self.appended.notify_one();
    }

    /// Seal every record appended since the last pass: each gets its HMAC, computed in the
    /// HSM with the store's audit key, and the HSM's high-water mark moves to the newest.
    /// The first pass on a token without the key makes it and seals the whole existing log
    /// (after migration 0008, or on a new store), then records that it did
    /// (`audit.anchor`). A pass refuses to seal over a log that does not follow on from
    /// what is sealed (records or seals edited or deleted): `audit verify` reports it.
    /// Returns the newest sealed seq, if it moved.
    ///
    /// # Errors
    /// Store or HSM failures; [`AuditError::Corrupt`] when the log was tampered with.
    pub async fn seal(&self, hsm: &Hsm) -> Result<Option<i64>, AuditError> {
        let _one = self.sealing.lock().await;
        let Some(head) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let last = self.store.last_audit_mac().await?;
        let has_key = hsm.audit_macs(Vec::new(), false).await?.is_some();
        if !has_key && last > 0 {
            return Err(AuditError::Corrupt(
                "the log has seals but the HSM has no audit MAC key (another token?)".into(),
            ));
        }
        if has_key && let Some((mark, mark_mac)) = read_mark(hsm).await? {
            let stored = self.store.audit_macs(mark, mark).await?;
            if stored.first().map(|(_, m)| m) != Some(&mark_mac) {
                return Err(AuditError::Corrupt(format!(
                    "the seal of record {mark}, which the HSM's mark vouches for, is missing or altered; not sealing over it"
                )));
            }
        }
        if last >= head.seq {
            return Ok(None);
        }
        let mut prev = match last {
            0 => GENESIS.to_owned(),
            n => match self.store.audit_record(n).await? {
                Some(r) => r.hash,
                None => {
                    return Err(AuditError::Corrupt(format!(
                        "sealed record {n} is missing; not sealing over it"
                    )));
                }
            },
        };
        let mut after = last;
        let mut anchored = false;
        let mut newest = None;
        loop {
            let page = self.store.audit_page(after, 1000).await?;
            if page.is_empty() {
                break;
            }
            let mut messages = Vec::with_capacity(page.len());
            for r in &page {
                if r.seq != after + 1 || r.prev_hash != prev || record_hash(r) != r.hash {
                    return Err(AuditError::Corrupt(format!(
                        "record {} does not follow on from record {}; not sealing it",
                        after + 1,
                        after
                    )));
                }
                messages.push(mac_input(r));
                prev = r.hash.clone();
                after = r.seq;
            }
            let Some((macs, created)) = hsm.audit_macs(messages, true).await? else {
                return Err(AuditError::Corrupt("the HSM made no audit MAC key".into()));
            };
            anchored |= created;
            let rows: Vec<(i64, String)> = page
                .iter()
                .zip(&macs)
                .map(|(r, m)| (r.seq, crate::pubkey::hex(m)))
                .collect();
            self.store
                .insert_audit_macs(&rows, self.clock.now())
                .await?;
            if let Some((seq, mac)) = rows.last() {
                hsm.set_audit_mark(format!("{seq}:{mac}").into_bytes())
                    .await?;
                newest = Some(*seq);
            }
        }
        if anchored && let Some(n) = newest {
            info!(
                records = n,
                "audit log anchored in the HSM: every existing record sealed"
            );
            self.record(
                "audit.anchor",
                "audit",
                "ok",
                serde_json::json!({"sealed_records": n, "reason": "audit MAC key created in the HSM"}),
            )
            .await;
        }
        Ok(newest)
    }

    /// Seal after every append (and every [`SEAL_EVERY`]) until the process ends. With
    /// several replicas, the one holding the scheduler lease at the time seals.
    pub async fn run_sealer(self, hsm: Hsm) {
        loop {
            if tokio::time::timeout(SEAL_EVERY, self.appended.notified())
                .await
                .is_ok()
            {
                // Let a burst of appends gather into one pass: each pass moves the mark in
                // the token (an object written), so fewer passes spare the token.
                tokio::time::sleep(SEAL_GATHER).await;
            }
            let lease = match self.store.scheduler_lease().await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, "could not take the lease to seal the audit log; will retry");
                    continue;
                }
            };
            if let Err(e) = self.seal(&hsm).await {
                match e {
                    AuditError::Corrupt(_) => error!(error = %e, "AUDIT LOG NOT SEALED"),
                    _ => warn!(error = %e, "could not seal the audit log; will retry"),
                }
            }
            lease.release().await;
        }
    }
}

/// What an audit record's HMAC covers: its seq, its time and its hash (which covers every
/// field and the previous record's hash).
fn mac_input(r: &AuditRow) -> Vec<u8> {
    format!("hsm-rotator audit v1\n{}\n{}\n{}", r.seq, r.at, r.hash).into_bytes()
}

/// The HSM's high-water mark: the newest sealed seq and its MAC (hex).
async fn read_mark(hsm: &Hsm) -> Result<Option<(i64, String)>, AuditError> {
    let mut best: Option<(i64, String)> = None;
    for v in hsm.audit_mark().await? {
        let m = String::from_utf8(v)
            .ok()
            .and_then(|s| {
                let (seq, mac) = s.split_once(':')?;
                Some((seq.parse::<i64>().ok()?, mac.to_owned()))
            })
            .ok_or_else(|| AuditError::Corrupt("audit mark unreadable".into()))?;
        if best.as_ref().is_none_or(|b| m.0 > b.0) {
            best = Some(m);
        }
    }
    Ok(best)
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
    /// Unreadable or tampered audit data.
    #[error("audit data unreadable: {0}")]
    Corrupt(String),
}

/// What `audit verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Records checked.
    pub records: i64,
    /// Records whose HSM MAC verified.
    pub seals: usize,
    /// Records not sealed yet (the newest ones, younger than the allowed lag).
    pub unsealed: i64,
    /// The newest sealed record as the HSM's high-water mark says (`None`: no mark yet).
    pub hsm_mark: Option<i64>,
    /// The first problem: `(seq, what)`.
    pub broken: Option<(i64, String)>,
}

/// Check the whole chain and every record's HSM MAC: fails on the first record that was
/// edited, deleted, reordered or forged, on seals deleted under the HSM's high-water
/// mark, and on a record left unsealed longer than `max_lag` seconds (as of `now`).
///
/// # Errors
/// Store or HSM failures (a broken chain is a result, not an error).
pub async fn verify(
    store: &Store,
    hsm: &Hsm,
    max_lag: i64,
    now: i64,
) -> Result<Verification, AuditError> {
    let mut v = Verification {
        records: 0,
        seals: 0,
        unsealed: 0,
        hsm_mark: None,
        broken: None,
    };
    let broken = |mut v: Verification, seq: i64, what: String| {
        v.broken = Some((seq, what));
        Ok(v)
    };
    let has_key = hsm.audit_macs(Vec::new(), false).await?.is_some();
    // The mark is read before the seals: the sealer stores seals before it moves the mark,
    // so every seal the mark read here vouches for is in the store by the time the pages
    // are read. Read after them, a pass running meanwhile would look like deleted seals.
    let hsm_mark = match has_key {
        true => read_mark(hsm).await?,
        false => None,
    };
    let mut prev = GENESIS.to_owned();
    let mut after = 0;
    // The first record without a seal: `(seq, at)`.
    let mut first_unsealed: Option<(i64, i64)> = None;
    // The unsealed record with the oldest time: `(seq, at)`.
    let mut oldest_unsealed: Option<(i64, i64)> = None;
    loop {
        let page = store.audit_page(after, 1000).await?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            break;
        };
        // The first record without a seal in this page. A seal after it in the same page
        // means a seal was deleted: the page's seals are one read, and the sealer stores a
        // pass's seals in order. Across pages it does not: the sealer may have sealed the
        // earlier page's tail between the two reads (what is deleted there stays unsealed,
        // which the mark and the lag checks below catch).
        let mut unsealed_in_page: Option<i64> = None;
        let stored: std::collections::HashMap<i64, String> = store
            .audit_macs(first.seq, last.seq)
            .await?
            .into_iter()
            .collect();
        let expected = match hsm
            .audit_macs(page.iter().map(mac_input).collect(), false)
            .await?
        {
            Some((macs, _)) => macs,
            None => Vec::new(),
        };
        for (i, r) in page.iter().enumerate() {
            let seq = after + 1;
            if r.seq != seq {
                return broken(
                    v,
                    seq,
                    format!("record {seq} is missing (next present is {})", r.seq),
                );
            }
            if r.prev_hash != prev {
                return broken(
                    v,
                    seq,
                    format!(
                        "record {seq} ({}) does not follow record {}: prev_hash mismatch",
                        r.id,
                        seq - 1
                    ),
                );
            }
            if record_hash(r) != r.hash {
                return broken(
                    v,
                    seq,
                    format!(
                        "record {seq} ({}) was altered: its hash does not match its fields",
                        r.id
                    ),
                );
            }
            match (stored.get(&seq), expected.get(i)) {
                (Some(mac), Some(want)) => {
                    if let Some(u) = unsealed_in_page {
                        return broken(
                            v,
                            u,
                            format!(
                                "record {u} has no seal but record {seq} after it has one: seals were deleted"
                            ),
                        );
                    }
                    if !bool::from(subtle::ConstantTimeEq::ct_eq(
                        mac.as_bytes(),
                        crate::pubkey::hex(want).as_bytes(),
                    )) {
                        return broken(
                            v,
                            seq,
                            format!(
                                "record {seq} ({}) does not match its HSM seal: altered, renumbered or forged",
                                r.id
                            ),
                        );
                    }
                    v.seals += 1;
                }
                (Some(_), None) => {
                    return broken(
                        v,
                        seq,
                        format!(
                            "record {seq} has a seal but the HSM has no audit MAC key to check it with"
                        ),
                    );
                }
                (None, _) => {
                    if first_unsealed.is_none() {
                        first_unsealed = Some((seq, r.at));
                    }
                    unsealed_in_page.get_or_insert(seq);
                    // Times are not trusted to grow (a forged record may carry any).
                    if oldest_unsealed.is_none_or(|(_, at)| r.at < at) {
                        oldest_unsealed = Some((seq, r.at));
                    }
                    v.unsealed += 1;
                }
            }
            prev = r.hash.clone();
            after = seq;
            v.records = seq;
        }
    }
    let records = v.records;
    // A record appended and sealed after the last page was read is not missing: it exists.
    if store.last_audit_mac().await? > records && store.audit_record(records + 1).await?.is_none() {
        return broken(
            v,
            records + 1,
            format!(
                "record {} is missing: it was sealed, then deleted",
                records + 1
            ),
        );
    }
    if let Some((mark, _)) = hsm_mark {
        v.hsm_mark = Some(mark);
        if let Some((u, _)) = first_unsealed
            && u <= mark
        {
            return broken(
                v,
                u,
                format!(
                    "record {u} has no seal, yet the HSM's mark says records up to {mark} were sealed: seals were deleted"
                ),
            );
        }
        if mark > records {
            return broken(
                v,
                records + 1,
                format!(
                    "records {} to {mark} are missing: the HSM's mark says they were sealed",
                    records + 1
                ),
            );
        }
    }
    if let Some((u, at)) = oldest_unsealed
        && now - at > max_lag
    {
        let what = if v.seals == 0 {
            format!(
                "no seal: record {u} and every record after it were never sealed in the HSM ({}s old; audit_seal_max_lag is {max_lag}s)",
                now - at
            )
        } else {
            format!(
                "record {u} is still unsealed {}s after it was written (audit_seal_max_lag is {max_lag}s): the sealer is not running, or the record was added outside the service",
                now - at
            )
        };
        return broken(v, u, what);
    }
    Ok(v)
}
