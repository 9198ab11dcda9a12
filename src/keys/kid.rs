//! Key ids: a ULID that is also the HSM objects' `CKA_ID` (its 16 bytes) and label suffix.
//!
//! An object's label also names the store that owns it (`hsm-rotator/<store id>/<kid>`), so
//! that two deployments can share a token and an instance never touches the other's keys.
//! Objects made before store ids existed carry `hsm-rotator/<kid>` ([`LabelOwner::Legacy`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// Label prefix of every object this service creates in the token.
pub const LABEL_PREFIX: &str = "hsm-rotator/";

/// A key id (`kid`): a ULID, sortable by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(pub Ulid);

impl Kid {
    /// A fresh kid.
    pub fn generate() -> Self {
        Self(Ulid::new())
    }

    /// The `CKA_ID` bytes: the ULID's 16 bytes, big-endian.
    pub fn cka_id(&self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The kid from a `CKA_ID`, if it is 16 bytes.
    pub fn from_cka_id(id: &[u8]) -> Option<Self> {
        let bytes: [u8; 16] = id.try_into().ok()?;
        Some(Self(Ulid::from_bytes(bytes)))
    }

    /// The `CKA_LABEL` of this key's objects in the store `store_id`:
    /// `hsm-rotator/<store id>/<kid>`.
    pub fn label(&self, store_id: &str) -> String {
        format!("{LABEL_PREFIX}{store_id}/{}", self.0)
    }
}

/// Who owns an object, as its `CKA_LABEL` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOwner {
    /// `hsm-rotator/<kid>`: made before store ids existed; owned by whichever store knows
    /// the kid (it adopts the object), never destroyed as an orphan.
    Legacy,
    /// `hsm-rotator/<store id>/<kid>`: the store with that id.
    Store(String),
}

/// The owner named by a label with our prefix, or `None` for a label that is not ours or
/// not of either form.
pub fn label_owner(label: &str) -> Option<LabelOwner> {
    let rest = label.strip_prefix(LABEL_PREFIX)?;
    match rest.split_once('/') {
        None => parse_ulid(rest).ok().map(|_| LabelOwner::Legacy),
        Some((store, kid)) => {
            let ok = parse_ulid(kid).is_ok()
                && !store.is_empty()
                && store.len() <= 64
                && store.bytes().all(|b| b.is_ascii_alphanumeric());
            ok.then(|| LabelOwner::Store(store.to_owned()))
        }
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The text was not a ULID.
#[derive(Debug, thiserror::Error)]
#[error("not a valid id (expected a 26-character ULID)")]
pub struct BadId;

/// Parse a 26-character Crockford base32 ULID strictly (no lowercase folding surprises).
pub fn parse_ulid(s: &str) -> Result<Ulid, BadId> {
    if s.len() != 26 {
        return Err(BadId);
    }
    Ulid::from_string(s).map_err(|_| BadId)
}

impl FromStr for Kid {
    type Err = BadId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_ulid(s).map(Self)
    }
}

impl Serialize for Kid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Kid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

static ULIDS: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);

/// A ULID strictly greater than every other one this function made in this process (ids
/// of records, families and requests, on the host's clock).
pub fn monotonic_ulid() -> Ulid {
    let mut g = ULIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let generator = g.get_or_insert_with(ulid::Generator::new);
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

/// Token ids' generator: its own, so that ids stamped on the host's clock (above) never
/// drag token ids to the host's time.
static TOKEN_ULIDS: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);

/// A token id at `ms` (milliseconds since the epoch, read from the database's clock),
/// strictly greater than every token id this process made and than every cut-off passed
/// to [`token_ulid_after`]: token ids and revocation cut-offs compare by it.
pub fn token_ulid(ms: i64) -> Ulid {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0).unsigned_abs());
    let mut g = TOKEN_ULIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let generator = g.get_or_insert_with(ulid::Generator::new);
    generator
        .generate_from_datetime(at)
        .unwrap_or_else(|_| Ulid::from_datetime(at))
}

/// Make every later [`token_ulid`] sort above `cutoff` (a cut-off this process just set):
/// a token issued here after a flush or logout is never taken as issued before it.
pub fn token_ulid_after(cutoff: Ulid) {
    let ms = i64::try_from(cutoff.timestamp_ms()).unwrap_or(i64::MAX);
    token_ulid(ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cka_id_round_trips() {
        let k = Kid::generate();
        assert_eq!(Kid::from_cka_id(&k.cka_id()), Some(k));
        let store = Kid::generate().to_string();
        assert!(k.label(&store).starts_with(LABEL_PREFIX));
        assert_eq!(
            label_owner(&k.label(&store)),
            Some(LabelOwner::Store(store.clone()))
        );
        assert_eq!(
            label_owner(&format!("{LABEL_PREFIX}{k}")),
            Some(LabelOwner::Legacy)
        );
        assert_eq!(label_owner("hsm-rotator/not-a-kid"), None);
        assert_eq!(label_owner(&format!("other/{k}")), None);
        assert_eq!(label_owner(&format!("{LABEL_PREFIX}../{k}")), None);
        assert_eq!(k.to_string().parse::<Kid>().ok(), Some(k));
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!("../../etc/passwd".parse::<Kid>().is_err());
        assert!("01ARZ3NDEKTSV4RRFFQ69G5FA".parse::<Kid>().is_err());
        assert!(Kid::from_cka_id(&[1, 2, 3]).is_none());
    }
}
