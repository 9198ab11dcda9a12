//! `app create|list|show|access-token` and `keys list|rotate|revoke|emergency-rotate`, in
//! direct or `--url` mode. Both
//! modes produce the native API's JSON shapes; human output is read from them.

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{self, Output, s};
use super::remote::Cred;
use super::{AppCommand, CreateArgs, Direct, ImportArgs, KeysCommand, Remote};
use crate::api::wire;
use crate::keys::{Early, KeyError, KeyState, Kid, RotationKind};

/// Where a command goes.
#[derive(Debug)]
pub(crate) enum Target<'a> {
    /// The store and the HSM, in this process.
    Direct(&'a Direct),
    /// A running server.
    Remote(Remote),
}

/// A lifecycle error in the operator's words.
fn key_error(e: KeyError) -> anyhow::Error {
    match e {
        KeyError::TooSoon { .. } => too_soon(&e.to_string()),
        e => anyhow::anyhow!("{e}"),
    }
}

/// A rotation refused as too soon, with the way out.
fn too_soon(why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{why}. Wait, or add --force to rotate now: verifiers that cached the JWKS without the next key reject its tokens until their cache expires, and the rotation is audited as early"
    )
}

/// When a rotation stops being refused as too soon, for people.
fn rotation_safe_line(v: &Value) -> Option<String> {
    let at = v["rotation_safe_at"].as_str()?;
    Some(match v["rotation_safe_in"].as_i64() {
        Some(n) if n > 0 => {
            format!("a rotation is safe from {at} (in {n} s); before then it needs --force")
        }
        _ => "a rotation is safe now".to_owned(),
    })
}

/// An app id as the API would check it (a ULID).
pub(super) fn app_path(id: &str) -> anyhow::Result<String> {
    ulid::Ulid::from_string(id)
        .map_err(|_| anyhow::anyhow!("{id:?} is not an app id (a 26-character ULID)"))?;
    Ok(format!("/apps/{id}"))
}

fn app_view(d: &Direct, app: &crate::store::AppRow, keys: &[crate::store::KeyRow]) -> Value {
    let mut v = json!(wire::App::new(app, &d.issuer(&app.id)));
    if let Value::Object(m) = &mut v {
        m.insert("key_summary".into(), json!(wire::KeySummary::new(keys)));
    }
    v
}

/// The `POST /apps` body of `args` (name suffixed for `--count`).
fn create_body(args: &CreateArgs, name: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), name.into());
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("signing_alg", args.signing_alg.clone().map(Value::from));
    put("rsa_bits", args.rsa_bits.map(Value::from));
    put("rotation_period", args.rotation_period.map(Value::from));
    put("verification_ttl", args.verification_ttl.map(Value::from));
    put("token_ttl", args.token_ttl.map(Value::from));
    put("refresh_ttl", args.refresh_ttl.map(Value::from));
    put("subject_dn", args.subject_dn.clone().map(Value::from));
    Value::Object(m)
}

async fn create_one(t: &Target<'_>, body: Value) -> anyhow::Result<Value> {
    match t {
        Target::Remote(r) => r.call(Method::POST, "/apps", Cred::Root, Some(&body)).await,
        Target::Direct(d) => {
            // The same request type and validation as `POST /apps`.
            let req: crate::api::apps::CreateApp = serde_json::from_value(body)?;
            let row = crate::api::apps::new_app_row(req, String::new(), 0, 0)
                .map_err(|e| anyhow::anyhow!("{}", e.public_message()))?;
            let created = d.state().keys.create_app(row).await.map_err(key_error)?;
            Ok(json!(wire::CreatedApp {
                app: wire::App::new(&created.app, &d.issuer(&created.app.id)),
                access_token: created.access_token.expose().to_owned(),
                keys: created.keys.iter().map(wire::Key::new).collect(),
            }))
        }
    }
}

fn print_created(v: &Value) {
    let kid = |state: &str| {
        v["keys"]
            .as_array()
            .and_then(|ks| ks.iter().find(|k| k["state"] == state))
            .map_or("-", |k| s(k, "kid"))
            .to_owned()
    };
    println!(
        "created app {} ({}, {})\n  access token (shown once, store it now): {}\n  current key {}, next key {}",
        s(v, "id"),
        s(v, "name"),
        s(v, "signing_alg"),
        s(v, "access_token"),
        kid("current"),
        kid("next"),
    );
}

fn print_app_line(a: &Value) {
    println!(
        "{}  {:<8} {:<24} current {}",
        s(a, "id"),
        s(a, "signing_alg"),
        s(a, "name"),
        s(&a["key_summary"], "current"),
    );
}

fn print_app(a: &Value) {
    for k in [
        "id",
        "name",
        "signing_alg",
        "rsa_bits",
        "rotation_period",
        "verification_ttl",
        "token_ttl",
        "refresh_ttl",
        "subject_dn",
        "issuer",
        "created_at",
        "updated_at",
        "cutoff_at",
    ] {
        let v = match &a[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("{k:<17} {v}");
    }
    let ks = &a["key_summary"];
    println!("{:<17} {}", "current key", s(ks, "current"));
    println!("{:<17} {}", "next key", s(ks, "next"));
    let prev: Vec<&str> = ks["previous"]
        .as_array()
        .map(|p| p.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "{:<17} {}",
        "previous keys",
        if prev.is_empty() {
            "-".into()
        } else {
            prev.join(" ")
        }
    );
}

/// `hsm-rotator app ...`.
pub(crate) async fn app(t: Target<'_>, cmd: AppCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Create(args) => {
            let count = args.count;
            if count == 1 {
                let v = create_one(&t, create_body(&args, &args.name)).await?;
                return if out.json {
                    out.json(&v)
                } else {
                    print_created(&v);
                    Ok(())
                };
            }
            let pb = output::bar(u64::from(count), "creating apps");
            let mut all = Vec::with_capacity(count as usize);
            for i in 1..=count {
                let name = format!("{}-{i}", args.name);
                let v = match create_one(&t, create_body(&args, &name)).await {
                    Ok(v) => v,
                    Err(e) => {
                        pb.abandon();
                        // The apps made so far exist: say so, and show them, before failing.
                        if out.json {
                            out.json(&json!({"apps": all}))?;
                        }
                        return Err(e.context(format!(
                            "app {i} of {count} failed; {} were created",
                            i - 1
                        )));
                    }
                };
                if !out.json {
                    pb.suspend(|| print_created(&v));
                }
                all.push(v);
                pb.inc(1);
            }
            pb.finish_and_clear();
            if out.json {
                out.json(&json!({"apps": all}))
            } else {
                Ok(())
            }
        }
        AppCommand::List => {
            let v = match &t {
                Target::Remote(r) => r.call(Method::GET, "/apps", Cred::Root, None).await?,
                Target::Direct(d) => {
                    let store = &d.state().store;
                    let mut apps = Vec::new();
                    for a in store.apps().await.context("Failed to read the apps")? {
                        let keys = store.app_keys(&a.id).await?;
                        apps.push(app_view(d, &a, &keys));
                    }
                    json!({"apps": apps})
                }
            };
            if out.json {
                return out.json(&v);
            }
            let apps = v["apps"].as_array().cloned().unwrap_or_default();
            if apps.is_empty() {
                println!("no apps");
            }
            for a in &apps {
                print_app_line(a);
            }
            Ok(())
        }
        AppCommand::Show { id } => {
            let path = app_path(&id)?;
            let v = match &t {
                Target::Remote(r) => r.call(Method::GET, &path, Cred::Root, None).await?,
                Target::Direct(d) => {
                    let store = &d.state().store;
                    let a = store
                        .app(&id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("app {id} not found"))?;
                    let keys = store.app_keys(&id).await?;
                    app_view(d, &a, &keys)
                }
            };
            if out.json {
                out.json(&v)
            } else {
                print_app(&v);
                Ok(())
            }
        }
        AppCommand::AccessToken { id } => {
            let path = format!("{}/access-token", app_path(&id)?);
            let v = match &t {
                Target::Remote(r) => r.call(Method::POST, &path, Cred::Root, None).await?,
                Target::Direct(d) => {
                    let token = d
                        .state()
                        .keys
                        .regenerate_access_token(&id, false)
                        .await
                        .map_err(key_error)?;
                    json!(wire::AccessToken {
                        app_id: id.clone(),
                        access_token: token.expose().to_owned(),
                    })
                }
            };
            if out.json {
                out.json(&v)
            } else {
                println!(
                    "new access token of app {id} (shown once, store it now): {}\n  the old one no longer works",
                    s(&v, "access_token"),
                );
                Ok(())
            }
        }
    }
}

fn print_key_line(k: &Value) {
    println!(
        "{}  {:<8} {:<6} created {}  {}",
        s(k, "kid"),
        s(k, "state"),
        s(k, "algorithm"),
        s(k, "created_at"),
        match s(k, "state") {
            "revoked" => format!("revoked {}", s(k, "revoked_at")),
            "retired" => format!("retired {}", s(k, "retired_at")),
            "current" => format!("signing since {}", s(k, "activated_at")),
            "previous" => format!("stopped signing {}", s(k, "deactivated_at")),
            _ => String::new(),
        }
    );
    if s(k, "origin") == "imported" {
        println!("    (imported: born outside the HSM)");
    }
}

/// `hsm-rotator keys ...`.
pub(crate) async fn keys(t: Target<'_>, cmd: KeysCommand, out: &Output) -> anyhow::Result<()> {
    let v = match cmd {
        KeysCommand::List { app } => {
            let path = format!("{}/keys", app_path(&app)?);
            let v = match &t {
                Target::Remote(r) => r.call(Method::GET, &path, Cred::RootOrApp, None).await?,
                Target::Direct(d) => {
                    let store = &d.state().store;
                    if store.app(&app).await?.is_none() {
                        anyhow::bail!("app {app} not found");
                    }
                    let keys = store.app_keys(&app).await?;
                    let safe_at = keys
                        .iter()
                        .find(|k| k.state == KeyState::Next)
                        .map(|k| d.state().keys.signs_from(k));
                    let now = d.state().keys.clock_now();
                    json!(wire::KeyList {
                        keys: keys.iter().map(wire::Key::new).collect(),
                        rotation_safe_at: safe_at.map(crate::clock::rfc3339),
                        rotation_safe_in: safe_at.map(|t| (t - now).max(0)),
                    })
                }
            };
            if !out.json {
                for k in v["keys"].as_array().cloned().unwrap_or_default() {
                    print_key_line(&k);
                }
                if let Some(line) = rotation_safe_line(&v) {
                    println!("{line}");
                }
                return Ok(());
            }
            v
        }
        KeysCommand::Rotate { app, force } => {
            let path = format!("{}/keys/rotate", app_path(&app)?);
            let v = match &t {
                Target::Remote(r) => {
                    let body = force.then(|| json!({"force": true}));
                    r.call(Method::POST, &path, Cred::RootOrApp, body.as_ref())
                        .await
                        .map_err(|e| {
                            let msg = e.to_string();
                            if msg.contains("rotation_too_soon") {
                                too_soon(&msg)
                            } else {
                                e
                            }
                        })?
                }
                Target::Direct(d) => {
                    let early = if force {
                        Early::Allow("force")
                    } else {
                        Early::Refuse
                    };
                    let r = d
                        .state()
                        .keys
                        .rotate_with(&app, RotationKind::Manual, None, early)
                        .await
                        .map_err(key_error)?;
                    json!(wire::Rotation {
                        current: wire::Key::new(&r.current),
                        next: wire::Key::new(&r.next),
                        previous: r.previous.iter().map(wire::Key::new).collect(),
                    })
                }
            };
            if !out.json {
                println!(
                    "rotated app {app}: current key {}, next key {}, {} previous key(s) still verifying",
                    s(&v["current"], "kid"),
                    s(&v["next"], "kid"),
                    v["previous"].as_array().map_or(0, Vec::len)
                );
                return Ok(());
            }
            v
        }
        KeysCommand::Revoke { app, kid } => {
            let parsed: Kid = kid
                .parse()
                .map_err(|_| anyhow::anyhow!("{kid:?} is not a key id (a 26-character ULID)"))?;
            let path = format!("{}/keys/{kid}/revoke", app_path(&app)?);
            let v = match &t {
                Target::Remote(r) => r.call(Method::POST, &path, Cred::RootOrApp, None).await?,
                Target::Direct(d) => {
                    let r = d
                        .state()
                        .keys
                        .revoke_key(&app, parsed)
                        .await
                        .map_err(key_error)?;
                    json!(wire::Revocation {
                        revoked: r.revoked.first().map(wire::Key::new),
                        current: r.current.as_ref().map(wire::Key::new),
                        next: r.next.as_ref().map(wire::Key::new),
                        revoked_tokens: r.revoked_tokens,
                        affected_subjects: r.affected_subjects,
                    })
                }
            };
            if !out.json {
                println!(
                    "revoked key {kid} of app {app}: {} live token(s) of {} subject(s) are now rejected; current key {}, next key {}",
                    v["revoked_tokens"],
                    v["affected_subjects"],
                    s(&v["current"], "kid"),
                    s(&v["next"], "kid"),
                );
                return Ok(());
            }
            v
        }
        KeysCommand::EmergencyRotate { app } => {
            let path = format!("{}/keys/emergency-rotate", app_path(&app)?);
            let v = match &t {
                Target::Remote(r) => r.call(Method::POST, &path, Cred::RootOrApp, None).await?,
                Target::Direct(d) => {
                    let r = d
                        .state()
                        .keys
                        .emergency_rotate(&app)
                        .await
                        .map_err(key_error)?;
                    json!(wire::EmergencyRotation::new(&app, &r))
                }
            };
            if !out.json {
                let kids: Vec<&str> = v["revoked_kids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!(
                    "emergency rotation of app {app}: {} key(s) revoked and destroyed ({}); {} live token(s) of {} subject(s) rejected, and every token issued before {}; current key {}, next key {}",
                    kids.len(),
                    kids.join(" "),
                    v["revoked_tokens"],
                    v["affected_subjects"],
                    s(&v, "revoked_at"),
                    s(&v["current"], "kid"),
                    s(&v["next"], "kid"),
                );
                return Ok(());
            }
            v
        }
        KeysCommand::Import(args) => {
            let v = import(&t, args).await?;
            if !out.json {
                println!(
                    "imported key {} as {} of app {} ({}, origin {}); the app rotates it out by its next rotation",
                    s(&v, "kid"),
                    s(&v, "state"),
                    s(&v, "app_id"),
                    s(&v, "algorithm"),
                    s(&v, "origin"),
                );
                return Ok(());
            }
            v
        }
    };
    out.json(&v)
}

/// `keys import`: read the key file (zeroised once sent or parsed) and import it.
async fn import(t: &Target<'_>, args: ImportArgs) -> anyhow::Result<Value> {
    let path = format!("{}/keys/import", app_path(&args.app)?);
    let (file, is_pem) = match (&args.pem, &args.jwk) {
        (Some(p), _) => (p, true),
        (None, Some(j)) => (j, false),
        (None, None) => anyhow::bail!("give the key with --pem FILE or --jwk FILE"),
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("Failed to read the key file {}", file.display()))?,
    );
    let jwk: Option<zeroize::Zeroizing<String>> = (!is_pem).then(|| text.clone());
    match t {
        Target::Remote(r) => {
            let mut body = serde_json::Map::new();
            if is_pem {
                body.insert("pem".into(), Value::String(text.to_string()));
            } else {
                let parsed: Value = serde_json::from_str(&text)
                    .map_err(|_| anyhow::anyhow!("{} is not a JSON JWK", file.display()))?;
                body.insert("jwk".into(), parsed);
            }
            if let Some(k) = &args.kid {
                body.insert("kid".into(), k.clone().into());
            }
            body.insert("state".into(), args.state.clone().into());
            let mut body = Value::Object(body);
            let answer = r.call(Method::POST, &path, Cred::Root, Some(&body)).await;
            // The copies of the key in the request body are wiped once it is sent.
            if let Some(Value::String(p)) = body.get_mut("pem") {
                zeroize::Zeroize::zeroize(p);
            }
            if let Some(Value::Object(j)) = body.get_mut("jwk") {
                for v in j.values_mut() {
                    if let Value::String(s) = v {
                        zeroize::Zeroize::zeroize(s);
                    }
                }
            }
            answer
        }
        Target::Direct(d) => {
            let kid =
                match &args.kid {
                    Some(k) => Some(k.parse::<Kid>().map_err(|_| {
                        anyhow::anyhow!("{k:?} is not a key id (a 26-character ULID)")
                    })?),
                    None => None,
                };
            let state = crate::keys::import::parse_state(&args.state)?;
            let material = match jwk {
                Some(j) => {
                    let parsed: serde_json::Map<String, Value> = serde_json::from_str(&j)
                        .map_err(|_| anyhow::anyhow!("{} is not a JSON JWK", file.display()))?;
                    crate::keys::import::parse_jwk(&parsed)?
                }
                None => crate::keys::import::parse_pem(&text)?,
            };
            let row = d
                .state()
                .keys
                .import_key(
                    &args.app,
                    crate::keys::import::ImportRequest {
                        material,
                        kid,
                        state,
                    },
                )
                .await
                .map_err(key_error)?;
            Ok(json!(wire::Key::new(&row)))
        }
    }
}
