// The phone's outbox (网格员 APP, offline): every report and every action with photos the
// worker enters goes into this queue in IndexedDB first — nothing is lost when the village
// has no signal, or the phone is closed before it could send — and is sent when the network
// is there. Each queued item carries a key made on the phone (Idempotency-Key): the hub
// records it with what the first request made, so an item sent twice — the answer was lost
// on the way back and the phone tried again — is still ONE case (api/idempotency.py). Photos
// are uploaded first (each with a key of its own), then the report or action names them.
import { ApiError, request } from './api.js';

const DB = 'xlhub-outbox';
const STORE = 'items';
const listeners = new Set();
const OFFLINE = '无网络，联网后自动发送';
let dbPromise = null;
let flushing = null;
let again = false;
let timer = null;

function db() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const open = indexedDB.open(DB, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(STORE, { keyPath: 'key' });
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }
  return dbPromise;
}

async function tx(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(STORE, mode);
    const out = fn(t.objectStore(STORE));
    t.oncomplete = () => resolve(out && 'result' in out ? out.result : undefined);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error || new Error('IndexedDB transaction aborted'));
  });
}

export async function items() {
  const all = (await tx('readonly', (s) => s.getAll())) || [];
  return all.sort((a, b) => a.created - b.created);
}

async function put(item) { await tx('readwrite', (s) => s.put(item)); }
async function remove(key) { await tx('readwrite', (s) => s.delete(key)); }

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

async function changed() {
  const list = await items();
  listeners.forEach((fn) => { try { fn(list); } catch (err) { console.error(err); } });
  return list;
}

// fn(items) on every change of the queue (and once now).
export function onOutbox(fn) {
  listeners.add(fn);
  items().then(fn).catch(() => {});
  return () => listeners.delete(fn);
}

// Queue a report (kind 'report': body of POST /api/cases) or a lifecycle action (kind
// 'action': caseId, action, body of POST /api/cases/{id}/actions/{action}), with files
// (File/Blob objects, kept in IndexedDB as they are). Returns the queued item.
export async function enqueue({ kind, label, body, caseId = null, action = null, files = [] }) {
  const key = newKey();
  const item = {
    key, kind, label, body, caseId, action, created: Date.now(), attempts: 0, state: 'pending', error: null,
    files: [...files].map((f, i) => ({ key: `${key}-f${i}`, blob: f, name: f.name || `photo-${i}`, type: f.type, evidence: null })),
    result: null,
  };
  await put(item);
  await changed();
  flush();
  return item;
}

export async function retry(key) {
  const all = await items();
  const item = all.find((i) => i.key === key);
  if (!item) return;
  item.state = 'pending'; item.error = null;
  await put(item);
  await changed();
  flush();
}

export async function discard(key) { await remove(key); await changed(); }

// A refusal that sending again cannot change (bad input, not allowed, the case moved):
// the item stays in the queue, marked, with the hub's reason, until the worker decides.
const permanent = (err) => err instanceof ApiError && err.status >= 400 && err.status < 500
  && ![401, 408, 425, 429].includes(err.status);

async function sendOne(item) {
  for (const f of item.files) {
    if (f.evidence) continue;
    const form = new FormData();
    form.append('file', f.blob, f.name);
    const stored = await request('/api/cases/media', { method: 'POST', bodyRaw: form, headers: { 'Idempotency-Key': f.key } });
    f.evidence = stored.evidence_id;
    await put(item);            // uploaded: a retry of the item does not send the file again
  }
  const body = { ...item.body, evidence_ids: [...(item.body.evidence_ids || []), ...item.files.map((f) => f.evidence)] };
  const path = item.kind === 'report' ? '/api/cases'
    : `/api/cases/${encodeURIComponent(item.caseId)}/actions/${encodeURIComponent(item.action)}`;
  return request(path, { method: 'POST', body, headers: { 'Idempotency-Key': item.key } });
}

async function flushNow() {
  let sent = 0;
  for (const item of await items()) {
    if (item.state === 'failed') continue;
    if (!navigator.onLine) {
      if (item.error !== OFFLINE) { item.error = OFFLINE; await put(item); }
      continue;
    }
    item.attempts += 1;
    item.state = 'sending';
    await put(item);
    await changed();
    try {
      const result = await sendOne(item);
      await remove(item.key);
      sent += 1;
      window.dispatchEvent(new CustomEvent('outbox-sent', { detail: { item, result } }));
    } catch (err) {
      if (permanent(err)) {
        item.state = 'failed';
        item.error = err.detail || err.message;
      } else {
        item.state = 'pending';
        item.error = err.status ? `暂未发送（${err.status}），稍后自动重试` : OFFLINE;
      }
      await put(item);
      await changed();
      if (!permanent(err)) break;     // no network or the hub busy: try again later, in order
    }
  }
  await changed();
  return sent;
}

// Send what is queued (one flush at a time, also across tabs where the browser has locks).
export function flush() {
  if (flushing) { again = true; return flushing; }
  const run = () => flushNow();
  flushing = (navigator.locks ? navigator.locks.request('xlhub-outbox', run) : run())
    .catch((err) => { console.warn('outbox flush', err); return 0; })
    .finally(() => {
      flushing = null;
      if (again) { again = false; flush(); }
    });
  return flushing;
}

export function startOutbox() {
  window.addEventListener('online', () => flush());
  window.addEventListener('offline', () => flush());     // marks what waits as waiting for the network
  if (!timer) timer = setInterval(() => flush(), 20000);
  flush();
}
