//! Cross-cutting HTTP layers: request ids and the audit context, security headers, a
//! request timeout, and the per-address limit on authentication failures.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

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

/// Give every request an id (the client's `X-Request-Id` if it is sane, else a ULID),
/// run it inside the audit context and a `request` span (route template, method, request
/// id, app and kid), bound its time, add security headers, count it in the HTTP metrics
/// and log one completion event.
pub(crate) async fn request_context(
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
    let client = req
        .extensions()
        .get::<ConnectInfo<crate::tls::ClientAddr>>()
        .map(|c| c.0.0.ip())
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
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
        app = tracing::field::Empty,
        kid = tracing::field::Empty,
    );
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
    let work = crate::audit::request_scope("anonymous", &id, client, next.run(req));
    let mut res = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        tracing::Instrument::instrument(work, span.clone()),
    )
    .await
    {
        Ok(r) => r,
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

/// Per-address limit on authentication failures: after `MAX_FAILURES` in a window, every
/// authenticated request from that address gets 429 until the window ends.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Failures allowed per address per window.
pub(crate) const MAX_FAILURES: u32 = 20;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

impl AuthLimiter {
    /// 429 if `ip` is over its limit.
    pub(crate) fn check(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else { return Ok(()) };
        let w = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match w.get(&ip) {
            Some((start, n)) if start.elapsed() < WINDOW && *n >= MAX_FAILURES => {
                Err(ApiError::TooManyRequests {
                    retry_after: WINDOW.saturating_sub(start.elapsed()).as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Count a failure from `ip`.
    pub(crate) fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut w = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let e = w.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}
