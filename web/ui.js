// Small DOM helpers (no framework): h() builds elements with text nodes only, so nothing
// from the API is ever parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

export function toast(message, kind = 'info', ms = 4000) {
  const box = document.getElementById('toasts');
  const t = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(t);
  setTimeout(() => t.remove(), ms);
}

// A page section that is not wired yet: says so plainly instead of showing made-up data.
export function notAvailable(what, detail) {
  return h('div', { class: 'not-available', dataset: { notAvailable: 'true' } },
    h('strong', {}, `${what}：尚未接入`),
    h('span', {}, detail || '该功能的服务端接口尚未在本系统上线，上线后此处将自动显示。'),
    h('small', {}, 'Not available yet: the hub has no API for this yet.'));
}

export function errorBox(err, what = '加载失败') {
  const detail = err && (err.detail || err.message) ? `${err.detail || err.message}` : '';
  return h('div', { class: 'error-box', role: 'alert' }, h('strong', {}, what), detail ? h('span', {}, detail) : null);
}

const pad = (n) => String(n).padStart(2, '0');

// Every time is shown in the SITE's time zone (GET /api/site), whatever the browser's: a
// laptop or phone set to UTC shows the same clock as the control room and the case text.
let SITE_ZONE = 'Asia/Shanghai';
let zoneParts = null;
export function setSiteZone(zone) {
  try {
    zoneParts = new Intl.DateTimeFormat('en-GB', {
      timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    });
    SITE_ZONE = zone;
  } catch { /* an unknown zone: keep the last good one */ }
  return SITE_ZONE;
}
export function siteZone() { return SITE_ZONE; }
setSiteZone(SITE_ZONE);

// {year, month, day, hour, minute, second} of an instant, on the site's wall clock.
export function siteParts(value) {
  const d = value instanceof Date ? value : new Date(value);
  const out = {};
  for (const p of zoneParts.formatToParts(d)) if (p.type !== 'literal') out[p.type] = p.value;
  return out;
}

export function fmtTime(value, { seconds = true, date = false } = {}) {
  if (value === null || value === undefined || value === '') return '—';
  const d = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(d.getTime())) return '—';
  const p = siteParts(d);
  const t = `${p.hour}:${p.minute}${seconds ? `:${p.second}` : ''}`;
  if (!date) return t;
  return `${p.year}-${p.month}-${p.day} ${t}`;
}

// A <input type="datetime-local"> value ("2026-12-07T08:30") read as the site's wall clock.
export function fromSiteLocal(text) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(text || '');
  if (!m) return null;
  const asUtc = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  // the zone's offset at that moment (twice: across a DST change the first guess may be off)
  let guess = asUtc;
  for (let i = 0; i < 2; i += 1) {
    const p = siteParts(new Date(guess));
    const shown = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
    guess = asUtc - (shown - guess);
  }
  return new Date(guess);
}

// The site wall clock of an instant as a datetime-local value.
export function toSiteLocal(value) {
  const p = siteParts(value);
  return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
}

export function fmtAgo(value) {
  const ms = Date.now() - new Date(value).getTime();
  if (Number.isNaN(ms)) return '—';
  if (ms < 60_000) return `${Math.max(0, Math.round(ms / 1000))} 秒前`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} 分钟前`;
  if (ms < 86_400_000) return `${Math.round(ms / 3_600_000)} 小时前`;
  return fmtTime(value, { date: true, seconds: false });
}

// The hub's vocabulary (codes → Chinese labels) comes from the API (GET /api/vocabulary,
// config/vocabulary.py): loadVocabulary() fills these once after login; pages import them as
// live bindings, so there is no second copy of any label here.
export let LEVEL_LABELS = {};
export let KIND_LABELS = {};
export let CATEGORIES = [];
// 紧急程度, coloured as the attention levels (green 一般 / yellow 中等 / red 严重), with the
// event severity a flag of that urgency carries.
export let URGENCIES = [];
export let SEVERITY_LABELS = {};
let EVENT_TYPES = {};
let EVENT_FAMILIES = {};
export let VOCAB = {};

export async function loadVocabulary(get) {
  const v = await get('/api/vocabulary');
  LEVEL_LABELS = v.levels;
  KIND_LABELS = v.source_kinds;
  CATEGORIES = Object.entries(v.categories).map(([code, label]) => ({ code, label }));
  URGENCIES = Object.entries(v.urgencies).map(([code, u]) => ({ code, label: u.label, colour: u.colour, severity: u.event_severity }));
  // Alarms use critical…warning, events info…critical: one table of labels serves both.
  SEVERITY_LABELS = { ...v.event_severities, ...v.alarm_severities };
  EVENT_TYPES = v.event_types;
  EVENT_FAMILIES = v.event_families;
  VOCAB = v;
  return v;
}

export function eventLabel(type) {
  if (EVENT_TYPES[type]) return EVENT_TYPES[type].label;
  const family = type && type.split('.').slice(0, 2).join('.');
  if (EVENT_FAMILIES[family]) return EVENT_FAMILIES[family];
  return type;
}

// The grid tree as the API gives it (parents before children) → lookup helpers.
export function gridIndex(nodes) {
  const byCode = new Map(nodes.map((n) => [n.code, { ...n, children: [] }]));
  const roots = [];
  for (const n of byCode.values()) {
    const parent = n.parent_code && byCode.get(n.parent_code);
    if (parent) parent.children.push(n); else roots.push(n);
  }
  const nameOf = (code) => byCode.get(code)?.name || code;
  // "东山镇 › 东山村 › 东山村第一网格", from below the caller's own node
  // (codes outside the caller's tree — the levels above a grid worker's grid — are left out)
  const trail = (path, from = 0) => (path || []).slice(from).filter((c) => byCode.has(c)).map(nameOf).join(' › ');
  return { byCode, roots, nameOf, trail };
}

export function modal(title, body, { onClose, wide = false } = {}) {
  const close = () => { backdrop.remove(); document.removeEventListener('keydown', onKey); onClose?.(); };
  const onKey = (e) => { if (e.key === 'Escape') close(); };
  const dialog = h('div', { class: `modal${wide ? ' modal-wide' : ''}`, role: 'dialog', 'aria-modal': 'true', 'aria-label': title },
    h('header', {}, h('h2', {}, title), h('button', { class: 'icon-btn', type: 'button', 'aria-label': '关闭', onclick: close }, '×')),
    body);
  const backdrop = h('div', { class: 'modal-backdrop', onclick: (e) => { if (e.target === backdrop) close(); } }, dialog);
  document.body.append(backdrop);
  document.addEventListener('keydown', onKey);
  return { close, dialog };
}

let audioCtx = null;
// A short alarm tone for critical alerts (Web Audio: nothing to download).
export function beep({ freq = 880, ms = 180, times = 3 } = {}) {
  try {
    audioCtx = audioCtx || new AudioContext();
    for (let i = 0; i < times; i += 1) {
      const osc = audioCtx.createOscillator();
      const gain = audioCtx.createGain();
      osc.frequency.value = freq;
      gain.gain.value = 0.15;
      osc.connect(gain).connect(audioCtx.destination);
      const at = audioCtx.currentTime + i * (ms * 2) / 1000;
      osc.start(at);
      osc.stop(at + ms / 1000);
    }
  } catch { /* no audio device */ }
}

// Cameras' and devices' names by id (东山村村口, not cam-dsc-01), fetched once per session
// when a page first needs them; an unknown id shows as itself.
let SOURCE_NAMES = new Map();
let sourcesLoading = null;
export function loadSourceNames(get) {
  if (!sourcesLoading) {
    sourcesLoading = Promise.allSettled([get('/api/cameras'), get('/api/devices')]).then((res) => {
      const m = new Map();
      res.forEach((r) => { if (r.status === 'fulfilled') r.value.forEach((x) => m.set(x.id, x.name)); });
      SOURCE_NAMES = m;
      return m;
    });
  }
  return sourcesLoading;
}
export function sourceName(id) { return (id && SOURCE_NAMES.get(id)) || id || ''; }
