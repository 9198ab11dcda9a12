// The key timeline: one horizontal bar per key across time, drawn as SVG from the
// API's Key JSON. Segments take the colour of the state the key was in; the planned
// future (until the next scheduled rotation, and each verification window) is drawn
// lighter. Every bar is focusable and describes itself to the tooltip and to screen
// readers.

const SVG = 'http://www.w3.org/2000/svg';
const MAX_ROWS = 14;

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const ms = (t) => (t ? Date.parse(t) : null);

/** Short display form of a kid: its last 8 characters (the random part). */
export function shortKid(kid) {
  return `…${kid.slice(-8)}`;
}

const TICKS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
  86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400].map((x) => x * 1000);

function tickLabel(t, step) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, '0');
  if (step < 60000) return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  if (step < 86400000) return `${p(d.getHours())}:${p(d.getMinutes())}`;
  return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

/**
 * The segments of one key: `[{from, to, state, planned}]` plus an end marker
 * (`retired` or `revoked`) when the key's life is over.
 */
export function segments(key, app, now, nextRotation) {
  const marks = [
    [ms(key.published_at) ?? ms(key.created_at), 'next'],
    [ms(key.activated_at), 'current'],
    [ms(key.deactivated_at), 'previous'],
    [ms(key.retired_at), 'retired'],
    [ms(key.revoked_at), 'revoked'],
  ].filter(([t]) => t !== null).sort((a, b) => a[0] - b[0]);
  const out = [];
  for (let i = 0; i < marks.length; i++) {
    const [t, st] = marks[i];
    if (st === 'retired' || st === 'revoked') break;
    const end = i + 1 < marks.length ? marks[i + 1][0] : now;
    out.push({ from: t, to: Math.max(end, t), state: st, planned: false });
  }
  const last = marks[marks.length - 1];
  const ended = last && (last[1] === 'retired' || last[1] === 'revoked') ? last : null;
  const vttl = app.verification_ttl * 1000;
  const deact = ms(key.deactivated_at);
  const windows = [];
  // A revoked key verifies nothing from its revocation on: no window to draw.
  if (deact !== null && !(last && last[1] === 'revoked')) {
    windows.push({ from: deact, to: deact + vttl, planned: false });
  }
  if (!ended && nextRotation !== null) {
    if (key.state === 'current') {
      out.push({ from: now, to: Math.max(now, nextRotation), state: 'current', planned: true });
      windows.push({ from: Math.max(now, nextRotation), to: Math.max(now, nextRotation) + vttl, planned: true });
    } else if (key.state === 'next') {
      out.push({ from: now, to: Math.max(now, nextRotation), state: 'next', planned: true });
    }
  }
  if (!ended && key.state === 'previous' && deact !== null && deact + vttl > now) {
    out.push({ from: now, to: deact + vttl, state: 'previous', planned: true });
  }
  return { segs: out, windows, ended };
}

/** Text describing a key, for the tooltip and for screen readers. */
export function describe(key) {
  const rows = [
    ['kid', key.kid],
    ['state', key.state],
    ['algorithm', key.algorithm],
    ['fingerprint', key.fingerprint ?? '—'],
    ['created', key.created_at],
    ['published', key.published_at],
    ['signing since', key.activated_at],
    ['stopped signing', key.deactivated_at],
    ['retired', key.retired_at],
    ['revoked', key.revoked_at],
    ['HSM object destroyed', key.destroyed_at],
  ];
  return rows.filter(([, v]) => v);
}

/**
 * Draw the timeline of `keys` (API Key objects) for `app` (API App object with
 * `next_rotation_at`) into `host`, `span` seconds around now or "fit".
 * `tip` is the shared tooltip element.
 */
export function drawTimeline(host, keys, app, span, tip) {
  host.replaceChildren();
  const now = Date.now();
  const nextRotation = ms(app.next_rotation_at);
  const sorted = [...keys]
    .filter((k) => k.state !== 'spare' && k.state !== 'pending')
    .sort((a, b) => (a.kid < b.kid ? -1 : 1));
  const hidden = Math.max(0, sorted.length - MAX_ROWS);
  const shown = sorted.slice(hidden);
  const rows = shown.map((k) => ({ key: k, ...segments(k, app, now, nextRotation) }));

  let t0;
  let t1;
  if (span === 'fit') {
    t0 = Math.min(now, ...rows.flatMap((r) => r.segs.map((x) => x.from)));
    t1 = Math.max(now, ...rows.flatMap((r) => [
      ...r.segs.map((x) => x.to), ...r.windows.map((w) => w.to),
      ...(r.ended ? [r.ended[0]] : []),
    ]));
    t0 -= Math.max(2000, (now - t0) * 0.08);
    t1 += Math.max(2000, (t1 - now) * 0.03);
  } else {
    const w = Number(span) * 1000;
    t0 = now - w * 0.6;
    t1 = now + w * 0.4;
  }

  const width = Math.max(300, host.clientWidth || 800);
  const narrow = width < 560;
  const labelW = narrow ? 78 : 132;
  const right = 12;
  const top = 34;
  const rowH = narrow ? 30 : 34;
  const barH = narrow ? 14 : 16;
  const height = top + rows.length * rowH + 28;
  const plotL = labelW;
  const plotR = width - right;
  // When the history is short next to the schedule (keys made minutes ago, the next
  // rotation in days), the past gets its own linear scale left of "now" so both stay
  // readable; each side has its own ticks.
  const past = now - t0;
  const split = span === 'fit' && past < 0.3 * (t1 - t0) ? 0.35 : null;
  const mid = split === null ? null : plotL + split * (plotR - plotL);
  const x = (t) => {
    const c = Math.min(Math.max(t, t0), t1);
    if (mid === null) return plotL + ((c - t0) / (t1 - t0)) * (plotR - plotL);
    return c <= now
      ? plotL + ((c - t0) / (now - t0)) * (mid - plotL)
      : mid + ((c - now) / (t1 - now)) * (plotR - mid);
  };

  const svg = s('svg', {
    width, height, viewBox: `0 0 ${width} ${height}`, class: 'tl', role: 'group',
    'aria-label': `Key timeline of ${app.name}: ${rows.length} keys`,
  });
  svg.append(s('title', {}, `Key timeline of ${app.name}`));

  // Axis and grid.
  const axis = s('g', { class: 'axis', 'aria-hidden': 'true' });
  const offset = new Date().getTimezoneOffset() * 60000;
  const ticks = (a, b) => {
    const px = x(b) - x(a);
    const step = TICKS.find((st) => (b - a) / st <= px / (narrow ? 70 : 95)) ?? TICKS[TICKS.length - 1];
    for (let t = Math.ceil((a - offset) / step) * step + offset; t <= b; t += step) {
      if (mid !== null && Math.abs(x(t) - mid) < 34) continue;
      axis.append(s('line', { x1: x(t), x2: x(t), y1: top - 6, y2: height - 22, class: 'grid' }));
      axis.append(s('text', { x: x(t), y: top - 12, 'text-anchor': 'middle' }, tickLabel(t, step)));
    }
  };
  if (mid === null) {
    ticks(t0, t1);
  } else {
    axis.append(s('rect', { x: plotL, y: top - 6, width: mid - plotL, height: height - top - 16, class: 'history' }));
    ticks(t0, now);
    ticks(now, t1);
    axis.append(s('text', { x: plotL + 3, y: height - 2, class: 'region' }, narrow ? 'history' : 'history (own scale)'));
  }
  svg.append(axis);

  // Rows.
  rows.forEach((r, i) => {
    const y = top + i * rowH + (rowH - barH) / 2;
    const k = r.key;
    const g = s('g', {
      class: `row st-${k.state}`, tabindex: 0, role: 'img', 'data-kid': k.kid,
      'aria-label': describe(k).map(([a, b]) => `${a} ${b}`).join(', '),
    });
    g.append(s('rect', { x: 0, y: top + i * rowH, width, height: rowH, class: 'hit' }));
    g.append(s('text', { x: 4, y: y + barH - 3, class: 'label' }, shortKid(k.kid)));
    if (!narrow) g.append(s('text', { x: 76, y: y + barH - 3, class: `tag st-${k.state}` }, k.state));
    for (const w of r.windows) {
      if (w.to < t0 || w.from > t1) continue;
      g.append(s('rect', {
        x: x(w.from), y: y - 4, width: Math.max(2, x(w.to) - x(w.from)), height: barH + 8,
        rx: 3, class: `window${w.planned ? ' planned' : ''}`,
      }));
      g.append(s('line', { x1: x(w.to), x2: x(w.to), y1: y - 6, y2: y + barH + 6, class: 'window-end' }));
    }
    for (const seg of r.segs) {
      if (seg.to < t0 || seg.from > t1) continue;
      g.append(s('rect', {
        x: x(seg.from), y, width: Math.max(3, x(seg.to) - x(seg.from)), height: barH, rx: 3,
        class: `seg s-${seg.state}${seg.planned ? ' planned' : ''}`,
      }));
    }
    if (r.ended && r.ended[0] >= t0 && r.ended[0] <= t1) {
      const ex = x(r.ended[0]);
      const cy = y + barH / 2;
      if (r.ended[1] === 'revoked') {
        g.append(s('path', { d: `M${ex - 5},${cy - 5}L${ex + 5},${cy + 5}M${ex + 5},${cy - 5}L${ex - 5},${cy + 5}`, class: 'end-revoked' }));
      } else {
        g.append(s('circle', { cx: ex, cy, r: 4.5, class: 'end-retired' }));
      }
    }
    const show = (px, py) => showTip(tip, k, px, py);
    g.addEventListener('mousemove', (e) => show(e.clientX, e.clientY));
    g.addEventListener('mouseleave', () => hideTip(tip));
    g.addEventListener('focus', () => {
      // Below the whole picture, so the tooltip hides no other bar.
      const b = g.getBoundingClientRect();
      const whole = svg.getBoundingClientRect();
      show(b.left + labelW, whole.bottom - 8);
    });
    g.addEventListener('blur', () => hideTip(tip));
    svg.append(g);
  });

  // Now and the next scheduled rotation.
  const marks = s('g', { class: 'marks', 'aria-hidden': 'true' });
  if (nextRotation !== null && nextRotation >= t0 && nextRotation <= t1) {
    marks.append(s('line', { x1: x(nextRotation), x2: x(nextRotation), y1: top - 4, y2: height - 12, class: 'rotation' }));
    marks.append(s('text', { x: x(nextRotation) - 3, y: height - 2, 'text-anchor': 'end', class: 'rotation-label' }, 'next rotation'));
  }
  marks.append(s('line', { x1: x(now), x2: x(now), y1: top - 4, y2: height - 12, class: 'now' }));
  marks.append(s('text', { x: x(now) + 3, y: height - 15, class: 'now-label' }, 'now'));
  svg.append(marks);

  host.append(svg);
  if (hidden > 0) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = `${hidden} older key${hidden === 1 ? '' : 's'} not drawn (see the list below).`;
    host.append(p);
  }
}

function showTip(tip, key, px, py) {
  const dl = document.createElement('dl');
  for (const [a, b] of describe(key)) {
    const dt = document.createElement('dt');
    dt.textContent = a;
    const dd = document.createElement('dd');
    dd.textContent = b;
    dl.append(dt, dd);
  }
  tip.replaceChildren(dl);
  tip.hidden = false;
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  const left = Math.min(Math.max(8, px + 12), window.innerWidth - w - 8);
  const topPx = py + 14 + h > window.innerHeight ? Math.max(8, py - h - 12) : py + 14;
  tip.style.left = `${left + window.scrollX}px`;
  tip.style.top = `${topPx + window.scrollY}px`;
}

function hideTip(tip) {
  tip.hidden = true;
}
