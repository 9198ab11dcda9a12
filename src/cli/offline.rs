//! `token verify --offline`: verify a token as a relying party that never calls our token
//! endpoints would (issue 24). It reads only public documents: the app's discovery document
//! (for its issuer), its JWKS, and the status list a token's `status` claim names. They are
//! cached on disk (`--cache-dir`, else `$XDG_CACHE_HOME/hsm-rotator`, else
//! `~/.cache/hsm-rotator`): the discovery document and the JWKS for their `Cache-Control`
//! max-age, a list for its `ttl`, then revalidated with their `ETag`. Whatever comes from
//! the cache is verified again on every use (a cached list is re-checked against the JWKS),
//! so a changed cache file cannot make a token active.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::remote::Remote;
use crate::jwt::Rejection;
use crate::statuslist::{MEDIA_JWT, TYP};

/// Longest a list is reused without asking again, whatever its `ttl` says (one day).
const MAX_TTL: i64 = 86_400;

/// One cached document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    url: String,
    fetched_at: i64,
    max_age: i64,
    etag: Option<String>,
    body: String,
}

impl Entry {
    fn fresh(&self, now: i64) -> bool {
        self.fetched_at + self.max_age > now
    }
}

/// The on-disk cache: one JSON file per URL, named by the URL's SHA-256.
#[derive(Debug)]
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn open(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d,
            None => std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|h| Path::new(&h).join(".cache"))
                })
                .map(|d| d.join("hsm-rotator"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no cache directory: set --cache-dir (or XDG_CACHE_HOME, or HOME)"
                    )
                })?,
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("Failed to create the cache directory {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn path(&self, url: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", &crate::auth::digest(url)[..32]))
    }

    /// The cached entry of `url`; an unreadable or foreign file counts as none.
    fn load(&self, url: &str) -> Option<Entry> {
        let text = std::fs::read_to_string(self.path(url)).ok()?;
        serde_json::from_str::<Entry>(&text)
            .ok()
            .filter(|e| e.url == url)
    }

    /// Write `e` (to a temporary file renamed into place, so readers see whole files).
    fn save(&self, e: &Entry) -> anyhow::Result<()> {
        let path = self.path(&e.url);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::to_string(e).context("Failed to encode a cache entry")?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("Failed to write the cache file {}", path.display()))
    }
}

/// The verifier: where to fetch from, and the cache.
struct Offline<'a> {
    remote: &'a Remote,
    cache: Cache,
    now: i64,
}

/// How long a fetched document may be reused.
type MaxAge = fn(&super::remote::Fetched) -> i64;

fn header_max_age(f: &super::remote::Fetched) -> i64 {
    f.max_age
}

/// A list is reused for its `ttl` (read unverified: it only sets how long to cache; the
/// list is verified on every use), else its `Cache-Control`.
fn list_max_age(f: &super::remote::Fetched) -> i64 {
    crate::statuslist::parse_list(f.body.trim())
        .and_then(|c| c.claims.get("ttl").and_then(Value::as_i64))
        .unwrap_or(f.max_age)
        .clamp(0, MAX_TTL)
}

impl Offline<'_> {
    /// `url` from the cache while fresh (unless `again`), else fetched (conditionally when
    /// cached) and cached. Says whether it came from the network.
    async fn get(
        &self,
        url: &str,
        accept: &str,
        again: bool,
        age: MaxAge,
    ) -> anyhow::Result<(Entry, bool)> {
        let cached = self.cache.load(url);
        if let Some(e) = &cached
            && !again
            && e.fresh(self.now)
        {
            return Ok((e.clone(), false));
        }
        let f = self
            .remote
            .fetch(url, accept, cached.as_ref().and_then(|e| e.etag.as_deref()))
            .await?;
        let entry = match (f.status, cached) {
            (304, Some(mut e)) => {
                e.fetched_at = self.now;
                e.max_age = if e.max_age > 0 { e.max_age } else { f.max_age };
                e
            }
            (200, _) => Entry {
                url: url.to_owned(),
                fetched_at: self.now,
                max_age: age(&f),
                etag: f.etag.clone(),
                body: f.body,
            },
            (status, _) => anyhow::bail!("GET {url} answered HTTP {status}"),
        };
        self.cache.save(&entry)?;
        Ok((entry, true))
    }

    /// The JWKS as JSON, fetched again when `again`.
    async fn jwks(&self, url: &str, again: bool) -> anyhow::Result<(Value, bool)> {
        let (e, fetched) = self
            .get(url, "application/json", again, header_max_age)
            .await?;
        let v = serde_json::from_str::<Value>(&e.body)
            .ok()
            .filter(|v| v.get("keys").is_some_and(Value::is_array))
            .ok_or_else(|| anyhow::anyhow!("{url} is not a JWK Set"))?;
        Ok((v, fetched))
    }

    /// Check `c`'s signature with the JWKS at `url`, fetching the set again once when it
    /// does not know the token's key (a key published since it was cached).
    async fn check_signature(
        &self,
        c: &crate::jwt::Compact<'_>,
        url: &str,
    ) -> anyhow::Result<Result<(), Rejection>> {
        let (jwks, fetched) = self.jwks(url, false).await?;
        match crate::jwt::verify::check_with_jwks(c, &jwks) {
            Err(Rejection::UnknownKey) if !fetched => {
                let (jwks, _) = self.jwks(url, true).await?;
                Ok(crate::jwt::verify::check_with_jwks(c, &jwks))
            }
            r => Ok(r),
        }
    }
}

/// What offline verification concluded.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Active: the claims, with `kid`.
    Active(Map<String, Value>),
    /// Not active, and why (in words).
    Inactive(String),
}

fn words(r: Rejection) -> String {
    super::tokens::rejection_words(r).to_owned()
}

/// Verify `token` of app `app_id` offline against the server at `remote` (see the module
/// documentation). Its `iss` is the discovery document's issuer, or one under `aliases`
/// (earlier base URLs, as the server's `issuer_aliases`); a token under an alias names its
/// status list under that alias, and the list (whose `sub` names it under the current
/// issuer) is read as the same list.
///
/// # Errors
/// A document cannot be fetched or read, or the token's status list cannot be trusted
/// (its signature, `typ`, `sub` or content is wrong): the token's status is then unknown.
pub(crate) async fn verify(
    remote: &Remote,
    app_id: &str,
    token: &str,
    cache_dir: Option<PathBuf>,
    aliases: &[String],
) -> anyhow::Result<Verdict> {
    let app_base = format!("{}{}", remote.base(), super::apps::app_path(app_id)?);
    let v = Offline {
        remote,
        cache: Cache::open(cache_dir)?,
        now: crate::clock::Clock::now(&crate::clock::SystemClock),
    };
    let Some(c) = crate::jwt::parse(token.trim()) else {
        return Ok(Verdict::Inactive(words(Rejection::Malformed)));
    };
    if c.header
        .typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("JWT") && !t.eq_ignore_ascii_case("at+jwt"))
    {
        return Ok(Verdict::Inactive(words(Rejection::WrongType)));
    }
    let discovery_url = format!("{app_base}/.well-known/openid-configuration");
    let (d, _) = v
        .get(&discovery_url, "application/json", false, header_max_age)
        .await?;
    let issuer = serde_json::from_str::<Value>(&d.body)
        .ok()
        .and_then(|d| d.get("issuer").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("{discovery_url} names no issuer"))?;
    let jwks_url = format!("{app_base}/.well-known/jwks.json");
    if let Err(r) = v.check_signature(&c, &jwks_url).await? {
        return Ok(Verdict::Inactive(words(r)));
    }
    let num = |k: &str| c.claims.get(k).and_then(Value::as_i64);
    match num("exp") {
        Some(exp) if exp > v.now => {}
        _ => return Ok(Verdict::Inactive(words(Rejection::Expired))),
    }
    if num("nbf").is_some_and(|nbf| nbf > v.now) {
        return Ok(Verdict::Inactive(words(Rejection::NotYetValid)));
    }
    let iss = c
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let accepted = iss == issuer
        || issuer
            .strip_suffix(&format!("/apps/{app_id}"))
            .is_some_and(|base| {
                crate::jwt::Issuers::new(Some(base), "", false, aliases).accepts(app_id, iss)
            });
    if !accepted {
        return Ok(Verdict::Inactive(format!(
            "its issuer is not {issuer}, the app's{}",
            if aliases.is_empty() {
                " (an earlier base URL is accepted with --issuer-alias)"
            } else {
                ", nor one under --issuer-alias"
            }
        )));
    }
    if let Some(sl) = c.claims.get("status").and_then(|s| s.get("status_list")) {
        let (Some(idx), Some(uri)) = (
            sl.get("idx").and_then(Value::as_u64),
            sl.get("uri").and_then(Value::as_str),
        ) else {
            anyhow::bail!("the token's status claim has no idx and uri");
        };
        // A token issued under an alias names its list under that alias: the same list,
        // which the server now signs under the current issuer.
        let uri = match uri.strip_prefix(iss) {
            Some(rest) if iss != issuer && rest.starts_with('/') => format!("{issuer}{rest}"),
            _ => uri.to_owned(),
        };
        if status_bit(&v, &issuer, &app_base, &jwks_url, &uri, idx).await? != 0 {
            return Ok(Verdict::Inactive(
                "its status list marks it revoked".to_owned(),
            ));
        }
    }
    let mut claims = c.claims;
    if let Some(kid) = c.header.kid {
        claims.insert("kid".into(), kid.into());
    }
    Ok(Verdict::Active(claims))
}

/// Bit `idx` of the status list at `uri`, after verifying the list token with the app's
/// JWKS, its `typ`, its `sub` (equal to `uri`) and its `exp`. A list under the app's issuer
/// is fetched through `app_base` (the URL this CLI reaches the server at).
async fn status_bit(
    v: &Offline<'_>,
    issuer: &str,
    app_base: &str,
    jwks_url: &str,
    uri: &str,
    idx: u64,
) -> anyhow::Result<u8> {
    let fetch_url = match uri.strip_prefix(issuer) {
        Some(rest) if rest.starts_with('/') => format!("{app_base}{rest}"),
        _ => uri.to_owned(),
    };
    let mut again = false;
    loop {
        let (e, fetched) = v.get(&fetch_url, MEDIA_JWT, again, list_max_age).await?;
        let list = e.body.trim();
        let c = crate::statuslist::parse_list(list)
            .ok_or_else(|| anyhow::anyhow!("the status list at {uri} is not a JWT"))?;
        if !c
            .header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(TYP))
        {
            anyhow::bail!("the status list at {uri} is not typed {TYP}");
        }
        if let Err(r) = v.check_signature(&c, jwks_url).await? {
            anyhow::bail!(
                "the status list at {uri} is refused: {}",
                super::tokens::rejection_words(r)
            );
        }
        if c.claims.get("sub").and_then(Value::as_str) != Some(uri) {
            anyhow::bail!("the status list at {uri} names another sub");
        }
        if c.claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_none_or(|exp| exp <= v.now)
        {
            // A cached list past its exp: ask once more, then give up.
            if !fetched && !again {
                again = true;
                continue;
            }
            anyhow::bail!("the status list at {uri} has expired");
        }
        let sl = c.claims.get("status_list");
        if sl.and_then(|s| s.get("bits")).and_then(Value::as_u64) != Some(1) {
            anyhow::bail!("the status list at {uri} is not a one-bit list");
        }
        let bytes = sl
            .and_then(|s| s.get("lst"))
            .and_then(Value::as_str)
            .and_then(crate::statuslist::decompress)
            .ok_or_else(|| anyhow::anyhow!("the status list at {uri} holds no zlib lst"))?;
        return crate::statuslist::bit(&bytes, idx)
            .ok_or_else(|| anyhow::anyhow!("index {idx} lies outside the status list at {uri}"));
    }
}
