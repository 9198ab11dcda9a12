//! What `migrate jwtplus` will do, decided and checked before anything is written: every
//! app's row, which of its keys are imported and in which state, its live sessions as
//! ledger rows and refresh tokens. A key that cannot be imported (unparseable PEM, RSA
//! under 2048 bits, a curve we do not sign with, a public key that does not match) stops
//! the whole run here, with nothing changed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::source::{Source, SrcApp, SrcKey, SrcToken};
use crate::alg::{Algorithm, KeySpec};
use crate::api::apps::{CreateApp, new_app_row};
use crate::api::legacy::sha512_hex;
use crate::auth::digest;
use crate::hsm::KeyMaterial;
use crate::keys::import::{check_fits, parse_pem};
use crate::keys::{KeyState, Kid, monotonic_ulid, parse_ulid, policy};
use crate::pubkey::PublicKey;
use crate::store::{AppRow, LedgerRow, MIGRATED_ROOT_SETTING, RefreshRow, Store};

/// The whole run.
#[derive(Debug)]
pub struct Plan {
    /// The JWTPlus root key: kept as a legacy credential (`Some`), or nothing to do.
    pub root_key_sha512: Option<String>,
    /// The root key was kept by an earlier run.
    pub root_done: bool,
    /// Every JWTPlus app.
    pub apps: Vec<AppPlan>,
}

/// One app.
#[derive(Debug)]
pub struct AppPlan {
    /// The app as it will be stored (`legacy_issuer` = its JWTPlus name).
    pub row: AppRow,
    /// Already in this store from an earlier run: nothing to do.
    pub done: bool,
    /// SHA-512 (hex) of its JWTPlus app key.
    pub legacy_key_sha512: String,
    /// Keys to import, `current` first.
    pub keys: Vec<KeyPlan>,
    /// Keys left behind, with why.
    pub skipped_keys: Vec<(String, &'static str)>,
    /// Live sessions, for the ledger.
    pub sessions: Vec<LedgerRow>,
    /// Their refresh tokens (as digests).
    pub refresh: Vec<RefreshRow>,
    /// Sessions not carried over (their key is not imported, or their id is not a ULID).
    pub dropped_sessions: usize,
    /// Sessions whose `sub` could not be read back from the token (kept without subject).
    pub unmatched_subjects: usize,
}

impl AppPlan {
    /// Spec of the app's future (generated) keys.
    pub fn spec(&self) -> KeySpec {
        KeySpec::new(self.row.signing_alg, self.row.rsa_bits)
    }

    /// Whether an imported key becomes `current`.
    pub fn has_current(&self) -> bool {
        self.keys.iter().any(|k| k.state == KeyState::Current)
    }

    /// The plan as JSON (for `--dry-run` and `--json`).
    pub fn summary(&self) -> Value {
        json!({
            "app_id": self.row.id,
            "name": self.row.name,
            "algorithm": self.row.signing_alg.as_str(),
            "action": if self.done { "already migrated" } else { "migrate" },
            "keys": self.keys.iter().map(|k| json!({"kid": k.kid.to_string(), "state": k.state.as_str(), "origin": "imported"})).collect::<Vec<_>>(),
            "generated": if self.has_current() { vec!["next"] } else { vec!["current", "next"] },
            "skipped_keys": self.skipped_keys.iter().map(|(k, why)| json!({"kid": k, "reason": why})).collect::<Vec<_>>(),
            "sessions": self.sessions.len(),
            "refresh_tokens": self.refresh.len(),
            "dropped_sessions": self.dropped_sessions,
            "sessions_without_subject": self.unmatched_subjects,
        })
    }
}

/// A key to import.
#[derive(Debug)]
pub struct KeyPlan {
    /// Its JWTPlus `key_id`.
    pub kid: Kid,
    /// `current` or `previous`.
    pub state: KeyState,
    /// The private key (zeroised on drop).
    pub material: KeyMaterial,
    /// Its public half.
    pub declared: PublicKey,
    /// Spec (algorithm and RSA bits).
    pub spec: KeySpec,
}

/// Decide everything from `src` against `store` at `now`.
///
/// # Errors
/// Every problem found, one line each (nothing has been changed).
pub async fn plan(src: Source, store: &Store, now: i64) -> anyhow::Result<Plan> {
    let mut problems = Vec::new();
    let mut apps = Vec::new();
    for a in src.apps {
        match plan_app(a, store, now).await {
            Ok(p) => apps.push(p),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "nothing was migrated; fix these first:\n  {}",
            problems.join("\n  ")
        );
    }
    let root_done = match &src.root_key_sha512 {
        Some(d) => store.setting(MIGRATED_ROOT_SETTING).await?.as_deref() == Some(d.as_str()),
        None => true,
    };
    Ok(Plan {
        root_key_sha512: src.root_key_sha512,
        root_done,
        apps,
    })
}

async fn plan_app(a: SrcApp, store: &Store, now: i64) -> Result<AppPlan, String> {
    let who = format!("app {} ({:?})", a.id, a.name);
    let fail = |m: String| format!("{who}: {m}");
    parse_ulid(&a.id).map_err(|_| fail("the app id is not a ULID".into()))?;
    let alg: Algorithm = a
        .algo
        .parse()
        .map_err(|_| fail(format!("algorithm {:?} is not one we sign with", a.algo)))?;
    if a.app_key_sha512.len() != 128 || !a.app_key_sha512.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail("its app_key is not a SHA-512 hex digest".into()));
    }
    let existing = store.app(&a.id).await.map_err(|e| fail(e.to_string()))?;
    let rsa_bits = if matches!(alg, Algorithm::RS512 | Algorithm::PS512) {
        4096
    } else {
        2048
    };
    let req = CreateApp {
        name: a.name.clone(),
        signing_alg: Some(alg.as_str().to_owned()),
        rsa_bits: Some(rsa_bits),
        rotation_period: Some(a.rotation_period),
        verification_ttl: Some(policy::default_verification_ttl(a.token_expiry)),
        token_ttl: Some(a.token_expiry),
        refresh_ttl: Some(a.refresh_expiry),
        subject_dn: None,
        status_list: None,
    };
    let mut row = new_app_row(req, a.description.clone(), a.token_nbf, a.refresh_nbf)
        .map_err(|e| fail(format!("its settings do not fit: {e}")))?;
    row.id.clone_from(&a.id);
    row.created_at = a.add_time;
    row.updated_at = now;
    row.last_rotated_at = Some(now);
    row.legacy_issuer = Some(a.name.clone());
    // No access token of ours yet: the JWTPlus app key is the app's credential until it
    // gets one (`app access-token`, `/root/{id}/rotate/key`), which also ends the old key.
    // The digest of a token nobody is shown fills the (unique) column meanwhile.
    row.access_token_sha256 = crate::auth::Secret::generate(crate::auth::ACCESS_PREFIX).digest();
    if let Some(e) = existing {
        if e.legacy_issuer.is_none() {
            return Err(fail(
                "an app with this id already exists in this store and did not come from JWTPlus"
                    .into(),
            ));
        }
        return Ok(AppPlan {
            row: e,
            done: true,
            legacy_key_sha512: a.app_key_sha512,
            keys: Vec::new(),
            skipped_keys: Vec::new(),
            sessions: Vec::new(),
            refresh: Vec::new(),
            dropped_sessions: 0,
            unmatched_subjects: 0,
        });
    }
    // Which keys: active → current (the newest, if JWTPlus left several: its revoke bug),
    // the other active ones and expired ones with live access tokens → previous.
    let live = |k: &SrcKey| {
        a.tokens
            .iter()
            .any(|t| t.key_id == k.key_id && t.auth_exp > now)
    };
    let newest_active = a
        .keys
        .iter()
        .filter(|k| !k.revoked && !k.expired)
        .max_by(|x, y| (x.add_time, &x.key_id).cmp(&(y.add_time, &y.key_id)))
        .map(|k| k.key_id.clone());
    let mut keys = Vec::new();
    let mut skipped_keys = Vec::new();
    let mut problems = Vec::new();
    for k in &a.keys {
        let state = if k.revoked {
            skipped_keys.push((k.key_id.clone(), "revoked"));
            continue;
        } else if Some(&k.key_id) == newest_active.as_ref() {
            KeyState::Current
        } else if !k.expired || live(k) {
            KeyState::Previous
        } else {
            skipped_keys.push((k.key_id.clone(), "expired, no live tokens"));
            continue;
        };
        match key_plan(k, alg, state, store).await {
            Ok(p) => keys.push(p),
            Err(m) => problems.push(format!("key {}: {m}", k.key_id)),
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems.join("; ")));
    }
    keys.sort_by_key(|k| k.state != KeyState::Current);
    let mut p = AppPlan {
        row,
        done: false,
        legacy_key_sha512: a.app_key_sha512.clone(),
        keys,
        skipped_keys,
        sessions: Vec::new(),
        refresh: Vec::new(),
        dropped_sessions: 0,
        unmatched_subjects: 0,
    };
    for t in &a.tokens {
        session(&mut p, t, now);
    }
    Ok(p)
}

/// Read and check one key (nothing touches the HSM yet).
async fn key_plan(
    k: &SrcKey,
    alg: Algorithm,
    state: KeyState,
    store: &Store,
) -> Result<KeyPlan, String> {
    let kid: Kid = k
        .key_id
        .parse()
        .map_err(|_| "the key id is not a ULID".to_owned())?;
    let pem = zeroize::Zeroizing::new(
        STANDARD
            .decode(k.private_key_b64.trim())
            .map_err(|_| "private_key is not base64".to_owned())?,
    );
    let pem = std::str::from_utf8(&pem).map_err(|_| "private_key is not a PEM text".to_owned())?;
    let material = parse_pem(pem).map_err(|e| e.to_string())?;
    let declared = material.public();
    check_fits(&declared, alg).map_err(|e| e.to_string())?;
    let stored = STANDARD
        .decode(k.public_key_b64.trim())
        .ok()
        .and_then(|p| {
            let text = String::from_utf8(p).ok()?;
            let (label, der) = der::pem::decode_vec(text.trim().as_bytes()).ok()?;
            (label == "PUBLIC KEY").then_some(der)
        })
        .and_then(|der| PublicKey::from_spki_der(&der).ok())
        .ok_or_else(|| "public_key is not a base64 PEM public key".to_owned())?;
    if stored != declared {
        return Err("the public key stored with it does not match its private key".into());
    }
    if let Some(row) = store.key(kid).await.map_err(|e| e.to_string())? {
        // A pending imported row of an interrupted run is undone and made again.
        let leftover = row.state == KeyState::Pending
            && row.app_id.is_none()
            && row.origin == crate::store::KeyOrigin::Imported;
        if !leftover {
            return Err(format!("key id {kid} is already used in this store"));
        }
    }
    Ok(KeyPlan {
        kid,
        state,
        spec: KeySpec::new(alg, declared.rsa_bits()),
        material,
        declared,
    })
}

/// One JWTPlus session as a ledger row (and its refresh token), if its key comes along.
fn session(p: &mut AppPlan, t: &SrcToken, now: i64) {
    let Some(kid) = p
        .keys
        .iter()
        .find(|k| k.kid.to_string() == t.key_id)
        .map(|k| k.kid)
    else {
        p.dropped_sessions += 1;
        return;
    };
    if parse_ulid(&t.token_id).is_err() {
        p.dropped_sessions += 1;
        return;
    }
    // JWTPlus keeps sha512hex(sub); the access token holds `sub` itself. The ledger keys
    // subjects by SHA-256, so the subject is read back from the token and checked against
    // JWTPlus's digest: a logout by the plain subject then reaches migrated sessions too.
    let claims: Map<String, Value> = crate::jwt::parse(t.auth_token.trim())
        .map(|c| c.claims)
        .unwrap_or_default();
    let sub_sha256 = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| sha512_hex(s) == t.sub_sha512)
        .map(digest);
    if sub_sha256.is_none() {
        p.unmatched_subjects += 1;
    }
    let refresh = (t.refresh_exp > now && !t.refresh_token.trim().is_empty())
        .then(|| monotonic_ulid().to_string());
    if let Some(family) = &refresh {
        let mut carried = claims.clone();
        for c in crate::jwt::RESERVED_CLAIMS.iter().chain(&["status"]) {
            carried.remove(*c);
        }
        p.refresh.push(RefreshRow {
            token_sha256: digest(t.refresh_token.trim()),
            app_id: p.row.id.clone(),
            family: family.clone(),
            jti: t.token_id.clone(),
            sub_sha256: sub_sha256.clone(),
            claims: Value::Object(carried).to_string(),
            exp: t.refresh_exp,
            used_at: None,
            revoked_at: None,
            parent_sha256: None,
            superseded_at: None,
        });
    }
    p.sessions.push(LedgerRow {
        jti: t.token_id.clone(),
        app_id: p.row.id.clone(),
        kid: kid.to_string(),
        sub_sha256,
        iat: t.auth_iat,
        exp: t.auth_exp,
        family: refresh,
        refresh_exp: (t.refresh_exp > now).then_some(t.refresh_exp),
        meta: Some(json!({"ip": t.ip, "useragent": t.user_agent}).to_string()),
        status: None,
    });
}
