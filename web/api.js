// Calls to the hub's API. The session is the httponly cookie set at login (same origin,
// SameSite=Strict): the page never sees or stores the token.

export class ApiError extends Error {
  constructor(status, detail, { missing = false, retryAfter = null } = {}) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    // The route does not exist on this hub yet (another part still being built), as opposed
    // to "this resource is not found / not in your area" (a 404 with a reason).
    this.missing = missing;
    this.retryAfter = retryAfter;
  }
}

const listeners = new Set();
export function onUnauthorized(fn) { listeners.add(fn); }

function detailOf(body) {
  if (!body) return null;
  if (typeof body.detail === 'string') return body.detail;
  if (Array.isArray(body.problems)) return body.problems.map((p) => `${(p.loc || []).join('.')}: ${p.msg}`).join('; ');
  return null;
}

export async function request(path, { method = 'GET', body, bodyRaw, headers = {}, raw = false, signal, keepalive } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, credentials: 'same-origin', signal, keepalive };
  if (bodyRaw !== undefined) {
    init.body = bodyRaw;      // FormData: the browser sets the multipart boundary
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, '无法连接到服务器 (network error)');
  }
  if (res.status === 401 && !path.startsWith('/api/auth/login')) {
    listeners.forEach((fn) => fn());
  }
  if (!res.ok) {
    let parsed = null;
    try { parsed = await res.json(); } catch { /* not JSON */ }
    const detail = detailOf(parsed);
    const missing = (res.status === 404 || res.status === 405) && (detail === 'Not Found' || detail === 'Method Not Allowed');
    throw new ApiError(res.status, detail, { missing, retryAfter: res.headers.get('Retry-After') });
  }
  if (raw) return res;
  if (res.status === 204) return null;
  const type = res.headers.get('Content-Type') || '';
  return type.includes('json') ? res.json() : res.text();
}

export const api = {
  get: (path, opts) => request(path, { ...opts, method: 'GET' }),
  post: (path, body, opts) => request(path, { ...opts, method: 'POST', body }),
  del: (path, opts) => request(path, { ...opts, method: 'DELETE' }),
};

// Does this hub have the endpoint yet? (GET probe; "missing" only when the route is absent.)
export async function probe(path) {
  try {
    return { ok: true, data: await api.get(path) };
  } catch (err) {
    if (err instanceof ApiError && err.missing) return { ok: false, missing: true, error: err };
    return { ok: false, missing: false, error: err };
  }
}

// The hub's clock relative to this workstation's (ms to add to Date.now()); frame
// timestamps sent to the hub are in the hub's time.
let clockOffset = 0;
export async function syncClock() {
  try {
    let best = null;
    for (let i = 0; i < 3; i += 1) {
      const t0 = Date.now();
      const { now_ms: server } = await api.get('/api/live/clock');
      const t1 = Date.now();
      const rtt = t1 - t0;
      if (!best || rtt < best.rtt) best = { rtt, offset: server - (t0 + t1) / 2 };
    }
    clockOffset = best.offset;
  } catch { clockOffset = 0; }
  return clockOffset;
}
export function hubNow() { return Date.now() + clockOffset; }
export function toHubTime(epochMs) { return epochMs + clockOffset; }
