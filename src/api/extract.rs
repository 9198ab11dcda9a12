//! Extractors: strict JSON bodies and the presented credential.

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON body, with every rejection turned into our error JSON: 400 for malformed JSON,
/// 422 for wrong types or unknown fields, 413 over the size limit, 415 without
/// `Content-Type: application/json`.
#[derive(Debug)]
pub(super) struct ApiJson<T>(pub T);

pub(crate) fn json_rejection(r: &JsonRejection) -> ApiError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(super::BODY_LIMIT),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        _ => match r {
            JsonRejection::JsonDataError(e) => {
                ApiError::unprocessable("invalid_field", clean(&e.body_text()))
            }
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::bad_request("invalid_json", "the body is not valid JSON")
            }
            _ => ApiError::bad_request("invalid_body", "the request body could not be read"),
        },
    }
}

/// serde's message without the Rust type names it sometimes carries.
fn clean(msg: &str) -> String {
    let m = msg
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(msg);
    m.chars().take(300).collect()
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(r) => Err(json_rejection(&r)),
        }
    }
}

/// A query string, its rejection turned into our error JSON (400 `invalid_query`) instead of
/// axum's plain-text one.
#[derive(Debug)]
pub(super) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::bad_request(
                "invalid_query",
                clean_query(&r.body_text()),
            )),
        }
    }
}

/// serde's query message without axum's prefix.
fn clean_query(msg: &str) -> String {
    let m = msg
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(msg);
    m.chars().take(300).collect()
}

/// A body that may be JSON or `application/x-www-form-urlencoded` (RFC 7662/7009).
#[derive(Debug)]
pub(super) struct JsonOrForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            match axum::Form::<T>::from_request(req, state).await {
                Ok(axum::Form(v)) => Ok(Self(v)),
                Err(FormRejection::FailedToDeserializeFormBody(e)) => Err(ApiError::unprocessable(
                    "invalid_field",
                    clean(&e.body_text()),
                )),
                Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    Err(ApiError::PayloadTooLarge(super::BODY_LIMIT))
                }
                Err(_) => Err(ApiError::bad_request(
                    "invalid_body",
                    "the form body could not be read",
                )),
            }
        } else {
            ApiJson::<T>::from_request(req, state)
                .await
                .map(|ApiJson(v)| Self(v))
        }
    }
}

/// The request's body and query string, read only when the handler asks for them: after
/// it has checked the credential, so that a request without a valid one is answered 401
/// or 403 (RFC 9110), never with a complaint about its body or query. The body limit
/// still applies (it travels with the request).
#[derive(Debug)]
pub(super) struct Later(Request);

impl<S: Send + Sync> FromRequest<S> for Later {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(req))
    }
}

impl Later {
    /// The body as [`ApiJson`].
    pub(super) async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        ApiJson::<T>::from_request(self.0, &())
            .await
            .map(|ApiJson(v)| v)
    }

    /// The body as [`JsonOrForm`].
    pub(super) async fn json_or_form<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        JsonOrForm::<T>::from_request(self.0, &())
            .await
            .map(|JsonOrForm(v)| v)
    }

    /// The query string as [`ApiQuery`].
    pub(super) async fn query<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let (mut parts, _) = self.0.into_parts();
        ApiQuery::<T>::from_request_parts(&mut parts, &())
            .await
            .map(|ApiQuery(v)| v)
    }
}

/// The credential in the `Authorization` header (raw or `Bearer`), if any.
#[derive(Debug, Clone)]
pub(super) struct Credential(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| crate::auth::credential(v).to_owned())
                .filter(|v| !v.is_empty()),
        ))
    }
}
