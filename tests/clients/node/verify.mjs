// Verify hsm-rotator tokens the way a Node relying party would, with `jose`.
//
// Driven by tests/it/clients.rs; same protocol as tests/clients/python/verify.py:
// a JSON request on stdin ({"cases": [{name, discovery, alg, aud, token}]}), one JSON
// answer on stdout ({"libraries": {"jose": "6.x"}, "results": [{name, jose: {ok, ...}}]}).
// For each app: the discovery document gives `issuer` and `jwks_uri`; `createRemoteJWKSet`
// on that `jwks_uri` and `jwtVerify` with the issuer, the audience and the one algorithm
// the relying party expects. Every process starts with empty caches.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const TIMEOUT_MS = 10_000;

function kindOf(err) {
  switch (err?.code) {
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return 'unknown_kid';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'signature';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return 'claims';
    default:
      return 'other';
  }
}

async function fetchJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.json();
}

async function main() {
  const request = JSON.parse(readFileSync(0, 'utf8'));
  const parties = new Map();
  const results = [];
  for (const c of request.cases) {
    if (!parties.has(c.discovery)) {
      const disc = await fetchJson(c.discovery);
      const jwks = createRemoteJWKSet(new URL(disc.jwks_uri), { timeoutDuration: TIMEOUT_MS });
      parties.set(c.discovery, { disc, jwks });
    }
    const { disc, jwks } = parties.get(c.discovery);
    let outcome;
    if (!(disc.id_token_signing_alg_values_supported ?? []).includes(c.alg)) {
      outcome = { ok: false, kind: 'other', error: `${c.alg} not advertised` };
    } else {
      try {
        const { payload } = await jwtVerify(c.token, jwks, {
          issuer: disc.issuer,
          audience: c.aud,
          algorithms: [c.alg],
          requiredClaims: ['exp', 'iat', 'sub'],
        });
        outcome = { ok: true, claims: payload };
      } catch (err) {
        outcome = { ok: false, kind: kindOf(err), error: `${err.code ?? err.name}: ${err.message}` };
      }
    }
    results.push({ name: c.name, jose: outcome });
  }
  const require = createRequire(import.meta.url);
  const { version } = require('jose/package.json');
  process.stdout.write(JSON.stringify({ libraries: { jose: version }, results }));
}

main().catch((err) => {
  process.stderr.write(`verify.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});
