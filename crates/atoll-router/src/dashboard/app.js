// atoll's global view: polls the router's /v1/global/status (admin token) and
// /v1/global/metrics (open) every POLL_MS and keeps the last HISTORY samples in the page.
// Everything from the network is written with textContent, never as HTML.
'use strict';

const POLL_MS = 2000;
const HISTORY = 150; // 5 minutes at 2 s
const WINDOW = 3; // rates and quantiles over the last WINDOW polls
const FETCH_TIMEOUT_MS = 8000;
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f', '#d62728'];

const CHARTS = [
  { id: 'c-lag', kind: 'gauge', metric: 'atoll_replication_lag_seconds', by: ['region', 'peer_region'], unit: 's' },
  { id: 'c-lagops', kind: 'gauge', metric: 'atoll_replication_lag_ops', by: ['region', 'peer_region'], unit: '' },
  { id: 'c-rtt', kind: 'quantile', metric: 'atoll_peer_rtt_seconds_bucket', by: ['region', 'peer_region'], unit: 's' },
  { id: 'c-clock', kind: 'gauge', metric: 'atoll_clock_offset_seconds', by: ['region', 'peer_region'], unit: 's' },
  { id: 'c-skew', kind: 'gauge', metric: 'atoll_peer_clock_skewed', by: ['region', 'peer_region'], unit: '' },
  { id: 'c-err', kind: 'ratio', num: 'atoll_http_requests_total', numFilter: (l) => /^5/.test(l.status || ''), den: 'atoll_http_requests_total', by: ['region'], unit: '%', scale: 100 },
  { id: 'c-p99', kind: 'quantile', metric: 'atoll_http_request_duration_seconds_bucket', by: ['region'], unit: 's' },
  { id: 'c-rps', kind: 'rate', metric: 'atoll_http_requests_total', by: ['region'], unit: '/s' },
  { id: 'c-conns', kind: 'gauge', metric: 'atoll_http_open_connections', by: ['region'], unit: '' },
  { id: 'c-health', kind: 'gauge', metric: 'atoll_router_region_healthy', by: ['region'], unit: '' },
  { id: 'c-commit', kind: 'quantile', metric: 'atoll_store_commit_duration_seconds_bucket', by: ['region'], unit: 's' },
  { id: 'c-batch', kind: 'ratio', num: 'atoll_store_commit_batch_writes_sum', den: 'atoll_store_commit_batch_writes_count', by: ['region'], unit: ' writes/commit' },
  { id: 'c-apply', kind: 'quantile', metric: 'atoll_replication_apply_delay_seconds_bucket', by: ['region', 'peer_region'], unit: 's' },
  { id: 'c-conflicts', kind: 'rate', metric: 'atoll_conflicts_total', by: ['keyspace', 'resolution'], unit: '/s' },
  { id: 'c-siblings', kind: 'rate', metric: 'atoll_mvr_sibling_limit_hits_total', by: ['keyspace'], unit: '/s' },
  { id: 'c-tomb', kind: 'gauge', metric: 'atoll_tombstone_horizon_age_seconds', by: ['region'], unit: 's' },
  { id: 'c-tombgc', kind: 'rate', metric: 'atoll_tombstones_collected_total', by: ['region'], unit: '/s' },
];

const snaps = []; // {t, m: Map(name -> [{l, v}])}
let status = null;
let statusError = null;
let metricsError = null;
let token = '';

function $(id) { return document.getElementById(id); }
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

function initToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    try { sessionStorage.setItem('atoll-token', decodeURIComponent(m[1])); } catch (e) { /* storage off */ }
    token = decodeURIComponent(m[1]);
    history.replaceState(null, '', location.pathname + location.search);
  }
  try { token = sessionStorage.getItem('atoll-token') || token; } catch (e) { /* storage off */ }
  $('tokenform').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    try { sessionStorage.setItem('atoll-token', token); } catch (e) { /* storage off */ }
    $('token').value = '';
    poll();
  });
}

async function fetchBounded(url, headers) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  try {
    return await fetch(url, { headers, signal: ctl.signal, cache: 'no-store' });
  } finally {
    clearTimeout(timer);
  }
}

// --- metrics text --------------------------------------------------------------------------
function unescapeLabel(v) { return v.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c)); }
function parseMetrics(text) {
  const m = new Map();
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const brace = line.indexOf('{');
    let name; let labels = {}; let rest;
    if (brace >= 0 && brace < line.indexOf(' ')) {
      name = line.slice(0, brace);
      const close = line.lastIndexOf('}');
      if (close < brace) continue;
      const inner = line.slice(brace + 1, close);
      let mm;
      labelRe.lastIndex = 0;
      while ((mm = labelRe.exec(inner)) !== null) labels[mm[1]] = unescapeLabel(mm[2]);
      rest = line.slice(close + 1).trim();
    } else {
      const sp = line.indexOf(' ');
      if (sp < 0) continue;
      name = line.slice(0, sp);
      rest = line.slice(sp + 1).trim();
    }
    const v = parseFloat(rest.split(/\s+/)[0]);
    if (!m.has(name)) m.set(name, []);
    m.get(name).push({ l: labels, v: rest.startsWith('+Inf') ? Infinity : v });
  }
  return m;
}

function keyOf(l, by) { return by.map((k) => l[k] || '').join(by.length > 1 && by[1] === 'peer_region' ? ' ← ' : ' '); }
function sumBy(snap, metric, by, filter) {
  const out = new Map();
  for (const s of snap.m.get(metric) || []) {
    if (filter && !filter(s.l)) continue;
    const k = keyOf(s.l, by);
    out.set(k, (out.get(k) || 0) + s.v);
  }
  return out;
}
function delta(a, b, metric, by, filter) {
  const va = sumBy(a, metric, by, filter); const vb = sumBy(b, metric, by, filter);
  const out = new Map();
  for (const [k, v] of vb) {
    const before = va.get(k);
    out.set(k, before === undefined || v < before ? v : v - before);
  }
  return out;
}
function quantile(q, buckets) { // buckets: [[le, cumulative count]] sorted
  if (!buckets.length) return NaN;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return NaN;
  const rank = q * total;
  let prevLe = 0; let prevC = 0;
  for (const [le, c] of buckets) {
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      if (c === prevC) return le;
      return prevLe + (le - prevLe) * ((rank - prevC) / (c - prevC));
    }
    prevLe = le; prevC = c;
  }
  return prevLe;
}
function seriesAt(spec, a, b) {
  const dt = b.t - a.t;
  const out = new Map();
  if (spec.kind === 'gauge') {
    for (const s of b.m.get(spec.metric) || []) out.set(keyOf(s.l, spec.by), s.v);
  } else if (spec.kind === 'rate') {
    if (dt <= 0) return out;
    for (const [k, v] of delta(a, b, spec.metric, spec.by)) out.set(k, v / dt);
  } else if (spec.kind === 'ratio') {
    const num = delta(a, b, spec.num, spec.by, spec.numFilter);
    const den = delta(a, b, spec.den, spec.by);
    for (const [k, d] of den) if (d > 0) out.set(k, ((num.get(k) || 0) / d) * (spec.scale || 1));
  } else if (spec.kind === 'quantile') {
    const d = delta(a, b, spec.metric, spec.by.concat(['le']));
    const groups = new Map();
    for (const s of b.m.get(spec.metric) || []) {
      const k = keyOf(s.l, spec.by);
      const le = s.l.le === '+Inf' ? Infinity : parseFloat(s.l.le);
      const c = d.get(keyOf(s.l, spec.by.concat(['le'])));
      if (!groups.has(k)) groups.set(k, new Map());
      groups.get(k).set(le, c || 0);
    }
    for (const [k, g] of groups) {
      const v = quantile(0.99, [...g.entries()].sort((x, y) => x[0] - y[0]));
      if (!Number.isNaN(v)) out.set(k, v);
    }
  }
  return out;
}

function fmt(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (unit === 's') {
    if (Math.abs(v) < 1) return (v * 1000).toFixed(Math.abs(v) < 0.01 ? 2 : 1) + ' ms';
    return v.toFixed(2) + ' s';
  }
  const n = Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
  return n + (unit || '');
}

function drawChart(spec) {
  const svg = $(spec.id);
  const legend = document.querySelector('.legend[data-for="' + spec.id + '"]');
  if (!svg || !legend) return;
  const series = new Map();
  for (let i = 1; i < snaps.length; i++) {
    const a = snaps[Math.max(0, i - WINDOW)]; const b = snaps[i];
    for (const [k, v] of seriesAt(spec, a, b)) {
      if (!Number.isFinite(v)) continue;
      if (!series.has(k)) series.set(k, []);
      series.get(k).push([b.t, v]);
    }
  }
  const W = 400; const H = 120; const pad = 4;
  svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  svg.setAttribute('preserveAspectRatio', 'none');
  clear(svg); clear(legend);
  const now = snaps.length ? snaps[snaps.length - 1].t : 0;
  const t0 = now - (HISTORY * POLL_MS) / 1000;
  let max = 0; let min = 0;
  for (const pts of series.values()) for (const [, v] of pts) { max = Math.max(max, v); min = Math.min(min, v); }
  if (max === min) max = min + 1;
  const ns = 'http://www.w3.org/2000/svg';
  const keys = [...series.keys()].sort();
  keys.forEach((k, idx) => {
    const color = COLORS[idx % COLORS.length];
    const pts = series.get(k).map(([t, v]) => {
      const x = ((t - t0) / (now - t0 || 1)) * W;
      const y = H - pad - ((v - min) / (max - min)) * (H - 2 * pad);
      return x.toFixed(1) + ',' + y.toFixed(1);
    });
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', color);
    line.setAttribute('stroke-width', '2');
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.appendChild(line);
    const last = series.get(k)[series.get(k).length - 1][1];
    const item = el('span');
    const sw = el('i'); sw.style.background = color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(k + ' ' + fmt(last, spec.unit)));
    legend.appendChild(item);
  });
  const top = document.createElementNS(ns, 'text');
  top.setAttribute('x', '4'); top.setAttribute('y', '12'); top.setAttribute('font-size', '10'); top.setAttribute('fill', '#777');
  top.textContent = 'max ' + fmt(max, spec.unit) + ' · last ' + Math.round((HISTORY * POLL_MS) / 60000) + ' min';
  svg.appendChild(top);
  if (!keys.length) legend.appendChild(el('span', 'no data yet', 'muted'));
}

// --- status ----------------------------------------------------------------------------------
function regionNames() {
  if (status && status.regions) return status.regions.map((r) => r.region);
  const last = snaps[snaps.length - 1];
  return last ? (last.m.get('atoll_region_up') || []).map((s) => s.l.region) : [];
}
function regionUp(name) {
  if (status && status.regions) {
    const r = status.regions.find((x) => x.region === name);
    return !!(r && r.up);
  }
  const last = snaps[snaps.length - 1];
  const s = last && (last.m.get('atoll_region_up') || []).find((x) => x.l.region === name);
  return !!(s && s.v === 1);
}

function renderRegions() {
  const box = $('regions');
  clear(box);
  for (const name of regionNames()) {
    const r = status && status.regions ? status.regions.find((x) => x.region === name) : null;
    const up = regionUp(name);
    const rt = (r && r.router) || {};
    const card = el('div', null, 'region ' + (up ? (rt.routable === false ? 'degraded' : 'up') : 'down'));
    card.dataset.region = name;
    card.dataset.up = String(up);
    card.appendChild(el('div', name, 'name'));
    const badges = el('div');
    const badge = (text, cls) => badges.appendChild(el('span', text, 'badge ' + (cls || text)));
    badge(up ? 'reachable' : 'unreachable', up ? 'healthy' : 'down');
    if (r && r.role) badge(r.role, String(r.role));
    if (rt.health) badge('router: ' + rt.health, rt.health);
    if (rt.drained) badge('drained', 'drained');
    if (typeof rt.ramp === 'number' && rt.ramp < 1 && rt.health === 'healthy') badge('ramping ' + Math.round(rt.ramp * 100) + '%', 'ramping');
    if (r && r.serving === false) badge('draining', 'drained');
    if (r && r.epoch) badge('epoch ' + r.epoch, 'epoch');
    card.appendChild(badges);
    const lines = [];
    if (rt.drained) lines.push('drain: ' + rt.drained.reason);
    if (rt.reason && rt.health !== 'healthy') lines.push('router: ' + rt.reason);
    if (r && r.replication && r.replication.established !== undefined) lines.push('replication ' + (r.replication.established ? 'established' : 'not established'));
    if (r && typeof r.uptime_seconds === 'number') lines.push('up ' + Math.round(r.uptime_seconds) + ' s, v' + (r.version || '?'));
    for (const l of lines) card.appendChild(el('div', l, 'muted'));
    if (r && r.error) card.appendChild(el('div', r.error, 'error'));
    box.appendChild(card);
  }
}

function renderMatrix(id, field, cellFn) {
  const t = $(id);
  clear(t);
  if (!status || !status.matrices) {
    const row = el('tr'); row.appendChild(el('td', statusError || 'needs the admin token', 'unknown')); t.appendChild(row);
    return;
  }
  const m = status.matrices; const names = m.regions; const grid = m[field] || [];
  const head = el('tr'); head.appendChild(el('th', ''));
  for (const n of names) { const th = el('th', n, regionUp(n) ? '' : 'down'); head.appendChild(th); }
  t.appendChild(head);
  names.forEach((row, i) => {
    const tr = el('tr');
    tr.appendChild(el('th', row, regionUp(row) ? '' : 'down'));
    names.forEach((col, j) => {
      const v = grid[i] ? grid[i][j] : null;
      let td;
      if (i === j) td = el('td', '·', 'self');
      else if (!regionUp(row) || v === null || v === undefined) td = el('td', '?', 'unknown');
      else { const [text, cls] = cellFn(v); td = el('td', text, cls); }
      td.dataset.row = row; td.dataset.col = col;
      td.dataset.state = td.className;
      tr.appendChild(td);
    });
    t.appendChild(tr);
  });
}

function renderStatusTables() {
  const ct = $('conflicts'); clear(ct);
  const list = (status && status.conflicts) || [];
  if (!list.length) { const tr = el('tr'); tr.appendChild(el('td', status ? 'none recorded' : '–', 'muted')); ct.appendChild(tr); } else {
    const h = el('tr'); for (const c of ['when', 'region', 'keyspace', 'key', 'winner', 'loser', 'why']) h.appendChild(el('th', c)); ct.appendChild(h);
    for (const c of list.slice(0, 10)) {
      const tr = el('tr');
      const when = c.recorded_at_ms ? new Date(c.recorded_at_ms).toLocaleTimeString() : '';
      const key = typeof c.key === 'string' ? c.key : JSON.stringify(c.key);
      for (const v of [when, c.region, c.keyspace, key, c.winner_region, c.loser_region, c.reason]) tr.appendChild(el('td', v));
      ct.appendChild(tr);
    }
  }
  const dt = $('drills'); clear(dt);
  const d = status && status.drills;
  $('drills-note').textContent = d ? (d.error || d.note || ('from ' + d.source)) : (statusError || '');
  if (d && d.scenarios && d.scenarios.length) {
    const h = el('tr'); for (const c of ['scenario', 'outcome', 'age', 'lost writes', 'zombie writes']) h.appendChild(el('th', c)); dt.appendChild(h);
    for (const s of d.scenarios) {
      const tr = el('tr');
      tr.appendChild(el('td', s.scenario));
      tr.appendChild(el('td', s.passed ? 'passed' : 'FAILED' + (s.guard_tripped ? ' (' + s.guard_tripped + ')' : ''), s.passed ? 'pass' : 'fail'));
      tr.appendChild(el('td', s.age_seconds === null || s.age_seconds === undefined ? '' : ago(s.age_seconds)));
      tr.appendChild(el('td', s.lost_writes));
      tr.appendChild(el('td', s.zombie_writes));
      dt.appendChild(tr);
    }
  }
}
function ago(sec) {
  if (sec < 120) return sec + ' s ago';
  if (sec < 7200) return Math.round(sec / 60) + ' min ago';
  if (sec < 172800) return Math.round(sec / 3600) + ' h ago';
  return Math.round(sec / 86400) + ' days ago';
}

function render() {
  const total = regionNames().length;
  const reporting = regionNames().filter(regionUp).length;
  $('cluster').textContent = status ? status.cluster + ' (' + status.model + ')' : '';
  const sum = $('summary');
  sum.textContent = total ? reporting + ' of ' + total + ' regions reporting' : 'no data yet';
  sum.className = 'summary' + (reporting < total ? ' partial' : '');
  $('updated').textContent = 'updated ' + new Date().toLocaleTimeString() + ' · every ' + POLL_MS / 1000 + ' s';
  const problems = [statusError && 'status: ' + statusError, metricsError && 'metrics: ' + metricsError].filter(Boolean);
  $('banner').hidden = !problems.length;
  $('banner').textContent = problems.join(' · ');
  renderRegions();
  renderMatrix('m-reach', 'reachability', (v) => [v, String(v)]);
  renderMatrix('m-lag', 'lag_seconds', (v) => [fmt(v, 's'), v > 5 ? 'bad' : v > 1 ? 'warn' : 'up']);
  renderMatrix('m-lagops', 'lag_ops', (v) => [String(v), v > 1000 ? 'bad' : v > 0 ? 'warn' : 'up']);
  renderMatrix('m-rtt', 'rtt_ms', (v) => [Number(v).toFixed(1), 'up']);
  renderMatrix('m-clock', 'clock_offset_ms', (v) => [Number(v).toFixed(1), Math.abs(v) > 250 ? 'warn' : 'up']);
  renderStatusTables();
  for (const c of CHARTS) drawChart(c);
}

async function pollStatus() {
  if (!token) { $('tokenform').hidden = false; statusError = 'no admin token'; status = null; document.body.dataset.status = 'no-token'; return; }
  try {
    const r = await fetchBounded('/v1/global/status', { Authorization: 'Bearer ' + token });
    if (r.status === 401) { $('tokenform').hidden = false; statusError = 'the admin token was refused'; status = null; document.body.dataset.status = 'unauthorized'; return; }
    if (!r.ok) throw new Error('HTTP ' + r.status);
    status = await r.json();
    statusError = null;
    $('tokenform').hidden = true;
    document.body.dataset.status = 'ok';
  } catch (e) {
    statusError = 'the router did not answer (' + e.message + ')';
    status = null;
    document.body.dataset.status = 'error';
  }
}

async function pollMetrics() {
  try {
    const r = await fetchBounded('/v1/global/metrics', {});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const text = await r.text();
    snaps.push({ t: Date.now() / 1000, m: parseMetrics(text) });
    while (snaps.length > HISTORY) snaps.shift();
    metricsError = null;
  } catch (e) {
    metricsError = 'the router did not answer (' + e.message + ')';
  }
}

let timer = null;
let busy = false;
async function poll() {
  if (busy) return; // the running poll picks up a new token
  busy = true;
  if (timer) { clearTimeout(timer); timer = null; }
  try {
    await Promise.all([pollStatus(), pollMetrics()]);
    try { render(); } catch (e) { $('banner').hidden = false; $('banner').textContent = 'render: ' + e.message; }
    document.body.dataset.polls = String(Number(document.body.dataset.polls) + 1);
  } finally {
    busy = false;
    timer = setTimeout(poll, POLL_MS);
  }
}

initToken();
poll();
