// The operator console: sign-in, apps, the key timeline, guarded actions, the audit log
// and a health strip. Plain DOM, no framework; everything goes through api.js.

import { api, ApiError, rootKey, setRootKey, clearRootKey } from './api.js';
import { drawTimeline, shortKid } from './timeline.js';

const $ = (id) => document.getElementById(id);

/** Create an element with attributes and children (text is always set as text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const state = { apps: [], app: null, keys: [], auditBefore: 0, healthTimer: null };

// ---------- formatting ----------

function duration(sec) {
  if (sec === null || sec === undefined) return '—';
  const units = [[86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
  for (const [n, u] of units) if (sec >= n && sec % n === 0) return `${sec / n} ${u}`;
  return `${sec} s`;
}

function when(t) {
  if (!t) return '—';
  const d = new Date(t);
  const diff = (d.getTime() - Date.now()) / 1000;
  const abs = Math.abs(diff);
  let rel;
  if (abs < 60) rel = `${Math.round(abs)} s`;
  else if (abs < 3600) rel = `${Math.round(abs / 60)} min`;
  else if (abs < 172800) rel = `${Math.round(abs / 3600)} h`;
  else rel = `${Math.round(abs / 86400)} d`;
  return diff >= 0 ? `in ${rel}` : `${rel} ago`;
}

function timeEl(t) {
  if (!t) return '—';
  return h('time', { datetime: t, title: new Date(t).toLocaleString() }, when(t));
}

// ---------- feedback ----------

let toastTimer = null;
function toast(msg, kind = 'ok') {
  const t = $('toast');
  t.className = `toast show ${kind}`;
  t.textContent = msg;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = 'toast'; }, 6000);
}

function failed(e) {
  if (e instanceof ApiError && (e.status === 401 || (e.status === 403 && /root key/i.test(e.message)))) {
    signOut('Your session ended (the root key was not accepted); sign in again.');
    return;
  }
  toast(e instanceof ApiError ? e.message : String(e), 'error');
}

// ---------- sign-in ----------

async function signIn(ev) {
  ev.preventDefault();
  const input = $('root-key');
  const key = input.value.trim();
  $('signin-error').textContent = '';
  $('signin-error').className = 'error';
  if (!key) return;
  setRootKey(key);
  try {
    await api('GET', '/status');
  } catch (e) {
    clearRootKey();
    $('signin-error').textContent =
      e instanceof ApiError && (e.status === 401 || e.status === 403)
        ? 'That is not the root key.'
        : (e.message || 'Sign-in failed.');
    input.select();
    return;
  }
  input.value = '';
  if (!location.hash || location.hash === '#/' || location.hash === '#/signin') location.hash = '#/apps';
  route();
}

function signOut(msg) {
  clearRootKey();
  state.apps = [];
  state.app = null;
  state.keys = [];
  clearInterval(state.healthTimer);
  state.healthTimer = null;
  $('apps-list').replaceChildren();
  $('audit-list').replaceChildren();
  clearTimeout(toastTimer);
  $('toast').className = 'toast';
  location.hash = '#/signin';
  route();
  if (msg) {
    $('signin-error').textContent = msg;
    $('signin-error').className = 'note';
  }
}

// ---------- health strip ----------

function pill(label, value, ok) {
  return h('span', { class: `pill ${ok === true ? 'ok' : ok === false ? 'bad' : ''}` },
    h('span', { class: 'pill-k' }, label), ' ', h('span', { class: 'pill-v' }, value));
}

async function health() {
  const strip = $('health');
  let ready;
  let status = null;
  try {
    ready = await api('GET', '/readyz', undefined, { auth: false });
  } catch (e) {
    ready = { hsm: 'unreachable', store: 'unknown' };
  }
  try {
    status = await api('GET', '/status');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return failed(e);
  }
  const spares = ready && ready.spares ? Object.entries(ready.spares) : [];
  const items = [
    pill('HSM', ready.hsm === 'ok' ? 'reachable' : 'unreachable', ready.hsm === 'ok'),
    pill('Store', ready.store === 'ok' ? 'reachable' : 'unreachable', ready.store === 'ok'),
    pill('Spares', spares.length ? spares.map(([k, n]) => `${k} ×${n}`).join(', ') : 'none', spares.length ? spares.every(([, n]) => n > 0) : null),
    ready.pool ? pill('Pool', `${ready.pool.in_use}/${ready.pool.size} in use`, ready.pool.in_use < ready.pool.size) : null,
    status ? pill('Scheduler', status.scheduler.leader ? `leader (replica ${status.replica_id.slice(-6)})` : `follower (replica ${status.replica_id.slice(-6)})`, status.scheduler.last_tick_at ? true : null) : null,
  ];
  strip.replaceChildren(...items.filter(Boolean));
}

// ---------- apps ----------

function keyCounts(a) {
  const c = a.key_counts || {};
  const parts = ['next', 'current', 'previous', 'retired', 'revoked']
    .filter((s) => c[s])
    .map((s) => h('span', { class: `chip st-${s}`, title: s }, `${c[s]} ${s}`));
  return parts.length ? parts : '—';
}

function renderApps() {
  const q = $('app-search').value.trim().toLowerCase();
  const apps = state.apps.filter((a) => !q || a.name.toLowerCase().includes(q)
    || a.id.toLowerCase().includes(q) || a.signing_alg.toLowerCase().includes(q));
  const list = $('apps-list');
  if (!state.apps.length) {
    list.replaceChildren(h('p', { class: 'empty' }, 'No apps yet. Create one with “New app”.'));
    return;
  }
  const head = h('thead', {}, h('tr', {},
    ...['Name', 'Algorithm', 'Policy', 'Keys', 'Last rotation', 'Next rotation', 'Live tokens']
      .map((t) => h('th', { scope: 'col' }, t))));
  const cell = (label, attrs, ...kids) => h('td', { 'data-label': label, ...attrs }, h('div', {}, ...kids));
  const body = h('tbody', {}, ...apps.map((a) => h('tr', {},
    h('th', { scope: 'row', 'data-label': 'Name' },
      h('a', { href: `#/apps/${a.id}` }, a.name), h('div', { class: 'muted mono' }, a.id)),
    cell('Algorithm', {}, a.signing_alg, a.rsa_bits ? ` / ${a.rsa_bits}` : ''),
    cell('Policy', {}, `rotate every ${duration(a.rotation_period)}`, h('br'),
      h('span', { class: 'muted' }, `tokens ${duration(a.token_ttl)}, verify ${duration(a.verification_ttl)}`)),
    h('td', { 'data-label': 'Keys' }, h('div', { class: 'chips' }, keyCounts(a))),
    cell('Last rotation', {}, timeEl(a.last_rotation_at)),
    cell('Next rotation', {}, timeEl(a.next_rotation_at)),
    cell('Live tokens', { class: 'num' }, String(a.live_tokens ?? 0)),
  )));
  const table = h('table', { class: 'apps-table' }, h('caption', { class: 'sr-only' }, 'Apps'), head, body);
  list.replaceChildren(apps.length ? table : h('p', { class: 'empty' }, 'No app matches the search.'));
}

async function loadApps() {
  try {
    const r = await api('GET', '/apps');
    state.apps = r.apps.sort((a, b) => a.name.localeCompare(b.name));
    renderApps();
  } catch (e) {
    failed(e);
  }
}

function openCreate() {
  $('create-error').textContent = '';
  $('create-form').reset();
  $('create-dialog').showModal();
  $('c-name').focus();
}

async function createApp(ev) {
  ev.preventDefault();
  const body = {
    name: $('c-name').value.trim(),
    signing_alg: $('c-alg').value,
    rotation_period: Number($('c-period').value),
    token_ttl: Number($('c-ttl').value),
  };
  try {
    const app = await api('POST', '/apps', body);
    $('create-dialog').close();
    toast(`App “${app.name}” created with keys ${app.keys.map((k) => shortKid(k.kid)).join(', ')}.`);
    showSecret('Access token of ' + app.name, app.access_token);
    await loadApps();
  } catch (e) {
    $('create-error').textContent = e.message;
  }
}

function showSecret(label, value) {
  $('secret-title').textContent = label;
  $('secret-value').value = value;
  $('secret-copy').textContent = 'Copy';
  $('secret-dialog').showModal();
  $('secret-value').select();
  $('secret-dialog').addEventListener('close', () => { $('secret-value').value = ''; }, { once: true });
}

async function copySecret() {
  const v = $('secret-value').value;
  try {
    await navigator.clipboard.writeText(v);
    $('secret-copy').textContent = 'Copied';
  } catch {
    $('secret-value').select();
    $('secret-copy').textContent = 'Press Ctrl+C';
  }
}

// ---------- one app ----------

async function loadApp(id) {
  try {
    const [app, keys] = await Promise.all([api('GET', `/apps/${id}`), api('GET', `/apps/${id}/keys`)]);
    state.app = app;
    state.keys = keys.keys;
    state.rotationSafeAt = keys.rotation_safe_at;
    // Seconds until a rotation is no longer refused, counted from the server's answer.
    state.rotationSafeBy = Date.now() + 1000 * (keys.rotation_safe_in ?? 0);
    renderApp();
    loadAppAudit(id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      toast('No such app.', 'error');
      location.hash = '#/apps';
    } else failed(e);
  }
}

function fact(k, v) {
  return [h('div', {}, h('dt', {}, k), h('dd', {}, v))];
}

// Token Status Lists: how many, their entries in all, and when the newest was signed.
function statusLists(lists) {
  const n = lists.length;
  const size = lists.reduce((sum, l) => sum + l.size, 0);
  const signed = lists.map((l) => l.signed_at).filter(Boolean).sort().pop();
  return h('span', { class: 'status-lists' },
    `${n} list${n === 1 ? '' : 's'} · ${size.toLocaleString('en')} entries · `,
    signed ? h('span', {}, 'signed ', timeEl(signed)) : 'not signed yet');
}

function renderApp() {
  const a = state.app;
  $('app-title').textContent = a.name;
  document.title = `${a.name} · hsm-rotator console`;
  $('app-facts').replaceChildren(
    ...fact('App id', h('span', { class: 'mono' }, a.id)),
    ...fact('Algorithm', `${a.signing_alg}${a.rsa_bits ? ` / ${a.rsa_bits}` : ''}`),
    ...fact('Rotation', `every ${duration(a.rotation_period)}`),
    ...fact('Verification window', duration(a.verification_ttl)),
    ...fact('Token lifetime', duration(a.token_ttl)),
    ...fact('Last rotation', timeEl(a.last_rotation_at)),
    ...fact('Next rotation', timeEl(a.next_rotation_at)),
    ...fact('Rotation safe', rotationSafeIn() > 0 ? timeEl(state.rotationSafeAt) : 'now'),
    ...fact('Live tokens', String(a.live_tokens ?? 0)),
    ...fact('Token cut-off', timeEl(a.cutoff_at)),
    ...(a.status_list || a.status_lists?.length ? fact('Status lists', statusLists(a.status_lists ?? [])) : []),
  );
  drawTimeline($('timeline'), state.keys, a, $('span').value, $('tip'));
  const keys = [...state.keys].sort((x, y) => (x.kid < y.kid ? 1 : -1));
  $('key-list').replaceChildren(...keys.map((k) => h('li', { class: `key st-${k.state}` },
    h('span', { class: `chip st-${k.state}` }, k.state),
    h('span', { class: 'mono kid', title: k.kid }, k.kid),
    k.origin === 'imported'
      ? h('span', { class: 'muted', title: 'Imported: born outside the HSM; rotated out within imported_key_max_life' }, `${k.algorithm} · imported`)
      : h('span', { class: 'muted' }, k.algorithm),
    h('span', { class: 'muted fp', title: 'SHA-1 fingerprint of the key certificate' }, k.fingerprint ?? ''),
    ['next', 'current', 'previous'].includes(k.state)
      ? h('button', { type: 'button', class: 'danger small', 'data-kid': k.kid, onclick: () => revokeKey(k), 'aria-label': `Revoke key ${k.kid}` }, 'Revoke')
      : h('span', {}),
  )));
}

function auditItem(r) {
  let details = '';
  try {
    const d = JSON.parse(r.details);
    details = Object.entries(d).filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
  } catch {
    details = r.details;
  }
  return h('li', { class: `rec out-${r.outcome}` },
    h('span', { class: 'seq' }, `#${r.seq}`),
    h('time', { datetime: new Date(r.at * 1000).toISOString(), class: 'at' }, new Date(r.at * 1000).toLocaleString()),
    h('span', { class: 'action' }, r.action),
    h('span', { class: 'actor' }, r.actor),
    h('span', { class: 'target mono' }, r.target),
    h('span', { class: 'outcome' }, r.outcome),
    details ? h('span', { class: 'details' }, details) : null);
}

async function loadAppAudit(id) {
  try {
    const r = await api('GET', `/audit?order=desc&limit=8&app=${encodeURIComponent(id)}`);
    $('app-audit').replaceChildren(...r.records.map(auditItem));
  } catch (e) {
    failed(e);
  }
}

async function afterAction(msg) {
  toast(msg);
  if (state.app) await loadApp(state.app.id);
}

/** Seconds until the next key may sign without a verifier lacking it (0: now). */
function rotationSafeIn() {
  return Math.max(0, Math.ceil(((state.rotationSafeBy ?? 0) - Date.now()) / 1000));
}

/** Ask before an early rotation; true to force it. */
function confirmEarly(wait) {
  return confirmAction({
    title: `Rotate ${state.app.name} early?`,
    body: [
      h('p', {}, `The next key is safe to sign in ${duration(wait)}: verifiers that cached this app's JWKS before it was published may reject its tokens until then.`),
      h('p', {}, 'Rotating now is recorded in the audit log as an early rotation.'),
    ],
    requireName: false,
    okLabel: 'Rotate now',
  });
}

async function rotate() {
  const a = state.app;
  let force = false;
  const wait = rotationSafeIn();
  if (wait > 0) {
    if (!(await confirmEarly(wait))) return;
    force = true;
  }
  try {
    let r;
    try {
      r = await api('POST', `/apps/${a.id}/keys/rotate`, force ? { force: true } : undefined);
    } catch (e) {
      // Another operator or a replica published a newer next key meanwhile.
      if (!(e instanceof ApiError && e.code === 'rotation_too_soon')) throw e;
      const fresh = await api('GET', `/apps/${a.id}/keys`);
      if (!(await confirmEarly(Math.max(1, fresh.rotation_safe_in ?? 1)))) return;
      r = await api('POST', `/apps/${a.id}/keys/rotate`, { force: true });
    }
    await afterAction(`Rotated: ${shortKid(r.current.kid)} now signs, ${shortKid(r.next.kid)} is next.`);
  } catch (e) {
    failed(e);
  }
}

async function regenerate() {
  const a = state.app;
  const ok = await confirmAction({
    title: `New access token for ${a.name}`,
    body: [h('p', {}, 'The current access token stops working at once. Every client of this app must be given the new one.')],
    requireName: false,
    okLabel: 'Issue a new token',
  });
  if (!ok) return;
  try {
    const r = await api('POST', `/apps/${a.id}/access-token`);
    showSecret(`New access token of ${a.name}`, r.access_token);
    await afterAction('Access token replaced; the old one no longer works.');
  } catch (e) {
    failed(e);
  }
}

async function flush() {
  const a = state.app;
  const radius = await blastRadius(a.id);
  if (!radius) return;
  const ok = await confirmAction({
    title: `Flush every token of ${a.name}`,
    body: [h('p', {}, 'Every token issued so far is rejected from now on; the keys stay.'),
      radiusSummary(radius.live_tokens, radius.subjects)],
    requireName: false,
    okLabel: 'Flush tokens',
  });
  if (!ok) return;
  try {
    await api('POST', `/apps/${a.id}/tokens/flush`);
    await afterAction('Tokens flushed: every token issued before now is rejected.');
  } catch (e) {
    failed(e);
  }
}

async function blastRadius(id) {
  try {
    return await api('GET', `/apps/${id}/blast-radius`);
  } catch (e) {
    failed(e);
    return null;
  }
}

function radiusSummary(tokens, subjects) {
  return h('p', { class: 'radius', 'data-testid': 'blast-radius' },
    h('strong', {}, `${tokens} live token${tokens === 1 ? '' : 's'}`), ' of ',
    h('strong', {}, `${subjects} subject${subjects === 1 ? '' : 's'}`), ' will be rejected.');
}

async function revokeKey(k) {
  const a = state.app;
  const radius = await blastRadius(a.id);
  if (!radius) return;
  const per = radius.keys.find((x) => x.kid === k.kid) || { live_tokens: 0, subjects: 0 };
  const ok = await confirmAction({
    title: `Revoke key ${shortKid(k.kid)}`,
    body: [
      h('p', {}, 'The key leaves the JWKS at once, its HSM object is destroyed, and every token it signed stops verifying.',
        k.state === 'current' ? ' The next key is promoted to current first.' : ''),
      h('p', { class: 'mono small' }, `${k.kid} · ${k.algorithm} · ${k.state}`),
      radiusSummary(per.live_tokens, per.subjects),
    ],
    requireName: true,
    okLabel: 'Revoke key',
  });
  if (!ok) return;
  try {
    const r = await api('POST', `/apps/${a.id}/keys/${k.kid}/revoke`);
    await afterAction(`Key ${shortKid(k.kid)} revoked: ${r.revoked_tokens} tokens of ${r.affected_subjects} subjects rejected.`);
  } catch (e) {
    failed(e);
  }
}

async function emergency() {
  const a = state.app;
  const radius = await blastRadius(a.id);
  if (!radius) return;
  const ok = await confirmAction({
    title: `Emergency rotation of ${a.name}`,
    body: [
      h('p', {}, 'For key compromise only. Every key of the app is revoked and destroyed in the HSM, new keys are made, and every token of the app is rejected from now on.'),
      h('ul', { class: 'small' }, ...radius.keys.map((x) => h('li', { class: 'mono' },
        `${shortKid(x.kid)} (${x.state}): ${x.live_tokens} tokens, ${x.subjects} subjects`))),
      radiusSummary(radius.live_tokens, radius.subjects),
    ],
    requireName: true,
    okLabel: 'Revoke every key',
  });
  if (!ok) return;
  try {
    const r = await api('POST', `/apps/${a.id}/keys/emergency-rotate`);
    await afterAction(`Emergency rotation done: ${r.revoked_kids.length} keys revoked, ${r.revoked_tokens} tokens rejected, ${shortKid(r.current.kid)} now signs.`);
  } catch (e) {
    failed(e);
  }
}

/** The confirmation dialog; resolves true when the operator confirmed. */
function confirmAction({ title, body, requireName, okLabel }) {
  const dlg = $('confirm');
  const input = $('confirm-input');
  const okBtn = $('confirm-ok');
  $('confirm-title').textContent = title;
  $('confirm-body').replaceChildren(...body);
  okBtn.textContent = okLabel;
  const name = state.app ? state.app.name : '';
  input.value = '';
  input.hidden = !requireName;
  $('confirm-label').hidden = !requireName;
  $('confirm-label').textContent = requireName ? `Type the app's name, “${name}”, to confirm` : '';
  okBtn.disabled = requireName;
  const check = () => { okBtn.disabled = requireName && input.value !== name; };
  input.oninput = check;
  return new Promise((resolve) => {
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      dlg.close();
      resolve(v);
    };
    $('confirm-form').onsubmit = (e) => {
      e.preventDefault();
      if (requireName && input.value !== name) return;
      finish(true);
    };
    $('confirm-cancel').onclick = () => finish(false);
    dlg.addEventListener('close', () => finish(false), { once: true });
    dlg.showModal();
    (requireName ? input : $('confirm-cancel')).focus();
  });
}

// ---------- audit ----------

async function loadChain() {
  const el = $('chain');
  el.className = 'chain';
  el.textContent = 'Checking the hash chain…';
  try {
    const v = await api('GET', '/audit/verify');
    el.className = `chain ${v.ok ? 'ok' : 'bad'}`;
    el.textContent = v.ok
      ? `Chain intact: ${v.records} record${v.records === 1 ? '' : 's'}, ${v.seals} HSM seal${v.seals === 1 ? '' : 's'} verified`
      : `Chain BROKEN at record ${v.broken.seq}: ${v.broken.what}`;
  } catch (e) {
    el.className = 'chain bad';
    el.textContent = `Chain not checked: ${e.message}`;
  }
}

function auditQuery() {
  const p = new URLSearchParams({ order: 'desc', limit: '50' });
  if ($('f-app').value) p.set('app', $('f-app').value);
  if ($('f-actor').value.trim()) p.set('actor', $('f-actor').value.trim());
  if ($('f-action').value) p.set('action', $('f-action').value);
  if (state.auditBefore) p.set('before', String(state.auditBefore));
  return p;
}

async function loadAudit(more = false) {
  if (!more) state.auditBefore = 0;
  try {
    const r = await api('GET', `/audit?${auditQuery()}`);
    const items = r.records.map(auditItem);
    if (more) $('audit-list').append(...items);
    else $('audit-list').replaceChildren(...items);
    if (!more && !items.length) $('audit-list').replaceChildren(h('li', { class: 'empty' }, 'No record matches.'));
    state.auditBefore = r.next_before || 0;
    $('audit-more').hidden = r.records.length < 50 || !r.next_before;
  } catch (e) {
    failed(e);
  }
}

async function showAudit() {
  if (!state.apps.length) await loadApps();
  const sel = $('f-app');
  const cur = sel.value;
  sel.replaceChildren(h('option', { value: '' }, 'All apps'),
    ...state.apps.map((a) => h('option', { value: a.id }, a.name)));
  sel.value = cur;
  loadChain();
  loadAudit();
}

// ---------- routing ----------

const VIEWS = ['signin-view', 'apps-view', 'app-view', 'audit-view'];

function show(view, section) {
  for (const v of VIEWS) $(v).hidden = v !== view;
  const signedIn = view !== 'signin-view';
  $('nav').hidden = !signedIn;
  $('signout').hidden = !signedIn;
  $('health').hidden = !signedIn;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function route() {
  const hash = location.hash || '#/apps';
  if (!rootKey()) {
    show('signin-view');
    document.title = 'Sign in · hsm-rotator console';
    $('root-key').focus();
    return;
  }
  if (!state.healthTimer) {
    health();
    state.healthTimer = setInterval(health, 15000);
  }
  const m = hash.match(/^#\/apps\/([0-9A-Za-z]{26})$/);
  if (m) {
    show('app-view', 'apps');
    $('timeline').replaceChildren();
    $('app-title').textContent = '';
    loadApp(m[1]);
  } else if (hash === '#/audit') {
    show('audit-view', 'audit');
    document.title = 'Audit · hsm-rotator console';
    showAudit();
  } else {
    if (hash !== '#/apps') history.replaceState(null, '', '#/apps');
    show('apps-view', 'apps');
    document.title = 'Apps · hsm-rotator console';
    loadApps();
  }
  $('main').focus({ preventScroll: true });
}

function init() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signOut('Signed out.'));
  $('app-search').addEventListener('input', renderApps);
  $('new-app').addEventListener('click', openCreate);
  $('create-form').addEventListener('submit', createApp);
  $('create-cancel').addEventListener('click', () => $('create-dialog').close());
  $('secret-copy').addEventListener('click', copySecret);
  $('audit-filter').addEventListener('submit', (e) => { e.preventDefault(); loadAudit(); });
  $('audit-more').addEventListener('click', () => loadAudit(true));
  $('span').addEventListener('change', () => state.app && renderApp());
  const actions = { rotate, regenerate, flush, emergency };
  $('app-actions').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-action]');
    if (b && state.app) actions[b.dataset.action]();
  });
  let lastW = 0;
  new ResizeObserver(() => {
    const w = $('timeline').clientWidth;
    if (state.app && !$('app-view').hidden && w !== lastW) {
      lastW = w;
      drawTimeline($('timeline'), state.keys, state.app, $('span').value, $('tip'));
    }
  }).observe($('main'));
  window.addEventListener('hashchange', route);
  route();
}

init();
