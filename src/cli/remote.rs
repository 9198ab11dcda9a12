//! `--url` mode: the CLI as an HTTP client of a running server (reqwest over rustls).
//!
//! Credentials come from the environment only (`HSM_ROTATOR_ROOT_KEY`,
//! `HSM_ROTATOR_ACCESS_TOKEN`): argv is visible to every user through `ps`. They go out in
//! a header marked sensitive and never into an error message.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;
use zeroize::Zeroizing;

/// Environment variable holding the root key.
pub const ROOT_KEY_ENV: &str = "HSM_ROTATOR_ROOT_KEY";
/// Environment variable holding an app's access token.
pub const ACCESS_TOKEN_ENV: &str = "HSM_ROTATOR_ACCESS_TOKEN";

/// Which credential a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cred {
    /// The root key.
    Root,
    /// The app's access token.
    App,
    /// The root key if set, else the app's access token.
    RootOrApp,
}

/// A running server.
pub struct Remote {
    client: reqwest::Client,
    base: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("base", &self.base).finish()
    }
}

fn env_secret(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name)
        .ok()
        .map(Zeroizing::new)
        .filter(|v| !v.trim().is_empty())
}

impl Remote {
    /// A client of the server at `url` (`http://` or `https://`). With `ca_cert`, an https
    /// server must present a certificate issued by one of the CAs in that PEM file; without
    /// it, by one the system trusts.
    ///
    /// # Errors
    /// A malformed URL; an unreadable CA file; the TLS stack cannot start.
    pub fn new(url: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url)
            .with_context(|| format!("--url {url:?} is not a URL (http://HOST:PORT)"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("--url must start with http:// or https://");
        }
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).with_context(|| {
                format!("Failed to read the CA certificates in {}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|_| anyhow::anyhow!("{} holds no PEM certificate", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", path.display());
            }
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hsm-rotator-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("Failed to start the HTTP client")?;
        Ok(Self {
            client,
            base: url.trim_end_matches('/').to_owned(),
        })
    }

    fn credential(cred: Cred) -> anyhow::Result<Zeroizing<String>> {
        let (first, second) = match cred {
            Cred::Root => (ROOT_KEY_ENV, None),
            Cred::App => (ACCESS_TOKEN_ENV, None),
            Cred::RootOrApp => (ROOT_KEY_ENV, Some(ACCESS_TOKEN_ENV)),
        };
        if let Some(v) = env_secret(first) {
            return Ok(v);
        }
        if let Some(v) = second.and_then(env_secret) {
            return Ok(v);
        }
        Err(anyhow::anyhow!(match cred {
            Cred::Root => format!("set {ROOT_KEY_ENV} to the root key to use --url"),
            Cred::App => format!("set {ACCESS_TOKEN_ENV} to the app's access token to use --url"),
            Cred::RootOrApp => format!(
                "set {ROOT_KEY_ENV} (or {ACCESS_TOKEN_ENV}, the app's access token) to use --url"
            ),
        }))
    }

    /// Call `method path` with `cred` and an optional JSON body; the JSON answer on
    /// success, the server's own sentence on failure.
    ///
    /// # Errors
    /// No credential in the environment; the server unreachable or refusing.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        cred: Cred,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let secret = Self::credential(cred)?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", secret.trim())).map_err(|_| {
                anyhow::anyhow!("the credential in the environment is not a valid header value")
            })?;
        auth.set_sensitive(true);
        drop(secret);
        let url = format!("{}{path}", self.base);
        let mut rb = self
            .client
            .request(method.clone(), &url)
            .header(AUTHORIZATION, auth);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let res = rb.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the server at {}: {}", self.base, plain(&e))
        })?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| anyhow::anyhow!("the server's answer was cut short: {}", plain(&e)))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| v.get("error").and_then(Value::as_str))
            .unwrap_or("no explanation given");
        let code = v.get("error").and_then(Value::as_str).unwrap_or("");
        anyhow::bail!(
            "the server refused {method} {path}: {message} (HTTP {}{})",
            status.as_u16(),
            if code.is_empty() {
                String::new()
            } else {
                format!(", {code}")
            }
        )
    }
}

/// The answer to an unauthenticated GET: status, `ETag`, `Cache-Control` max-age, body.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// HTTP status.
    pub(crate) status: u16,
    /// `ETag`, if any.
    pub(crate) etag: Option<String>,
    /// `Cache-Control: max-age`, seconds (0 without one, or with `no-store`/`no-cache`).
    pub(crate) max_age: i64,
    /// Body text.
    pub(crate) body: String,
}

/// Seconds a response may be reused, from its `Cache-Control`.
fn max_age(cache_control: Option<&str>) -> i64 {
    let Some(cc) = cache_control else { return 0 };
    let mut age = 0;
    for d in cc.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return 0;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse().unwrap_or(0);
        }
    }
    age
}

impl Remote {
    /// The server's base URL (no trailing slash).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// GET a public document (`url` absolute) without credentials, conditionally when an
    /// `etag` is known.
    ///
    /// # Errors
    /// The server unreachable, or its answer cut short.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        accept: &str,
        etag: Option<&str>,
    ) -> anyhow::Result<Fetched> {
        let mut rb = self.client.get(url).header(reqwest::header::ACCEPT, accept);
        if let Some(e) = etag {
            rb = rb.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let res = rb
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot fetch {url}: {}", plain(&e)))?;
        let header = |h: reqwest::header::HeaderName| {
            res.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(reqwest::header::ETAG);
        let max_age = max_age(header(reqwest::header::CACHE_CONTROL).as_deref());
        let status = res.status().as_u16();
        let body = res
            .text()
            .await
            .map_err(|e| anyhow::anyhow!("the answer from {url} was cut short: {}", plain(&e)))?;
        Ok(Fetched {
            status,
            etag,
            max_age,
            body,
        })
    }
}

/// A reqwest error in a sentence, with its innermost cause (connection refused, ...).
fn plain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::max_age;

    #[test]
    fn cache_control_max_age_is_read_and_no_store_means_zero() {
        assert_eq!(max_age(Some("public, max-age=300")), 300);
        assert_eq!(max_age(Some("max-age=10, no-store")), 0);
        assert_eq!(max_age(Some("public")), 0);
        assert_eq!(max_age(None), 0);
    }
}
