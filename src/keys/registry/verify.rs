//! The registry's trust in the HSM (issue 26): a key row enters the registry, and so the
//! JWKS, verification and signing, only once the public half read from the token under its
//! kid equals the row's SPKI. Someone who can write the database but not use the HSM cannot
//! get a key of theirs published: a differing key is refused, counted
//! (`hsm_rotator_key_hsm_mismatch_total`), audited once per process (`key.hsm_mismatch`)
//! and reported by the reconciler. A key whose object is not found (yet) is held back and
//! checked again at the next reload; only confirmations are remembered, never a miss.

use sha2::Digest as _;

use super::{LiveKey, Registry, lock};
use crate::hsm::PublicHalf;
use crate::keys::{KeyState, Kid};
use crate::store::KeyRow;

/// Why a live key row is kept out of service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its app.
    pub app_id: String,
    /// Its state in the store.
    pub state: KeyState,
    /// `true`: the HSM holds a different public key under this kid (or none that reads as
    /// the row's algorithm). `false`: no object found, or the token could not be asked;
    /// checked again at the next reload.
    pub mismatch: bool,
}

/// Key rows read from the store, checked against the HSM.
pub(super) struct Checked {
    pub(super) live: Vec<LiveKey>,
    pub(super) refused: Vec<(KeyRow, Refused)>,
}

fn spki_digest(spki: Option<&[u8]>) -> [u8; 32] {
    sha2::Sha256::digest(spki.unwrap_or_default()).into()
}

/// Wait before keys the HSM did not show are looked for once more in the same reload.
const UNKNOWN_RETRY: std::time::Duration = std::time::Duration::from_millis(150);

/// How long a check waits for the module's re-initialisation rate limit to allow one, for
/// keys still not found (a little over the limit's shortest interval).
const UNKNOWN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

impl Registry {
    /// Split parsed key rows into those whose public half the HSM confirms and those it
    /// does not. Rows confirmed before with the same SPKI are not read again; the others
    /// are read in one call. A token that cannot be asked holds them back until the next
    /// reload (keys confirmed earlier keep serving through an HSM outage).
    pub(super) async fn check(&self, parsed: Vec<LiveKey>) -> Checked {
        let mut out = Checked {
            live: Vec::with_capacity(parsed.len()),
            refused: Vec::new(),
        };
        let mut ask = Vec::new();
        {
            let confirmed = lock(&self.confirmed);
            for l in parsed {
                let digest = spki_digest(l.row.spki.as_deref());
                if confirmed.get(&l.row.kid) == Some(&digest) {
                    out.live.push(l);
                } else {
                    ask.push((l, digest));
                }
            }
        }
        if ask.is_empty() {
            return out;
        }
        let started = std::time::Instant::now();
        let asked: Vec<(Kid, crate::alg::Algorithm)> = ask
            .iter()
            .map(|(l, _)| (l.row.kid, l.row.algorithm))
            .collect();
        let n = asked.len();
        let mut halves = self.public_halves(asked.clone()).await;
        // Keys not found may be another replica's, made moments ago, whose objects this
        // process could not see yet (or a search that ran into an object being made): look
        // once more shortly, so a change reaches this replica without waiting for a reload.
        let unknown: Vec<usize> = (0..n)
            .filter(|&i| {
                !matches!(
                    halves.get(i),
                    Some(PublicHalf::Found(_) | PublicHalf::Unreadable(_))
                )
            })
            .collect();
        if !unknown.is_empty() {
            let found =
                |h: &PublicHalf| matches!(h, PublicHalf::Found(_) | PublicHalf::Unreadable(_));
            let deadline = std::time::Instant::now() + UNKNOWN_PATIENCE;
            tokio::time::sleep(UNKNOWN_RETRY).await;
            halves.resize_with(n, || PublicHalf::Absent);
            self.ask_again(&asked, &unknown, &mut halves).await;
            // Still not found: SoftHSM2 2.6.1 hides for good, from a process that searched
            // while another process was making it, an object until the module is initialised
            // again. Re-initialise (rate-limited, backing off while it does not help; the
            // signing path does the same for a key that must exist) and look once more; while
            // the rate limit holds, keep looking until it allows one (another replica's new
            // key would otherwise stay held back here until the next reload).
            loop {
                let missing: Vec<usize> = unknown
                    .iter()
                    .copied()
                    .filter(|&i| !found(&halves[i]))
                    .collect();
                let Some(&first) = missing.first() else {
                    break;
                };
                if self.hsm.recover(asked[first].0).await.unwrap_or(false) {
                    self.ask_again(&asked, &missing, &mut halves).await;
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(UNKNOWN_RETRY).await;
                self.ask_again(&asked, &missing, &mut halves).await;
            }
        }
        tracing::debug!(
            keys = n,
            ms = started.elapsed().as_millis(),
            "keys checked against the HSM"
        );
        let mut halves = halves.into_iter();
        let mut confirmed = lock(&self.confirmed);
        for (l, digest) in ask {
            let refused = |mismatch| Refused {
                app_id: l.row.app_id.clone().unwrap_or_default(),
                state: l.row.state,
                mismatch,
            };
            match halves.next() {
                Some(PublicHalf::Found(p)) if p == l.public => {
                    confirmed.insert(l.row.kid, digest);
                    out.live.push(l);
                }
                Some(PublicHalf::Found(_)) => {
                    let why = refused(true);
                    out.refused.push((l.row, why));
                }
                Some(PublicHalf::Unreadable(e)) => {
                    tracing::warn!(kid = %l.row.kid, error = %e, "the HSM object does not read as the key's algorithm");
                    let why = refused(true);
                    out.refused.push((l.row, why));
                }
                Some(PublicHalf::Absent) | None => {
                    tracing::debug!(kid = %l.row.kid, "key not found in the HSM (yet); held back until the next reload");
                    let why = refused(false);
                    out.refused.push((l.row, why));
                }
            }
        }
        out
    }

    /// Read the halves at `which` of `asked` again into `halves`.
    async fn ask_again(
        &self,
        asked: &[(Kid, crate::alg::Algorithm)],
        which: &[usize],
        halves: &mut [PublicHalf],
    ) {
        let again = self
            .public_halves(which.iter().map(|&i| asked[i]).collect())
            .await;
        for (&i, h) in which.iter().zip(again) {
            halves[i] = h;
        }
    }

    /// [`Hsm::public_keys`], with a token that cannot be asked reported as nothing found.
    async fn public_halves(&self, asked: Vec<(Kid, crate::alg::Algorithm)>) -> Vec<PublicHalf> {
        let n = asked.len();
        self.hsm.public_keys(asked).await.unwrap_or_else(|e| {
            tracing::warn!(keys = n, error = %e, "cannot check keys against the HSM; they are held back until it answers");
            Vec::new()
        })
    }

    /// Count, log and audit mismatches this process has not reported yet (once per key per
    /// process, however often reloads find it again).
    pub(super) async fn report(&self, mismatched: Vec<(KeyRow, Refused)>) {
        for (row, why) in mismatched {
            if !lock(&self.reported).insert(row.kid) {
                continue;
            }
            crate::metrics::key_hsm_mismatch();
            tracing::error!(
                kid = %row.kid,
                app_id = %why.app_id,
                state = %why.state,
                "the store's public key differs from the HSM's object for this kid: key refused (not published, not trusted, not used to sign)"
            );
            self.audit
                .record(
                    "key.hsm_mismatch",
                    &row.kid.to_string(),
                    "refused",
                    serde_json::json!({
                        "kid": row.kid.to_string(),
                        "app_id": why.app_id,
                        "state": why.state.as_str(),
                        "stored_fingerprint": row.fingerprint,
                    }),
                )
                .await;
        }
    }
}
