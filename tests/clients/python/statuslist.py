"""Verify hsm-rotator's Token Status List tokens with PyJWT, the way a Python verifier
that never calls the service would: fetch the list a token names, check its signature
against the app's JWKS (``PyJWKClient`` on the ``jwks_uri`` of the discovery document of
the list's ``iss``), its ``typ`` and ``sub``, inflate ``lst`` (zlib) and read the bit.

Driven by tests/it/statuslist.rs. Request (stdin)::

    {"cases": [{"name": "...", "token": "<a token with a status claim>"}]}

Answer (stdout)::

    {"libraries": {"pyjwt": "2.x"},
     "results": [{"name": "...", "verified": true, "status": 0 | 1, "error": null}]}
"""

import base64
import json
import sys
import urllib.request
import zlib
from importlib.metadata import version

import jwt

TIMEOUT_S = 10


def fetch(url, accept):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as res:
        return res.read().decode()


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def read_list(uri):
    token = fetch(uri, "application/statuslist+jwt")
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "statuslist+jwt":
        raise ValueError(f"typ {header.get('typ')!r}")
    iss = jwt.decode(token, options={"verify_signature": False})["iss"]
    disc = json.loads(fetch(iss + "/.well-known/openid-configuration", "application/json"))
    key = jwt.PyJWKClient(disc["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key=key,
        algorithms=[header["alg"]],
        options={"require": ["sub", "iat", "exp"], "verify_aud": False},
    )
    if claims["sub"] != uri:
        raise ValueError(f"sub {claims['sub']!r} is not {uri!r}")
    sl = claims["status_list"]
    if sl["bits"] != 1:
        raise ValueError(f"bits {sl['bits']}")
    return zlib.decompress(b64url(sl["lst"]))


def main():
    request = json.load(sys.stdin)
    lists = {}
    results = []
    for case in request["cases"]:
        ref = jwt.decode(case["token"], options={"verify_signature": False})
        sl = ref["status"]["status_list"]
        out = {"name": case["name"], "verified": False, "status": None, "error": None}
        try:
            if sl["uri"] not in lists:
                lists[sl["uri"]] = read_list(sl["uri"])
            data = lists[sl["uri"]]
            out["verified"] = True
            out["status"] = (data[sl["idx"] // 8] >> (sl["idx"] % 8)) & 1
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            out["error"] = f"{type(exc).__name__}: {exc}"
        results.append(out)
    json.dump({"libraries": {"pyjwt": version("PyJWT")}, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
