//! JWTPlus's error bodies: its own failures (authentication, validation, not found) with
//! their exact shapes, and the [`Dialect`] for the errors of the shared code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiError;
use crate::api::error::{Dialect, PeerHeaders};

/// One field's failure in a JWTPlus error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JpFieldError {
    /// The JSON name of the field (empty for a body-level failure).
    error_field: String,
    /// JWTPlus's validation sentence.
    error_message: String,
}

/// What `errors` holds: a sentence, one field error, or a list of them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JpErrors {
    /// Authentication, empty body, bad id, not found.
    Text(String),
    /// Malformed JSON or a wrong type.
    Field(JpFieldError),
    /// Validation failures, in the order of the fields.
    Fields(Vec<JpFieldError>),
}

/// A JWTPlus error body: `{"errors": ...}`, or `{"message": ...}` for a refused refresh
/// (404) and a server failure (5xx, `"error"`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JpErrorBody {
    /// `{"errors": ...}`.
    Errors {
        /// The failure.
        errors: JpErrors,
    },
    /// `{"message": ...}`.
    Message {
        /// `invalid refresh token` or `error`.
        message: String,
    },
}

impl JpErrorBody {
    pub(super) fn text(m: impl Into<String>) -> Self {
        Self::Errors {
            errors: JpErrors::Text(m.into()),
        }
    }

    pub(super) fn message(m: impl Into<String>) -> Self {
        Self::Message { message: m.into() }
    }

    fn field(f: impl Into<String>, m: impl Into<String>) -> JpFieldError {
        JpFieldError {
            error_field: f.into(),
            error_message: m.into(),
        }
    }
}

/// The error responses of every JWTPlus route.
pub(crate) struct JpErrorResponses;

impl utoipa::IntoResponses for JpErrorResponses {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        crate::api::openapi::family_errors(
            "JpErrorBody",
            &[
                (
                    400,
                    "Empty body, bad JSON, wrong type, failed validation or a bad app id",
                ),
                (403, "Missing or wrong root key / access token"),
                (404, "No such app or key; a refused refresh token"),
                (409, "Not allowed in the key's state"),
                (413, "Body over 64 KiB"),
                (422, "Not acceptable (e.g. a reserved claim)"),
                (500, "Store failure: `{\"message\": \"error\"}`"),
                (503, "HSM unavailable: `{\"message\": \"error\"}`"),
            ],
        )
    }
}

/// JWTPlus failures, each with its exact body.
pub(crate) enum JpError {
    /// 403 `{"errors": "..."}`.
    Auth(&'static str),
    /// 400 `{"errors": "empty request body"}`.
    Empty,
    /// 400 `{"errors": {"error_field": "", "error_message": "..."}}`.
    Syntax(&'static str),
    /// 400 `{"errors": [{"error_field", "error_message"}]}`.
    Invalid(Vec<(String, String)>),
    /// 404 `{"message": "..."}` (renew) or `{"errors": "..."}` (not found).
    NotFound(JpErrorBody),
    /// 400 `{"errors": "invalid app id"}`.
    BadId,
    /// Anything else, through the shared mapping.
    Api(ApiError),
}

impl From<ApiError> for JpError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for JpError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::Auth(m) => (StatusCode::FORBIDDEN, JpErrorBody::text(m)),
            Self::Empty => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::text("empty request body"),
            ),
            Self::BadId => (StatusCode::BAD_REQUEST, JpErrorBody::text("invalid app id")),
            Self::Syntax(m) => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::Errors {
                    errors: JpErrors::Field(JpErrorBody::field("", m)),
                },
            ),
            Self::Invalid(v) => (
                StatusCode::BAD_REQUEST,
                JpErrorBody::Errors {
                    errors: JpErrors::Fields(
                        v.into_iter()
                            .map(|(f, m)| JpErrorBody::field(f, m))
                            .collect(),
                    ),
                },
            ),
            Self::NotFound(b) => (StatusCode::NOT_FOUND, b),
            Self::Api(e) => return e.render::<JwtPlus>(),
        };
        (status, Json(body)).into_response()
    }
}

/// JWTPlus's error dialect, for the errors of the shared code.
struct JwtPlus;

impl Dialect for JwtPlus {
    type Body = JpErrorBody;
    /// JWTPlus answers every authentication failure 403 without a challenge, so no
    /// `WWW-Authenticate`. It has no 429 (a source over its budget of invalid credentials
    /// still gets the 403), but a `Retry-After` on a refusal that has one is kept: the body
    /// cannot say when to retry.
    const HEADERS: PeerHeaders = PeerHeaders {
        retry_after: true,
        www_authenticate: false,
    };
    fn body(e: &ApiError) -> JpErrorBody {
        match e.status_code() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                JpErrorBody::text(e.public_message())
            }
            s if s.is_server_error() => JpErrorBody::message("error"),
            StatusCode::NOT_FOUND => JpErrorBody::text(e.to_string()),
            _ => JpErrorBody::Errors {
                errors: JpErrors::Fields(vec![JpErrorBody::field("", e.public_message())]),
            },
        }
    }
}
