// Read hsm-rotator's Token Status Lists with an implementation we did not write:
// `@sd-jwt/jwt-status-list` (getStatusListFromJWT on the referenced token,
// getListFromStatusListJWT on the list token), and `jose` to verify the list token's
// signature with the app's JWKS (named by the discovery document of the list's `iss`).
//
// Driven by tests/it/statuslist.rs: a JSON request on stdin ({"cases": [{name, token}]}),
// one JSON answer on stdout ({"libraries": {...}, "results": [{name, idx, uri, status,
// typ, sub, verified}]}). Every process starts with empty caches.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { getListFromStatusListJWT, getStatusListFromJWT } from '@sd-jwt/jwt-status-list';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const TIMEOUT_MS = 10_000;

async function fetchOk(url, accept) {
  const res = await fetch(url, { headers: { accept }, signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res;
}

async function main() {
  const request = JSON.parse(readFileSync(0, 'utf8'));
  const lists = new Map();
  const results = [];
  for (const c of request.cases) {
    const { idx, uri } = getStatusListFromJWT(c.token);
    if (!lists.has(uri)) {
      const res = await fetchOk(uri, 'application/statuslist+jwt');
      const contentType = res.headers.get('content-type');
      const jwt = await res.text();
      const header = decodeProtectedHeader(jwt);
      const iss = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url')).iss;
      const disc = await (await fetchOk(`${iss}/.well-known/openid-configuration`, 'application/json')).json();
      const jwks = createRemoteJWKSet(new URL(disc.jwks_uri), { timeoutDuration: TIMEOUT_MS });
      let verified = false;
      let payload;
      try {
        ({ payload } = await jwtVerify(jwt, jwks, { typ: 'statuslist+jwt', subject: uri }));
        verified = true;
      } catch (err) {
        payload = { error: `${err.code ?? err.name}: ${err.message}` };
      }
      lists.set(uri, { list: getListFromStatusListJWT(jwt), header, payload, verified, contentType });
    }
    const l = lists.get(uri);
    results.push({
      name: c.name,
      idx,
      uri,
      status: l.list.getStatus(idx),
      typ: l.header.typ,
      content_type: l.contentType,
      sub: l.payload.sub ?? null,
      ttl: l.payload.ttl ?? null,
      verified: l.verified,
    });
  }
  const require = createRequire(import.meta.url);
  const libraries = {
    // Its `exports` hide package.json: read the file.
    'jwt-status-list': JSON.parse(
      readFileSync(
        fileURLToPath(new URL('./node_modules/@sd-jwt/jwt-status-list/package.json', import.meta.url)),
        'utf8',
      ),
    ).version,
    jose: require('jose/package.json').version,
  };
  process.stdout.write(JSON.stringify({ libraries, results }));
}

main().catch((err) => {
  process.stderr.write(`statuslist.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});
