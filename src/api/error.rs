//! The one API error type and its mapping to status, stable code and JSON body.
//!
//! Native routes answer `{"error": "<code>", "message": "<sentence>"}`. On a 5xx the body
//! carries only the code and a generic sentence; the cause goes into the response
//! extensions, where the logging middleware writes it once (see [`log_errors`]).
//!
//! Every response made from an [`ApiError`] goes through [`ApiError::render`]: a
//! [`Dialect`] says which body a family's peer answers and which of our headers it also
//! sends, and the status and the logged cause are the same whatever the dialect.

use std::sync::Arc;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::hsm::HsmError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request cannot be parsed.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// 401: no credential, or one we do not know.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 403: a credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0} not found")]
    NotFound(Resource),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the resource is not in a state that allows this.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// 409 with `Retry-After`: a rotation asked for before the next key may sign.
    #[error("{message}")]
    TooSoon {
        /// Seconds to wait.
        retry_after: u64,
        /// Human sentence.
        message: String,
    },
    /// 413: body over the limit.
    #[error("request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    /// 415.
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but not acceptable.
    #[error("{message}")]
    Unprocessable {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// 429 with `Retry-After`: too many invalid credentials from one source, or too many
    /// key changes by one app.
    #[error("{message}")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after: u64,
        /// Human sentence: which budget ran out.
        message: &'static str,
    },
    /// 503: a dependency cannot serve this now.
    #[error("{message}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// 500: the store failed.
    #[error("store error")]
    Store(#[source] crate::store::StoreError),
    /// 503 (or 500 for a non-availability fault): the HSM failed.
    #[error("HSM error")]
    Hsm(#[source] HsmError),
    /// 500: anything else.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What a 404 did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// An app (also an id that is not a ULID).
    App,
    /// A key of an app.
    Key,
    /// A status list of an app.
    StatusList,
    /// No route has this path.
    Route,
}

impl Resource {
    /// The stable code of its 404.
    pub fn code(self) -> &'static str {
        match self {
            Self::App => "app_not_found",
            Self::Key => "key_not_found",
            Self::StatusList => "status_list_not_found",
            Self::Route => "not_found",
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::App => "app",
            Self::Key => "key",
            Self::StatusList => "status list",
            Self::Route => "route",
        })
    }
}

impl ApiError {
    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 422 with a code.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// 409 with a code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// HTTP status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } | Self::TooSoon { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Hsm(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable, greppable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unavailable { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(what) => what.code(),
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::TooSoon { .. } => "rotation_too_soon",
            Self::Store(_) => "store_error",
            Self::Hsm(HsmError::KeyNotFound(_)) => "hsm_key_missing",
            Self::Hsm(_) => "hsm_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The sentence shown to the client (generic for 5xx).
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(_) => "the key store failed; see the server log".into(),
            Self::Hsm(HsmError::KeyNotFound(_)) => {
                "the signing key is missing from the HSM; the reconciler will replace it".into()
            }
            Self::Hsm(_) => "the HSM is unavailable; retry later".into(),
            Self::Internal(_) => "internal error; see the server log".into(),
            other => other.to_string(),
        }
    }
}

impl From<crate::keys::KeyError> for ApiError {
    fn from(e: crate::keys::KeyError) -> Self {
        use crate::keys::KeyError as K;
        match e {
            K::AppNotFound => Self::NotFound(Resource::App),
            K::KeyNotFound => Self::NotFound(Resource::Key),
            K::InvalidState(m) => Self::conflict("key_not_revocable", m),
            K::Import(e @ crate::keys::import::ImportError::KidInUse(_)) => {
                Self::conflict(e.code(), e.to_string())
            }
            K::Import(e) => Self::unprocessable(e.code(), e.to_string()),
            K::TooSoon { retry_after, .. } => Self::TooSoon {
                retry_after: u64::try_from(retry_after).unwrap_or(1).max(1),
                message: e.to_string(),
            },
            K::Store(e) => Self::Store(e),
            K::Hsm(e) => e.into(),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<crate::jwt::service::TokenError> for ApiError {
    fn from(e: crate::jwt::service::TokenError) -> Self {
        use crate::jwt::service::TokenError as T;
        match e {
            T::ReservedClaim(_) => Self::unprocessable("reserved_claim", e.to_string()),
            T::SubjectNotString => Self::unprocessable("invalid_claim", e.to_string()),
            T::Ttl(_) => Self::unprocessable("invalid_ttl", e.to_string()),
            T::NoCurrentKey => Self::Unavailable {
                code: "no_current_key",
                message: e.to_string(),
            },
            T::CurrentKeyRefused => Self::Unavailable {
                code: "key_hsm_mismatch",
                message: e.to_string(),
            },
            T::InvalidRefresh => Self::bad_request("invalid_grant", e.to_string()),
            T::RefreshReused => Self::bad_request("refresh_token_reused", e.to_string()),
            T::Ledger(m) => Self::Store(crate::store::StoreError::corrupt(format!("ledger: {m}"))),
            T::Store(e) => Self::Store(e),
            T::Hsm(e) => e.into(),
        }
    }
}

impl From<crate::keys::policy::PolicyError> for ApiError {
    fn from(e: crate::keys::policy::PolicyError) -> Self {
        Self::unprocessable("invalid_policy", e.to_string())
    }
}

impl From<crate::alg::UnknownAlgorithm> for ApiError {
    fn from(e: crate::alg::UnknownAlgorithm) -> Self {
        Self::unprocessable("unsupported_algorithm", e.to_string())
    }
}

impl From<crate::keys::policy::NewAppError> for ApiError {
    fn from(e: crate::keys::policy::NewAppError) -> Self {
        use crate::keys::policy::NewAppError as N;
        match e {
            N::Algorithm(e) => e.into(),
            N::Policy(e) => e.into(),
        }
    }
}

impl From<HsmError> for ApiError {
    fn from(e: HsmError) -> Self {
        match e {
            // The request asks for something this token cannot do: the client's to change.
            HsmError::Algorithm(u) => Self::unprocessable("unsupported_algorithm", u.to_string()),
            e => Self::Hsm(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// The cause of a 5xx, carried to the logging middleware.
#[derive(Clone)]
pub(crate) struct ErrorCause(pub(crate) Arc<String>);

/// Which of the headers we send with an error a family's peer sends too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerHeaders {
    /// `Retry-After` on a 429 (and on our 409 for a rotation asked for too soon).
    pub(crate) retry_after: bool,
    /// `WWW-Authenticate: Bearer` on a 401.
    pub(crate) www_authenticate: bool,
}

/// A family's error body: how its peer answers an error the shared code raised.
pub(crate) trait Dialect {
    /// The peer's error body.
    type Body: Serialize;
    /// Which of our error headers the peer sends too: one choice per family, with the reason
    /// next to it.
    const HEADERS: PeerHeaders;
    /// The peer's body for `e` (answered with `e`'s status).
    fn body(e: &ApiError) -> Self::Body;
}

/// Our own routes: `{"error": "<code>", "message": "<sentence>"}`.
pub(crate) struct Native;

impl Dialect for Native {
    type Body = serde_json::Value;
    /// RFC 9110 wants `WWW-Authenticate` on a 401; `Retry-After` tells a client when a
    /// retry may succeed.
    const HEADERS: PeerHeaders = PeerHeaders {
        retry_after: true,
        www_authenticate: true,
    };
    fn body(e: &ApiError) -> Self::Body {
        json!({"error": e.code(), "message": e.public_message()})
    }
}

impl ApiError {
    /// This error as a response in dialect `D`: our status, `D`'s body, the headers `D`
    /// keeps, and for a 5xx the cause for the logging middleware (never in the body).
    pub(crate) fn render<D: Dialect>(self) -> Response {
        let status = self.status_code();
        let mut res = (status, Json(D::body(&self))).into_response();
        if D::HEADERS.www_authenticate && status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if D::HEADERS.retry_after
            && let Self::TooManyRequests { retry_after, .. } | Self::TooSoon { retry_after, .. } =
                &self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status.is_server_error() {
            res.extensions_mut()
                .insert(ErrorCause(Arc::new(error_chain(&self))));
        }
        res
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render::<Native>()
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Middleware: log the cause of every 5xx once.
pub(crate) async fn log_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    if let Some(cause) = res.extensions().get::<ErrorCause>() {
        tracing::error!(%method, %path, status = res.status().as_u16(), cause = %cause.0, "request failed");
    }
    res
}
