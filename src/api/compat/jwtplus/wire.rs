//! JWTPlus's wire shapes: answers and the request bodies documented in OpenAPI.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::alg::{Algorithm, KeyFamily};
use crate::store::{AppRow, KeyRow};

pub(super) fn key_type(alg: Algorithm) -> &'static str {
    match alg.family() {
        KeyFamily::Rsa => "RSA",
        KeyFamily::Ec(_) => "ECDSA",
        KeyFamily::Ed(_) => "EdDSA",
    }
}

/// base64 of the PEM of a key's SPKI (JWTPlus's `public_key`).
pub(super) fn public_key_b64(k: &KeyRow) -> String {
    spki_b64(k.spki.as_deref())
}

/// base64 of the PEM of an SPKI (JWTPlus's `public_key`), empty without one.
pub(super) fn spki_b64(spki: Option<&[u8]>) -> String {
    spki.and_then(|d| der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, d).ok())
        .map(|pem| STANDARD.encode(pem))
        .unwrap_or_default()
}

/// A JWTPlus app.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpApp {
    /// ULID.
    pub(super) id: String,
    /// Name.
    pub(super) name: String,
    /// Description.
    pub(super) description: String,
    /// Access-token lifetime, seconds.
    pub(super) token_expiry: i64,
    /// Access-token not-before offset, seconds.
    pub(super) token_notbefore: i64,
    /// Refresh-token lifetime, seconds.
    pub(super) refresh_expiry: i64,
    /// Refresh-token not-before offset, seconds.
    pub(super) refresh_notbefore: i64,
    /// `RSA`, `ECDSA` or `EdDSA`.
    pub(super) key_type: String,
    /// JWS algorithm.
    pub(super) algo: String,
    /// Seconds between scheduled rotations.
    pub(super) rotation_period: i64,
    /// Unix seconds.
    pub(super) add_time: i64,
    /// Unix seconds (0: never updated).
    pub(super) update_time: i64,
    /// Unix seconds of the last rotation (0: never).
    pub(super) last_key_rotate: i64,
}

pub(super) fn app_json(a: &AppRow) -> JpApp {
    JpApp {
        id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        token_expiry: a.token_ttl,
        token_notbefore: a.token_nbf,
        refresh_expiry: a.refresh_ttl,
        refresh_notbefore: a.refresh_nbf,
        key_type: key_type(a.signing_alg).to_owned(),
        algo: a.signing_alg.as_str().to_owned(),
        rotation_period: a.rotation_period,
        add_time: a.created_at,
        update_time: if a.updated_at == a.created_at {
            0
        } else {
            a.updated_at
        },
        last_key_rotate: a.last_rotated_at.unwrap_or(0),
    }
}

/// `GET /root/list`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpAppList {
    /// Every app.
    pub(super) apps: Vec<JpApp>,
}

/// `GET /app/{app_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpAppInfo {
    /// The app.
    pub(super) app: JpApp,
}

/// `GET|POST /root/rotate`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpNewRootKey {
    /// The new root key (the old one stopped working).
    #[serde(rename = "new-key")]
    #[schema(rename = "new-key")]
    pub(super) new_key: String,
}

/// `POST /root/create`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpCreated {
    /// The new app's id.
    pub(super) app_id: String,
    /// Its access token (shown this once).
    pub(super) app_key: String,
    /// base64 of the PEM SPKI of its current key.
    pub(super) public_key: String,
    /// JWS algorithm.
    pub(super) algo: String,
    /// Its current key's id.
    pub(super) kid: Option<String>,
}

/// `GET /root/{app_id}/rotate/key`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpAppKey {
    /// The app's id.
    pub(super) app_id: String,
    /// Its new access token.
    pub(super) app_key: String,
}

/// `GET|POST /root/{app_id}/rotate/pki`: emergency rotation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPki {
    /// The app's id.
    pub(super) app_id: String,
    /// base64 of the PEM SPKI of the new current key.
    pub(super) new_public_key: String,
    /// JWS algorithm.
    pub(super) algo: String,
    /// The new current key's id.
    pub(super) kid: Option<String>,
    /// Every key revoked and destroyed.
    pub(super) revoked_kids: Vec<String>,
    /// RFC 3339: tokens issued before this are rejected.
    pub(super) revoked_at: String,
    /// Live tokens rejected.
    pub(super) revoked_tokens: i64,
    /// Distinct subjects among them.
    pub(super) affected_subjects: i64,
}

/// One key in `GET /app/{app_id}/pub-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPubKey {
    /// Key id.
    pub(super) key_id: String,
    /// base64 of the PEM SPKI.
    pub(super) public_key: String,
    /// `RSA`, `ECDSA` or `EdDSA`.
    pub(super) key_type: String,
    /// JWS algorithm.
    pub(super) key_algo: String,
    /// Unix seconds it stops (or stopped) signing.
    pub(super) exp_time: i64,
    /// `yes` or `no`.
    pub(super) is_expired: String,
    /// `yes` or `no`.
    pub(super) is_revoked: String,
    /// Lifecycle state.
    pub(super) state: String,
}

/// `GET /app/{app_id}/pub-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPubKeys {
    /// Every key of the app.
    pub(super) keys: Vec<JpPubKey>,
}

/// A token pair (`sign`, `renew`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPair {
    /// The signing key's id.
    pub(super) key_id: String,
    /// base64 of the PEM SPKI of the signing key.
    pub(super) public_key: String,
    /// The access JWT.
    pub(super) auth_token: String,
    /// The refresh JWT (null when the app issues none).
    pub(super) refresh_token: Option<String>,
}

/// `POST /app/{app_id}/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpVerified {
    /// Whether the token verifies now.
    pub(super) verified: bool,
}

/// One session in `POST /app/{app_id}/get-session`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpSession {
    /// Token id.
    pub(super) token_id: String,
    /// Signing key id.
    pub(super) key_id: String,
    /// Unix seconds.
    pub(super) auth_token_iat: i64,
    /// Unix seconds.
    pub(super) auth_token_nbf: i64,
    /// Unix seconds.
    pub(super) auth_token_exp: i64,
    /// Unix seconds.
    pub(super) refresh_token_iat: i64,
    /// Unix seconds.
    pub(super) refresh_token_nbf: i64,
    /// Unix seconds (0: no refresh token).
    pub(super) refresh_token_exp: i64,
    /// The client address given at sign/renew.
    #[schema(value_type = String)]
    pub(super) ip_address: Value,
    /// The user agent given at sign/renew.
    #[schema(value_type = String)]
    pub(super) user_agent: Value,
}

/// `POST /app/{app_id}/get-session`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpSessions {
    /// The subject's live sessions (null when there are none, as in JWTPlus).
    pub(super) sessions: Option<Vec<JpSession>>,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpHealth {
    /// `ok`, or `db-down` (503).
    pub(super) message: String,
}

/// `POST /root/create` body (validated field by field, JWTPlus's messages).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpCreateBody {
    /// Letters, digits, `@._-` and spaces.
    #[schema(pattern = r"^[a-zA-Z0-9@._\-\s]+$")]
    pub(super) name: String,
    /// Letters, digits, `@._-` and spaces.
    pub(super) description: Option<String>,
    /// Access-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) token_expire: i64,
    /// Access-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub(super) token_notbefore: Option<i64>,
    /// Refresh-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) refresh_expire: i64,
    /// Refresh-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub(super) refresh_notbefore: i64,
    /// Seconds between scheduled rotations.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) rotation_period: i64,
    /// `RSA`, `ECDSA` or `EdDSA`; must match `algo`.
    #[schema(example = "RSA")]
    pub(super) key_type: String,
    /// JWS algorithm (`RS256`, `ES256`, `EdDSA`, ...).
    #[schema(example = "RS256")]
    pub(super) algo: String,
}

/// `PATCH /root/{app_id}` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpPatchBody {
    /// Letters, digits, `@._-` and spaces.
    pub(super) name: String,
    /// Letters, digits, `@._-` and spaces.
    pub(super) description: Option<String>,
    /// Access-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) token_expire: i64,
    /// Access-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub(super) token_notbefore: Option<i64>,
    /// Refresh-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) refresh_expire: i64,
    /// Refresh-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub(super) refresh_notbefore: i64,
    /// Seconds between scheduled rotations.
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(super) rotation_period: i64,
}

/// `POST /app/{app_id}/sign` body; every other top-level member becomes a claim
/// (reserved ones are refused).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpSignBody {
    /// Subject.
    pub(super) sub: String,
    /// Audience.
    pub(super) aud: String,
    /// The client's IPv4 or IPv6 address.
    #[schema(example = "192.0.2.1")]
    pub(super) ip: String,
    /// The client's user agent.
    pub(super) useragent: String,
}

/// `POST /app/{app_id}/renew` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpRenewBody {
    /// The refresh JWT (single use).
    pub(super) refresh_token: String,
    /// The client's IPv4 or IPv6 address.
    #[schema(example = "192.0.2.1")]
    pub(super) ip: String,
    /// The client's user agent.
    pub(super) useragent: String,
}

/// `POST /app/{app_id}/verify` and `/logout` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpTokenBody {
    /// An access JWT.
    pub(super) token: String,
}

/// `POST /app/{app_id}/get-session` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpSubBody {
    /// Subject.
    pub(super) sub: String,
}
