//! Native app and key routes: `/apps`, `/apps/{id}`, `/apps/{id}/keys...`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use std::collections::HashMap;

use serde_json::{Map, Value, json};
use ulid::Ulid;

use super::auth::{existing_app, require_root, require_root_or_app};
use super::extract::{ApiJson, Credential, HostHeader};
use super::{ApiError, wire};
use crate::alg::Algorithm;
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::keys::policy::{self, Policy};
use crate::keys::{KeyState, Kid};
use crate::store::{AppPolicy, AppRow};

/// `POST /apps` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApp {
    /// Display name.
    pub(crate) name: String,
    /// Algorithm of the app's keys (default RS256).
    #[serde(default)]
    pub(crate) signing_alg: Option<String>,
    /// RSA modulus bits (default 2048).
    #[serde(default)]
    pub(crate) rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations (default 30 days).
    #[serde(default)]
    pub(crate) rotation_period: Option<i64>,
    /// Seconds a key verifies after it stopped signing (default token_ttl + 300).
    #[serde(default)]
    pub(crate) verification_ttl: Option<i64>,
    /// Longest access-token lifetime (default 3600).
    #[serde(default)]
    pub(crate) token_ttl: Option<i64>,
    /// Refresh-token lifetime (default 0: no refresh tokens).
    #[serde(default)]
    pub(crate) refresh_ttl: Option<i64>,
    /// Certificate subject (default `CN=<name>`).
    #[serde(default)]
    pub(crate) subject_dn: Option<String>,
}

/// `PATCH /apps/{id}` body: only the fields given change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchApp {
    name: Option<String>,
    signing_alg: Option<String>,
    rsa_bits: Option<u32>,
    rotation_period: Option<i64>,
    verification_ttl: Option<i64>,
    token_ttl: Option<i64>,
    refresh_ttl: Option<i64>,
    subject_dn: Option<String>,
}

pub(crate) fn parse_alg(s: &str) -> Result<Algorithm, ApiError> {
    s.parse().map_err(|e: crate::alg::UnknownAlgorithm| {
        ApiError::unprocessable("unsupported_algorithm", e.to_string())
    })
}

pub(crate) fn validate_subject_dn(dn: &str) -> Result<(), ApiError> {
    if dn.is_empty() || dn.chars().count() > 132 || dn.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_policy",
            "subject_dn: must be 1 to 132 characters",
        ));
    }
    crate::x509::parse_dn(dn)
        .map_err(|e| ApiError::unprocessable("invalid_policy", format!("subject_dn: {e}")))?;
    Ok(())
}

/// Build and validate a new app row from a request (shared with the compat families).
pub(crate) fn new_app_row(
    req: CreateApp,
    description: String,
    token_nbf: i64,
    refresh_nbf: i64,
) -> Result<AppRow, ApiError> {
    policy::validate_name(&req.name)?;
    let signing_alg = req
        .signing_alg
        .as_deref()
        .map(parse_alg)
        .transpose()?
        .unwrap_or(Algorithm::RS256);
    let token_ttl = req.token_ttl.unwrap_or(policy::DEFAULT_TOKEN_TTL);
    let refresh_ttl = req.refresh_ttl.unwrap_or(0);
    let p = Policy {
        signing_alg,
        rsa_bits: if signing_alg.is_rsa() {
            req.rsa_bits.unwrap_or(2048)
        } else {
            0
        },
        rotation_period: req
            .rotation_period
            .unwrap_or(policy::DEFAULT_ROTATION_PERIOD),
        verification_ttl: req
            .verification_ttl
            .unwrap_or_else(|| policy::default_verification_ttl(token_ttl)),
        token_ttl,
        token_nbf,
        refresh_ttl,
        refresh_nbf,
    };
    policy::validate(&p)?;
    let subject_dn = req
        .subject_dn
        .unwrap_or_else(|| format!("CN={}", dn_escape(&req.name)));
    validate_subject_dn(&subject_dn)?;
    Ok(AppRow {
        id: Ulid::new().to_string(),
        name: req.name,
        description,
        signing_alg: p.signing_alg,
        rsa_bits: p.rsa_bits,
        rotation_period: p.rotation_period,
        verification_ttl: p.verification_ttl,
        token_ttl: p.token_ttl,
        token_nbf: p.token_nbf,
        refresh_ttl: p.refresh_ttl,
        refresh_nbf: p.refresh_nbf,
        subject_dn,
        created_at: 0,
        updated_at: 0,
        cutoff: None,
        last_rotated_at: None,
        access_token_sha256: String::new(),
    })
}

/// Escape RFC 4514 special characters in an attribute value.
fn dn_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    if out.ends_with(' ') {
        out.insert(out.len() - 1, '\\');
    }
    out
}

/// Key summary shown with an app.
fn key_summary(state: &AppState, app_id: &str) -> Value {
    wire::key_summary(state.registry.published(app_id).iter().map(|k| &k.row))
}

/// Per-app figures for the list and show views: keys per state and live tokens.
#[derive(Debug, Default)]
struct AppStats {
    keys: HashMap<String, Map<String, Value>>,
    live_tokens: HashMap<String, i64>,
}

impl AppStats {
    /// Figures for one app, or (`None`) every app.
    async fn load(state: &AppState, app_id: Option<&str>) -> Result<Self, ApiError> {
        let mut keys: HashMap<String, Map<String, Value>> = HashMap::new();
        for (app, st, n) in state.store.key_counts_per_app(app_id).await? {
            keys.entry(app).or_default().insert(st, n.into());
        }
        let live_tokens = state
            .store
            .live_token_counts_per_app(app_id, state.clock.now())
            .await?;
        Ok(Self { keys, live_tokens })
    }
}

/// Key states shown in `key_counts` (always all five, zero when none).
const COUNTED_STATES: [KeyState; 5] = [
    KeyState::Next,
    KeyState::Current,
    KeyState::Previous,
    KeyState::Retired,
    KeyState::Revoked,
];

fn app_view(state: &AppState, host: &HostHeader, a: &AppRow, stats: Option<&AppStats>) -> Value {
    let mut v = wire::app(a, &state.issuer(host, &a.id));
    if let Value::Object(m) = &mut v {
        m.insert("key_summary".into(), key_summary(state, &a.id));
        if let Some(stats) = stats {
            let counts = stats.keys.get(&a.id);
            let key_counts: Map<String, Value> = COUNTED_STATES
                .iter()
                .map(|s| {
                    let n = counts
                        .and_then(|c| c.get(s.as_str()))
                        .cloned()
                        .unwrap_or_else(|| 0.into());
                    (s.as_str().to_owned(), n)
                })
                .collect();
            m.insert("key_counts".into(), key_counts.into());
            let activated = state
                .registry
                .current(&a.id)
                .and_then(|k| k.row.activated_at);
            m.insert("last_rotation_at".into(), activated.map(rfc3339).into());
            m.insert(
                "next_rotation_at".into(),
                activated
                    .map(|t| rfc3339(t.saturating_add(a.rotation_period)))
                    .into(),
            );
            m.insert(
                "live_tokens".into(),
                stats.live_tokens.get(&a.id).copied().unwrap_or(0).into(),
            );
        }
    }
    v
}

async fn create(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    ApiJson(req): ApiJson<CreateApp>,
) -> Result<impl IntoResponse, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let row = new_app_row(req, String::new(), 0, 0)?;
    let created = state.keys.create_app(row).await?;
    super::layers::record_app(&created.app.id);
    let mut body = wire::app(&created.app, &state.issuer(&host, &created.app.id));
    if let Value::Object(m) = &mut body {
        m.insert("access_token".into(), created.access_token.expose().into());
        m.insert("keys".into(), created.keys.iter().map(wire::key).collect());
    }
    Ok((StatusCode::CREATED, super::no_store(), Json(body)))
}

async fn list(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let apps = state.store.apps().await?;
    let stats = AppStats::load(&state, None).await?;
    Ok(Json(
        json!({"apps": apps.iter().map(|a| app_view(&state, &host, a, Some(&stats))).collect::<Vec<_>>()}),
    ))
}

async fn show(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let app = existing_app(&state, &id).await?;
    let stats = AppStats::load(&state, Some(&id)).await?;
    Ok(Json(app_view(&state, &host, &app, Some(&stats))))
}

async fn patch(
    State(state): State<AppState>,
    Credential(cred): Credential,
    host: HostHeader,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchApp>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let app = existing_app(&state, &id).await?;
    if let Some(n) = &req.name {
        policy::validate_name(n)?;
    }
    let signing_alg = req
        .signing_alg
        .as_deref()
        .map(parse_alg)
        .transpose()?
        .unwrap_or(app.signing_alg);
    let token_ttl = req.token_ttl.unwrap_or(app.token_ttl);
    let p = Policy {
        signing_alg,
        rsa_bits: if signing_alg.is_rsa() {
            req.rsa_bits.unwrap_or(if app.rsa_bits == 0 {
                2048
            } else {
                app.rsa_bits
            })
        } else {
            0
        },
        rotation_period: req.rotation_period.unwrap_or(app.rotation_period),
        verification_ttl: req.verification_ttl.unwrap_or(app.verification_ttl),
        token_ttl,
        token_nbf: app.token_nbf,
        refresh_ttl: req.refresh_ttl.unwrap_or(app.refresh_ttl),
        refresh_nbf: app.refresh_nbf,
    };
    policy::validate(&p)?;
    let subject_dn = req.subject_dn.unwrap_or_else(|| app.subject_dn.clone());
    validate_subject_dn(&subject_dn)?;
    let updated = state
        .keys
        .update_app(
            &id,
            &AppPolicy {
                name: req.name.unwrap_or_else(|| app.name.clone()),
                description: app.description.clone(),
                signing_alg: p.signing_alg,
                rsa_bits: p.rsa_bits,
                rotation_period: p.rotation_period,
                verification_ttl: p.verification_ttl,
                token_ttl: p.token_ttl,
                token_nbf: p.token_nbf,
                refresh_ttl: p.refresh_ttl,
                refresh_nbf: p.refresh_nbf,
                subject_dn,
            },
        )
        .await?;
    Ok(Json(app_view(&state, &host, &updated, None)))
}

async fn delete(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    existing_app(&state, &id).await?;
    let revoked = state.keys.delete_app(&id).await?;
    Ok(Json(json!({
        "id": id,
        "deleted": true,
        "revoked_kids": revoked.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })))
}

async fn keys(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_root_or_app(&state, cred.as_deref(), &id).await?;
    let keys = state.store.app_keys(&id).await?;
    Ok(Json(
        json!({"keys": keys.iter().map(wire::key).collect::<Vec<_>>()}),
    ))
}

async fn rotate(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_root_or_app(&state, cred.as_deref(), &id).await?;
    let r = state
        .keys
        .rotate(&id, crate::keys::RotationKind::Manual)
        .await?;
    super::layers::record_kid(&r.current.kid);
    Ok(Json(json!({
        "current": wire::key(&r.current),
        "next": wire::key(&r.next),
        "previous": r.previous.iter().map(wire::key).collect::<Vec<_>>(),
    })))
}

async fn revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path((id, kid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_root_or_app(&state, cred.as_deref(), &id).await?;
    let kid: Kid = kid.parse().map_err(|_| ApiError::NotFound("key"))?;
    let r = state.keys.revoke_key(&id, kid).await?;
    Ok(Json(json!({
        "revoked": r.revoked.first().map(wire::key),
        "current": r.current.as_ref().map(wire::key),
        "next": r.next.as_ref().map(wire::key),
        "revoked_tokens": r.revoked_tokens,
        "affected_subjects": r.affected_subjects,
    })))
}

/// `GET /apps/{id}/blast-radius` (root): what revoking a key or an emergency rotation
/// would cut off, read from the token ledger before acting.
///
/// Response 200:
/// `{"app_id", "live_tokens", "subjects", "keys": [{"kid", "state", "live_tokens", "subjects"}]}`
/// where the totals cover every key of the app (an emergency rotation or a flush) and
/// `keys` lists the published keys (`next`, `current`, `previous`), each with the tokens
/// it signed and their distinct subjects (a key revocation). Only tokens that still
/// verify count: unexpired, not revoked one by one, issued after the app's cut-off, signed
/// by a published key. 401/403 without the root key, 404 for an unknown app.
async fn blast_radius(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let app = existing_app(&state, &id).await?;
    let now = state.clock.now();
    let cutoff = app.cutoff.as_deref();
    let (live_tokens, subjects) = state.store.live_tokens_of_app(&id, now, cutoff).await?;
    let per_kid: HashMap<String, (i64, i64)> = state
        .store
        .live_tokens_by_kid(&id, now, cutoff)
        .await?
        .into_iter()
        .map(|(kid, n, s)| (kid, (n, s)))
        .collect();
    let keys: Vec<Value> = state
        .store
        .app_keys(&id)
        .await?
        .iter()
        .filter(|k| k.state.published())
        .map(|k| {
            let kid = k.kid.to_string();
            let (n, s) = per_kid.get(&kid).copied().unwrap_or((0, 0));
            json!({"kid": kid, "state": k.state.as_str(), "live_tokens": n, "subjects": s})
        })
        .collect();
    Ok(Json(json!({
        "app_id": id,
        "live_tokens": live_tokens,
        "subjects": subjects,
        "keys": keys,
    })))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", post(create).get(list))
        .route("/apps/{id}", get(show).patch(patch).delete(delete))
        .route("/apps/{id}/keys", get(keys))
        .route("/apps/{id}/blast-radius", get(blast_radius))
        .route("/apps/{id}/keys/rotate", post(rotate))
        .route("/apps/{id}/keys/{kid}/revoke", post(revoke))
}

#[cfg(test)]
mod tests {
    use super::dn_escape;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(dn_escape("Acme, Inc"), "Acme\\, Inc");
        assert_eq!(dn_escape("#1"), "\\#1");
        assert_eq!(dn_escape("plain"), "plain");
    }
}
