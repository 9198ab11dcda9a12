// The console's only way to the service: the public HTTP API, with the root key taken
// from this tab's session storage (never a cookie, never the URL).

const KEY = 'hsm-rotator.root-key';

/** The root key of this tab's session, or null. */
export function rootKey() {
  return sessionStorage.getItem(KEY);
}

/** Keep the root key for this tab only. */
export function setRootKey(k) {
  sessionStorage.setItem(KEY, k);
}

/** Forget the root key. */
export function clearRootKey() {
  sessionStorage.removeItem(KEY);
}

/** An API failure: HTTP status plus the service's stable error code and sentence (the
 * native error shape `{"error", "message"}`: the console calls only native routes). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Call the API. `auth` false sends no credential (health probes).
 * Resolves with the parsed JSON body (or null), rejects with ApiError.
 */
export async function api(method, path, body, { auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (auth) {
    const k = rootKey();
    if (!k) throw new ApiError(401, 'signed_out', 'Sign in first.');
    headers.Authorization = `Bearer ${k}`;
  }
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The service did not answer.');
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok && !(res.status === 503 && path === '/readyz')) {
    const msg = (json && (json.message || json.error)) || `HTTP ${res.status}`;
    throw new ApiError(res.status, (json && json.error) || 'http', String(msg));
  }
  return json;
}
