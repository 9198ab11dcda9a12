// End-to-end test of the operator console in headless Chromium (Debian's `chromium`
// driven by playwright-core). Starts the real binary (CONSOLE_BIN) on the SoftHSM2 token
// and store named by the HSM_ROTATOR_* environment that scripts/console-test prepares,
// then: sign in, create an app, rotate, see the timeline change, revoke a key after
// typing the confirmation, see the audit entry, replace the access token, run an
// emergency rotation, sign out (only native routes called). Saves screenshots of the app
// list and the timeline to CONSOLE_SHOTS (docs/), and phone-width ones to CONSOLE_WORK.

import { execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BIN = process.env.CONSOLE_BIN;
const SHOTS = process.env.CONSOLE_SHOTS || 'docs';
const WORK = process.env.CONSOLE_WORK || '/tmp';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
assert.ok(BIN, 'CONSOLE_BIN must name the hsm-rotator binary');

const started = Date.now();
const step = (s) => console.log(`console-e2e: [${((Date.now() - started) / 1000).toFixed(1)} s] ${s}`);

/** `hsm-rotator init --json`: make the store, get the root key (shown once; `serve` never prints it). */
function initStore() {
  const out = execFileSync(BIN, ['init', '--json'], { env: process.env });
  return JSON.parse(out.toString()).root_key;
}

/** Start the server; resolve with its base URL, root key and the child. */
function startServer() {
  const rootKey = initStore();
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 60 s:\n${stderr}`)), 60000);
    child.on('exit', (code) => reject(new Error(`server exited (${code}):\n${stderr}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('listening on ')) {
        clearTimeout(timer);
        resolve({ base: line.slice('listening on '.length).trim(), rootKey, child, stderr: () => stderr });
      }
    });
  });
}

async function call(base, method, path, cred, body) {
  const res = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${cred}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  return { status: res.status, json, headers: res.headers };
}

const server = await startServer();
const { base, rootKey } = server;
assert.match(rootKey, /^rk_/, 'init shows the root key');
step(`server up at ${base}`);

let browser;
try {
  // The console's own responses: strict CSP, no inline script, sensible caching.
  const page0 = await fetch(`${base}/console/`);
  assert.equal(page0.status, 200);
  const csp = page0.headers.get('content-security-policy') || '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(page0.headers.get('cache-control'), 'no-cache');
  const etag = page0.headers.get('etag');
  const again = await fetch(`${base}/console/`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304, 'an unchanged asset revalidates with 304');
  const html = await page0.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
  assert.doesNotMatch(html, /https?:\/\//, 'nothing fetched from elsewhere');

  // Two apps made through the API, so the list has company.
  for (const [name, alg, period] of [['Billing', 'RS256', 2592000], ['Mobile gateway', 'EdDSA', 604800]]) {
    const r = await call(base, 'POST', '/apps', rootKey, { name, signing_alg: alg, rotation_period: period });
    assert.equal(r.status, 201);
  }

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  const requested = [];
  page.on('request', (r) => requested.push(r.url()));

  // Sign in (a wrong key first).
  await page.goto(`${base}/console`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.screenshot({ path: `${WORK}/desk-signin.png` });
  await page.getByLabel('Root key').fill('rk_not-the-key');
  await page.getByLabel('Root key').press('Enter');
  await page.getByText('That is not the root key.').waitFor();
  problems.length = 0; // Chromium logs the refused attempt's 403; nothing else may fail.
  await page.getByLabel('Root key').fill(rootKey);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Apps' }).waitFor();
  assert.equal(await page.evaluate(() => document.cookie), '', 'no cookie');
  assert.ok(!page.url().includes(rootKey), 'the root key is not in the URL');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('hsm-rotator.root-key')), rootKey);
  await page.locator('#health .pill', { hasText: 'HSM' }).waitFor();
  step('signed in');

  // Create an app from the console; the access token is shown once.
  await page.getByRole('button', { name: 'New app' }).click();
  await page.getByLabel('Name').fill('Checkout');
  await page.getByLabel('Signing algorithm').selectOption('ES256');
  await page.getByLabel('Rotation period').selectOption('3600');
  await page.getByLabel('Token lifetime (seconds)').fill('300');
  await page.getByRole('button', { name: 'Create' }).click();
  const secret = page.locator('#secret-value');
  await secret.waitFor();
  const accessToken = await secret.inputValue();
  await page.screenshot({ path: `${WORK}/desk-secret.png` });
  assert.match(accessToken, /^pk_/);
  await page.getByRole('button', { name: 'I have stored it' }).click();
  const row = page.locator('.apps-table tbody tr', { hasText: 'Checkout' });
  await row.waitFor();
  step('app created');

  // Some live tokens for the blast radius: 3 tokens, 2 subjects (with status lists on, so
  // the app view shows its list).
  const appId = (await row.locator('.mono').first().textContent()).trim();
  assert.equal((await call(base, 'PATCH', `/apps/${appId}`, rootKey, { status_list: true })).status, 200);
  for (const sub of ['alice', 'bob', 'alice']) {
    const r = await call(base, 'POST', `/apps/${appId}/tokens`, accessToken, { claims: { sub } });
    assert.equal(r.status, 201);
  }
  await page.reload();
  await page.getByRole('heading', { name: 'Apps' }).waitFor();
  await page.locator('.apps-table tbody tr', { hasText: 'Checkout' }).locator('td[data-label="Live tokens"]', { hasText: '3' }).waitFor();
  await page.screenshot({ path: `${SHOTS}/console-apps.png` });
  step('app list screenshot saved');

  // The timeline: two bars (current, next), then three after a rotation.
  await page.getByRole('link', { name: 'Checkout' }).click();
  await page.getByRole('heading', { name: 'Checkout' }).waitFor();
  await page.locator('#app-facts .status-lists', { hasText: /^1 list · [0-9,]+ entries · / }).waitFor();
  const bars = page.locator('#timeline svg g.row');
  await bars.first().waitFor();
  assert.equal(await bars.count(), 2);
  const statesBefore = await bars.evaluateAll((gs) => gs.map((g) => g.getAttribute('class')));
  assert.deepEqual(statesBefore, ['row st-current', 'row st-next']);
  const [oldCurrent, oldNext] = await bars.evaluateAll((gs) => gs.map((g) => g.dataset.kid));

  await page.getByRole('button', { name: 'Rotate' }).click();
  await page.locator('#toast', { hasText: 'Rotated' }).waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#timeline svg g.row').length === 3);
  const after = await bars.evaluateAll((gs) => gs.map((g) => [g.dataset.kid, g.getAttribute('class')]));
  assert.deepEqual(after.slice(0, 2), [[oldCurrent, 'row st-previous'], [oldNext, 'row st-current']]);
  assert.equal(after[2][1], 'row st-next');
  assert.ok(await page.locator('#timeline .window').count() >= 1, 'the verification window is marked');
  assert.equal(await page.locator('#timeline .rotation').count(), 1, 'the next rotation is marked');
  step('rotated; the timeline changed');

  // Keyboard: focus a bar, its tooltip names kid, algorithm and fingerprint.
  await bars.nth(1).focus();
  const tip = page.locator('#tip');
  await tip.waitFor();
  const tipText = await tip.textContent();
  assert.ok(tipText.includes(oldNext) && tipText.includes('ES256') && /[0-9A-F]{2}(:[0-9A-F]{2}){19}/.test(tipText), tipText);
  await page.screenshot({ path: `${SHOTS}/console-timeline.png` });
  await page.locator('#span').selectOption('3600');
  await page.waitForFunction(() => document.querySelectorAll('#timeline svg g.row').length === 3);
  await page.locator('#span').selectOption('fit');
  await page.locator('#main').focus();
  step('timeline screenshot saved');

  // Revoke the current key (it signed the 3 tokens): blast radius, typed confirmation.
  await page.getByRole('button', { name: `Revoke key ${oldCurrent}` }).click();
  const dialog = page.locator('#confirm');
  await dialog.waitFor();
  await dialog.getByText('3 live tokens').waitFor();
  await dialog.getByText('2 subjects').waitFor();
  const ok = dialog.getByRole('button', { name: 'Revoke key' });
  assert.ok(await ok.isDisabled(), 'disabled until the name is typed');
  await dialog.getByLabel(/Type the app's name/).fill('checkout');
  assert.ok(await ok.isDisabled(), 'the name must match exactly');
  await dialog.getByLabel(/Type the app's name/).fill('Checkout');
  await ok.click();
  await page.locator('#toast', { hasText: 'revoked' }).waitFor();
  await page.waitForFunction((kid) => document.querySelector(`#timeline g.row[data-kid="${kid}"]`)?.classList.contains('st-revoked'), oldCurrent);
  assert.equal(await page.locator('#timeline .end-revoked').count(), 1);
  await page.locator('#app-audit li', { hasText: 'key.revoke' }).waitFor();
  const keys = await call(base, 'GET', `/apps/${appId}/keys`, rootKey);
  assert.equal(keys.json.keys.find((k) => k.kid === oldCurrent).state, 'revoked');
  step('key revoked after the typed confirmation');

  // The audit view: filter by action, the entry is there, the chain verifies.
  await page.getByRole('link', { name: 'Audit' }).click();
  await page.getByRole('heading', { name: 'Audit log' }).waitFor();
  await page.locator('#chain.ok', { hasText: 'Chain intact' }).waitFor();
  await page.getByLabel('App', { exact: true }).selectOption({ label: 'Checkout' });
  await page.getByLabel('Action', { exact: true }).selectOption('key.revoke');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#audit-list li')];
    return items.length > 0 && items.every((li) => li.querySelector('.action')?.textContent === 'key.revoke');
  });
  assert.equal(await page.locator('#audit-list li').count(), 1);
  const rec = page.locator('#audit-list li', { hasText: oldCurrent });
  await rec.waitFor();
  assert.ok((await rec.textContent()).includes('root'));
  await page.screenshot({ path: `${WORK}/desk-audit.png` });
  step('audit entry seen');

  // Phone width, for a look (not committed).
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${WORK}/phone-audit.png`, fullPage: true });
  await page.goto(`${base}/console/#/apps`);
  await page.locator('.apps-table').waitFor();
  await page.screenshot({ path: `${WORK}/phone-apps.png`, fullPage: true });
  await page.goto(`${base}/console/#/apps/${appId}`);
  await page.locator('#timeline svg g.row').first().waitFor();
  await page.screenshot({ path: `${WORK}/phone-timeline.png`, fullPage: true });
  // Emergency rotation shows the app's whole blast radius; Escape cancels, nothing changes.
  const keysBefore = (await call(base, 'GET', `/apps/${appId}/keys`, rootKey)).json.keys;
  await page.getByRole('button', { name: 'Emergency rotation' }).click();
  await dialog.getByText(/live token/).waitFor();
  await page.screenshot({ path: `${WORK}/phone-confirm.png` });
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  const keysAfter = (await call(base, 'GET', `/apps/${appId}/keys`, rootKey)).json.keys;
  assert.deepEqual(keysAfter, keysBefore, 'a cancelled confirmation changes nothing');
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: `${WORK}/desk-app.png`, fullPage: true });

  // A new access token, shown once; the old one stops working at once.
  await page.getByRole('button', { name: 'New access token' }).click();
  await dialog.getByRole('button', { name: 'Issue a new token' }).click();
  await secret.waitFor();
  const newToken = await secret.inputValue();
  assert.match(newToken, /^pk_/);
  assert.notEqual(newToken, accessToken);
  await page.getByRole('button', { name: 'I have stored it' }).click();
  await page.locator('#toast', { hasText: 'Access token replaced' }).waitFor();
  assert.equal((await call(base, 'GET', `/apps/${appId}/keys`, accessToken)).status, 401, 'the old token is dead');
  assert.equal((await call(base, 'GET', `/apps/${appId}/keys`, newToken)).status, 200, 'the new one works');
  step('access token replaced');

  // Emergency rotation, confirmed: every key revoked, fresh current and next.
  await page.getByRole('button', { name: 'Emergency rotation' }).click();
  await dialog.getByLabel(/Type the app's name/).fill('Checkout');
  await dialog.getByRole('button', { name: 'Revoke every key' }).click();
  await page.locator('#toast', { hasText: 'Emergency rotation done' }).waitFor();
  const afterEmergency = (await call(base, 'GET', `/apps/${appId}/keys`, rootKey)).json.keys;
  for (const k of keysBefore.filter((k) => ['current', 'next', 'previous'].includes(k.state))) {
    assert.equal(afterEmergency.find((x) => x.kid === k.kid).state, 'revoked', `${k.kid} revoked`);
  }
  assert.equal(afterEmergency.filter((k) => k.state === 'current').length, 1);
  step('emergency rotation done');

  // Sign out: the key is gone from the tab, the API is no longer called with it.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('hsm-rotator.root-key')), null);
  await page.goto(`${base}/console/#/apps`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${WORK}/phone-signin.png` });
  step('signed out');

  const compat = requested.filter((u) => /\/(root|app)\/|\/api\/|\/connections\//.test(new URL(u).pathname));
  assert.deepEqual(compat, [], 'the console calls only native routes');
  const foreign = requested.filter((u) => !u.startsWith(base));
  assert.deepEqual(foreign, [], 'the console fetches nothing from elsewhere');
  assert.ok(requested.every((u) => !u.includes(rootKey)), 'the root key never appears in a URL');
  assert.deepEqual(problems, [], 'no console errors (CSP violations show here)');
  step('passed');
} finally {
  if (browser) await browser.close();
  server.child.kill('SIGTERM');
}
