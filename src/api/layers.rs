//! Cross-cutting HTTP layers: request ids, the client's address (through
//! `trusted_proxies`) and the audit context, security headers, a request timeout, the
//! per-source budget of authentication failures and the per-app budget of key changes.

use std::collections::hash_map::RandomState;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::app::AppState;

/// Header carrying the request id.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest a request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| s.to_owned())
}

/// The request's method as a bounded label (extension methods collapse to `OTHER`).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Path parameters naming the app, in the native and compatibility routes.
const APP_PARAMS: [&str; 2] = ["id", "app_id"];
/// Path parameters naming a key.
const KID_PARAMS: [&str; 2] = ["kid", "key_id"];

/// A path parameter fit for a log field (printable, bounded), else nothing.
fn loggable(v: &str) -> Option<&str> {
    (!v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then_some(v)
}

/// Record the app on the current request's span, when the path did not name it (creation).
pub(crate) fn record_app(app_id: &str) {
    tracing::Span::current().record("app", tracing::field::display(app_id));
}

/// Record `kid` on the current request's span (a no-op outside one). Handlers call it when
/// they learn which key signed, was revoked or became current.
pub(crate) fn record_kid(kid: &dyn std::fmt::Display) {
    tracing::Span::current().record("kid", tracing::field::display(kid));
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, what the
/// proxies' `Forwarded` / `X-Forwarded-For` say (see [`crate::auth::proxies`]).
fn client_address(
    trusted: &[crate::auth::proxies::Cidr],
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
) -> IpAddr {
    if trusted.is_empty() {
        return peer;
    }
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    };
    crate::auth::proxies::client_address(
        peer,
        trusted,
        values("forwarded"),
        values("x-forwarded-for"),
    )
}

/// Give every request an id (the client's `X-Request-Id` if it is sane, else a ULID),
/// run it inside the audit context and a `request` span (route template, method, request
/// id, client, app and kid), bound its time, add security headers, count it in the HTTP metrics
/// and log one completion event.
pub(crate) async fn request_context(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| crate::keys::monotonic_ulid().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<crate::tls::ClientAddr>>()
        .map(|c| c.0.0.ip())
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
    let client = peer.map(|p| client_address(&state.settings.trusted_proxies, p, req.headers()));
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route
        .as_ref()
        .map_or(crate::metrics::UNMATCHED, MatchedPath::as_str);
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "request",
        route,
        method,
        request_id = %id,
        client = tracing::field::Empty,
        app = tracing::field::Empty,
        kid = tracing::field::Empty,
    );
    if let Some(c) = client {
        span.record("client", tracing::field::display(c));
    }
    if let Ok(params) = &params {
        for (name, value) in params {
            if APP_PARAMS.contains(&name)
                && let Some(v) = loggable(value)
            {
                span.record("app", tracing::field::display(v));
            } else if KID_PARAMS.contains(&name)
                && let Some(v) = loggable(value)
            {
                span.record("kid", tracing::field::display(v));
            }
        }
    }
    // `watch`: whether the request revoked anything, to say when the status lists show it.
    let work = crate::statuslist::watch(crate::audit::request_scope(
        "anonymous",
        &id,
        client,
        next.run(req),
    ));
    let mut res = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        tracing::Instrument::instrument(work, span.clone()),
    )
    .await
    {
        Ok((mut r, revoked)) => {
            if revoked
                && r.status().is_success()
                && state.registry.apps().iter().any(|a| a.status_list)
                && let Ok(v) = HeaderValue::from_str(&state.statuslists.visible_by().to_string())
            {
                r.headers_mut().insert(STATUS_LIST_VISIBLE_BY, v);
            }
            r
        }
        Err(_) => ApiError::Unavailable {
            code: "timeout",
            message: format!(
                "the request took longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        }
        .into_response(),
    };
    let elapsed = started.elapsed();
    let status = res.status();
    crate::metrics::http_request(route, method, status.as_str(), elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request done"
        );
    });
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// On a response to a request that revoked tokens: the Unix time by which this replica's
/// Token Status Lists show the revocation (docs/operations.md, "Token Status Lists").
pub(crate) const STATUS_LIST_VISIBLE_BY: header::HeaderName =
    header::HeaderName::from_static("status-list-visible-by");

/// Longest a source's window of authentication failures lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Invalid credentials a source may present per window before it is answered 429.
pub(crate) const MAX_FAILURES: u32 = 20;
/// Sources remembered at once; the least recently failing is forgotten first.
const MAX_SOURCES: usize = 65_536;

/// One source's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What one authentication failure means for its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The source's block: its IPv4 address or its IPv6 /64.
    pub(crate) source: IpAddr,
    /// Failures from the source in the current window, this one included.
    pub(crate) in_window: u32,
    /// Seconds until the window ends, when the source is over its budget.
    pub(crate) throttled: Option<u64>,
    /// Whether this failure gets an audit record: the first of a window (which also
    /// carries the total of the window before) and the one that goes over the budget.
    /// The others are only counted, so a flood cannot fill the audit log.
    pub(crate) audit: bool,
    /// Failures in the source's previous window, when this one opened a new window.
    pub(crate) previous_window: Option<u32>,
}

/// Per-source budget of authentication failures (IPv4 address, IPv6 /64).
///
/// Only failures are counted, after the credential was checked: a valid credential is
/// never refused because of what others sent from the same address (a shared proxy or
/// NAT). A source over its budget gets 429 for further *invalid* credentials until its
/// window ends. Memory is bounded (an LRU of [`MAX_SOURCES`] windows, O(1) per failure,
/// no scan under the lock); forgetting a source only resets its count.
pub struct AuthLimiter {
    sources: Mutex<LruCache<IpAddr, Window, RandomState>>,
}

impl std::fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthLimiter")
    }
}

impl Default for AuthLimiter {
    fn default() -> Self {
        Self::with_capacity(MAX_SOURCES)
    }
}

impl AuthLimiter {
    fn with_capacity(n: usize) -> Self {
        // SipHash with a random key: the keys are chosen by clients.
        Self {
            sources: Mutex::new(LruCache::with_hasher(n, RandomState::new())),
        }
    }

    /// Count one invalid credential from `client` (`None`: an unknown address, counted
    /// as one source) at `now`.
    pub(crate) fn failed(&self, client: Option<IpAddr>, now: Instant) -> Failure {
        let source = client.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| {
            crate::auth::proxies::source_block(c)
        });
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (w, previous_window) = match sources.get_mut(&source) {
            Some(w) if now.saturating_duration_since(w.started) < WINDOW => {
                w.failures = w.failures.saturating_add(1);
                (*w, None)
            }
            Some(w) => {
                let previous = w.failures;
                *w = Window {
                    started: now,
                    failures: 1,
                };
                (*w, Some(previous))
            }
            None => {
                let w = Window {
                    started: now,
                    failures: 1,
                };
                sources.insert(source, w);
                (w, Some(0))
            }
        };
        drop(sources);
        let throttled = (w.failures > MAX_FAILURES).then(|| {
            WINDOW
                .saturating_sub(now.saturating_duration_since(w.started))
                .as_secs()
                .max(1)
        });
        Failure {
            source,
            in_window: w.failures,
            throttled,
            audit: w.failures == 1 || w.failures == MAX_FAILURES + 1,
            previous_window: previous_window.filter(|_| w.failures == 1),
        }
    }
}

/// Per-app budget of key-changing calls made with the app's own access token (rotate,
/// revoke, emergency rotation): each may take keys from the shared spare pool or make
/// one in the HSM, so one app looping on them would starve the others. A token bucket:
/// [`KEY_CHANGE_BURST`] at once, one more every [`KEY_CHANGE_REFILL`]. Calls with the
/// root key are not counted: the operator is never kept out of an emergency rotation.
pub struct KeyChangeLimiter {
    apps: Mutex<LruCache<String, Bucket, RandomState>>,
}

/// Key-changing calls an app may make at once.
pub(crate) const KEY_CHANGE_BURST: f64 = 5.0;
/// Time for one more.
pub(crate) const KEY_CHANGE_REFILL: Duration = Duration::from_secs(12);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl std::fmt::Debug for KeyChangeLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyChangeLimiter")
    }
}

impl Default for KeyChangeLimiter {
    fn default() -> Self {
        Self {
            apps: Mutex::new(LruCache::with_hasher(MAX_SOURCES, RandomState::new())),
        }
    }
}

impl KeyChangeLimiter {
    /// Take one call from `app_id`'s bucket at `now`: `Err(seconds)` until one is free.
    pub(crate) fn take(&self, app_id: &str, now: Instant) -> Result<(), u64> {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_sec = 1.0 / KEY_CHANGE_REFILL.as_secs_f64();
        let b = match apps.get_mut(app_id) {
            Some(b) => b,
            None => {
                apps.insert(
                    app_id.to_owned(),
                    Bucket {
                        tokens: KEY_CHANGE_BURST,
                        at: now,
                    },
                );
                apps.get_mut(app_id).ok_or(1_u64)?
            }
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(KEY_CHANGE_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_throttled_per_source_with_audit_once_per_window() {
        let l = AuthLimiter::default();
        let t0 = Instant::now();
        let a = Some("192.0.2.1".parse().unwrap());
        let mut audited = 0;
        for i in 1..=100 {
            let f = l.failed(a, t0);
            audited += usize::from(f.audit);
            assert_eq!(f.in_window, i);
            assert_eq!(f.throttled.is_some(), i > MAX_FAILURES, "failure {i}");
        }
        assert_eq!(audited, 2, "the first failure and the one over budget");
        // Another address is its own source; another host of the same IPv6 /64 is not.
        assert!(
            l.failed(Some("192.0.2.2".parse().unwrap()), t0)
                .throttled
                .is_none()
        );
        for _ in 0..=MAX_FAILURES {
            l.failed(Some("2001:db8:1:2::1".parse().unwrap()), t0);
        }
        let f = l.failed(Some("2001:db8:1:2:ffff::9".parse().unwrap()), t0);
        assert!(f.throttled.is_some());
        // A new window: the count starts again and the old window's total is carried.
        let f = l.failed(a, t0 + WINDOW);
        assert_eq!(
            (f.in_window, f.throttled, f.audit, f.previous_window),
            (1, None, true, Some(100))
        );
    }

    #[test]
    fn remembered_sources_are_bounded() {
        let l = AuthLimiter::with_capacity(4);
        let t0 = Instant::now();
        for i in 0..100_u8 {
            l.failed(Some(IpAddr::from([10, 0, 0, i])), t0);
        }
        let n = l
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        assert_eq!(n, 4);
    }

    #[test]
    fn key_changes_are_a_token_bucket_per_app() {
        let l = KeyChangeLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.take("a", t0).is_ok());
        }
        let wait = l.take("a", t0).unwrap_err();
        assert!((1..=KEY_CHANGE_REFILL.as_secs()).contains(&wait), "{wait}");
        assert!(l.take("b", t0).is_ok(), "another app has its own bucket");
        assert!(l.take("a", t0 + KEY_CHANGE_REFILL).is_ok(), "refilled");
        assert!(l.take("a", t0 + KEY_CHANGE_REFILL).is_err());
    }
}
