"""Verify hsm-rotator tokens the way a Python relying party would.

Driven by tests/it/clients.rs: reads a JSON request on stdin and writes one JSON answer
on stdout. Each case names an app's discovery document, the algorithm the relying party
expects, its audience and a token. Two independent libraries check every case:

* PyJWT: ``PyJWKClient`` on the ``jwks_uri`` of the discovery document, then
  ``jwt.decode`` with the issuer the discovery document states and the audience.
* jwcrypto: a ``JWKSet`` fetched from the same ``jwks_uri``, then ``jwt.JWT`` with
  ``check_claims`` on ``iss``, ``aud`` and ``exp``.

Every process starts with empty caches, so a run is what a fresh verifier sees.

Request::

    {"cases": [{"name": "...", "discovery": "http://.../openid-configuration",
                "alg": "ES256", "aud": "...", "token": "..."}]}

Answer::

    {"libraries": {"pyjwt": "2.x", "jwcrypto": "1.x"},
     "results": [{"name": "...",
                  "pyjwt": {"ok": true, "claims": {...}} | {"ok": false, "kind": "...", "error": "..."},
                  "jwcrypto": {...}}]}

``kind`` sorts failures so the caller can tell a missing key from a bad signature from a
claim mismatch: ``unknown_kid``, ``signature``, ``claims`` or ``other``.
"""

import json
import sys
import urllib.request
from importlib.metadata import version

import jwt
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws
from jwcrypto import jwt as jw_jwt

TIMEOUT_S = 10


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as res:
        return json.load(res)


def failure(kind, exc):
    return {"ok": False, "kind": kind, "error": f"{type(exc).__name__}: {exc}"}


def with_pyjwt(disc, client, case):
    try:
        key = client.get_signing_key_from_jwt(case["token"])
    except jwt.PyJWKClientError as exc:
        kind = "unknown_kid" if "Unable to find a signing key" in str(exc) else "other"
        return failure(kind, exc)
    try:
        claims = jwt.decode(
            case["token"],
            key=key,
            algorithms=[case["alg"]],
            audience=case["aud"],
            issuer=disc["issuer"],
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.InvalidSignatureError as exc:
        return failure("signature", exc)
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError, jwt.MissingRequiredClaimError) as exc:
        return failure("claims", exc)
    except jwt.PyJWTError as exc:
        return failure("other", exc)
    return {"ok": True, "claims": claims}


def with_jwcrypto(disc, keyset, case):
    tok = None
    try:
        # Parse first, then validate, so that the verification log is there to read.
        tok = jw_jwt.JWT(
            algs=[case["alg"]],
            check_claims={"iss": disc["issuer"], "aud": case["aud"], "exp": None, "sub": None},
        )
        tok.deserialize(case["token"])
        tok.validate(keyset)
        claims = json.loads(tok.claims)
    except jw_jwt.JWTMissingKey as exc:
        # With a JWKSet jwcrypto raises "missing key" both when no key has the token's kid
        # and when the key with that kid rejects the signature; its log tells them apart.
        log = " ".join(str(line) for line in (tok.deserializelog if tok else []) or [])
        if "not in key set" in log:
            return failure("unknown_kid", exc)
        if "No working key found" in log:
            return failure("signature", exc)
        return failure("other", exc)
    except jw_jws.InvalidJWSSignature as exc:
        return failure("signature", exc)
    except (jw_jwt.JWTInvalidClaimValue, jw_jwt.JWTMissingClaim) as exc:
        return failure("claims", exc)
    except Exception as exc:  # noqa: BLE001 - any other refusal is reported, not raised
        return failure("other", exc)
    return {"ok": True, "claims": claims}


def main():
    request = json.load(sys.stdin)
    # One relying party per app (discovery URL) for the whole run, as a real one would be.
    parties = {}
    results = []
    for case in request["cases"]:
        url = case["discovery"]
        if url not in parties:
            disc = fetch_json(url)
            parties[url] = (
                disc,
                jwt.PyJWKClient(disc["jwks_uri"], timeout=TIMEOUT_S),
                jw_jwk.JWKSet.from_json(json.dumps(fetch_json(disc["jwks_uri"]))),
            )
        disc, client, keyset = parties[url]
        result = {"name": case["name"]}
        if case["alg"] not in disc.get("id_token_signing_alg_values_supported", []):
            refused = {"ok": False, "kind": "other", "error": f"{case['alg']} not advertised"}
            result["pyjwt"] = result["jwcrypto"] = refused
        else:
            result["pyjwt"] = with_pyjwt(disc, client, case)
            result["jwcrypto"] = with_jwcrypto(disc, keyset, case)
        results.append(result)
    json.dump(
        {
            "libraries": {"pyjwt": version("PyJWT"), "jwcrypto": version("jwcrypto")},
            "results": results,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
