//! Token Status Lists (draft-ietf-oauth-status-list, issue 24): revocation that reaches
//! verifiers that never call us.
//!
//! An app with `status_list` on gives each token an index in one of its lists and the claim
//! `"status": {"status_list": {"idx": N, "uri": "<issuer>/statuslists/<n>"}}`. Each list is
//! published as a status list token (`typ` `statuslist+jwt`) signed in the HSM by the app's
//! current key: one bit per entry, 1 when the token is revoked, zlib-compressed
//! (RFC 1950), least significant bit first within a byte.
//!
//! - [`Allocator`] hands out indexes on the issuance path, in memory: each replica reserves
//!   a chunk of a list at a time (one store round trip per chunk) and takes its indexes in
//!   random order, so a verifier cannot count or link one subject's tokens by their
//!   indexes. A list is sized for twice the app's live tokens (a `token_ttl` of issuance at
//!   the app's rate) and reused only once every token in it has expired.
//! - [`Publisher`] computes the bits from the store (the ledger and every revocation
//!   grain: deny-list, app and subject cut-offs, key states, refresh tokens), so every
//!   replica computes the same list, and keeps the last signed list in the store, so every
//!   replica serves the same bytes. It re-signs a list at most once per
//!   `status_list_refresh`, in the background, when something was revoked (or the signed
//!   list is half way to its `exp`, or the app's current key changed).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde_json::{Map, Value, json};

use crate::clock::Clock;
use crate::jwt::{Issuers, TokenService, b64};
use crate::keys::Registry;
use crate::store::{AppRow, StatusChunk, StatusListRow, Store, StoreError};

/// Media type of a status list token.
pub const MEDIA_JWT: &str = "application/statuslist+jwt";
/// Media type of the unsigned status list (`{"bits": 1, "lst": ...}`).
pub const MEDIA_JSON: &str = "application/statuslist+json";
/// JOSE `typ` of a status list token.
pub const TYP: &str = "statuslist+jwt";
/// Seconds from signing to a status list token's `exp`; it is re-signed at half that age.
pub const LIFETIME: i64 = 3_600;

/// Largest status list token, bytes: the base64url of a list of [`MAX_BITS`] entries that
/// does not compress at all (2 MiB, 2.7 MiB encoded), with room for its header and claims.
pub const MAX_LIST_TOKEN_LEN: usize = 3 << 20;

/// Split and decode a status list token (up to [`MAX_LIST_TOKEN_LEN`] bytes; an access
/// token's bound, [`crate::jwt::MAX_TOKEN_LEN`], is far smaller than a list with a few
/// thousand revoked entries).
pub fn parse_list(token: &str) -> Option<crate::jwt::Compact<'_>> {
    crate::jwt::parse_bounded(token, MAX_LIST_TOKEN_LEN)
}

/// Smallest list, entries (2 KiB of bits before compression).
const MIN_BITS: i64 = 1 << 14;
/// Largest list, entries (2 MiB of bits before compression).
const MAX_BITS: i64 = 1 << 24;
/// Entries a replica reserves at a time.
const CHUNK: i64 = 4_096;
/// Seconds a replica keeps issuing from a reserved chunk.
const LEASE: i64 = 300;

/// The URI of list `n` of the app whose issuer is `issuer` (the `sub` of the list token).
pub fn list_uri(issuer: &str, n: i64) -> String {
    format!("{issuer}/statuslists/{n}")
}

/// base64url(zlib(bytes)): the `lst` of a list.
pub fn compress(bytes: &[u8]) -> String {
    b64(&miniz_oxide::deflate::compress_to_vec_zlib(bytes, 9))
}

/// The bytes of an `lst`, or `None` if it is not base64url zlib data.
pub fn decompress(lst: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let z = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(lst.trim_end_matches('='))
        .ok()?;
    // Bounded: a list never holds more than MAX_BITS entries of one bit.
    let max = usize::try_from(MAX_BITS / 8).unwrap_or(usize::MAX);
    miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&z, max).ok()
}

/// Bit `idx` of a one-bit list (least significant bit first), `None` past its end.
pub fn bit(bytes: &[u8], idx: u64) -> Option<u8> {
    let byte = bytes.get(usize::try_from(idx / 8).ok()?)?;
    Some((byte >> (idx % 8)) & 1)
}

fn set_bit(bytes: &mut [u8], idx: i64) {
    if let Ok(i) = usize::try_from(idx)
        && let Some(b) = bytes.get_mut(i / 8)
    {
        *b |= 1 << (i % 8);
    }
}

tokio::task_local! {
    static REVOKED: Cell<bool>;
}

/// Called by the registry whenever a revocation grain applies here: marks the request
/// being served (if any, see [`watch`]) as one that revoked something.
pub fn note_revocation() {
    let _ = REVOKED.try_with(|c| c.set(true));
}

/// Run `f` (a request), and say whether it revoked anything.
pub async fn watch<F: Future>(f: F) -> (F::Output, bool) {
    REVOKED
        .scope(Cell::new(false), async {
            let out = f.await;
            (out, REVOKED.with(Cell::get))
        })
        .await
}

/// The size of a new list for an app with `live` unexpired tokens: a power of two, at
/// least twice `live` (issuance over one `token_ttl` at the current rate, with room).
fn list_bits(live: i64) -> i64 {
    let want = live.saturating_mul(2).clamp(MIN_BITS, MAX_BITS);
    let mut bits = MIN_BITS;
    while bits < want {
        bits *= 2;
    }
    bits
}

/// A chunk this replica issues from.
#[derive(Debug)]
struct Held {
    chunk: StatusChunk,
    /// Indexes not handed out yet, in random order.
    free: Vec<i64>,
    /// Tokens valid past this may not go into the chunk (its list's `until` covers less).
    until: i64,
    /// Stop issuing from it then.
    lease_end: i64,
}

/// Indexes handed to one issuance: the list and one index per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The list's global id.
    pub list: i64,
    /// The list's number (in its URI).
    pub n: i64,
    /// The indexes (access token first).
    pub idx: Vec<i64>,
}

/// Index allocation on the issuance path (see the module documentation).
#[derive(Debug)]
pub struct Allocator {
    store: Store,
    held: Mutex<HashMap<String, Held>>,
    reserving: tokio::sync::Mutex<()>,
}

impl Allocator {
    /// An allocator with nothing reserved.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            held: Mutex::default(),
            reserving: tokio::sync::Mutex::new(()),
        }
    }

    fn take(&self, app_id: &str, count: usize, until: i64, now: i64) -> Option<Allocation> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let h = held.get_mut(app_id)?;
        if h.lease_end <= now || h.until < until || h.free.len() < count {
            return None;
        }
        let idx = h.free.split_off(h.free.len() - count);
        Some(Allocation {
            list: h.chunk.list,
            n: h.chunk.n,
            idx,
        })
    }

    /// `count` indexes of one list of `app` for tokens valid until `until`.
    ///
    /// # Errors
    /// Store failures while reserving a chunk.
    pub async fn allocate(
        &self,
        app: &AppRow,
        count: usize,
        until: i64,
        now: i64,
    ) -> Result<Allocation, StoreError> {
        if let Some(a) = self.take(&app.id, count, until, now) {
            return Ok(a);
        }
        let _one = self.reserving.lock().await;
        // Another issuance may have reserved while this one waited.
        if let Some(a) = self.take(&app.id, count, until, now) {
            return Ok(a);
        }
        let live = self
            .store
            .live_token_counts_per_app(Some(&app.id), now)
            .await?
            .get(&app.id)
            .copied()
            .unwrap_or(0);
        let bits = list_bits(live);
        let chunk_until = (now + LEASE + app.token_ttl.max(app.refresh_ttl) + 1).max(until);
        let seed = rand::rng().random_range(0..bits);
        let chunk = self
            .store
            .reserve_status_chunk(&app.id, now, chunk_until, bits, CHUNK.min(bits), seed)
            .await?;
        let mut free: Vec<i64> = (chunk.start..chunk.start + chunk.len).collect();
        free.shuffle(&mut rand::rng());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(
            app.id.clone(),
            Held {
                chunk,
                free,
                until: chunk_until,
                lease_end: now + LEASE,
            },
        );
        drop(held);
        self.take(&app.id, count, until, now)
            .ok_or_else(|| StoreError::corrupt("a fresh status list chunk is too small"))
    }
}

/// A signed list as served.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The list's global id.
    pub list: i64,
    /// App.
    pub app_id: String,
    /// Number.
    pub n: i64,
    /// Entries.
    pub bits: i64,
    /// The status list token.
    pub token: String,
    /// Its `lst`.
    pub lst: String,
    /// Its `iat`.
    pub signed_at: i64,
    /// Key that signed it.
    pub kid: String,
    /// ETag of the token.
    pub etag: String,
    /// ETag of the unsigned JSON form.
    pub json_etag: String,
}

impl Signed {
    fn from_token(row: &StatusListRow, token: String) -> Option<Self> {
        let c = parse_list(&token)?;
        let lst = c
            .claims
            .get("status_list")?
            .get("lst")?
            .as_str()?
            .to_owned();
        let signed_at = c.claims.get("iat")?.as_i64()?;
        let kid = c.header.kid.clone()?;
        let etag = format!("\"{}\"", &crate::auth::digest(&token)[..32]);
        let json_etag = format!("\"{}\"", &crate::auth::digest(&lst)[..32]);
        Some(Self {
            list: row.id,
            app_id: row.app_id.clone(),
            n: row.n,
            bits: row.bits,
            token,
            lst,
            signed_at,
            kid,
            etag,
            json_etag,
        })
    }

    /// The unsigned form (`application/statuslist+json`).
    pub fn json(&self) -> Value {
        json!({"bits": 1, "lst": self.lst})
    }
}

/// Why a list could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed (HSM, or no current key).
    #[error(transparent)]
    Sign(#[from] crate::jwt::service::TokenError),
    /// The app is gone.
    #[error("the app is gone")]
    AppGone,
}

/// Builds, signs, caches and serves the lists (see the module documentation).
pub struct Publisher {
    store: Store,
    registry: Arc<Registry>,
    tokens: TokenService,
    clock: Arc<dyn Clock>,
    refresh: i64,
    cache: RwLock<HashMap<(String, i64), Arc<Signed>>>,
    building: tokio::sync::Mutex<()>,
    next_tick: AtomicI64,
    last_build: AtomicI64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// A publisher re-signing at most every `refresh` seconds (also the lists' `ttl`).
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        tokens: TokenService,
        clock: Arc<dyn Clock>,
        refresh: u64,
    ) -> Self {
        let refresh = i64::try_from(refresh).unwrap_or(i64::MAX).max(1);
        Self {
            next_tick: AtomicI64::new(clock.now() + refresh),
            store,
            registry,
            tokens,
            clock,
            refresh,
            cache: RwLock::default(),
            building: tokio::sync::Mutex::new(()),
            last_build: AtomicI64::new(0),
        }
    }

    /// Seconds between re-signings, and the lists' `ttl`.
    pub fn refresh(&self) -> i64 {
        self.refresh
    }

    /// When a revocation made now shows in this replica's lists: the next pass plus what
    /// the last pass took, rounded up.
    pub fn visible_by(&self) -> i64 {
        self.next_tick.load(Ordering::SeqCst) + self.last_build.load(Ordering::SeqCst) + 1
    }

    fn cached(&self, app_id: &str, n: i64) -> Option<Arc<Signed>> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(app_id.to_owned(), n))
            .cloned()
    }

    fn fresh(&self, s: &Signed, now: i64) -> bool {
        s.signed_at + LIFETIME / 2 > now
    }

    /// List `n` of `app_id`, signed: from memory while fresh, else built now. `None` when
    /// the app has no such list.
    ///
    /// # Errors
    /// Store and signing failures.
    pub async fn get(
        &self,
        issuers: &Issuers,
        app_id: &str,
        n: i64,
    ) -> Result<Option<Arc<Signed>>, ListError> {
        let now = self.clock.now();
        if let Some(s) = self.cached(app_id, n)
            && self.fresh(&s, now)
        {
            return Ok(Some(s));
        }
        let _one = self.building.lock().await;
        let Some(row) = self.store.status_list(app_id, n).await? else {
            return Ok(None);
        };
        if let Some(s) = self.cached(app_id, n)
            && self.fresh(&s, now)
            && row.signed_at == Some(s.signed_at)
        {
            return Ok(Some(s));
        }
        self.build(issuers, &row).await.map(Some)
    }

    /// Compute list `row` from the store and serve it: the stored token when it carries the
    /// same bits, is fresh and was signed by the current key, else a new one signed now.
    async fn build(
        &self,
        issuers: &Issuers,
        row: &StatusListRow,
    ) -> Result<Arc<Signed>, ListError> {
        let now = self.clock.now();
        let app = self
            .store
            .app(&row.app_id)
            .await?
            .ok_or(ListError::AppGone)?;
        let states: HashMap<String, String> = self
            .store
            .key_states_of_app(&app.id)
            .await?
            .into_iter()
            .collect();
        let subjects: HashMap<String, String> = self
            .store
            .subject_cutoffs_of_app(&app.id)
            .await?
            .into_iter()
            .collect();
        let facts = self.store.status_facts(row.id, now).await?;
        let mut bytes = vec![0u8; usize::try_from(row.bits.max(8) / 8).unwrap_or(0)];
        for f in &facts {
            let cut = app.cutoff.as_deref().is_some_and(|c| f.jti.as_str() < c)
                || f.sub_sha256
                    .as_deref()
                    .and_then(|s| subjects.get(s))
                    .is_some_and(|c| f.jti.as_str() < c.as_str());
            let key_live = states
                .get(&f.kid)
                .is_some_and(|s| matches!(s.as_str(), "next" | "current" | "previous"));
            if f.denied || !key_live || cut {
                set_bit(&mut bytes, f.idx);
            }
            if let Some(r) = f.refresh_idx
                && (f.refresh_spent || cut)
            {
                set_bit(&mut bytes, r);
            }
        }
        let lst = compress(&bytes);
        let sha = crate::auth::digest(&lst);
        let current = self
            .registry
            .current(&app.id)
            .map(|k| k.row.kid.to_string());
        if let Some(stored) = row.token.clone()
            && row.lst_sha256.as_deref() == Some(sha.as_str())
            && let Some(s) = Signed::from_token(row, stored)
            && self.fresh(&s, now)
            && current.as_deref() == Some(s.kid.as_str())
        {
            return Ok(self.remember(s));
        }
        let issuer = issuers.issuer(&app.id);
        let mut claims = Map::new();
        claims.insert("sub".into(), list_uri(&issuer, row.n).into());
        claims.insert("iss".into(), issuer.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + LIFETIME).into());
        claims.insert("ttl".into(), self.refresh.into());
        claims.insert("status_list".into(), json!({"bits": 1, "lst": lst}));
        let started = std::time::Instant::now();
        let token = self.tokens.sign_with_current(&app.id, TYP, &claims).await?;
        crate::metrics::status_list_signed(started.elapsed().as_secs_f64());
        if !self
            .store
            .save_status_token(row.id, &token, &sha, now, row.signed_at)
            .await?
        {
            // Another replica signed meanwhile: serve its list if it carries these bits.
            if let Some(theirs) = self.store.status_list(&app.id, row.n).await?
                && theirs.lst_sha256.as_deref() == Some(sha.as_str())
                && let Some(t) = theirs.token.clone()
                && let Some(s) = Signed::from_token(&theirs, t)
            {
                return Ok(self.remember(s));
            }
        }
        let s = Signed::from_token(row, token)
            .ok_or_else(|| StoreError::corrupt("a status list token just signed does not parse"))?;
        Ok(self.remember(s))
    }

    fn remember(&self, s: Signed) -> Arc<Signed> {
        let s = Arc::new(s);
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((s.app_id.clone(), s.n), s.clone());
        s
    }

    /// The apps whose lists a revocation may have changed: those `revoked` names, and
    /// those that issued its deny-listed jtis (`None`: every app).
    async fn dirty_apps(
        &self,
        revoked: &crate::keys::Revoked,
    ) -> Result<Option<HashSet<String>>, StoreError> {
        if revoked.all {
            return Ok(None);
        }
        let mut apps = revoked.apps.clone();
        if !revoked.jtis.is_empty() {
            apps.extend(self.store.apps_of_jtis(&revoked.jtis).await?);
        }
        Ok(Some(apps))
    }

    /// One pass: rebuild every list that may have changed (a revocation applied here since
    /// the last pass in the list's app, a list signed elsewhere or never, or one half way
    /// to its `exp`). Returns how many lists it computed.
    pub async fn tick(&self, issuers: &Issuers) -> usize {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        self.next_tick.store(now + self.refresh, Ordering::SeqCst);
        // Taken before the store is read: a revocation applied after this is seen by the
        // next pass.
        let revoked = self.registry.take_revoked();
        let (dirty, rows) = match (
            self.dirty_apps(&revoked).await,
            self.store.status_lists(None).await,
        ) {
            (Ok(d), Ok(r)) => (d, r),
            (Err(e), _) | (_, Err(e)) => {
                self.registry.put_back_revoked(revoked);
                tracing::warn!(error = %e, "status lists: cannot list; next pass retries");
                return 0;
            }
        };
        let dirty = |app: &str| dirty.as_ref().is_none_or(|d| d.contains(app));
        let _one = self.building.lock().await;
        let mut failed = false;
        let mut built = 0;
        for row in rows {
            let cached = self.cached(&row.app_id, row.n);
            let needed = match &cached {
                None => true,
                Some(c) => {
                    // Nobody needs a list whose tokens have all expired kept fresh.
                    (dirty(&row.app_id) && row.until > now)
                        || row.signed_at != Some(c.signed_at)
                        || (!self.fresh(c, now + self.refresh) && row.until > now)
                }
            };
            if !needed {
                continue;
            }
            built += 1;
            if let Err(e) = self.build(issuers, &row).await {
                failed = true;
                tracing::warn!(app_id = %row.app_id, n = row.n, error = %e, "status list not rebuilt; next pass retries");
            }
        }
        if failed {
            self.registry.put_back_revoked(revoked);
        }
        self.last_build.store(
            i64::try_from(started.elapsed().as_secs()).unwrap_or(0),
            Ordering::SeqCst,
        );
        built
    }

    /// Run [`Self::tick`] every `refresh` seconds until the process ends.
    pub async fn run(self: Arc<Self>, issuers: Issuers) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(
            u64::try_from(self.refresh).unwrap_or(1),
        ));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = self.tick(&issuers).await;
        }
    }

    /// The URIs of every list of `app_id` (the aggregation document).
    ///
    /// # Errors
    /// Store failures.
    pub async fn uris(&self, issuers: &Issuers, app_id: &str) -> Result<Vec<String>, StoreError> {
        let issuer = issuers.issuer(app_id);
        Ok(self
            .store
            .status_lists(Some(app_id))
            .await?
            .iter()
            .map(|r| list_uri(&issuer, r.n))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Bits are least significant first within a byte, and survive compression.
    #[test]
    fn bits_are_lsb_first_and_survive_compression() {
        let mut bytes = vec![0u8; 4];
        for i in [0, 9, 31] {
            set_bit(&mut bytes, i);
        }
        assert_eq!(bytes, [0b0000_0001, 0b0000_0010, 0, 0b1000_0000]);
        let back = decompress(&compress(&bytes)).unwrap();
        assert_eq!(back, bytes);
        assert_eq!(bit(&back, 9), Some(1));
        assert_eq!(bit(&back, 8), Some(0));
        assert_eq!(bit(&back, 32), None);
        assert_eq!(decompress("not zlib!"), None);
    }

    /// A list with 1 % of 2^21 entries set at random signs into a token far larger than an
    /// access token may be; it is still read back (as served, and by verifiers).
    #[test]
    fn a_list_token_larger_than_an_access_token_is_read_back() {
        let bits: i64 = 1 << 21;
        let mut bytes = vec![0u8; usize::try_from(bits / 8).unwrap()];
        let mut rng = rand::rng();
        for _ in 0..bits / 100 {
            set_bit(&mut bytes, rng.random_range(0..bits));
        }
        let lst = compress(&bytes);
        let token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256","typ":"statuslist+jwt","kid":"01ARZ3NDEKTSV4RRFFQ69G5FAV"}"#),
            b64(json!({"iat": 1, "status_list": {"bits": 1, "lst": lst}})
                .to_string()
                .as_bytes()),
            b64(&[7u8; 64])
        );
        assert!(token.len() > crate::jwt::MAX_TOKEN_LEN, "{}", token.len());
        let row = StatusListRow {
            id: 1,
            app_id: "a".into(),
            n: 1,
            bits,
            until: 0,
            handed: 0,
            chunk: 0,
            token: None,
            lst_sha256: None,
            signed_at: None,
        };
        let s = Signed::from_token(&row, token).expect("a large list reads back");
        assert_eq!(decompress(&s.lst).unwrap(), bytes);
    }

    /// Lists are powers of two holding twice the live tokens, within bounds.
    #[test]
    fn lists_hold_twice_the_live_tokens() {
        assert_eq!(list_bits(0), MIN_BITS);
        assert_eq!(list_bits(10_000), 1 << 15);
        assert_eq!(list_bits(1_000_000), 1 << 21);
        assert_eq!(list_bits(i64::MAX), MAX_BITS);
    }
}
