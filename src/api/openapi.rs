//! The OpenAPI 3.1 document (`GET /openapi.json`) and its browsable UI (`GET /docs`).
//!
//! The document is built from the handlers themselves: every route is registered through
//! `utoipa_axum`'s `OpenApiRouter` + `routes!`, which adds the handler to the axum router
//! and its `#[utoipa::path]` operation to the document in one step, so the two cannot
//! drift. This module adds what is shared: tags, security schemes and error responses.
//!
//! The UI is Scalar's standalone browser bundle, embedded in the binary and served from
//! `/docs/scalar.js`, so the page loads nothing from another host (this service runs in
//! closed networks); its Content-Security-Policy forbids every other origin.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi};

/// Tag of the native app routes.
pub(crate) const TAG_APPS: &str = "apps";
/// Tag of the native key routes.
pub(crate) const TAG_KEYS: &str = "keys";
/// Tag of the native root-key route.
pub(crate) const TAG_ROOT_KEY: &str = "root-key";
/// Tag of the native token routes.
pub(crate) const TAG_TOKENS: &str = "tokens";
/// Tag of JWKS and discovery.
pub(crate) const TAG_PUBLICATION: &str = "publication";
/// Tag of liveness and readiness.
pub(crate) const TAG_HEALTH: &str = "health";
/// Tag of the audit log.
pub(crate) const TAG_AUDIT: &str = "audit";
/// Tag of the JWTPlus family.
pub(crate) const TAG_JWTPLUS: &str = "jwtplus";
/// Tag of the Auth0 family.
pub(crate) const TAG_AUTH0: &str = "auth0";
/// Tag of the PocketPaw family.
pub(crate) const TAG_POCKETPAW: &str = "pocketpaw";
/// Tag of this document and its UI.
pub(crate) const TAG_META: &str = "meta";

/// The `{id}` path parameter of the native routes.
#[derive(Debug, IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
pub(crate) struct AppId(
    /// App id (a ULID; anything else is 404).
    #[allow(dead_code)]
    String,
);

/// A JWS algorithm the service signs with: the domain enum is its own schema.
pub(crate) use crate::alg::Algorithm as AlgorithmName;

/// The `{app_id}` path parameter of the JWTPlus routes.
#[derive(Debug, IntoParams)]
#[into_params(names("app_id"), parameter_in = Path)]
pub(crate) struct JpAppId(
    /// App id (a ULID).
    #[allow(dead_code)]
    String,
);

/// Error responses in one family's shape: `(status, description)` each with `schema`.
pub(crate) fn family_errors(
    schema: &str,
    statuses: &[(u16, &str)],
) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name(schema))),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Every error a native route may answer, in `{"error", "message"}`.
pub(crate) struct NativeErrors;

impl utoipa::IntoResponses for NativeErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        family_errors(
            "ErrorBody",
            &[
                (400, "Malformed request (bad JSON, bad query, bad form)"),
                (401, "No credential, or one the service does not know"),
                (403, "A credential that may not do this"),
                (404, "No such app or key (also for ids that are not ULIDs)"),
                (
                    409,
                    "Not allowed in the resource's state (e.g. a rotation too soon)",
                ),
                (413, "Body over 64 KiB"),
                (415, "Body not sent as application/json"),
                (
                    422,
                    "Well-formed but not acceptable (unknown field, bad policy)",
                ),
                (
                    429,
                    "Too many invalid credentials from this address, or too many key changes by this app (`Retry-After` says when to retry)",
                ),
                (500, "The store failed (cause in the server log)"),
                (503, "The HSM is unavailable or the request timed out"),
            ],
        )
    }
}

/// Errors of the unauthenticated native routes.
pub(crate) struct PublicErrors;

impl utoipa::IntoResponses for PublicErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        family_errors(
            "ErrorBody",
            &[
                (404, "No such app (also for ids that are not ULIDs)"),
                (500, "The store failed (cause in the server log)"),
                (503, "The HSM is unavailable or the request timed out"),
            ],
        )
    }
}

/// Security schemes: the root key as the raw `Authorization` header or as `Bearer`, and an
/// app's access token as `Bearer`.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "root_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The root key (`rk_...`) as the raw Authorization header (JWTPlus style); after `migrate jwtplus`, also the JWTPlus root key until the root key is rotated",
            ))),
        );
        c.add_security_scheme(
            "app_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "An app's access token (`pk_...`) as the raw Authorization header (JWTPlus style); after `migrate jwtplus`, also the app's JWTPlus app key until the app gets a new access token",
            ))),
        );
        c.add_security_scheme(
            "root_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <root key>`"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "app_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <the app's access token (pk_...)>`; the raw header is accepted too",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's frame; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hsm-rotator",
        description = "JWT signing keys kept in a PKCS#11 HSM: issuance, verification, rotation and \
exact revocation. Native routes answer errors as `{\"error\", \"message\"}`; the compatibility \
families (JWTPlus, Auth0, PocketPaw) speak their peer's dialect, errors included.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(
        super::wire::ErrorBody,
        super::compat::jwtplus::JpErrorBody,
        super::compat::auth0::A0ErrorBody,
        super::compat::pocketpaw::PpErrorBody,
    )),
    tags(
        (name = TAG_APPS, description = "Native: apps and their policy (root key)"),
        (name = TAG_KEYS, description = "Native: keys, rotation and revocation"),
        (name = TAG_ROOT_KEY, description = "Native: rotate the root key (root key)"),
        (name = TAG_TOKENS, description = "Native: issue, refresh, introspect, revoke, sessions (app token)"),
        (name = TAG_PUBLICATION, description = "Native: JWKS and OpenID discovery (no auth)"),
        (name = TAG_HEALTH, description = "Liveness and readiness (no auth)"),
        (name = TAG_AUDIT, description = "The hash-chained audit log (root key)"),
        (name = TAG_JWTPLUS, description = "JWTPlus compatibility: `/root/*` (root key) and `/app/{app_id}/*` (access token), raw Authorization header; errors `{\"errors\": ...}`"),
        (name = TAG_AUTH0, description = "Auth0 connection keys (also under `/api/v2`); errors `{statusCode, error, message, errorCode}`"),
        (name = TAG_POCKETPAW, description = "PocketPaw token regeneration (also under `/api/v1`); errors `{\"detail\"}`"),
        (name = TAG_METRICS, description = "Prometheus metrics"),
        (name = TAG_META, description = "This document and its UI"),
    )
)]
pub(crate) struct ApiDoc;

/// Tag of `/metrics`.
pub(crate) const TAG_METRICS: &str = "metrics";

/// `/metrics` in the document. Its handler lives with the metrics layer; the operation is
/// added here so the document lists it as `text/plain`.
fn add_metrics(doc: &mut Document) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    let op = OperationBuilder::new()
        .tag(TAG_METRICS)
        .operation_id(Some("metrics"))
        .summary(Some("Prometheus metrics"))
        .description(Some(
            "Prometheus text exposition format. No authentication: bind the service to a private address in production.",
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Metrics")
                .content(
                    "text/plain; version=0.0.4",
                    Content::new(Some(RefOr::T(utoipa::openapi::schema::Schema::Object(
                        utoipa::openapi::schema::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .build(),
                    )))),
                )
                .build(),
        )
        .build();
    doc.paths
        .paths
        .insert("/metrics".into(), PathItem::new(HttpMethod::Get, op));
}

/// The finished document from the routers' paths.
pub(crate) fn finish(mut doc: Document, with_metrics: bool) -> Document {
    let frame = ApiDoc::openapi();
    doc.info = frame.info.clone();
    doc.merge(frame);
    if with_metrics {
        add_metrics(&mut doc);
    }
    add_meta(&mut doc);
    doc
}

/// `/openapi.json` and `/docs` themselves.
fn add_meta(doc: &mut Document) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    let item = |id: &str, summary: &str, ct: &str| {
        let op = OperationBuilder::new()
            .tag(TAG_META)
            .operation_id(Some(id))
            .summary(Some(summary))
            .response(
                "200",
                ResponseBuilder::new()
                    .description(summary)
                    .content(
                        ct,
                        Content::new(None::<RefOr<utoipa::openapi::schema::Schema>>),
                    )
                    .build(),
            )
            .build();
        PathItem::new(HttpMethod::Get, op)
    };
    doc.paths.paths.insert(
        "/openapi.json".into(),
        item("openapi", "This OpenAPI 3.1 document", "application/json"),
    );
    doc.paths.paths.insert(
        "/docs".into(),
        item(
            "docs",
            "Browsable API reference (works offline)",
            "text/html",
        ),
    );
}

/// Scalar's standalone browser bundle (`@scalar/api-reference`, see
/// `src/api/docs/README.md` for its version and licence).
static SCALAR_JS: &[u8] = include_bytes!("docs/scalar-standalone.js");

/// The `/docs` page: no inline script, the configuration in data attributes.
const DOCS_HTML: &str = include_str!("docs/index.html");

/// Only this host: scripts, fetches and fonts; inline styles are needed by the UI.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

fn csp() -> (HeaderName, HeaderValue) {
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    )
}

/// The routes serving the document and the UI.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(doc: Document) -> axum::Router<S> {
    // Serialised once; a document that cannot be serialised is a 500 on every fetch.
    let json = serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| e.to_string());
    axum::Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    match json {
                        Ok(body) => (
                            [(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            )],
                            body,
                        )
                            .into_response(),
                        Err(e) => super::ApiError::Internal(e.into()).into_response(),
                    }
                }
            }),
        )
        .route(
            "/docs",
            get(|| async {
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/html; charset=utf-8"),
                        ),
                        csp(),
                    ],
                    DOCS_HTML,
                )
                    .into_response()
            }),
        )
        .route(
            "/docs/scalar.js",
            get(|| async {
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/javascript; charset=utf-8"),
                        ),
                        (
                            header::CACHE_CONTROL,
                            HeaderValue::from_static("public, max-age=86400"),
                        ),
                        csp(),
                    ],
                    SCALAR_JS,
                )
                    .into_response()
            }),
        )
}
