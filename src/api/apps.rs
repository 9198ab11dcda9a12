//! Native app and key routes: `/apps`, `/apps/{id}`, `/apps/{id}/keys...`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use std::collections::HashMap;

use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{existing_app, key_change_allowed, require_root, require_root_or_app};
use super::extract::{Credential, Later};
use super::openapi::{AlgorithmName, AppId, NativeErrors, TAG_APPS, TAG_KEYS};
use super::wire::{self, AppList, AppView, CreatedApp, Deleted, KeyList, Rotation};
use super::{ApiError, Resource};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::keys::policy::{self, Policy};
use crate::keys::{KeyState, Kid};
use crate::store::{AppPolicy, AppRow};

/// `POST /apps` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApp {
    /// Display name (1 to 100 characters, no control characters).
    #[schema(min_length = 1, max_length = 100)]
    pub(crate) name: String,
    /// Algorithm of the app's keys (default RS256).
    #[serde(default)]
    #[schema(value_type = Option<AlgorithmName>)]
    pub(crate) signing_alg: Option<String>,
    /// RSA modulus bits: 2048 (default), 3072 or 4096.
    #[serde(default)]
    #[schema(minimum = 2048, maximum = 4096, multiple_of = 1024)]
    pub(crate) rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations (default 30 days).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub(crate) rotation_period: Option<i64>,
    /// Seconds a key verifies after it stopped signing (default token_ttl + 300; at least
    /// token_ttl).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 63_072_000)]
    pub(crate) verification_ttl: Option<i64>,
    /// Longest access-token lifetime (default 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_536_000)]
    pub(crate) token_ttl: Option<i64>,
    /// Refresh-token lifetime (default 0: no refresh tokens).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 31_536_000)]
    pub(crate) refresh_ttl: Option<i64>,
    /// Certificate subject, an RFC 4514 DN (default `CN=<name>`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 132, example = "CN=example")]
    pub(crate) subject_dn: Option<String>,
    /// Give every token a Token Status List entry (a `status` claim; lists at
    /// `/apps/{id}/statuslists/{n}`), so that verifiers that never call the service learn of
    /// revocations (default false).
    #[serde(default)]
    pub(crate) status_list: Option<bool>,
}

/// `PATCH /apps/{id}` body: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchApp {
    /// Display name (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// Algorithm of future keys.
    #[schema(value_type = Option<AlgorithmName>)]
    signing_alg: Option<String>,
    /// RSA modulus bits of future keys: 2048, 3072 or 4096.
    #[schema(minimum = 2048, maximum = 4096, multiple_of = 1024)]
    rsa_bits: Option<u32>,
    /// Seconds between scheduled rotations.
    #[schema(minimum = 60, maximum = 31_536_000)]
    rotation_period: Option<i64>,
    /// Seconds a key verifies after it stopped signing (at least token_ttl).
    #[schema(minimum = 1, maximum = 63_072_000)]
    verification_ttl: Option<i64>,
    /// Longest access-token lifetime.
    #[schema(minimum = 1, maximum = 31_536_000)]
    token_ttl: Option<i64>,
    /// Refresh-token lifetime (0: none).
    #[schema(minimum = 0, maximum = 31_536_000)]
    refresh_ttl: Option<i64>,
    /// Certificate subject of future keys, an RFC 4514 DN.
    #[schema(min_length = 1, max_length = 132, example = "CN=example")]
    subject_dn: Option<String>,
    /// Token Status List entries for new tokens. Turning it off leaves the lists of tokens
    /// already issued published until those tokens expire.
    status_list: Option<bool>,
}

impl From<CreateApp> for policy::NewApp {
    fn from(r: CreateApp) -> Self {
        Self {
            name: r.name,
            signing_alg: r.signing_alg,
            rsa_bits: r.rsa_bits,
            rotation_period: r.rotation_period,
            verification_ttl: r.verification_ttl,
            token_ttl: r.token_ttl,
            refresh_ttl: r.refresh_ttl,
            subject_dn: r.subject_dn,
            status_list: r.status_list,
        }
    }
}

/// Build and validate a new app row from a request (shared with the compat families and
/// the CLI): [`policy::new_app_row`] with its refusal as the native error.
pub(crate) fn new_app_row(
    req: CreateApp,
    description: String,
    token_nbf: i64,
    refresh_nbf: i64,
) -> Result<AppRow, ApiError> {
    Ok(policy::new_app_row(
        req.into(),
        description,
        token_nbf,
        refresh_nbf,
    )?)
}

/// Key summary shown with an app.
fn key_summary(state: &AppState, app_id: &str) -> wire::KeySummary {
    wire::KeySummary::new(state.registry.published(app_id).iter().map(|k| &k.row))
}

/// Per-app figures for the list and show views: keys per state and live tokens.
#[derive(Debug, Default)]
struct AppStats {
    keys: HashMap<String, HashMap<String, i64>>,
    live_tokens: HashMap<String, i64>,
    status_lists: HashMap<String, Vec<crate::store::StatusListFigures>>,
}

impl AppStats {
    /// Figures for one app, or (`None`) every app, in two grouped queries.
    async fn load(state: &AppState, app_id: Option<&str>) -> Result<Self, ApiError> {
        let mut keys: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for (app, st, n) in state.store.key_counts_per_app(app_id).await? {
            keys.entry(app).or_default().insert(st, n);
        }
        let live_tokens = state
            .store
            .live_token_counts_per_app(app_id, state.clock.now())
            .await?;
        let mut status_lists: HashMap<String, Vec<_>> = HashMap::new();
        for f in state.store.status_list_figures(app_id).await? {
            status_lists.entry(f.app_id.clone()).or_default().push(f);
        }
        Ok(Self {
            keys,
            live_tokens,
            status_lists,
        })
    }

    fn key_counts(&self, app_id: &str) -> wire::KeyCounts {
        let n = |s: KeyState| {
            self.keys
                .get(app_id)
                .and_then(|c| c.get(s.as_str()))
                .copied()
                .unwrap_or(0)
        };
        wire::KeyCounts {
            next: n(KeyState::Next),
            current: n(KeyState::Current),
            previous: n(KeyState::Previous),
            retired: n(KeyState::Retired),
            revoked: n(KeyState::Revoked),
        }
    }
}

fn app_view(state: &AppState, a: &AppRow, stats: &AppStats) -> AppView {
    let activated = state
        .registry
        .current(&a.id)
        .and_then(|k| k.row.activated_at);
    AppView {
        app: wire::App::new(a, &state.issuer(&a.id)),
        key_summary: key_summary(state, &a.id),
        key_counts: stats.key_counts(&a.id),
        last_rotation_at: activated.map(rfc3339),
        next_rotation_at: state.keys.next_rotation_at(&a.id).map(rfc3339),
        live_tokens: stats.live_tokens.get(&a.id).copied().unwrap_or(0),
        status_lists: stats
            .status_lists
            .get(&a.id)
            .map(|l| l.iter().map(wire::StatusListView::new).collect())
            .unwrap_or_default(),
    }
}

/// Create an app with its first `current` and `next` keys.
#[utoipa::path(post, path = "/apps", tag = TAG_APPS,
    request_body = CreateApp,
    security(("root_key" = []), ("root_bearer" = [])),
    responses(
        (status = 201, description = "The app, its access token (shown this once) and its first keys", body = CreatedApp),
        NativeErrors,
    ))]
async fn create(
    State(state): State<AppState>,
    Credential(cred): Credential,
    body: Later,
) -> Result<impl IntoResponse, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let req: CreateApp = body.json().await?;
    let row = new_app_row(req, String::new(), 0, 0)?;
    let created = state.keys.create_app(row).await?;
    super::layers::record_app(&created.app.id);
    let body = CreatedApp {
        app: wire::App::new(&created.app, &state.issuer(&created.app.id)),
        access_token: created.access_token.expose().to_owned(),
        keys: created.keys.iter().map(wire::Key::new).collect(),
    };
    Ok((StatusCode::CREATED, super::no_store(), Json(body)))
}

/// List every app with its policy and key summary.
#[utoipa::path(get, path = "/apps", tag = TAG_APPS,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Every app", body = AppList), NativeErrors))]
async fn list(
    State(state): State<AppState>,
    Credential(cred): Credential,
) -> Result<Json<AppList>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let apps = state.store.apps().await?;
    let stats = AppStats::load(&state, None).await?;
    Ok(Json(AppList {
        apps: apps.iter().map(|a| app_view(&state, a, &stats)).collect(),
    }))
}

/// One app with its policy and key summary.
#[utoipa::path(get, path = "/apps/{id}", tag = TAG_APPS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The app", body = AppView), NativeErrors))]
async fn show(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let app = existing_app(&state, &id).await?;
    let stats = AppStats::load(&state, Some(&id)).await?;
    Ok(Json(app_view(&state, &app, &stats)))
}

/// Change an app's policy; only the fields given change (algorithm and bits apply to future keys).
#[utoipa::path(patch, path = "/apps/{id}", tag = TAG_APPS,
    params(AppId),
    request_body = PatchApp,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "The app after the change", body = AppView), NativeErrors))]
async fn patch(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<Json<AppView>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    let req: PatchApp = body.json().await?;
    let app = existing_app(&state, &id).await?;
    if let Some(n) = &req.name {
        policy::validate_name(n)?;
    }
    let signing_alg = req
        .signing_alg
        .as_deref()
        .map(policy::parse_alg)
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
    policy::validate_subject_dn(&subject_dn)?;
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
                status_list: req.status_list.unwrap_or(app.status_list),
            },
        )
        .await?;
    let stats = AppStats::load(&state, Some(&id)).await?;
    Ok(Json(app_view(&state, &updated, &stats)))
}

/// Delete an app: every key revoked and destroyed in the HSM, every token rejected.
#[utoipa::path(delete, path = "/apps/{id}", tag = TAG_APPS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Deleted", body = Deleted), NativeErrors))]
async fn delete(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    existing_app(&state, &id).await?;
    // In a task of its own: a client that hangs up cannot stop it between its commit and
    // the in-memory registry catching up (the app would live on in this replica's memory).
    let (keys, app_id) = (state.keys.clone(), id.clone());
    let revoked = tokio::spawn(crate::audit::carry(async move {
        keys.delete_app(&app_id).await
    }))
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))??;
    Ok(Json(Deleted {
        id,
        deleted: true,
        revoked_kids: revoked.iter().map(ToString::to_string).collect(),
    }))
}

/// Every key of an app with its state and timestamps (retired and revoked too).
#[utoipa::path(get, path = "/apps/{id}/keys", tag = TAG_KEYS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The app's keys", body = KeyList), NativeErrors))]
async fn keys(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    require_root_or_app(&state, cred.as_deref(), &id).await?;
    let keys = state.store.app_keys(&id).await?;
    let safe_at = keys
        .iter()
        .find(|k| k.state == KeyState::Next)
        .map(|k| state.keys.signs_from(k));
    Ok(Json(KeyList {
        keys: keys.iter().map(wire::Key::new).collect(),
        rotation_safe_at: safe_at.map(rfc3339),
        rotation_safe_in: safe_at.map(|t| (t - state.clock.now()).max(0)),
    }))
}

/// `POST /apps/{id}/keys/import` body: the private key as exactly one of `pem` and `jwk`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportKey {
    /// Unencrypted PEM private key: `PRIVATE KEY` (PKCS#8: RSA, EC P-256/P-384/P-521,
    /// Ed25519), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
    #[serde(default)]
    pem: Option<String>,
    /// Private JWK: `kty` RSA (`n e d p q dp dq qi`), EC (`crv x y d`) or OKP Ed25519 (`x d`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
    /// Key id, a ULID (default: a new one); the `kid` of the tokens it signs.
    #[serde(default)]
    kid: Option<String>,
    /// `current` (default: signs from now; the current key becomes previous), `next`
    /// (replaces the next key, which never signed) or `previous` (verifies only).
    #[serde(default)]
    #[schema(example = "current")]
    state: Option<String>,
}

impl Drop for ImportKey {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(p) = &mut self.pem {
            p.zeroize();
        }
        for v in self.jwk.iter_mut().flat_map(|m| m.values_mut()) {
            if let serde_json::Value::String(s) = v {
                s.zeroize();
            }
        }
    }
}

/// Import an existing private key into the HSM for this app, as a sensitive,
/// non-extractable key marked `origin: "imported"`.
///
/// The key must fit the app's algorithm (an RSA key of 2048 to 8192 bits for RS*/PS*, the
/// app's curve for ES*, Ed25519 for EdDSA). A test signature by the imported private key
/// must verify with the public key given with it before the key is stored. The app's next
/// rotation is brought forward to at most `imported_key_max_life` after the import, so the
/// software-born key stops signing on its own. A refused key changes nothing.
#[utoipa::path(post, path = "/apps/{id}/keys/import", tag = TAG_KEYS,
    params(AppId),
    request_body = ImportKey,
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 201, description = "The imported key", body = wire::Key), NativeErrors))]
async fn import(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: Later,
) -> Result<impl IntoResponse, ApiError> {
    require_root(&state, cred.as_deref()).await?;
    existing_app(&state, &id).await?;
    let req: ImportKey = body.json().await?;
    let kid = match req.kid.as_deref() {
        Some(k) => Some(k.parse::<Kid>().map_err(|_| {
            ApiError::unprocessable("invalid_field", "kid: must be a 26-character ULID")
        })?),
        None => None,
    };
    let state_wanted = match req.state.as_deref() {
        Some(s) => crate::keys::import::parse_state(s).map_err(crate::keys::KeyError::from)?,
        None => KeyState::Current,
    };
    let material = crate::keys::import::material_from(req.pem.as_deref(), req.jwk.as_ref())
        .map_err(crate::keys::KeyError::from)?;
    drop(req);
    let row = state
        .keys
        .import_key(
            &id,
            crate::keys::import::ImportRequest {
                material,
                kid,
                state: state_wanted,
            },
        )
        .await?;
    super::layers::record_kid(&row.kid);
    Ok((StatusCode::CREATED, Json(wire::Key::new(&row))))
}

/// `POST /apps/{id}/keys/rotate` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    /// Rotate even though the `next` key may not sign yet (a verifier may still cache a
    /// JWKS without it and reject the new tokens until its cache expires). The rotation is
    /// audited as early, with the age of the key it promoted.
    #[serde(default)]
    force: bool,
}

/// An optional JSON body: empty means the defaults.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable("invalid_field", e.to_string())
        }
        _ => ApiError::bad_request("invalid_json", "the body is not valid JSON"),
    })
}

/// Graceful rotation: `next` becomes `current`, a new `next` is published.
///
/// Refused with 409 `rotation_too_soon` and `Retry-After` while the `next` key may be
/// missing from a verifier's cached JWKS (`GET /apps/{id}/keys` gives `rotation_safe_at`);
/// `{"force": true}` rotates anyway and audits the rotation as early.
#[utoipa::path(post, path = "/apps/{id}/keys/rotate", tag = TAG_KEYS,
    params(AppId),
    request_body(content = Option<RotateBody>, content_type = "application/json"),
    security(("root_key" = []), ("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The keys after the rotation", body = Rotation), NativeErrors))]
async fn rotate(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Rotation>, ApiError> {
    let (actor, _) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    key_change_allowed(&state, &actor)?;
    let req: RotateBody = optional_json(&body)?;
    let early = if req.force {
        crate::keys::Early::Allow("force")
    } else {
        crate::keys::Early::Refuse
    };
    let r = state
        .keys
        .rotate_with(&id, crate::keys::RotationKind::Manual, None, early)
        .await?;
    super::layers::record_kid(&r.current.kid);
    Ok(Json(Rotation {
        current: wire::Key::new(&r.current),
        next: wire::Key::new(&r.next),
        previous: r.previous.iter().map(wire::Key::new).collect(),
    }))
}

/// Revoke one key: its tokens are rejected and its HSM object destroyed; revoking the
/// current key first promotes `next`.
#[utoipa::path(post, path = "/apps/{id}/keys/{kid}/revoke", tag = TAG_KEYS,
    params(AppId, ("kid" = String, Path, description = "Key id")),
    security(("root_key" = []), ("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "The revocation and the keys after it", body = wire::Revocation), NativeErrors))]
async fn revoke(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path((id, kid)): Path<(String, String)>,
) -> Result<Json<wire::Revocation>, ApiError> {
    let (actor, _) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    let kid: Kid = kid.parse().map_err(|_| ApiError::NotFound(Resource::Key))?;
    key_change_allowed(&state, &actor)?;
    let r = state.keys.revoke_key(&id, kid).await?;
    Ok(Json(wire::Revocation {
        revoked: r.revoked.first().map(wire::Key::new),
        current: r.current.as_ref().map(wire::Key::new),
        next: r.next.as_ref().map(wire::Key::new),
        revoked_tokens: r.revoked_tokens,
        affected_subjects: r.affected_subjects,
    }))
}

/// Emergency rotation, for key compromise: every key of the app is revoked and destroyed
/// in the HSM, fresh `current` and `next` keys sign from now on, and every token of the
/// app issued before now is rejected. Answers what it cut off (`GET
/// /apps/{id}/blast-radius` shows the same figures beforehand).
///
/// An app's own token takes one call from its key-change budget (429 with `Retry-After`
/// once spent); the root key is not limited.
#[utoipa::path(post, path = "/apps/{id}/keys/emergency-rotate", tag = TAG_KEYS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = []), ("app_token" = [])),
    responses((status = 200, description = "What was cut off and the new keys", body = wire::EmergencyRotation), NativeErrors))]
async fn emergency_rotate(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<wire::EmergencyRotation>, ApiError> {
    let (actor, _) = require_root_or_app(&state, cred.as_deref(), &id).await?;
    key_change_allowed(&state, &actor)?;
    // In a task of its own, like `delete`: the post-commit registry work always runs.
    let (keys, app_id) = (state.keys.clone(), id.clone());
    let r = tokio::spawn(crate::audit::carry(async move {
        keys.emergency_rotate(&app_id).await
    }))
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))??;
    super::layers::record_kid(&r.current.kid);
    Ok(Json(wire::EmergencyRotation::new(&id, &r)))
}

/// What revoking a key or an emergency rotation would cut off, read from the token ledger
/// before acting (the console's confirmation shows it). Only tokens that still verify
/// count: unexpired, not revoked one by one, issued after the app's cut-off, signed by a
/// published key. The totals cover every key of the app (an emergency rotation or a
/// flush); `keys` lists the published keys, each with the tokens it signed (a key
/// revocation).
#[utoipa::path(get, path = "/apps/{id}/blast-radius", tag = TAG_KEYS,
    params(AppId),
    security(("root_key" = []), ("root_bearer" = [])),
    responses((status = 200, description = "Live tokens and subjects, per key and in all", body = wire::BlastRadius), NativeErrors))]
async fn blast_radius(
    State(state): State<AppState>,
    Credential(cred): Credential,
    Path(id): Path<String>,
) -> Result<Json<wire::BlastRadius>, ApiError> {
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
    let keys = state
        .store
        .app_keys(&id)
        .await?
        .iter()
        .filter(|k| k.state.published())
        .map(|k| {
            let kid = k.kid.to_string();
            let (live_tokens, subjects) = per_kid.get(&kid).copied().unwrap_or((0, 0));
            wire::KeyBlastRadius {
                kid,
                state: k.state.as_str().to_owned(),
                live_tokens,
                subjects,
            }
        })
        .collect();
    Ok(Json(wire::BlastRadius {
        app_id: id,
        live_tokens,
        subjects,
        keys,
    }))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, patch, delete))
        .routes(routes!(keys))
        .routes(routes!(import))
        .routes(routes!(blast_radius))
        .routes(routes!(rotate))
        .routes(routes!(revoke))
        .routes(routes!(emergency_rotate))
}
