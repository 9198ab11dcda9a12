//! JWTPlus: `/root/*` with the root key and `/app/{app_id}/*` with the app's access token,
//! both sent as the raw `Authorization` header (`Bearer ` also accepted). Field names,
//! validation messages and status codes follow `peer-apis.md` Part A; its BUGs are not
//! copied (existence is checked, key_type must match algo, reserved claims cannot be
//! overridden, a refresh that cannot be honoured is an error, not an empty 200).

use std::net::IpAddr;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::alg::{Algorithm, KeyFamily};
use crate::api::ApiError;
use crate::api::apps::{CreateApp, new_app_row};
use crate::api::auth::{is_root, token_app};
use crate::api::extract::{Credential, HostHeader};
use crate::app::AppState;
use crate::auth::{ROOT_PREFIX, digest};
use crate::jwt::service::{IssueOptions, RefreshFormat};
use crate::keys::{KeyState, Kid, parse_ulid, policy};
use crate::store::{AppPolicy, AppRow, KeyRow};

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
    NotFound(Value),
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
            Self::Auth(m) => (StatusCode::FORBIDDEN, json!({"errors": m})),
            Self::Empty => (
                StatusCode::BAD_REQUEST,
                json!({"errors": "empty request body"}),
            ),
            Self::BadId => (StatusCode::BAD_REQUEST, json!({"errors": "invalid app id"})),
            Self::Syntax(m) => (
                StatusCode::BAD_REQUEST,
                json!({"errors": {"error_field": "", "error_message": m}}),
            ),
            Self::Invalid(v) => (
                StatusCode::BAD_REQUEST,
                json!({"errors": v.into_iter().map(|(f, m)| json!({"error_field": f, "error_message": m})).collect::<Vec<_>>()}),
            ),
            Self::NotFound(b) => (StatusCode::NOT_FOUND, b),
            Self::Api(e) => {
                let status = e.status_code();
                let body = match status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        json!({"errors": e.public_message()})
                    }
                    s if s.is_server_error() => json!({"message": "error"}),
                    StatusCode::NOT_FOUND => json!({"errors": e.to_string()}),
                    _ => {
                        json!({"errors": [{"error_field": "", "error_message": e.public_message()}]})
                    }
                };
                let cause = e
                    .into_response()
                    .extensions()
                    .get::<crate::api::error::ErrorCause>()
                    .cloned();
                let mut res = (status, Json(body)).into_response();
                if let Some(c) = cause {
                    res.extensions_mut().insert(c);
                }
                return res;
            }
        };
        (status, Json(body)).into_response()
    }
}

type JpResult = Result<Response, JpError>;

fn ok_status() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

// ---- auth ----------------------------------------------------------------------------

async fn root_guard(state: &AppState, cred: Option<&str>) -> Result<String, JpError> {
    crate::api::auth::not_rate_limited(state)?;
    let Some(c) = cred.filter(|c| c.starts_with(ROOT_PREFIX)) else {
        crate::api::auth::auth_failed(state, "root key", "root").await;
        return Err(JpError::Auth("invalid root token"));
    };
    if is_root(state, c) {
        crate::audit::set_actor("root");
        Ok(digest(c))
    } else {
        crate::api::auth::auth_failed(state, "root key", "root").await;
        Err(JpError::Auth("invalid root key"))
    }
}

async fn app_guard(
    state: &AppState,
    cred: Option<&str>,
    app_id: &str,
) -> Result<std::sync::Arc<AppRow>, JpError> {
    crate::api::auth::not_rate_limited(state)?;
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
        _ => {
            crate::api::auth::auth_failed(state, "access token", app_id).await;
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
        .map_err(|_| JpError::NotFound(json!({"errors": "app not found"})))
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

fn app_json(a: &AppRow) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "token_expiry": a.token_ttl,
        "token_notbefore": a.token_nbf,
        "refresh_expiry": a.refresh_ttl,
        "refresh_notbefore": a.refresh_nbf,
        "key_type": key_type(a.signing_alg),
        "algo": a.signing_alg.as_str(),
        "rotation_period": a.rotation_period,
        "add_time": a.created_at,
        "update_time": if a.updated_at == a.created_at { 0 } else { a.updated_at },
        "last_key_rotate": a.last_rotated_at.unwrap_or(0),
    })
}

// ---- root routes ---------------------------------------------------------------------------

async fn root_list(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    root_guard(&state, cred.as_deref()).await?;
    let apps = state.store.apps().await.map_err(ApiError::from)?;
    Ok(Json(json!({"apps": apps.iter().map(app_json).collect::<Vec<_>>()})).into_response())
}

async fn root_rotate(State(state): State<AppState>, Credential(cred): Credential) -> JpResult {
    let old = root_guard(&state, cred.as_deref()).await?;
    let new = state
        .keys
        .rotate_root_key(&old)
        .await
        .map_err(ApiError::from)?;
    Ok((
        crate::api::no_store(),
        Json(json!({"new-key": new.expose()})),
    )
        .into_response())
}

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
    };
    let row = new_app_row(req, f.description, f.token_notbefore, f.refresh_notbefore)?;
    let created = state.keys.create_app(row).await.map_err(ApiError::from)?;
    let current = created.keys.iter().find(|k| k.state == KeyState::Current);
    Ok((
        crate::api::no_store(),
        Json(json!({
            "app_id": created.app.id,
            "app_key": created.access_token.expose(),
            "public_key": current.map(public_key_b64).unwrap_or_default(),
            "algo": created.app.signing_alg.as_str(),
            "kid": current.map(|k| k.kid.to_string()),
        })),
    )
        .into_response())
}

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
            },
        )
        .await
        .map_err(ApiError::from)?;
    Ok(ok_status())
}

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
        Json(json!({"app_id": app.id, "app_key": token.expose()})),
    )
        .into_response())
}

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
    if let Some(k) = &r.current {
        crate::api::layers::record_kid(&k.kid);
    }
    let current = r.current.as_ref();
    Ok(Json(json!({
        "app_id": app.id,
        "new_public_key": current.map(public_key_b64).unwrap_or_default(),
        "algo": app.signing_alg.as_str(),
        "kid": current.map(|k| k.kid.to_string()),
        "revoked_kids": r.revoked.iter().map(|k| k.kid.to_string()).collect::<Vec<_>>(),
        "revoked_at": crate::clock::rfc3339(r.revoked_at),
        "revoked_tokens": r.revoked_tokens,
        "affected_subjects": r.affected_subjects,
    }))
    .into_response())
}

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
            Err(JpError::NotFound(json!({"errors": "key not found"})))
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

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

async fn app_info(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(app_id): Path<String>,
) -> JpResult {
    let app = app_guard(&state, cred.as_deref(), &app_id).await?;
    Ok(Json(json!({"app": app_json(&app)})).into_response())
}

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
    let out: Vec<Value> = keys
        .iter()
        .map(|k| {
            let exp_time = match k.state {
                KeyState::Current => k.activated_at.unwrap_or(k.created_at) + app.rotation_period,
                _ => k.deactivated_at.or(k.revoked_at).or(k.retired_at).unwrap_or(0),
            };
            json!({
                "key_id": k.kid.to_string(),
                "public_key": public_key_b64(k),
                "key_type": key_type(k.algorithm),
                "key_algo": k.algorithm.as_str(),
                "exp_time": exp_time,
                "is_expired": if matches!(k.state, KeyState::Previous | KeyState::Retired) { "yes" } else { "no" },
                "is_revoked": if k.state == KeyState::Revoked { "yes" } else { "no" },
                "state": k.state.as_str(),
            })
        })
        .collect();
    Ok(Json(json!({"keys": out})).into_response())
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

fn opts(state: &AppState, host: &HostHeader, app_id: &str, meta: Option<Value>) -> IssueOptions {
    IssueOptions {
        issuer: state.issuer(host, app_id),
        ttl: None,
        with_jid: true,
        refresh: RefreshFormat::Jwt,
        meta,
    }
}

fn pair_body(state: &AppState, kid: Kid, issued: &crate::jwt::Issued) -> Value {
    let public = state
        .registry
        .key(&kid)
        .and_then(|k| k.public.to_spki_der().ok())
        .and_then(|d| der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &d).ok())
        .map(|p| STANDARD.encode(p))
        .unwrap_or_default();
    json!({
        "key_id": kid.to_string(),
        "public_key": public,
        "auth_token": issued.token,
        "refresh_token": issued.refresh_token.as_ref().map(|r| r.expose().to_owned()),
    })
}

async fn app_sign(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
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
        .issue(&app, m, &opts(&state, &host, &app.id, meta))
        .await
        .map_err(ApiError::from)?;
    crate::api::layers::record_kid(&issued.kid);
    Ok((
        crate::api::no_store(),
        Json(pair_body(&state, issued.kid, &issued)),
    )
        .into_response())
}

async fn app_verify(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
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
        Some(t) => state
            .tokens
            .verify(&app, &state.issuer(&host, &app.id), &t)
            .await
            .is_ok(),
        None => false,
    };
    Ok(Json(json!({"verified": verified})).into_response())
}

async fn app_renew(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
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
        .refresh(&app, &rt, &opts(&state, &host, &app.id, meta))
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
        ) => Err(JpError::NotFound(
            json!({"message": "invalid refresh token"}),
        )),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

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
        return Ok(Json(json!({"sessions": null})).into_response());
    }
    let sessions: Vec<Value> = rows
        .iter()
        .map(|r| {
            let meta: Value = r
                .meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or(Value::Null);
            json!({
                "token_id": r.jti,
                "key_id": r.kid,
                "auth_token_iat": r.iat,
                "auth_token_nbf": r.iat + app.token_nbf,
                "auth_token_exp": r.exp,
                "refresh_token_iat": r.iat,
                "refresh_token_nbf": r.iat + app.refresh_nbf,
                "refresh_token_exp": r.refresh_exp.unwrap_or(0),
                "ip_address": meta.get("ip").cloned().unwrap_or(Value::from("")),
                "user_agent": meta.get("useragent").cloned().unwrap_or(Value::from("")),
            })
        })
        .collect();
    Ok(Json(json!({"sessions": sessions})).into_response())
}

async fn app_logout(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
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
        && let Ok(claims) = state
            .tokens
            .verify(&app, &state.issuer(&host, &app.id), &t)
            .await
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

async fn ping() -> &'static str {
    "pong"
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"message": "ok"})).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "db-down"})),
        )
            .into_response(),
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ping", get(ping))
        .route("/health", get(health))
        .route("/root/list", get(root_list))
        .route("/root/rotate", get(root_rotate).post(root_rotate))
        .route("/root/create", post(root_create))
        .route("/root/{app_id}", patch(root_patch).delete(root_delete))
        .route("/root/{app_id}/rotate/key", get(root_rotate_key))
        .route(
            "/root/{app_id}/rotate/pki",
            get(root_rotate_pki).post(root_rotate_pki),
        )
        .route("/root/{app_id}/revoke/{key_id}", delete(root_revoke))
        .route("/root/{app_id}/flush", delete(root_flush))
        .route("/app/{app_id}", get(app_info))
        .route("/app/{app_id}/pub-keys", get(app_pub_keys))
        .route("/app/{app_id}/sign", post(app_sign))
        .route("/app/{app_id}/verify", post(app_verify))
        .route("/app/{app_id}/renew", post(app_renew))
        .route("/app/{app_id}/get-session", post(app_get_session))
        .route("/app/{app_id}/logout", post(app_logout))
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
