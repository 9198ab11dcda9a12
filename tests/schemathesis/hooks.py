"""Schemathesis hooks for scripts/schemathesis: send each operation the credential its
family expects and aim it at a real app, so the run exercises the service instead of
collecting 401s (which would also trip the per-address auth-failure limit).

Environment (set by scripts/schemathesis): ST_ROOT_KEY, ST_APP_ID, ST_APP_TOKEN.
Runs with one worker: the credentials the service rotates (root key, access token) are
picked up from the responses that rotate them.
"""

import os

import schemathesis

STATE = {
    "root": os.environ["ST_ROOT_KEY"],
    "token": os.environ["ST_APP_TOKEN"],
    "app": os.environ["ST_APP_ID"],
}

# Operations that delete the app keep their generated (random) id: they answer 404 and the
# run keeps its app.
DESTRUCTIVE = {("DELETE", "/apps/{id}"), ("DELETE", "/root/{app_id}")}

# Native routes that take only the app's access token.
APP_ONLY = (
    "/apps/{id}/tokens",
    "/apps/{id}/tokens/refresh",
    "/apps/{id}/tokens/introspect",
    "/apps/{id}/tokens/revoke",
    "/apps/{id}/sessions",
)


def credential(path: str) -> str | None:
    """The Authorization header value for an operation, in its family's style."""
    if path.startswith("/root/"):
        return STATE["root"]  # JWTPlus: the raw header
    if path.startswith("/app/"):
        return STATE["token"]
    if path.endswith("/token/regenerate") or path in APP_ONLY:
        return "Bearer " + STATE["token"]
    if path.startswith(("/apps", "/audit", "/connections", "/api/v2/connections")):
        return "Bearer " + STATE["root"]
    return None  # unauthenticated: health, JWKS, discovery, docs


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    method = case.operation.method.upper()
    auth = credential(path)
    case.headers = dict(case.headers or {})
    if auth is not None:
        case.headers["Authorization"] = auth
    if case.path_parameters and (method, path) not in DESTRUCTIVE:
        params = dict(case.path_parameters)
        for name in ("id", "app_id"):
            if name in params:
                params[name] = STATE["app"]
        case.path_parameters = params


@schemathesis.hook
def after_call(context, case, response):
    if response.status_code != 200:
        return
    path = case.operation.path
    try:
        body = response.json()
    except ValueError:
        return
    if path == "/root/rotate":
        STATE["root"] = body["new-key"]
    elif path == "/root/{app_id}/rotate/key" and body.get("app_id") == STATE["app"]:
        STATE["token"] = body["app_key"]
    elif path.endswith("/token/regenerate"):
        STATE["token"] = body["token"]
