// The live feed of alarms, cases, notifications and broadcasts (SSE, GET /api/alerts/feed),
// one connection per signed-in page, shared by every view that listens.
import { request } from './api.js';
const handlers = new Map();   // kind → Set(fn)
let source = null;
let failures = 0;
let status = 'off';           // off | connecting | live | unavailable
const statusListeners = new Set();

function setStatus(s) {
  status = s;
  statusListeners.forEach((fn) => fn(s));
}

export function feedStatus() { return status; }
export function onFeedStatus(fn) { statusListeners.add(fn); fn(status); return () => statusListeners.delete(fn); }

export function onFeed(kind, fn) {
  if (!handlers.has(kind)) handlers.set(kind, new Set());
  handlers.get(kind).add(fn);
  return () => handlers.get(kind).delete(fn);
}

function dispatch(kind, e) {
  let message;
  try { message = JSON.parse(e.data); } catch { return; }
  (handlers.get(kind) || []).forEach((fn) => { try { fn(message); } catch (err) { console.error(err); } });
  (handlers.get('*') || []).forEach((fn) => { try { fn(message); } catch (err) { console.error(err); } });
}

export function startFeed() {
  stopFeed();
  failures = 0;
  setStatus('connecting');
  // The session cookie authenticates the stream; EventSource resumes with Last-Event-ID.
  source = new EventSource('/api/alerts/feed');
  for (const kind of ['alarm', 'case', 'broadcast', 'notification', 'delivery']) {
    source.addEventListener(kind, (e) => dispatch(kind, e));
  }
  source.addEventListener('overflow', () => { startFeed(); });
  // The session ended (强制下线, account disabled, logged out elsewhere): the next request's
  // 401 takes the page back to the login form (api.js onUnauthorized).
  source.addEventListener('ended', () => { stopFeed(); request('/api/auth/me').catch(() => {}); });
  source.onopen = () => { failures = 0; setStatus('live'); };
  source.onerror = () => {
    failures += 1;
    // The browser retries by itself; after a while without success, say so and stop.
    if (failures >= 6 || source.readyState === EventSource.CLOSED) {
      stopFeed();
      setStatus('unavailable');
    } else {
      setStatus('connecting');
    }
  };
}

export function stopFeed() {
  if (source) source.close();
  source = null;
  setStatus('off');
}
