//! Token Status Lists (draft-ietf-oauth-status-list), public like the JWKS:
//! `/apps/{id}/statuslists/{n}` and the aggregation `/apps/{id}/statuslists`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::existing_app;
use super::openapi::{AppId, PublicErrors, TAG_PUBLICATION};
use super::{ApiError, Resource};
use crate::app::AppState;
use crate::statuslist::{ListError, MEDIA_JSON, MEDIA_JWT};

/// The `{n}` path parameter: a list's number.
#[derive(Debug, IntoParams)]
#[into_params(names("n"), parameter_in = Path)]
pub(crate) struct ListNumber(
    /// The list's number, as in the `uri` of a token's `status` claim.
    #[allow(dead_code)]
    i64,
);

/// The Status List Aggregation document: every list of the app.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Aggregation {
    /// The lists' URIs.
    status_lists: Vec<String>,
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Store(e) => ApiError::Store(e),
            ListError::Sign(e) => ApiError::from(e),
            ListError::AppGone => ApiError::NotFound(Resource::App),
        }
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(MEDIA_JSON))
            }) && !a.to_ascii_lowercase().contains(MEDIA_JWT)
        })
}

fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag)
        })
}

/// One status list: a status list token (`typ` `statuslist+jwt`, signed by the app's
/// current key, verifiable with its JWKS), or with `Accept: application/statuslist+json`
/// the unsigned `{"bits": 1, "lst": ...}`. Bit `idx` (least significant first, after
/// zlib inflation of `lst`) is 1 when the token with that index is revoked.
/// `Cache-Control: max-age` is the list's `ttl`; `If-None-Match` with its `ETag` is 304.
#[utoipa::path(get, path = "/apps/{id}/statuslists/{n}", tag = TAG_PUBLICATION,
    params(AppId, ListNumber),
    responses(
        (status = 200, description = "Status list token (`application/statuslist+jwt`), or the unsigned list (`application/statuslist+json`)", content_type = "application/statuslist+jwt", body = String),
        (status = 304, description = "Unchanged since the `ETag` given in `If-None-Match`"),
        PublicErrors))]
async fn list(
    State(state): State<AppState>,
    Path((id, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    existing_app(&state, &id).await?;
    let n: i64 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(ApiError::NotFound(Resource::StatusList))?;
    let signed = state
        .statuslists
        .get(state.issuers(), &id, n)
        .await?
        .ok_or(ApiError::NotFound(Resource::StatusList))?;
    let json = wants_json(&headers);
    let etag = if json {
        &signed.json_etag
    } else {
        &signed.etag
    };
    let mut res = if matches_etag(&headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if json {
        let mut r = Json(signed.json()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_JSON));
        r
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_JWT))],
            signed.token.clone(),
        )
            .into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.statuslists.refresh()))
    {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(res)
}

/// The app's Status List Aggregation: the URIs of all its lists (what
/// `status_list_aggregation_endpoint` in its discovery document names).
#[utoipa::path(get, path = "/apps/{id}/statuslists", tag = TAG_PUBLICATION,
    params(AppId),
    responses((status = 200, description = "Every list of the app", body = Aggregation), PublicErrors))]
async fn aggregation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    existing_app(&state, &id).await?;
    let status_lists = state.statuslists.uris(state.issuers(), &id).await?;
    let mut res = Json(Aggregation { status_lists }).into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("public, max-age={}", state.statuslists.refresh()))
    {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(res)
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(aggregation))
}
