// The service worker of the installed app (网格员 APP): keeps the UI's own files so that the
// app opens without a network (a village with patchy coverage), and nothing else. The API
// is never cached here: what the worker enters offline is queued by the page itself
// (web/outbox.js, IndexedDB) and sent, exactly once, when the network returns.
const CACHE = 'xlhub-shell-v1';
const SHELL = ['/', '/web/style.css', '/web/app.js', '/web/api.js', '/web/ui.js', '/web/feed.js', '/web/outbox.js',
  '/web/pages/tasks.js', '/web/pages/report.js', '/web/pages/alerts.js', '/favicon.ico', '/manifest.webmanifest', '/web/icons/icon-192.png'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

// The UI's files: network first (a new release is picked up at once), the cache when offline.
self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  const shell = url.pathname === '/' || url.pathname.startsWith('/web/') || url.pathname === '/favicon.ico'
    || url.pathname === '/manifest.webmanifest';
  if (!shell) return;                    // the API, live video, evidence: straight to the network
  event.respondWith(fetch(req).then((res) => {
    if (res.ok) { const copy = res.clone(); caches.open(CACHE).then((c) => c.put(url.pathname === '/' ? '/' : req, copy)); }
    return res;
  }).catch(() => caches.match(url.pathname === '/' ? '/' : req).then((hit) => hit || Response.error())));
});
