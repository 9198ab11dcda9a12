//! JWTPlus: `/root/*` with the root key and `/app/{app_id}/*` with the app's access token,
//! both sent as the raw `Authorization` header (`Bearer ` also accepted). Field names,
//! validation messages and status codes follow `peer-apis.md` Part A; its BUGs are not
//! copied (existence is checked, key_type must match algo, reserved claims cannot be
//! overridden, a refresh that cannot be honoured is an error, not an empty 200).
//!
//! [`errors`] holds the error bodies, [`guards`] who may call, [`validation`] the body
//! checks, [`wire`] the answer shapes; [`root`] and [`app`] the routes of each credential.

mod app;
mod errors;
mod guards;
mod root;
mod validation;
mod wire;

use axum::Json;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;

pub(crate) use errors::JpErrorBody;

use crate::api::wire::Status;
use crate::app::AppState;

/// What every JWTPlus handler answers.
type JpResult = Result<Response, errors::JpError>;

/// `{"status": "ok"}`.
fn ok_status() -> Response {
    Json(Status::ok()).into_response()
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(app::router())
        .merge(root::router())
}
