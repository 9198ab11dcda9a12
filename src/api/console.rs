//! The operator console at `/console`: static HTML, CSS and JavaScript modules embedded in
//! the binary (the files under `console/` at the repository top), served with a strict
//! Content-Security-Policy. The console talks only to the public HTTP API.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest as _, Sha256};

use super::{ApiError, Resource};
use crate::app::AppState;

/// No inline script or style, nothing from elsewhere, no framing, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// One embedded file: name under `/console/`, media type, bytes.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        mime: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    Asset {
        name: "console.css",
        mime: "text/css; charset=utf-8",
        body: include_str!("../../console/console.css"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../console/app.js"),
    },
    Asset {
        name: "api.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../console/api.js"),
    },
    Asset {
        name: "timeline.js",
        mime: "text/javascript; charset=utf-8",
        body: include_str!("../../console/timeline.js"),
    },
    Asset {
        name: "favicon.svg",
        mime: "image/svg+xml",
        body: include_str!("../../console/favicon.svg"),
    },
];

/// A strong validator: the first 16 bytes of the file's SHA-256, quoted.
fn etag(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    format!("\"{}\"", crate::pubkey::hex(d.get(..16).unwrap_or(&d)))
}

fn serve(asset: &Asset, req: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let mut res = if req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.mime)], asset.body).into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The files are not content-addressed, so a browser must revalidate (cheap: 304 by
    // ETag) to pick up a new binary's console at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// `GET /console/`: the single page.
async fn index(req: HeaderMap) -> Response {
    match ASSETS.first() {
        Some(a) => serve(a, &req),
        None => ApiError::NotFound(Resource::Route).into_response(),
    }
}

/// `GET /console/{file}`: one embedded asset, or 404.
async fn asset(Path(name): Path<String>, req: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &req),
        None => ApiError::NotFound(Resource::Route).into_response(),
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/{file}", get(asset))
}
