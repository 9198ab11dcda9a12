//! JWTPlus: `/root/*` with the root key and `/app/{app_id}/*` with the app's access token,
//! both sent as the raw `Authorization` header (`Bearer ` also accepted). Field names,
//! validation messages and status codes follow `peer-apis.md` Part A; its BUGs are not
//! copied (existence is checked, key_type must match algo, reserved claims cannot be
//! overridden, a refresh that cannot be honoured is an error, not an empty 200).

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::alg::{Algorithm, KeyFamily};
use crate::api::ApiError;
use crate::api::apps::{CreateApp, new_app_row};
use crate::api::auth::{auth_failed, is_root, kind, token_app};
use crate::api::error::{Dialect, PeerHeaders};
use crate::api::extract::Credential;
use crate::api::openapi::{JpAppId, TAG_JWTPLUS};
use crate::api::wire::Status;
use crate::app::AppState;
use crate::auth::{ROOT_PREFIX, digest};
use crate::jwt::service::{IssueOptions, RefreshFormat};
use crate::keys::{KeyState, Kid, parse_ulid, policy};
use crate::store::{AppPolicy, AppRow, KeyRow};

/// One field's failure in a JWTPlus error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpFieldError {
    /// The JSON name of the field (empty for a body-level failure).
    error_field: String,
    /// JWTPlus's validation sentence.
    error_message: String,
}

/// What `errors` holds: a sentence, one field error, or a list of them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JpErrors {
    /// Authentication, empty body, bad id, not found.
    Text(String),
    /// Malformed JSON or a wrong type.
    Field(JpFieldError),
    /// Validation failures, in the order of the fields.
    Fields(Vec<JpFieldError>),
}

/// A JWTPlus error body: `{"errors": ...}`, or `{"message": ...}` for a refused refresh
/// (404) and a server failure (5xx, `"error"`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JpErrorBody {
    /// `{"errors": ...}`.
    Errors {
        /// The failure.
        errors: JpErrors,
    },
    /// `{"message": ...}`.
    Message {
        /// `invalid refresh token` or `error`.
        message: String,
    },
}

impl JpErrorBody {
    fn text(m: impl Into<String>) -> Self {
        Self::Errors {
            errors: JpErrors::Text(m.into()),
        }
    }

    fn message(m: impl Into<String>) -> Self {
        Self::Message { message: m.into() }
    }

    fn field(f: impl Into<String>, m: impl Into<String>) -> JpFieldError {
        JpFieldError {
            error_field: f.into(),
            error_message: m.into(),
        }
    }
}

/// The error responses of every JWTPlus route.
pub(crate) struct JpErrorResponses;

impl utoipa::IntoResponses for JpErrorResponses {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        crate::api::openapi::family_errors(
            "JpErrorBody",
            &[
                (
                    400,
                    "Empty body, bad JSON, wrong type, failed validation or a bad app id",
                ),
                (403, "Missing or wrong root key / access token"),
                (404, "No such app or key; a refused refresh token"),
                (409, "Not allowed in the key's state"),
                (413, "Body over 64 KiB"),
                (422, "Not acceptable (e.g. a reserved claim)"),
                (500, "Store failure: `{\"message\": \"error\"}`"),
                (503, "HSM unavailable: `{\"message\": \"error\"}`"),
            ],
        )
    }
}

/// JWTPlus failures, each with its exact body.
pub(crate) enum JpError {
    /// 403 `{"errors": "..."}`.
    Auth(&'static str),
    /// 400 `{"errors": "empty request body"}`.
    Empty,
    /// 400 `{"errors": {"error_field": "", "error_message": "..."}}`.
    Syntax(&'static str),
    /// 400 `{"errors": [{"error_field", "error_message"}]}`.
    Invalid(Vec<(String, String)>),
    /// 404 `{"message": "..."}` (renew) or `{"errors": "..."}` (not found).
    NotFound(JpErrorBody),
    /// 400 `{"errors": "invalid app id"}`.
    BadId,
    /// Anything else, through the shared mapping.
    Api(ApiError),
}

impl From<ApiError> for JpError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for JpError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::Auth(m) => (StatusCode::FORBIDDEN, JpErrorBody::text(m)),
            Self::Empty => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::text("empty request body"),
            ),
            Self::BadId => (StatusCode::BAD_REQUEST, JpErrorBody::text("invalid app id")),
            Self::Syntax(m) => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::Errors {
                    errors: JpErrors::Field(JpErrorBody::field("", m)),
                },
            ),
            Self::Invalid(v) => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::Errors {
                    errors: JpErrors::Fields(
                        v.into_iter()
                            .map(|(f, m)| JpErrorBody::field(f, m))
                            .collect(),
                    ),
                },
            ),
            Self::NotFound(b) => (StatusCode::NOT_FOUND, b),
            Self::Api(e) => return e.render::<JwtPlus>(),
        };
        (status, Json(body)).into_response()
    }
}

/// JWTPlus's error dialect, for the errors of the shared code.
struct JwtPlus;

impl Dialect for JwtPlus {
    type Body = JpErrorBody;
    /// JWTPlus answers every authentication failure 403 without a challenge, so no
    /// `WWW-Authenticate`. It has no 429 (a source over its budget of invalid credentials
    /// still gets the 403), but a `Retry-After` on a refusal that has one is kept: the body
    /// cannot say when to retry.
    const HEADERS: PeerHeaders = PeerHeaders {
        retry_after: true,
        www_authenticate: false,
    };
    fn body(e: &ApiError) -> JpErrorBody {
        match e.status_code() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                JpErrorBody::text(e.public_message())
            }
            s if s.is_server_error() => JpErrorBody::message("error"),
            StatusCode::NOT_FOUND => JpErrorBody::text(e.to_string()),
            _ => JpErrorBody::Errors {
                errors: JpErrors::Fields(vec![JpErrorBody::field("", e.public_message())]),
            },
        }
    }
}

type JpResult = Result<Response, JpError>;

fn ok_status() -> Response {
    Json(Status::ok()).into_response()
}

// ---- auth ----------------------------------------------------------------------------

/// JWTPlus answers every authentication failure 403 and has no 429, so failures are
/// counted and audited (in aggregate, per source) but never throttled here.
async fn root_guard(state: &AppState, cred: Option<&str>) -> Result<String, JpError> {
    let Some(c) = cred.filter(|c| c.starts_with(ROOT_PREFIX)) else {
        if let Some(c) = cred {
            let _ = auth_failed(state, kind(c), None).await;
        }
        return Err(JpError::Auth("invalid root token"));
    };
    if is_root(state, c) {
        crate::audit::set_actor("root");
        Ok(digest(c))
    } else {
        let _ = auth_failed(state, kind(c), None).await;
        Err(JpError::Auth("invalid root key"))
    }
}

async fn app_guard(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<std::sync::Arc<AppRow>, JpError> {
    if parse_ulid(app_id).is_err() {
        return Err(JpError::Auth("invalid app id"));
    }
    let app = match cred {
        Some(c) => token_app(state, c).await?,
        None => None,
    };
    match app {
        Some(a) if a.id == app_id => {
            crate::audit::set_actor(&format!("app:{}", a.id));
            Ok(a)
        }
        Some(_) => {
            let _ = auth_failed(state, "access_token_of_another_app", Some(app_id)).await;
            Err(JpError::Auth("invalid app key or id"))
        }
        None => {
            if let Some(c) = cred {
                let _ = auth_failed(state, kind(c), Some(app_id)).await;
            }
            Err(JpError::Auth("invalid app key or id"))
        }
    }
}

/// The app of a `/root/{app_id}` route: 400 for a bad id, 404 for an unknown one.
async fn root_app(state: &AppState, app_id: &str) -> Result<std::sync::Arc<AppRow>, JpError> {
    if parse_ulid(app_id).is_err() {
        return Err(JpError::BadId);
    }
    crate::api::auth::existing_app(state, app_id)
        .await
        .map_err(|_| JpError::NotFound(JpErrorBody::text("app not found")))
}

// ---- bodies and validation -------------------------------------------------------------

/// Parse a JSON object body with JWTPlus's error shapes.
fn body_object(body: &Bytes) -> Result<Map<String, Value>, JpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JpError::Empty);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JpError::Syntax("invalid json data type")),
        Err(_) => Err(JpError::Syntax("invalid json format")),
    }
}

const REQUIRED: &str = "This field is required.";
const ALPHA: &str = "This field accepts alpha, numbers & spaces only.";
const ONEOF: &str = "This field accepts preconfigured values only.";
const NUMBER: &str = "This field accepts the numbers only.";

/// Collects validation failures in the order of the fields.
#[derive(Default)]
struct Check(Vec<(String, String)>);

impl Check {
    fn fail(&mut self, f: &str, m: impl Into<String>) {
        self.0.push((f.to_owned(), m.into()));
    }

    /// A string field (type errors are a 400 "invalid json data type").
    fn string(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
    ) -> Result<Option<String>, JpError> {
        match m.get(f) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(f, REQUIRED);
                }
                Ok(None)
            }
            Some(Value::String(s)) if s.is_empty() && required => {
                self.fail(f, REQUIRED);
                Ok(None)
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(JpError::Syntax("invalid json data type")),
        }
    }

    fn alpha(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
    ) -> Result<Option<String>, JpError> {
        let v = self.string(m, f, required)?;
        if let Some(s) = &v
            && !s.is_empty()
            && !s.chars().all(|c| {
                c.is_ascii_alphanumeric() || "@._- ".contains(c) || c.is_ascii_whitespace()
            })
        {
            self.fail(f, ALPHA);
        }
        Ok(v)
    }

    fn int(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, JpError> {
        match m.get(f) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(f, REQUIRED);
                }
                Ok(None)
            }
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v < min => {
                    self.fail(f, format!("This field accepts the minimum value of {min}"));
                    Ok(None)
                }
                Some(v) if v > max => {
                    self.fail(f, format!("This field accepts the maximum value of {max}"));
                    Ok(None)
                }
                Some(v) => Ok(Some(v)),
                None => {
                    self.fail(f, NUMBER);
                    Ok(None)
                }
            },
            Some(_) => Err(JpError::Syntax("invalid json data type")),
        }
    }

    fn done(self) -> Result<(), JpError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(JpError::Invalid(self.0))
        }
    }
}

const YEAR: i64 = policy::MAX_SECONDS;

/// The policy fields shared by create and PATCH.
struct PolicyFields {
    name: String,
    description: String,
    token_expire: i64,
    token_notbefore: i64,
    refresh_expire: i64,
    refresh_notbefore: i64,
    rotation_period: i64,
}

fn policy_fields(m: &Map<String, Value>, c: &mut Check) -> Result<Option<PolicyFields>, JpError> {
    let name = c.alpha(m, "name", true)?;
    let description = c.alpha(m, "description", false)?;
    let token_expire = c.int(m, "token_expire", true, 60, YEAR)?;
    let token_notbefore = c.int(m, "token_notbefore", false, 0, YEAR)?;
    let refresh_expire = c.int(m, "refresh_expire", true, 60, YEAR)?;
    let refresh_notbefore = c.int(m, "refresh_notbefore", true, 0, YEAR)?;
    let rotation_period = c.int(m, "rotation_period", true, 60, YEAR)?;
    Ok(
        match (
            name,
            token_expire,
            refresh_expire,
            refresh_notbefore,
            rotation_period,
        ) {
            (Some(name), Some(te), Some(re), Some(rn), Some(rp)) => Some(PolicyFields {
                name,
                description: description.unwrap_or_default(),
                token_expire: te,
                token_notbefore: token_notbefore.unwrap_or(0),
                refresh_expire: re,
                refresh_notbefore: rn,
                rotation_period: rp,
            }),
            _ => None,
        },
    )
}

fn key_type(alg: Algorithm) -> &'static str {
    match alg.family() {
        KeyFamily::Rsa => "RSA",
        KeyFamily::Ec(_) => "ECDSA",
        KeyFamily::Ed(_) => "EdDSA",
    }
}

/// base64 of the PEM of a key's SPKI (JWTPlus's `public_key`).
fn public_key_b64(k: &KeyRow) -> String {
    let pem = k
        .spki
        .as_deref()
        .and_then(|d| der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, d).ok())
        .unwrap_or_default();
    STANDARD.encode(pem)
}

/// A JWTPlus app.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpApp {
    /// ULID.
    id: String,
    /// Name.
    name: String,
    /// Description.
    description: String,
    /// Access-token lifetime, seconds.
    token_expiry: i64,
    /// Access-token not-before offset, seconds.
    token_notbefore: i64,
    /// Refresh-token lifetime, seconds.
    refresh_expiry: i64,
    /// Refresh-token not-before offset, seconds.
    refresh_notbefore: i64,
    /// `RSA`, `ECDSA` or `EdDSA`.
    key_type: String,
    /// JWS algorithm.
    algo: String,
    /// Seconds between scheduled rotations.
    rotation_period: i64,
    /// Unix seconds.
    add_time: i64,
    /// Unix seconds (0: never updated).
    update_time: i64,
    /// Unix seconds of the last rotation (0: never).
    last_key_rotate: i64,
}

fn app_json(a: &AppRow) -> JpApp {
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
    apps: Vec<JpApp>,
}

/// `GET /app/{app_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpAppInfo {
    /// The app.
    app: JpApp,
}

/// `GET|POST /root/rotate`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpNewRootKey {
    /// The new root key (the old one stopped working).
    #[serde(rename = "new-key")]
    #[schema(rename = "new-key")]
    new_key: String,
}

/// `POST /root/create`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpCreated {
    /// The new app's id.
    app_id: String,
    /// Its access token (shown this once).
    app_key: String,
    /// base64 of the PEM SPKI of its current key.
    public_key: String,
    /// JWS algorithm.
    algo: String,
    /// Its current key's id.
    kid: Option<String>,
}

/// `GET /root/{app_id}/rotate/key`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpAppKey {
    /// The app's id.
    app_id: String,
    /// Its new access token.
    app_key: String,
}

/// `GET|POST /root/{app_id}/rotate/pki`: emergency rotation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPki {
    /// The app's id.
    app_id: String,
    /// base64 of the PEM SPKI of the new current key.
    new_public_key: String,
    /// JWS algorithm.
    algo: String,
    /// The new current key's id.
    kid: Option<String>,
    /// Every key revoked and destroyed.
    revoked_kids: Vec<String>,
    /// RFC 3339: tokens issued before this are rejected.
    revoked_at: String,
    /// Live tokens rejected.
    revoked_tokens: i64,
    /// Distinct subjects among them.
    affected_subjects: i64,
}

/// One key in `GET /app/{app_id}/pub-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPubKey {
    /// Key id.
    key_id: String,
    /// base64 of the PEM SPKI.
    public_key: String,
    /// `RSA`, `ECDSA` or `EdDSA`.
    key_type: String,
    /// JWS algorithm.
    key_algo: String,
    /// Unix seconds it stops (or stopped) signing.
    exp_time: i64,
    /// `yes` or `no`.
    is_expired: String,
    /// `yes` or `no`.
    is_revoked: String,
    /// Lifecycle state.
    state: String,
}

/// `GET /app/{app_id}/pub-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPubKeys {
    /// Every key of the app.
    keys: Vec<JpPubKey>,
}

/// A token pair (`sign`, `renew`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpPair {
    /// The signing key's id.
    key_id: String,
    /// base64 of the PEM SPKI of the signing key.
    public_key: String,
    /// The access JWT.
    auth_token: String,
    /// The refresh JWT (null when the app issues none).
    refresh_token: Option<String>,
}

/// `POST /app/{app_id}/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpVerified {
    /// Whether the token verifies now.
    verified: bool,
}

/// One session in `POST /app/{app_id}/get-session`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpSession {
    /// Token id.
    token_id: String,
    /// Signing key id.
    key_id: String,
    /// Unix seconds.
    auth_token_iat: i64,
    /// Unix seconds.
    auth_token_nbf: i64,
    /// Unix seconds.
    auth_token_exp: i64,
    /// Unix seconds.
    refresh_token_iat: i64,
    /// Unix seconds.
    refresh_token_nbf: i64,
    /// Unix seconds (0: no refresh token).
    refresh_token_exp: i64,
    /// The client address given at sign/renew.
    #[schema(value_type = String)]
    ip_address: Value,
    /// The user agent given at sign/renew.
    #[schema(value_type = String)]
    user_agent: Value,
}

/// `POST /app/{app_id}/get-session`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpSessions {
    /// The subject's live sessions (null when there are none, as in JWTPlus).
    sessions: Option<Vec<JpSession>>,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpHealth {
    /// `ok`, or `db-down` (503).
    message: String,
}

/// `POST /root/create` body (validated field by field, JWTPlus's messages).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpCreateBody {
    /// Letters, digits, `@._-` and spaces.
    #[schema(pattern = r"^[a-zA-Z0-9@._\-\s]+$")]
    name: String,
    /// Letters, digits, `@._-` and spaces.
    description: Option<String>,
    /// Access-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    token_expire: i64,
    /// Access-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    token_notbefore: Option<i64>,
    /// Refresh-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    refresh_expire: i64,
    /// Refresh-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    refresh_notbefore: i64,
    /// Seconds between scheduled rotations.
    #[schema(minimum = 60, maximum = 31_536_000)]
    rotation_period: i64,
    /// `RSA`, `ECDSA` or `EdDSA`; must match `algo`.
    #[schema(example = "RSA")]
    key_type: String,
    /// JWS algorithm (`RS256`, `ES256`, `EdDSA`, ...).
    #[schema(example = "RS256")]
    algo: String,
}

/// `PATCH /root/{app_id}` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpPatchBody {
    /// Letters, digits, `@._-` and spaces.
    name: String,
    /// Letters, digits, `@._-` and spaces.
    description: Option<String>,
    /// Access-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    token_expire: i64,
    /// Access-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    token_notbefore: Option<i64>,
    /// Refresh-token lifetime, seconds.
    #[schema(minimum = 60, maximum = 31_536_000)]
    refresh_expire: i64,
    /// Refresh-token not-before offset, seconds.
    #[schema(minimum = 0, maximum = 31_536_000)]
    refresh_notbefore: i64,
    /// Seconds between scheduled rotations.
    #[schema(minimum = 60, maximum = 31_536_000)]
    rotation_period: i64,
}

/// `POST /app/{app_id}/sign` body; every other top-level member becomes a claim
/// (reserved ones are refused).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpSignBody {
    /// Subject.
    sub: String,
    /// Audience.
    aud: String,
    /// The client's IPv4 or IPv6 address.
    #[schema(example = "192.0.2.1")]
    ip: String,
    /// The client's user agent.
    useragent: String,
}

/// `POST /app/{app_id}/renew` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpRenewBody {
    /// The refresh JWT (single use).
    refresh_token: String,
    /// The client's IPv4 or IPv6 address.
    #[schema(example = "192.0.2.1")]
    ip: String,
    /// The client's user agent.
    useragent: String,
}

/// `POST /app/{app_id}/verify` and `/logout` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpTokenBody {
    /// An access JWT.
    token: String,
}

/// `POST /app/{app_id}/get-session` body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct JpSubBody {
    /// Subject.
    sub: String,
}

// ---- root routes ---------------------------------------------------------------------------

/// List every app (JWTPlus shape).
#[utoipa::path(get, path = "/root/list", tag = TAG_JWTPLUS,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Every app", body = JpAppList), JpErrorResponses))]
async fn root_list(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let apps = state.store.apps().await.map_err(ApiError::from)?;
    Ok(Json(JpAppList {
        apps: apps.iter().map(app_json).collect(),
    })
    .into_response())
}

/// New root key; the old one stops working at once.
#[utoipa::path(method(get, post), path = "/root/rotate", tag = TAG_JWTPLUS,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new root key", body = JpNewRootKey), JpErrorResponses))]
async fn root_rotate(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    let old = root_guard(&state, cred.as_deref()).await?;
    let new = state
        .keys
        .rotate_root_key(&old)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(JpNewRootKey {
            new_key: new.expose().to_owned(),
        }),
    )
        .into_response())
}

/// Create an app with its first keys.
#[utoipa::path(post, path = "/root/create", tag = TAG_JWTPLUS,
    request_body = JpCreateBody,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The app, its access token and current public key", body = JpCreated), JpErrorResponses))]
async fn root_create(
    State(state): State<AppState>,
    Credential(cred): Credential,
    body: Bytes,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let fields = policy_fields(&m, &mut c)?;
    let kt = c.string(&m, "key_type", true)?;
    let algo = c.string(&m, "algo", true)?;
    let alg = algo.as_deref().and_then(|a| a.parse::<Algorithm>().ok());
    if algo.is_some() && alg.is_none() {
        c.fail("algo", ONEOF);
    }
    if let Some(kt) = &kt {
        match alg {
            _ if !matches!(kt.as_str(), "RSA" | "ECDSA" | "EdDSA") => c.fail("key_type", ONEOF),
            Some(a) if key_type(a) != kt => c.fail("key_type", ONEOF),
            _ => {}
        }
    }
    c.done()?;
    let (Some(f), Some(alg)) = (fields, alg) else {
        return Err(JpError::Syntax("invalid json data type"));
    };
    // JWTPlus gives RS512 and PS512 keys RSA-4096, the rest RSA-2048.
    let rsa_bits = if matches!(alg, Algorithm::RS512 | Algorithm::PS512) {
        4096
    } else {
        2048
    };
    let req = CreateApp {
        name: f.name,
        signing_alg: Some(alg.as_str().to_owned()),
        rsa_bits: Some(rsa_bits),
        rotation_period: Some(f.rotation_period),
        verification_ttl: Some(policy::default_verification_ttl(f.token_expire)),
        token_ttl: Some(f.token_expire),
        refresh_ttl: Some(f.refresh_expire),
        subject_dn: None,
        status_list: None,
    };
    let row = new_app_row(req, f.description, f.token_notbefore, f.refresh_notbefore)?;
    let created = state.keys.create_app(row).await.map_err(ApiError::from)?;
    let current = created.keys.iter().find(|k| k.state == KeyState::Current);
    Ok((
        crate::api::no_store(),
        Json(JpCreated {
            app_id: created.app.id.clone(),
            app_key: created.access_token.expose().to_owned(),
            public_key: current.map(public_key_b64).unwrap_or_default(),
            algo: created.app.signing_alg.as_str().to_owned(),
            kid: current.map(|k| k.kid.to_string()),
        }),
    )
        .into_response())
}

/// Change an app's policy (every field sent).
#[utoipa::path(patch, path = "/root/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpPatchBody,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Changed", body = Status), JpErrorResponses))]
async fn root_patch(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let fields = policy_fields(&m, &mut c)?;
    c.done()?;
    let Some(f) = fields else {
        return Err(JpError::Syntax("invalid json data type"));
    };
    let verification_ttl = app
        .verification_ttl
        .max(policy::default_verification_ttl(f.token_expire));
    let p = policy::Policy {
        signing_alg: app.signing_alg,
        rsa_bits: app.rsa_bits,
        rotation_period: f.rotation_period,
        verification_ttl,
        token_ttl: f.token_expire,
        token_nbf: f.token_notbefore,
        refresh_ttl: f.refresh_expire,
        refresh_nbf: f.refresh_notbefore,
    };
    policy::validate(&p).map_err(ApiError::from)?;
    policy::validate_name(&f.name).map_err(ApiError::from)?;
    state
        .keys
        .update_app(
            &app.id,
            &AppPolicy {
                name: f.name,
                description: f.description,
                signing_alg: p.signing_alg,
                rsa_bits: p.rsa_bits,
                rotation_period: p.rotation_period,
                verification_ttl: p.verification_ttl,
                token_ttl: p.token_ttl,
                token_nbf: p.token_nbf,
                refresh_ttl: p.refresh_ttl,
                refresh_nbf: p.refresh_nbf,
                subject_dn: app.subject_dn.clone(),
                status_list: app.status_list,
            },
        )
        .await
        .map_err(ApiError::from)?;
    Ok(ok_status())
}

/// Delete an app: every key revoked and destroyed, every token rejected.
#[utoipa::path(delete, path = "/root/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Deleted", body = Status), JpErrorResponses))]
async fn root_delete(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    state
        .keys
        .delete_app(&app.id)
        .await
        .map_err(ApiError::from)?;
    Ok(ok_status())
}

/// New access token for the app.
#[utoipa::path(get, path = "/root/{app_id}/rotate/key", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new access token", body = JpAppKey), JpErrorResponses))]
async fn root_rotate_key(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let token = state
        .keys
        .regenerate_access_token(&app.id, false)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(JpAppKey {
            app_id: app.id.clone(),
            app_key: token.expose().to_owned(),
        }),
    )
        .into_response())
}

/// Emergency rotation: every key revoked and destroyed, new keys, every JWT of the app rejected.
#[utoipa::path(method(get, post), path = "/root/{app_id}/rotate/pki", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The new key and what was revoked", body = JpPki), JpErrorResponses))]
async fn root_rotate_pki(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    let r = state
        .keys
        .emergency_rotate(&app.id)
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&r.current.kid);
    Ok(Json(JpPki {
        app_id: app.id.clone(),
        new_public_key: public_key_b64(&r.current),
        algo: app.signing_alg.as_str().to_owned(),
        kid: Some(r.current.kid.to_string()),
        revoked_kids: r.revoked.iter().map(|k| k.kid.to_string()).collect(),
        revoked_at: crate::clock::rfc3339(r.revoked_at),
        revoked_tokens: r.revoked_tokens,
        affected_subjects: r.affected_subjects,
    })
    .into_response())
}

/// Revoke one key (its tokens rejected, its HSM object destroyed).
#[utoipa::path(delete, path = "/root/{app_id}/revoke/{key_id}", tag = TAG_JWTPLUS,
    params(JpAppId, ("key_id" = String, Path, description = "Key id")),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Revoked", body = Status), JpErrorResponses))]
async fn root_revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path((app_id, key_id)): Path<(String, String)>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let (Ok(_), Ok(kid)) = (parse_ulid(&app_id), key_id.parse::<Kid>()) else {
        return Err(JpError::Auth("invalid app or key id"));
    };
    let app = root_app(&state, &app_id).await?;
    match state.keys.revoke_key(&app.id, kid).await {
        Ok(_) => Ok(ok_status()),
        Err(crate::keys::KeyError::KeyNotFound) => {
            Err(JpError::NotFound(JpErrorBody::text("key not found")))
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// Reject every token of the app issued so far.
#[utoipa::path(delete, path = "/root/{app_id}/flush", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Flushed", body = Status), JpErrorResponses))]
async fn root_flush(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let app = root_app(&state, &app_id).await?;
    state.tokens.flush(&app).await.map_err(ApiError::from)?;
    Ok(ok_status())
}

// ---- app routes ----------------------------------------------------------------------------

/// The app (JWTPlus shape).
#[utoipa::path(get, path = "/app/{app_id}", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The app", body = JpAppInfo), JpErrorResponses))]
async fn app_info(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    Ok(Json(JpAppInfo {
        app: app_json(&app),
    })
    .into_response())
}

/// The app's public keys.
#[utoipa::path(get, path = "/app/{app_id}/pub-keys", tag = TAG_JWTPLUS,
    params(JpAppId),
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "Every key of the app", body = JpPubKeys), JpErrorResponses))]
async fn app_pub_keys(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let keys = state
        .store
        .app_keys(&app.id)
        .await
        .map_err(ApiError::from)?;
    let out: Vec<JpPubKey> = keys
        .iter()
        .map(|k| {
            let exp_time = match k.state {
                KeyState::Current => k.activated_at.unwrap_or(k.created_at) + app.rotation_period,
                _ => k
                    .deactivated_at
                    .or(k.revoked_at)
                    .or(k.retired_at)
                    .unwrap_or(0),
            };
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
            JpPubKey {
                key_id: k.kid.to_string(),
                public_key: public_key_b64(k),
                key_type: key_type(k.algorithm).to_owned(),
                key_algo: k.algorithm.as_str().to_owned(),
                exp_time,
                is_expired: yes_no(matches!(k.state, KeyState::Previous | KeyState::Retired)),
                is_revoked: yes_no(k.state == KeyState::Revoked),
                state: k.state.as_str().to_owned(),
            }
        })
        .collect();
    Ok(Json(JpPubKeys { keys: out }).into_response())
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `ip` and `useragent`, required by sign and renew.
fn client_meta(m: &Map<String, Value>, c: &mut Check) -> Result<Option<Value>, JpError> {
    let ip = c.string(m, "ip", true)?;
    if let Some(ip) = &ip
        && ip.parse::<IpAddr>().is_err()
    {
        c.fail("ip", "This field requires a valid ipv4 or ipv6 address.");
    }
    let ua = c.string(m, "useragent", true)?;
    Ok(match (ip, ua) {
        (Some(ip), Some(ua)) => {
            Some(json!({"ip": ip, "useragent": ua.chars().take(255).collect::<String>()}))
        }
        _ => None,
    })
}

fn opts(state: &AppState, app_id: &str, meta: Option<Value>) -> IssueOptions {
    IssueOptions {
        issuer: state.issuer(app_id),
        ttl: None,
        with_jid: true,
        refresh: RefreshFormat::Jwt,
        meta,
    }
}

fn pair_body(state: &AppState, kid: Kid, issued: &crate::jwt::Issued) -> JpPair {
    let public = state
        .registry
        .key(&kid)
        .and_then(|k| k.public.to_spki_der().ok())
        .and_then(|d| der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &d).ok())
        .map(|p| STANDARD.encode(p))
        .unwrap_or_default();
    JpPair {
        key_id: kid.to_string(),
        public_key: public,
        auth_token: issued.token.clone(),
        refresh_token: issued.refresh_token.as_ref().map(|r| r.expose().to_owned()),
    }
}

/// Issue an access and refresh token pair; other top-level members become claims.
#[utoipa::path(post, path = "/app/{app_id}/sign", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpSignBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The token pair", body = JpPair), JpErrorResponses))]
async fn app_sign(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    c.string(&m, "sub", true)?;
    c.string(&m, "aud", true)?;
    let meta = client_meta(&m, &mut c)?;
    c.done()?;
    // Every top-level body key becomes a claim, as in JWTPlus; reserved ones are refused.
    let issued = state
        .tokens
        .issue(&app, m, &opts(&state, &app.id, meta))
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&issued.kid);
    Ok((
        crate::api::no_store(),
        Json(pair_body(&state, issued.kid, &issued)),
    )
        .into_response())
}

/// Whether an access token verifies now.
#[utoipa::path(post, path = "/app/{app_id}/verify", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpTokenBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The verdict", body = JpVerified), JpErrorResponses))]
async fn app_verify(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let token = c.string(&m, "token", true)?;
    if let Some(t) = &token
        && !is_jwt(t)
    {
        c.fail("token", "This field requires a valid jwt token.");
    }
    c.done()?;
    let verified = match token {
        Some(t) => state.tokens.verify(&app, state.issuers(), &t).await.is_ok(),
        None => false,
    };
    Ok(Json(JpVerified { verified }).into_response())
}

/// Exchange a refresh token (single use) for a new pair.
#[utoipa::path(post, path = "/app/{app_id}/renew", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpRenewBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The new pair", body = JpPair), JpErrorResponses))]
async fn app_renew(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let rt = c.string(&m, "refresh_token", true)?;
    if let Some(t) = &rt
        && !is_jwt(t)
    {
        c.fail("refresh_token", "This field requires a valid jwt token.");
    }
    let meta = client_meta(&m, &mut c)?;
    c.done()?;
    let Some(rt) = rt else {
        return Err(JpError::Empty);
    };
    match state
        .tokens
        .refresh(&app, &rt, &opts(&state, &app.id, meta))
        .await
    {
        Ok(issued) => {
            crate::api::layers::record_kid(&issued.kid);
            Ok((
                crate::api::no_store(),
                Json(pair_body(&state, issued.kid, &issued)),
            )
                .into_response())
        }
        Err(
            crate::jwt::service::TokenError::InvalidRefresh
            | crate::jwt::service::TokenError::RefreshReused,
        ) => Err(JpError::NotFound(JpErrorBody::message(
            "invalid refresh token",
        ))),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// A subject's live sessions.
#[utoipa::path(post, path = "/app/{app_id}/get-session", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpSubBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "The sessions (null when none)", body = JpSessions), JpErrorResponses))]
async fn app_get_session(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let sub = c.string(&m, "sub", true)?;
    c.done()?;
    let Some(sub) = sub else {
        return Err(JpError::Empty);
    };
    let rows = state
        .tokens
        .sessions(&app, &sub)
        .await
        .map_err(ApiError::from)?;
    if rows.is_empty() {
        return Ok(Json(JpSessions { sessions: None }).into_response());
    }
    let sessions: Vec<JpSession> = rows
        .iter()
        .map(|r| {
            let meta: Value = r
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or(Value::Null);
            JpSession {
                token_id: r.jti.clone(),
                key_id: r.kid.clone(),
                auth_token_iat: r.iat,
                auth_token_nbf: r.iat + app.token_nbf,
                auth_token_exp: r.exp,
                refresh_token_iat: r.iat,
                refresh_token_nbf: r.iat + app.refresh_nbf,
                refresh_token_exp: r.refresh_exp.unwrap_or(0),
                ip_address: meta.get("ip").cloned().unwrap_or(Value::from("")),
                user_agent: meta.get("useragent").cloned().unwrap_or(Value::from("")),
            }
        })
        .collect();
    Ok(Json(JpSessions {
        sessions: Some(sessions),
    })
    .into_response())
}

/// End the session of one access token (always 200, as in JWTPlus).
#[utoipa::path(post, path = "/app/{app_id}/logout", tag = TAG_JWTPLUS,
    params(JpAppId),
    request_body = JpTokenBody,
    security(("app_key" = []), ("app_token" = [])),
    responses((status = 200, description = "Done", body = Status), JpErrorResponses))]
async fn app_logout(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
    body: Bytes,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    let m = body_object(&body)?;
    let mut c = Check::default();
    let token = c.string(&m, "token", true)?;
    if let Some(t) = &token
        && !is_jwt(t)
    {
        c.fail("token", "This field requires a valid jwt token.");
    }
    c.done()?;
    // Ends that one session pair; always 200, as in JWTPlus.
    if let Some(t) = token
        && let Ok(claims) = state.tokens.verify(&app, state.issuers(), &t).await
        && let Some(jti) = claims.get("jti").and_then(Value::as_str)
    {
        state
            .tokens
            .end_session(&app, jti)
            .await
            .map_err(ApiError::from)?;
    }
    Ok(ok_status())
}

/// JWTPlus liveness: `pong`.
#[utoipa::path(get, path = "/ping", tag = TAG_JWTPLUS,
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn ping() -> &'static str {
    "pong"
}

/// JWTPlus health: whether the store answers.
#[utoipa::path(get, path = "/health", tag = TAG_JWTPLUS,
    responses(
        (status = 200, description = "The store answers", body = JpHealth),
        (status = 503, description = "The store does not answer", body = JpHealth),
    ))]
async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(JpHealth {
            message: "ok".into(),
        })
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(JpHealth {
                message: "db-down".into(),
            }),
        )
            .into_response(),
    }
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .routes(routes!(health))
        .routes(routes!(root_list))
        .routes(routes!(root_rotate))
        .routes(routes!(root_create))
        .routes(routes!(root_patch, root_delete))
        .routes(routes!(root_rotate_key))
        .routes(routes!(root_rotate_pki))
        .routes(routes!(root_revoke))
        .routes(routes!(root_flush))
        .routes(routes!(app_info))
        .routes(routes!(app_pub_keys))
        .routes(routes!(app_sign))
        .routes(routes!(app_verify))
        .routes(routes!(app_renew))
        .routes(routes!(app_get_session))
        .routes(routes!(app_logout))
}

#[cfg(test)]
mod tests {
    use super::is_jwt;

    #[test]
    fn jwt_shape_check() {
        assert!(is_jwt("eyJh.eyJz.sig"));
        assert!(!is_jwt("a.b"));
        assert!(!is_jwt("a b.c.d"));
    }
}
