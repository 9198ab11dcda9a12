//! `token issue|verify`, in direct or `--url` mode.
//!
//! `issue` prints the JWT alone on stdout (so `JWT=$(hsm-rotator token issue ...)` works);
//! `verify` reads the token from stdin or a file, never from argv, and exits non-zero when
//! the token is not active.

use std::io::Read as _;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::TokenCommand;
use super::apps::Target;
use super::output::{Output, s};
use super::remote::Cred;
use crate::api::wire;
use crate::jwt::service::{IssueOptions, RefreshFormat};

fn app_row(t: &super::Direct, id: &str) -> anyhow::Result<std::sync::Arc<crate::store::AppRow>> {
    t.state()
        .registry
        .app(id)
        .ok_or_else(|| anyhow::anyhow!("app {id} not found"))
}

fn read_token(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .take(crate::jwt::MAX_TOKEN_LEN as u64 + 2)
            .read_to_string(&mut text)
            .context("Failed to read the token from stdin")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("Failed to read {file}"))?;
    }
    let token = text.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("no token given: pipe it on stdin or name a file with --token-file");
    }
    Ok(token)
}

/// `hsm-rotator token ...`.
pub(crate) async fn run(t: Target<'_>, cmd: TokenCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue {
            app,
            sub,
            claims,
            ttl,
        } => {
            let mut c: Map<String, Value> = match claims.as_deref() {
                Some(j) => match serde_json::from_str(j) {
                    Ok(Value::Object(m)) => m,
                    _ => {
                        anyhow::bail!("--claims must be a JSON object, like '{{\"aud\": \"api\"}}'")
                    }
                },
                None => Map::new(),
            };
            if let Some(sub) = sub {
                c.insert("sub".into(), sub.into());
            }
            let v = match &t {
                Target::Remote(r) => {
                    let mut body = json!({"claims": c});
                    if let (Some(ttl), Value::Object(m)) = (ttl, &mut body) {
                        m.insert("ttl".into(), ttl.into());
                    }
                    r.call(
                        Method::POST,
                        &format!("{}/tokens", super::apps::app_path(&app)?),
                        Cred::App,
                        Some(&body),
                    )
                    .await?
                }
                Target::Direct(d) => {
                    let row = app_row(d, &app)?;
                    let opts = IssueOptions {
                        issuer: d.issuer(&app),
                        ttl,
                        with_jid: false,
                        refresh: RefreshFormat::Opaque,
                        meta: None,
                    };
                    let issued = d
                        .state()
                        .tokens
                        .issue(&row, c, &opts)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    json!(wire::IssuedToken::new(&issued))
                }
            };
            if out.json {
                return out.json(&v);
            }
            println!("{}", s(&v, "token"));
            eprintln!(
                "signed by key {}, expires {}{}",
                s(&v, "kid"),
                s(&v, "expires_at"),
                if v.get("refresh_token").is_some() {
                    "; a refresh token was issued too (see --json)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        TokenCommand::Verify {
            app,
            token_file,
            offline: true,
            cache_dir,
            issuer_alias,
        } => {
            let token = zeroize::Zeroizing::new(read_token(&token_file)?);
            let Target::Remote(r) = &t else {
                anyhow::bail!("--offline verifies against a server's public documents only");
            };
            match super::offline::verify(r, &app, &token, cache_dir, &issuer_alias).await? {
                super::offline::Verdict::Active(mut claims) => {
                    claims.insert("active".into(), true.into());
                    let v = Value::Object(claims);
                    print_active(&v, out)
                }
                super::offline::Verdict::Inactive(why) => {
                    if out.json {
                        out.json(&json!({"active": false}))?;
                    }
                    anyhow::bail!("the token is not active: {why}")
                }
            }
        }
        TokenCommand::Verify {
            app, token_file, ..
        } => {
            let token = zeroize::Zeroizing::new(read_token(&token_file)?);
            let (v, why) = match &t {
                Target::Remote(r) => (
                    r.call(
                        Method::POST,
                        &format!("{}/tokens/introspect", super::apps::app_path(&app)?),
                        Cred::App,
                        Some(&json!({"token": token.as_str()})),
                    )
                    .await?,
                    None,
                ),
                Target::Direct(d) => {
                    let row = app_row(d, &app)?;
                    match d
                        .state()
                        .tokens
                        .verify(&row, d.state().issuers(), &token)
                        .await
                    {
                        Ok(mut claims) => {
                            claims.insert("active".into(), true.into());
                            claims.insert("token_type".into(), "access_token".into());
                            (Value::Object(claims), None)
                        }
                        Err(why) => (json!({"active": false}), Some(why)),
                    }
                }
            };
            let active = v["active"].as_bool().unwrap_or(false);
            if active {
                print_active(&v, out)?;
            } else if out.json {
                out.json(&v)?;
            }
            if !active {
                match why {
                    Some(crate::jwt::Rejection::Issuer) => anyhow::bail!(
                        "the token is not active: its issuer is not {} (set public_url to the server's public base URL, and list earlier ones in issuer_aliases)",
                        d_issuer(&t, &app)
                    ),
                    Some(why) => anyhow::bail!("the token is not active: {}", rejection_words(why)),
                    None => anyhow::bail!("the token is not active"),
                }
            }
            Ok(())
        }
    }
}

/// An active token's claims: as JSON, or one line.
fn print_active(v: &Value, out: &Output) -> anyhow::Result<()> {
    if out.json {
        return out.json(v);
    }
    println!(
        "active: sub {}, kid {}, expires {}",
        s(v, "sub"),
        s(v, "kid"),
        v["exp"]
            .as_i64()
            .map_or_else(|| "-".into(), crate::clock::rfc3339)
    );
    Ok(())
}

fn d_issuer(t: &Target<'_>, app: &str) -> String {
    match t {
        Target::Direct(d) => d.issuer(app),
        Target::Remote(_) => String::new(),
    }
}

/// Why a token is not active, in words (direct mode knows; a server only says `false`).
pub(super) fn rejection_words(r: crate::jwt::Rejection) -> &'static str {
    use crate::jwt::Rejection as R;
    match r {
        R::Malformed => "it is not a well-formed JWT",
        R::Algorithm => "its algorithm does not match its key",
        R::Critical => "it carries a crit header",
        R::WrongType => "it is not an access token",
        R::UnknownKey => "its key is unknown to this app, or was revoked or retired",
        R::KeyInactive => {
            "its key no longer verifies (retired, revoked, or past its verification window)"
        }
        R::Signature => "its signature does not verify",
        R::Expired => "it has expired",
        R::NotYetValid => "it is not valid yet (nbf)",
        R::Issuer => "its issuer is not this app's",
        R::NoJti => "it has no token id of ours",
        R::Revoked => "it was revoked",
        R::CutOff => "it was issued before the app's cut-off (flush or emergency rotation)",
        R::LoggedOut => "its subject was logged out",
    }
}
