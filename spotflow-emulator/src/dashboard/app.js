// The emulator's dashboard: plain JavaScript, no dependency, served from the binary.
// Every call sends the admin token (kept in this tab's sessionStorage); the live feed is the
// Server-Sent Events stream of GET /admin/events, read with fetch so that the token travels in a
// header, never in a URL. Data reaches the page only through textContent (never as HTML).
'use strict';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'spotflow-emulator-admin-token';
const FEED_KEPT = 200;
const CHART_SECONDS = 60;
const COLORS = ['#0b5cad', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#5c940d', '#1098ad', '#e67700'];

const state = {
  token: null,
  devices: [],
  paused: false,
  feedAbort: null,
  pollTimer: null,
  lastTotals: null,
  // stream key -> { color, points: [{t, messages, bytes}] (per-second rates), total }
  streams: new Map(),
  twinDevice: '',
  desiredEdited: false,
  desiredShown: null,
};

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function setStatus(text) { $('status').textContent = text; }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: 'Bearer ' + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) {
    logout('The admin token was refused.');
    throw new Error('unauthorized');
  }
  return res;
}

async function apiJson(path, options) {
  const res = await api(path, options);
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!res.ok) {
    const detail = body && (body.detail || body.title) ? (body.detail || body.title) : res.statusText;
    throw new Error(detail + ' (' + res.status + ')');
  }
  return body;
}

function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : '—'; }
function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return new Date(ms).toLocaleString();
}
function fmt(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return (Math.round(n * 10) / 10).toString();
}
function streamName(group, stream) { return (group || '(default)') + '/' + (stream || '(default)'); }

// ---- login -------------------------------------------------------------------------------------

async function login(token) {
  state.token = token;
  const res = await fetch('/admin/devices', { headers: { Authorization: 'Bearer ' + token } });
  if (!res.ok) {
    state.token = null;
    $('login-error').textContent = res.status === 401 ? 'Wrong admin token.' : 'Login failed: ' + res.status;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login-error').textContent = '';
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  setStatus('Connected');
  await refresh();
  state.pollTimer = setInterval(() => refresh().catch(() => {}), 2000);
  state.logsTimer = setInterval(() => pollLogs().catch(() => {}), 1000);
  pollLogs().catch(() => {});
  follow();
  requestAnimationFrame(drawChart);
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.pollTimer) clearInterval(state.pollTimer);
  if (state.logsTimer) clearInterval(state.logsTimer);
  if (state.feedAbort) state.feedAbort.abort();
  $('app').hidden = true;
  $('login').hidden = false;
  $('logout').hidden = true;
  $('login-error').textContent = message || '';
  setStatus('Not logged in');
  $('token').focus();
}

// ---- devices and provisioning operations ---------------------------------------------------------

async function refresh() {
  const [devices, operations] = await Promise.all([apiJson('/admin/devices'), apiJson('/admin/operations')]);
  state.devices = devices;
  renderDevices(devices);
  renderOperations(operations.filter((o) => o.state === 'pending'));
  if (state.twinDevice) await loadTwin(false);
  await loadRollouts();
}

// ---- software update rollouts ---------------------------------------------------------------------

async function loadRollouts() {
  const listed = await apiJson('/admin/updates');
  const select = $('rollout-select');
  const ids = listed.rollouts.slice().reverse();
  const chosen = select.value && ids.includes(select.value) ? select.value : (ids[0] || '');
  if (select.options.length !== ids.length || [...select.options].some((o, i) => o.value !== ids[i])) {
    select.replaceChildren(...(ids.length ? ids.map((id) => el('option', { value: id, text: id }))
      : [el('option', { value: '', text: '(none yet)' })]));
  }
  select.value = chosen;
  if (!chosen) return;
  const r = await apiJson('/admin/updates/rollouts/' + encodeURIComponent(chosen));
  const counts = Object.entries(r.counts).map(([k, n]) => n + ' ' + k).join(', ');
  $('rollout-summary').textContent = 'Version ' + r.version + ' (' + fmt(r.size) + ' bytes), started ' + time(r.createdAt) + ': ' + counts + '.';
  $('rollout').tBodies[0].replaceChildren(...r.devices.map((d) => el('tr', { 'data-state': d.state },
    el('td', { text: d.device.split(':').pop(), title: d.device }),
    el('td', { class: d.state === 'succeeded' ? 'online' : (['failed', 'rolledBack'].includes(d.state) ? 'offline' : ''), text: d.state }),
    el('td', { class: 'num', text: r.size ? Math.floor(100 * d.bytes / r.size) + ' %' : '—' }),
    el('td', { class: 'num', text: fmt(d.bytesServed) }),
    el('td', { text: d.error ? d.error.reason + ': ' + d.error.detail : '' }))));
}

function renderDevices(devices) {
  $('devices-count').textContent = devices.length;
  const body = $('devices').tBodies[0];
  body.replaceChildren(...devices.map((d) => el('tr', {},
    el('td', { text: d.deviceId, title: d.hubDeviceId }),
    el('td', { class: d.connected ? 'online' : 'offline', text: d.connected ? 'online' : 'offline' }),
    el('td', { text: ago(d.lastSeen) }),
    el('td', { class: 'num', text: d.messages }),
    el('td', { class: 'num', text: d.desiredVersion }),
    el('td', { class: 'num', text: d.reportedVersion }))));
  for (const id of ['feed-device', 'twin-device', 'logs-device']) {
    const select = $(id);
    const have = new Set([...select.options].map((o) => o.value));
    for (const d of devices) {
      if (!have.has(d.hubDeviceId)) select.append(el('option', { value: d.hubDeviceId, text: d.deviceId }));
    }
  }
}

function renderOperations(pending) {
  $('operations-count').textContent = pending.length;
  $('operations-empty').hidden = pending.length > 0;
  const list = $('operations');
  const shown = new Set([...list.children].map((li) => li.dataset.id));
  const wanted = new Set(pending.map((o) => o.id));
  for (const li of [...list.children]) if (!wanted.has(li.dataset.id)) li.remove();
  for (const op of pending) {
    if (shown.has(op.id)) continue;
    const inputId = 'override-' + op.id;
    const override = el('input', { id: inputId, type: 'text', placeholder: op.requestedDeviceId || 'device id' });
    const error = el('p', { class: 'error', role: 'alert' });
    const approve = el('button', { type: 'button', class: 'approve', text: 'Approve' });
    const cancel = el('button', { type: 'button', class: 'danger', text: 'Cancel' });
    approve.addEventListener('click', async () => {
      const body = override.value.trim() ? { deviceId: override.value.trim() } : {};
      try {
        const r = await apiJson('/admin/operations/' + encodeURIComponent(op.id) + '/approve', {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
        setStatus('Approved as ' + r.deviceId);
        await refresh();
      } catch (e) { error.textContent = 'Approval failed: ' + e.message; }
    });
    cancel.addEventListener('click', async () => {
      try {
        await apiJson('/admin/operations/' + encodeURIComponent(op.id) + '/cancel', { method: 'POST' });
        setStatus('Operation cancelled');
        await refresh();
      } catch (e) { error.textContent = 'Cancel failed: ' + e.message; }
    });
    list.append(el('li', { 'data-id': op.id, class: 'operation' },
      el('div', {}, el('span', { class: 'hint', text: 'Verification code ' }), el('span', { class: 'code', text: op.verificationCode })),
      el('div', { class: 'hint', text: 'Requested device id: ' + (op.requestedDeviceId || '(none)') + ' · workspace ' + op.workspaceId + ' · expires ' + time(op.expiresAt) }),
      el('div', { class: 'actions' }, el('label', { for: inputId, text: 'Device id (override)' }), override, approve, cancel),
      error));
  }
}

// ---- live feed -----------------------------------------------------------------------------------

async function follow() {
  const controller = new AbortController();
  state.feedAbort = controller;
  while (state.token && !controller.signal.aborted) {
    try {
      const res = await api('/admin/events', { signal: controller.signal });
      if (!res.ok) throw new Error('status ' + res.status);
      setStatus('Live');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          handleEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    setStatus('Live feed interrupted; reconnecting…');
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function handleEvent(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) name = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (!data.length) return;
  let body;
  try { body = JSON.parse(data.join('\n')); } catch (_) { return; }
  if (name === 'message') addFeedItem(body);
  else if (name === 'totals') addTotals(body);
}

function feedMatches(item) {
  const device = $('feed-device').value;
  const stream = $('feed-stream').value.trim().toLowerCase();
  if (device && item.hubDeviceId !== device) return false;
  if (stream && !streamName(item.streamGroup, item.stream).toLowerCase().includes(stream)) return false;
  return true;
}

function addFeedItem(item) {
  if (state.paused) return;
  const li = el('li', { 'data-device': item.hubDeviceId, 'data-stream': streamName(item.streamGroup, item.stream) });
  li.item = item;
  const detailId = 'message-' + item.id;
  const detail = el('div', { class: 'detail', id: detailId, hidden: '' });
  const toggle = el('button', { type: 'button', 'aria-expanded': 'false', 'aria-controls': detailId, class: 'message' },
    el('span', { class: 'when', text: time(item.receivedAt) }),
    el('span', { class: 'device', text: item.hubDeviceId.split(':').slice(1).join(':') || item.hubDeviceId }),
    el('span', { text: streamName(item.streamGroup, item.stream) }),
    el('span', { text: item.wireSize + ' B' + (item.contentEncoding ? ' · ' + item.contentEncoding : '') }));
  toggle.addEventListener('click', () => toggleDetail(toggle, detail, item));
  li.append(toggle, detail);
  li.hidden = !feedMatches(item);
  const feed = $('feed');
  feed.prepend(li);
  while (feed.children.length > FEED_KEPT) feed.lastElementChild.remove();
}

async function toggleDetail(button, detail, item) {
  const open = button.getAttribute('aria-expanded') === 'true';
  button.setAttribute('aria-expanded', String(!open));
  detail.hidden = open;
  if (open || detail.dataset.loaded) return;
  detail.textContent = 'Loading…';
  try {
    const found = await apiJson('/admin/messages?afterId=' + (item.id - 1) + '&limit=1');
    const m = found && found[0];
    if (!m || m.id !== item.id) throw new Error('the message is gone');
    detail.dataset.loaded = '1';
    const props = el('dl', {});
    const row = (k, v) => props.append(el('dt', { text: k }), el('dd', { text: v }));
    row('Id', m.id);
    row('Received', new Date(m.receivedAt).toLocaleString());
    row('Stream', streamName(m.streamGroup, m.stream));
    row('Encoding', m.contentEncoding || 'none');
    row('Wire size', m.wireSize + ' B' + (m.externalized ? ' (uploaded as a file)' : ''));
    for (const [k, v] of [['Batch', m.batchId], ['Batch slice', m.batchSliceId], ['Message id', m.messageId], ['Chunk', m.chunkId], ['Key ($.mid)', m.messageKey]]) {
      if (v) row(k, v);
    }
    for (const [k, v] of m.otherProperties || []) row(k, v);
    if (m.decodeError) row('Decode error', m.decodeError);
    let payload;
    if (m.payload !== undefined) {
      try { payload = JSON.stringify(JSON.parse(m.payload), null, 2); } catch (_) { payload = m.payload; }
    } else {
      payload = '(binary, hex) ' + m.payloadHex;
    }
    detail.replaceChildren(props, el('pre', { class: 'payload', tabindex: '0', text: payload }));
  } catch (e) {
    detail.textContent = 'Could not load the message: ' + e.message;
  }
}

function applyFeedFilter() {
  for (const li of $('feed').children) li.hidden = !feedMatches(li.item);
}

// ---- device logs ---------------------------------------------------------------------------------

const LOGS_KEPT = 300;

// The records after the last one shown (the newest LOGS_KEPT at first, or after a filter change),
// for the chosen device and level.
async function pollLogs() {
  if (state.logsPaused || state.logsLoading) return;
  state.logsLoading = true;
  try {
    const query = new URLSearchParams();
    const device = $('logs-device').value;
    if (device) query.set('device', device);
    query.set('level', $('logs-level').value);
    if (state.logsAfter) query.set('afterId', state.logsAfter); else query.set('last', LOGS_KEPT);
    query.set('limit', '1000');
    const filter = query.get('device') + '|' + query.get('level');
    const page = await apiJson('/admin/logs?' + query);
    // A filter changed while the request was out: its answer is stale.
    if (filter !== ($('logs-device').value || null) + '|' + $('logs-level').value) return;
    const list = $('logs');
    for (const entry of page.records) {
      state.logsAfter = Math.max(state.logsAfter || 0, entry.id);
      list.prepend(logItem(entry));
    }
    while (list.children.length > LOGS_KEPT) list.lastElementChild.remove();
    const dup = page.duplicates ? ' ' + page.duplicates + ' duplicate records (moved twice by a device) were dropped.' : '';
    $('logs-note').textContent = (list.children.length ? '' : 'No record yet.') + dup;
  } finally {
    state.logsLoading = false;
  }
}

function logItem(entry) {
  const r = entry.record || {};
  const level = String(r.level || 'INFO').toUpperCase();
  const when = r.time ? new Date(r.time).toLocaleTimeString() : '—';
  const li = el('li', { class: 'log level-' + level.toLowerCase(), 'data-level': level, 'data-device': entry.hubDeviceId },
    el('span', { class: 'when', text: when, title: r.time || '' }),
    el('span', { class: 'level', text: level }),
    el('span', { class: 'device', text: entry.hubDeviceId.split(':').slice(1).join(':') || entry.hubDeviceId }),
    el('span', { class: 'target', text: r.target || '' }),
    el('span', { class: 'text', text: r.message || '' }));
  if (r.fields && Object.keys(r.fields).length) li.append(el('code', { class: 'fields', text: JSON.stringify(r.fields) }));
  return li;
}

function resetLogs() {
  state.logsAfter = 0;
  $('logs').replaceChildren();
  pollLogs().catch(() => {});
}

// ---- rates chart ---------------------------------------------------------------------------------

function addTotals(t) {
  const prev = state.lastTotals;
  state.lastTotals = t;
  $('feed-note').textContent = t.skipped ? t.skipped + ' messages not shown in the feed (more than 50 a second); they are all counted in the chart.' : '';
  if (!prev) return;
  const secs = Math.max(0.001, (t.at - prev.at) / 1000);
  const before = new Map(prev.streams.map((s) => [streamName(s.streamGroup, s.stream), s]));
  for (const s of t.streams) {
    const key = streamName(s.streamGroup, s.stream);
    let entry = state.streams.get(key);
    if (!entry) {
      entry = { color: COLORS[state.streams.size % COLORS.length], points: [], total: 0 };
      state.streams.set(key, entry);
    }
    const b = before.get(key) || { messages: 0, bytes: 0 };
    entry.points.push({ t: t.at, messages: (s.messages - b.messages) / secs, bytes: (s.bytes - b.bytes) / secs });
    entry.total = s.messages;
    while (entry.points.length && entry.points[0].t < t.at - CHART_SECONDS * 1000) entry.points.shift();
  }
  renderLegend();
}

// A colour square (set through the CSSOM: the page's CSP allows no inline style attribute).
function swatch(color) {
  const e = el('span', { class: 'swatch' });
  e.style.background = color;
  return e;
}

function renderLegend() {
  const rows = [];
  for (const [key, s] of state.streams) {
    const last = s.points[s.points.length - 1] || { messages: 0, bytes: 0 };
    rows.push(el('tr', {},
      el('td', {}, swatch(s.color), key),
      el('td', { class: 'num rate', text: fmt(last.messages) }),
      el('td', { class: 'num', text: fmt(last.bytes) }),
      el('td', { class: 'num', text: s.total })));
  }
  $('legend').tBodies[0].replaceChildren(...rows);
}

function drawChart() {
  if (!state.token) return;
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const metric = $('chart-metric').value;
  const now = Date.now();
  let max = 1;
  for (const s of state.streams.values()) for (const p of s.points) max = Math.max(max, p[metric]);
  const left = 48, bottom = h - 20, top = 10, right = w - 8;
  g.strokeStyle = '#d0d7de';
  g.fillStyle = '#57606a';
  g.font = '11px system-ui, sans-serif';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - top) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText(fmt(max * i / 4), 4, y + 4);
  }
  g.fillText('-60 s', left, h - 4);
  g.fillText('now', right - 22, h - 4);
  const x = (t) => left + (right - left) * (1 - (now - t) / (CHART_SECONDS * 1000));
  const y = (v) => bottom - (bottom - top) * v / max;
  g.lineWidth = 2;
  for (const s of state.streams.values()) {
    if (!s.points.length) continue;
    g.strokeStyle = s.color;
    g.beginPath();
    s.points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[metric])) : g.moveTo(x(p.t), y(p[metric]))));
    g.stroke();
  }
  canvas.setAttribute('aria-label', (metric === 'bytes' ? 'Bytes' : 'Messages') + ' per second per stream, last 60 seconds: ' +
    [...state.streams].map(([k, s]) => k + ' ' + fmt((s.points[s.points.length - 1] || {})[metric] || 0)).join(', '));
  setTimeout(() => requestAnimationFrame(drawChart), 500);
}

// ---- twin ----------------------------------------------------------------------------------------

function withoutVersion(section) {
  const copy = Object.assign({}, section);
  delete copy.$version;
  return copy;
}

async function loadTwin(replaceDesired) {
  const id = state.twinDevice;
  if (!id) return;
  const twin = await apiJson('/admin/devices/' + encodeURIComponent(id) + '/twin');
  if (state.twinDevice !== id) return;
  $('reported').textContent = JSON.stringify(withoutVersion(twin.reported), null, 2);
  $('reported-version').textContent = 'v' + twin.reported.$version;
  $('desired-version').textContent = 'v' + twin.desired.$version;
  const desired = withoutVersion(twin.desired);
  if (replaceDesired || !state.desiredEdited) {
    state.desiredShown = desired;
    $('desired').value = JSON.stringify(desired, null, 2);
    state.desiredEdited = false;
  }
  $('desired').disabled = false;
  $('desired-save').disabled = false;
  for (const f of ['c2d-payload', 'c2d-ttl', 'c2d-send']) $(f).disabled = false;
  await loadC2d();
}

// ---- cloud-to-device messages --------------------------------------------------------------------

async function loadC2d() {
  const id = state.twinDevice;
  if (!id) return;
  const listed = await apiJson('/admin/devices/' + encodeURIComponent(id) + '/c2d');
  if (state.twinDevice !== id) return;
  const rows = listed.messages.slice(-20).reverse();
  $('c2d').tBodies[0].replaceChildren(...rows.map((m) => el('tr', { 'data-state': m.state },
    el('td', { class: 'num', text: m.id }),
    el('td', { class: m.state === 'delivered' ? 'online' : (m.state === 'expired' ? 'offline' : ''), text: m.state }),
    el('td', { text: time(m.enqueuedAt) }),
    el('td', { class: 'num', text: m.attempts }),
    el('td', { class: 'num', text: m.size }))));
}

async function sendC2d() {
  const id = state.twinDevice;
  const ttl = Number($('c2d-ttl').value);
  if (!id) return;
  if (!(ttl > 0 && ttl <= 172800)) {
    $('c2d-note').textContent = 'The time to live must be between 1 and 172800 seconds.';
    return;
  }
  try {
    const sent = await apiJson('/admin/devices/' + encodeURIComponent(id) + '/c2d', {
      method: 'POST',
      body: JSON.stringify({ payload: $('c2d-payload').value, ttlSeconds: ttl }),
    });
    $('c2d-note').textContent = 'Sent as message ' + sent.id + '.';
    await loadC2d();
  } catch (e) {
    $('c2d-note').textContent = 'Not sent: ' + e.message;
  }
}

// The JSON merge patch (RFC 7386) that turns `from` into `to`.
function mergePatch(from, to) {
  const patch = {};
  for (const k of Object.keys(from)) if (!(k in to)) patch[k] = null;
  for (const [k, v] of Object.entries(to)) {
    const old = from[k];
    const objects = (a) => a && typeof a === 'object' && !Array.isArray(a);
    if (objects(old) && objects(v)) {
      const inner = mergePatch(old, v);
      if (Object.keys(inner).length) patch[k] = inner;
    } else if (JSON.stringify(old) !== JSON.stringify(v)) {
      patch[k] = v;
    }
  }
  return patch;
}

function validateDesired() {
  let value;
  try { value = JSON.parse($('desired').value); } catch (e) {
    $('desired-error').textContent = 'Not valid JSON: ' + e.message;
    return null;
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    $('desired-error').textContent = 'Desired properties must be a JSON object.';
    return null;
  }
  $('desired-error').textContent = '';
  return value;
}

async function saveDesired() {
  const value = validateDesired();
  if (!value) { $('desired').focus(); return; }
  const patch = mergePatch(state.desiredShown || {}, value);
  if (!Object.keys(patch).length) { $('desired-done').textContent = 'Nothing changed.'; return; }
  try {
    const r = await apiJson('/admin/devices/' + encodeURIComponent(state.twinDevice) + '/desired', {
      method: 'PATCH', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(patch) });
    $('desired-done').textContent = 'Sent as version ' + r.version + '.';
    state.desiredEdited = false;
    await loadTwin(true);
  } catch (e) {
    $('desired-error').textContent = 'Not sent: ' + e.message;
  }
}

// ---- wiring --------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (e) => { e.preventDefault(); login($('token').value.trim()); });
  $('logout').addEventListener('click', () => logout(''));
  $('feed-device').addEventListener('change', applyFeedFilter);
  $('feed-stream').addEventListener('input', applyFeedFilter);
  $('feed-pause').addEventListener('click', () => {
    state.paused = !state.paused;
    $('feed-pause').setAttribute('aria-pressed', String(state.paused));
    $('feed-pause').textContent = state.paused ? 'Resume' : 'Pause';
  });
  $('logs-device').addEventListener('change', resetLogs);
  $('logs-level').addEventListener('change', resetLogs);
  $('logs-pause').addEventListener('click', () => {
    state.logsPaused = !state.logsPaused;
    $('logs-pause').setAttribute('aria-pressed', String(state.logsPaused));
    $('logs-pause').textContent = state.logsPaused ? 'Resume' : 'Pause';
  });
  $('twin-device').addEventListener('change', () => {
    state.twinDevice = $('twin-device').value;
    state.desiredEdited = false;
    $('desired-done').textContent = '';
    $('desired-error').textContent = '';
    loadTwin(true).catch((e) => { $('desired-error').textContent = e.message; });
  });
  $('desired').addEventListener('input', () => { state.desiredEdited = true; validateDesired(); });
  $('desired-save').addEventListener('click', saveDesired);
  $('c2d-send').addEventListener('click', sendC2d);
  $('rollout-select').addEventListener('change', () => loadRollouts().catch(() => {}));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved); else $('token').focus();
});
