"""Schemathesis hooks for scripts/schemathesis: send each operation the credential its
family expects and aim it at a real app, so the run exercises the service instead of
collecting 401s (which would also trip the per-address auth-failure limit).

Environment (set by scripts/schemathesis): ST_ROOT_KEY, ST_APP_ID, ST_APP_TOKEN.
Runs with one worker: the credentials the service rotates (root key, access token) are
picked up from the responses that rotate them.
"""

import os
import sys

import schemathesis

DEBUG = os.environ.get("ST_DEBUG") == "1"

STATE = {
    "root": os.environ["ST_ROOT_KEY"],
    "token": os.environ["ST_APP_TOKEN"],
    "app": os.environ["ST_APP_ID"],
}

# Operations that delete an app never get the run's app (Schemathesis reuses ids it saw in
# responses, so it is swapped for one that does not exist): they answer 404 or delete an
# app the run itself created, and the run keeps its app.
DESTRUCTIVE = {("DELETE", "/apps/{id}"), ("DELETE", "/root/{app_id}")}
ABSENT_APP = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

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
    if path.startswith(("/apps", "/audit", "/root-key", "/connections", "/api/v2/connections")):
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
    if case.path_parameters:
        params = dict(case.path_parameters)
        for name in ("id", "app_id"):
            if name not in params:
                continue
            if (method, path) not in DESTRUCTIVE:
                params[name] = STATE["app"]
            elif params[name] == STATE["app"]:
                params[name] = ABSENT_APP
        case.path_parameters = params


@schemathesis.hook
def after_call(context, case, response):
    path = case.operation.path
    if DEBUG:
        print(
            f"[hooks] {case.operation.method.upper()} {path} {case.path_parameters} -> "
            f"{response.status_code} {response.text[:120]}",
            file=sys.stderr,
        )
    if response.status_code != 200:
        return
    try:
        body = response.json()
    except ValueError:
        return
    if path == "/root/rotate":
        STATE["root"] = body["new-key"]
    elif path == "/root-key/rotate":
        STATE["root"] = body["root_key"]
    elif path == "/apps/{id}/access-token" and body.get("app_id") == STATE["app"]:
        STATE["token"] = body["access_token"]
    elif path == "/root/{app_id}/rotate/key" and body.get("app_id") == STATE["app"]:
        STATE["token"] = body["app_key"]
    elif path.endswith("/token/regenerate"):
        STATE["token"] = body["token"]
