//! Wire shapes of the native API (the README's API table, `/openapi.json`). Domain rows never
//! go out as they are.
//!
//! Each shape is a typed struct the handlers return; the same type gives the OpenAPI
//! schema (`ToSchema`), so the document at `/openapi.json` is the code, not a copy of it.

use serde::Serialize;
use serde_json::{Map, Value};
use sha1::{Digest as _, Sha1};
use utoipa::ToSchema;

use crate::clock::rfc3339;
use crate::jwt::Issued;
use crate::keys::KeyState;
use crate::store::AppRow;
use crate::store::KeyRow;

fn time(t: Option<i64>) -> Option<String> {
    t.map(rfc3339)
}

/// Seconds since the epoch of a ULID cut-off.
pub(crate) fn ulid_time(u: Option<&str>) -> Option<i64> {
    let u = ulid::Ulid::from_string(u?).ok()?;
    i64::try_from(u.timestamp_ms() / 1000).ok()
}

/// SHA-1 of a certificate DER as upper-case hex pairs joined by `:` (Auth0's
/// `fingerprint`), and the same without colons (`thumbprint`).
pub fn cert_fingerprints(cert: &[u8]) -> (String, String) {
    let d = Sha1::digest(cert);
    let pairs: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    (pairs.join(":"), pairs.concat())
}

/// The native error body: `{"error": "<stable code>", "message": "<sentence>"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, greppable code (`app_not_found`, `invalid_json`, `rate_limited`, ...).
    #[schema(example = "app_not_found")]
    pub error: String,
    /// Human sentence (generic on a 5xx; the cause is in the server log).
    pub message: String,
}

/// The App object.
#[derive(Debug, Serialize, ToSchema)]
pub struct App {
    /// ULID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// JWS algorithm of the app's keys.
    #[schema(example = "RS256")]
    pub signing_alg: String,
    /// RSA modulus bits (RSA algorithms only, else null).
    pub rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations.
    pub rotation_period: i64,
    /// Seconds a key still verifies after it stopped signing.
    pub verification_ttl: i64,
    /// Longest access-token lifetime, seconds.
    pub token_ttl: i64,
    /// Refresh-token lifetime, seconds (0: no refresh tokens).
    pub refresh_ttl: i64,
    /// Certificate subject of the app's keys.
    pub subject_dn: String,
    /// `iss` of the app's tokens (`<base>/apps/{id}`).
    pub issuer: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Tokens issued before this instant are rejected (RFC 3339), or null.
    pub cutoff_at: Option<String>,
    /// New tokens carry a Token Status List `status` claim.
    pub status_list: bool,
}

impl App {
    /// The wire shape of an app row.
    pub fn new(a: &AppRow, issuer: &str) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            signing_alg: a.signing_alg.as_str().to_owned(),
            rsa_bits: a.signing_alg.is_rsa().then_some(a.rsa_bits),
            rotation_period: a.rotation_period,
            verification_ttl: a.verification_ttl,
            token_ttl: a.token_ttl,
            refresh_ttl: a.refresh_ttl,
            subject_dn: a.subject_dn.clone(),
            issuer: issuer.to_owned(),
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
            cutoff_at: time(ulid_time(a.cutoff.as_deref())),
            status_list: a.status_list,
        }
    }
}

/// The Key object (absent times are null).
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    /// Key id (the JWT `kid`).
    pub kid: String,
    /// The app's id (null for a spare key not yet given to an app).
    pub app_id: Option<String>,
    /// JWS algorithm.
    pub algorithm: String,
    /// `pending`, `next`, `current`, `previous`, `retired`, `revoked` or `destroyed`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// When it entered the JWKS.
    pub published_at: Option<String>,
    /// When it began signing.
    pub activated_at: Option<String>,
    /// When it stopped signing.
    pub deactivated_at: Option<String>,
    /// When it left the JWKS.
    pub retired_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// When its HSM object was destroyed.
    pub destroyed_at: Option<String>,
    /// SHA-1 of its certificate, upper-case hex pairs joined by `:`.
    pub fingerprint: Option<String>,
    /// The same without colons.
    pub thumbprint: Option<String>,
    /// `generated` (made in the HSM) or `imported` (made elsewhere, brought in sensitive
    /// and non-extractable; its app rotates within `imported_key_max_life`).
    #[schema(example = "generated")]
    pub origin: String,
}

impl Key {
    /// The wire shape of a key row.
    pub fn new(k: &KeyRow) -> Self {
        let (fingerprint, thumbprint) = match &k.cert {
            Some(c) => {
                let (f, t) = cert_fingerprints(c);
                (Some(f), Some(t))
            }
            None => (None, None),
        };
        Self {
            kid: k.kid.to_string(),
            app_id: k.app_id.clone(),
            algorithm: k.algorithm.as_str().to_owned(),
            state: k.state.as_str().to_owned(),
            created_at: rfc3339(k.created_at),
            published_at: time(k.published_at),
            activated_at: time(k.activated_at),
            deactivated_at: time(k.deactivated_at),
            retired_at: time(k.retired_at),
            revoked_at: time(k.revoked_at),
            destroyed_at: time(k.destroyed_at),
            fingerprint,
            thumbprint,
            origin: k.origin.as_str().to_owned(),
        }
    }
}

/// The kids of an app's published keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeySummary {
    /// The signing key.
    pub current: Option<String>,
    /// The key that signs after the next rotation.
    pub next: Option<String>,
    /// Keys that stopped signing and still verify, newest first.
    pub previous: Vec<String>,
}

impl KeySummary {
    /// The summary of an app's keys (any order; only published ones count).
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a KeyRow>) -> Self {
        let (mut current, mut next, mut previous) = (None, None, Vec::new());
        for k in keys {
            match k.state {
                KeyState::Current => current = Some(k.kid.to_string()),
                KeyState::Next => next = Some(k.kid.to_string()),
                KeyState::Previous => previous.push(k.kid),
                _ => {}
            }
        }
        previous.sort_unstable_by(|a, b| b.cmp(a));
        Self {
            current,
            next,
            previous: previous.iter().map(ToString::to_string).collect(),
        }
    }
}

/// How many keys of an app are in each state.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCounts {
    /// Published, not signing yet.
    pub next: i64,
    /// Signing.
    pub current: i64,
    /// Stopped signing, still verifying.
    pub previous: i64,
    /// Past their verification window, destroyed.
    pub retired: i64,
    /// Revoked, destroyed.
    pub revoked: i64,
}

/// An app with its key summary and figures (`GET /apps`, `GET /apps/{id}`,
/// `PATCH /apps/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    /// The app.
    #[serde(flatten)]
    pub app: App,
    /// Its published keys.
    pub key_summary: KeySummary,
    /// Its keys per state.
    pub key_counts: KeyCounts,
    /// When the current key started signing (RFC 3339).
    pub last_rotation_at: Option<String>,
    /// When the scheduler will rotate next (RFC 3339).
    pub next_rotation_at: Option<String>,
    /// Tokens issued and not expired yet.
    pub live_tokens: i64,
    /// Its Token Status Lists (empty while `status_list` was never on).
    pub status_lists: Vec<StatusListView>,
}

/// One Token Status List of an app, as the app view shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusListView {
    /// Its number (`/apps/{id}/statuslists/{n}`).
    pub n: i64,
    /// Entries (tokens it can hold, one bit each).
    pub size: i64,
    /// When its status list token was last signed (RFC 3339), or null before the first.
    pub signed_at: Option<String>,
    /// Bytes of that signed token, or null.
    pub bytes: Option<i64>,
}

impl StatusListView {
    /// The view of one list's figures.
    pub fn new(f: &crate::store::StatusListFigures) -> Self {
        Self {
            n: f.n,
            size: f.bits,
            signed_at: f.signed_at.map(rfc3339),
            bytes: f.token_bytes,
        }
    }
}

/// `GET /apps/{id}/blast-radius`: the tokens (and their distinct subjects) that still
/// verify, in all and per published key.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlastRadius {
    /// The app.
    pub app_id: String,
    /// Live tokens of the app (what an emergency rotation or a flush cuts off).
    pub live_tokens: i64,
    /// Their distinct subjects.
    pub subjects: i64,
    /// Per published key (what revoking that key cuts off).
    pub keys: Vec<KeyBlastRadius>,
}

/// One key's part of a [`BlastRadius`].
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBlastRadius {
    /// Key id.
    pub kid: String,
    /// `next`, `current` or `previous`.
    pub state: String,
    /// Live tokens it signed.
    pub live_tokens: i64,
    /// Their distinct subjects.
    pub subjects: i64,
}

/// `POST /apps`: the app, its access token (shown this once) and its first keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApp {
    /// The app.
    #[serde(flatten)]
    pub app: App,
    /// The app's access token (`pk_...`); only its digest is stored.
    pub access_token: String,
    /// The first `current` and `next` keys.
    pub keys: Vec<Key>,
}

/// `GET /apps`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppList {
    /// Every app.
    pub apps: Vec<AppView>,
}

/// `DELETE /apps/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The app's id.
    pub id: String,
    /// Always true.
    pub deleted: bool,
    /// The keys revoked with it.
    pub revoked_kids: Vec<String>,
}

/// `GET /apps/{id}/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Every key of the app, retired and revoked too.
    pub keys: Vec<Key>,
    /// From when the `next` key may sign, so a rotation is not refused as too soon
    /// (RFC 3339; null without a `next` key). Before then, verifiers may still cache a
    /// JWKS that lacks it.
    pub rotation_safe_at: Option<String>,
    /// Seconds until then (0: a rotation is safe now).
    pub rotation_safe_in: Option<i64>,
}

/// `POST /apps/{id}/keys/rotate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rotation {
    /// The new signing key.
    pub current: Key,
    /// The new next key.
    pub next: Key,
    /// Keys that still verify.
    pub previous: Vec<Key>,
}

/// `POST /apps/{id}/keys/{kid}/revoke`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revocation {
    /// The revoked key.
    pub revoked: Option<Key>,
    /// The signing key afterwards.
    pub current: Option<Key>,
    /// The next key afterwards.
    pub next: Option<Key>,
    /// Live tokens the revocation rejected.
    pub revoked_tokens: i64,
    /// Distinct subjects among them.
    pub affected_subjects: i64,
}

/// `POST /apps/{id}/keys/emergency-rotate`: what the emergency rotation cut off, and the
/// keys that sign from now on.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmergencyRotation {
    /// The app.
    pub app_id: String,
    /// Every key revoked (and destroyed in the HSM).
    pub revoked_kids: Vec<String>,
    /// Live tokens rejected (read from the ledger before the cut-off).
    pub revoked_tokens: i64,
    /// Distinct subjects among them.
    pub affected_subjects: i64,
    /// RFC 3339: every token of the app issued before this is rejected.
    pub revoked_at: String,
    /// The new signing key.
    pub current: Key,
    /// The new next key.
    pub next: Key,
}

impl EmergencyRotation {
    /// The answer to an emergency rotation of `app_id`.
    pub fn new(app_id: &str, r: &crate::keys::EmergencyRotation) -> Self {
        Self {
            app_id: app_id.to_owned(),
            revoked_kids: r.revoked.iter().map(|k| k.kid.to_string()).collect(),
            revoked_tokens: r.revoked_tokens,
            affected_subjects: r.affected_subjects,
            revoked_at: rfc3339(r.revoked_at),
            current: Key::new(&r.current),
            next: Key::new(&r.next),
        }
    }
}

/// `POST /apps/{id}/access-token`: the app's new access token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessToken {
    /// The app.
    pub app_id: String,
    /// The new access token (`pk_...`); only its digest is stored, and the old one no
    /// longer works.
    pub access_token: String,
}

/// `POST /root-key/rotate`: the new root key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RootKey {
    /// The new root key (`rk_...`); only its digest is stored, and the old one no longer
    /// works.
    pub root_key: String,
}

/// An issued token (`POST /apps/{id}/tokens`, `.../tokens/refresh`).
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// The key that signed it.
    pub kid: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Single-use refresh token (only when the app's `refresh_ttl` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// RFC 3339 (with `refresh_token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at: Option<String>,
}

impl IssuedToken {
    /// The answer to an issuance or a refresh.
    pub fn new(i: &Issued) -> Self {
        Self {
            token: i.token.clone(),
            token_type: "Bearer".into(),
            kid: i.kid.to_string(),
            expires_at: rfc3339(i.exp),
            refresh_token: i.refresh_token.as_ref().map(|rt| rt.expose().to_owned()),
            refresh_expires_at: i.refresh_token.as_ref().and(i.refresh_exp).map(rfc3339),
        }
    }
}

/// RFC 7662 answer: `{"active": false}`, or `active: true` with every claim of the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Introspection {
    /// Whether the token verifies now.
    pub active: bool,
    /// `access_token` when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The token's claims (`iss sub aud exp iat nbf jti kid` and custom ones) when active.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
}

/// `POST /apps/{id}/tokens/revoke` (RFC 7009).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRevoked {
    /// Always true: an unknown or invalid token is not an error (RFC 7009 §2.2).
    pub revoked: bool,
}

/// `POST /apps/{id}/tokens/flush`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flushed {
    /// `ok`.
    pub status: String,
    /// The app's new cut-off (RFC 3339).
    pub cutoff_at: String,
}

/// One live token of a subject.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// Token id.
    pub jti: String,
    /// Signing key.
    pub kid: String,
    /// Issued at (NumericDate).
    pub iat: i64,
    /// Expires (NumericDate).
    pub exp: i64,
    /// Refresh-token expiry (NumericDate), if any.
    pub refresh_expires_at: Option<i64>,
}

/// `GET /apps/{id}/sessions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sessions {
    /// The subject's live tokens.
    pub sessions: Vec<Session>,
}

/// `{"status": ...}`-style small replies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// Status word.
    #[schema(example = "ok")]
    pub status: String,
}

impl Status {
    /// `{"status": "ok"}`.
    pub fn ok() -> Self {
        Self {
            status: "ok".into(),
        }
    }
}
