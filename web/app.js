// The control room shell: login, navigation, and the pages (routed by #/name).
import { api, ApiError, onUnauthorized, syncClock } from './api.js';
import { onFeed, startFeed, stopFeed } from './feed.js';
import { onOutbox, startOutbox } from './outbox.js';
import { beep, clear, eventLabel, fmtTime, gridIndex, h, loadVocabulary, setSiteZone, sourceName, toast } from './ui.js';

// `needs`: the permission (api/permissions.py, listed by /api/auth/me) without which the
// page is of no use to the role and is not offered.
const PAGES = [
  // The grid worker's phone (网格员 APP): first in the tab bar for the roles that work a grid.
  { id: 'tasks', label: '我的任务', en: 'My tasks', short: '任务', needs: 'cases.read', roles: ['grid_worker', 'grid_head'], load: () => import('./pages/tasks.js') },
  { id: 'report', label: '上报', en: 'Report', short: '上报', needs: 'cases.create', roles: ['grid_worker', 'grid_head'], load: () => import('./pages/report.js') },
  { id: 'wall', label: '电视墙', en: 'Video wall', needs: 'live.view', load: () => import('./pages/wall.js') },
  { id: 'playback', label: '录像回放', en: 'Playback', needs: 'recordings.play', load: () => import('./pages/playback.js') },
  { id: 'alerts', label: '告警', en: 'Alerts', needs: 'alarms.read', load: () => import('./pages/alerts.js') },
  { id: 'cases', label: '案件', en: 'Cases', needs: 'cases.read', load: () => import('./pages/cases.js') },
  { id: 'broadcast', label: '广播', en: 'Broadcast', needs: 'broadcast.read', load: () => import('./pages/broadcast.js') },
  { id: 'warnings', label: '预警', en: 'Warnings', needs: 'cases.read', load: () => import('./pages/warnings.js') },
  { id: 'devices', label: '设备', en: 'Devices', needs: 'devices.read', load: () => import('./pages/devices.js') },
  { id: 'map', label: '地图', en: 'Map', needs: 'grid.read', load: () => import('./pages/map.js') },
  { id: 'stats', label: '统计', en: 'Statistics', needs: 'stats.read', load: () => import('./pages/stats.js') },
  { id: 'cameras', label: '摄像机管理', en: 'Cameras', short: '摄像机', needs: 'cameras.manage', group: 'admin', load: () => import('./pages/cameras.js') },
  { id: 'device-admin', label: '设备管理', en: 'Device admin', short: '设备管理', needs: 'devices.manage', group: 'admin', load: () => import('./pages/device-admin.js') },
  { id: 'gb-devices', label: '国标设备', en: 'GB/T 28181', short: '国标', needs: 'gb28181.read', group: 'admin', load: () => import('./pages/gb28181.js') },
  { id: 'users', label: '用户管理', en: 'Users', short: '用户', needs: 'users.read', group: 'admin', load: () => import('./pages/users.js') },
  { id: 'departments', label: '部门管理', en: 'Departments', short: '部门', needs: 'departments.manage', group: 'admin', load: () => import('./pages/departments.js') },
  { id: 'grid', label: '网格管理', en: 'Grid', short: '网格', needs: 'grid.manage', group: 'admin', load: () => import('./pages/grid.js') },
  { id: 'alerting', label: '告警规则', en: 'Alerting', short: '规则', needs: 'alerting.read', group: 'admin', load: () => import('./pages/alerting.js') },
  { id: 'account', label: '账户', en: 'Account', load: () => import('./pages/account.js') },
];
// Pages of a group share one entry in the navigation and a row of tabs above the page: the
// administration pages would otherwise crowd an administrator's menu past a desk's width.
const GROUPS = { admin: { label: '管理', en: 'Admin', short: '管理' } };
// Where each role starts: the field roles on their phone's task list (我的任务), a department's
// handler and the hotline on 案件, the control room at the wall (the first page offered).
const LANDING = { department_handler: 'cases', hotline: 'cases', grid_worker: 'tasks', grid_head: 'tasks' };
// The roles that work in the field see their phone pages first.
const FIELD_ROLES = ['grid_worker', 'grid_head'];

// The pages this user may use: those their permissions serve (an older hub without the
// permission list: all of them) and, for pages of some roles only, their role.
function pagesFor(me) {
  const mine = PAGES.filter((p) => (!p.roles || p.roles.includes(me.role))
    && (!p.needs || !Array.isArray(me.permissions) || me.permissions.includes(p.needs)));
  if (!FIELD_ROLES.includes(me.role)) return mine;
  const first = ['tasks', 'report', 'cases', 'map', 'alerts', 'account'];
  return [...first.map((id) => mine.find((p) => p.id === id)).filter(Boolean), ...mine.filter((p) => !first.includes(p.id))];
}

function landingFor(me) {
  const pages = state.pages || pagesFor(me);
  return pages.find((p) => p.id === LANDING[me.role]) || pages[0];
}

const root = document.getElementById('app');
const state = { me: null, grid: null, page: null, cleanup: null };

// Everything a page needs to know about the session.
export function session() { return state; }

async function boot() {
  onUnauthorized(() => {
    if (state.me) {
      state.me = null;
      offlineCache('me', null);
      stopFeed();
      showLogin('会话已过期，请重新登录。Session expired.');
    }
  });
  try {
    state.me = await api.get('/api/auth/me');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    // No network (a village without coverage): the app opens from what it kept at the last
    // sign-in, so reports can be entered and queued; the hub checks the session when they are sent.
    const kept = offlineCache('me');
    if (err instanceof ApiError && err.status === 0 && kept) {
      state.me = kept;
      state.offline = true;
      return showShell();
    }
    clear(root).append(h('div', { class: 'error-box' }, `无法连接到服务器：${err.message}`));
    return undefined;
  }
  offlineCache('me', state.me);
  return showShell();
}

function showLogin(message) {
  teardownPage();
  document.body.classList.remove('signed-in', 'has-subnav');
  const error = h('p', { class: 'form-error', role: 'alert', id: 'login-error' }, message || '');
  const user = h('input', { id: 'login-username', name: 'username', autocomplete: 'username', required: true, maxlength: 64 });
  const pass = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, maxlength: 256 });
  const button = h('button', { type: 'submit', class: 'primary', id: 'login-submit' }, '登录');
  const form = h('form', {
    class: 'login-card',
    onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      error.textContent = '';
      try {
        const answer = await api.post('/api/auth/login', { username: user.value.trim(), password: pass.value });
        pass.value = '';
        state.me = await meAfterLogin();
        offlineCache('me', state.me);
        await showShell();
        if (answer && answer.failed_attempts) showFailedAttempts(answer.failed_attempts);
      } catch (err) {
        if (err.status === 401) error.textContent = '用户名或密码错误。Wrong username or password.';
        else if (err.status === 429) error.textContent = `连续登录失败次数过多，请 ${err.retryAfter || '稍后'} 秒后再试。Too many failed logins.`;
        else if (err.status === 422) error.textContent = '请输入用户名和密码。';
        else error.textContent = `登录失败：${err.message}`;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('div', { class: 'login-brand' }, h('img', { src: '/favicon.ico', alt: '', width: 48, height: 48 }),
    h('div', {}, h('h1', {}, '雪亮工程 · 调度中心'), h('p', {}, 'Xueliang Hub control room'))),
  h('label', { for: 'login-username' }, '用户名 ', h('small', {}, 'Username')), user,
  h('label', { for: 'login-password' }, '密码 ', h('small', {}, 'Password')), pass,
  error, button,
  h('p', { class: 'hint' }, '一人一密码：请勿与他人共用账户。操作均记录在案。'));
  clear(root).append(h('main', { class: 'login-page' }, form));
  user.focus();
}

// Failed logins on this account since its last login: the owner is the one who can tell
// whether they were theirs. Stays until dismissed.
function showFailedAttempts({ count, last_at: lastAt, last_address: lastAddress }) {
  const when = lastAt ? fmtTime(lastAt, { date: true }) : '';
  const close = h('button', { type: 'button', class: 'secondary', onclick: () => box.remove() }, '知道了');
  const box = h('div', { class: 'warn failed-logins', role: 'alert', id: 'failed-logins' },
    h('strong', {}, `自上次登录以来，您的帐号有 ${count} 次登录失败。`),
    h('span', {}, ` 最近一次：${when}${lastAddress ? `，来自 ${lastAddress}` : ''}。如非本人操作，请立即修改密码并告知管理员。`),
    h('small', {}, ` ${count} failed login(s) since your last login.`), close);
  document.body.prepend(box);
}

// The hub commits a request's transaction just after answering it, so the new session may
// not be visible for a few milliseconds after a successful login: retry a 401 briefly.
async function meAfterLogin() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await api.get('/api/auth/me');
    } catch (err) {
      if (err.status !== 401 || attempt >= 8) throw new ApiError(err.status === 401 ? 0 : err.status, err.status === 401 ? '登录后会话未生效，请重试。' : err.detail);
      await new Promise((r) => setTimeout(r, 100 + attempt * 100));
    }
  }
}

// What the shell needs to open without a network, kept from the last time it had one.
function offlineCache(name, value) {
  const k = `xlhub.offline.${name}`;
  try {
    if (value === undefined) return JSON.parse(localStorage.getItem(k) || 'null');
    if (value === null) localStorage.removeItem(k); else localStorage.setItem(k, JSON.stringify(value));
  } catch { /* storage full or disabled: no offline start */ }
  return null;
}
const cachedGet = async (url, name) => {
  try { const v = await api.get(url); offlineCache(name, v); return v; } catch (err) {
    const kept = err.status === 0 ? offlineCache(name) : null;
    if (kept) return kept;
    throw err;
  }
};

async function showShell() {
  document.body.classList.add('signed-in');
  syncClock();
  const [grid, vocabulary, site] = await Promise.allSettled([cachedGet('/api/grid', 'grid'),
    loadVocabulary((url) => cachedGet(url, 'vocabulary')), cachedGet('/api/site', 'site')]);
  if (site.status === 'fulfilled' && site.value.timezone) setSiteZone(site.value.timezone);
  state.grid = gridIndex(grid.status === 'fulfilled' ? grid.value : []);
  if (grid.status === 'rejected') toast(`网格数据加载失败：${grid.reason.message}`, 'error');
  if (vocabulary.status === 'rejected') toast(`术语表加载失败：${vocabulary.reason.message}`, 'error');
  const me = state.me;
  const nodeName = state.grid.nameOf(me.node_code);
  const clock = h('span', { class: 'clock', id: 'clock' }, fmtTime(new Date()));
  state.pages = pagesFor(me);
  // One navigation: a row of links on a desk, a tab bar at the bottom of a phone.
  const entry = (p, id, href) => h('a', { href, id, dataset: { page: p.id, group: p.group || '' } },
    h('span', { class: 'nav-label' }, p.label), h('span', { class: 'nav-short', 'aria-hidden': 'true' }, p.short || p.label),
    h('small', {}, p.en));
  const groups = new Set();
  const nav = h('nav', { class: 'nav', id: 'nav', 'aria-label': '主导航' },
    state.pages.flatMap((p) => {
      if (!p.group) return [entry(p, `nav-${p.id}`, `#/${p.id}`)];
      if (groups.has(p.group)) return [];
      groups.add(p.group);
      return [entry({ ...GROUPS[p.group], id: p.id, group: p.group }, `nav-${p.group}`, `#/${p.id}`)];
    }));
  // The tabs of the group of the page shown (route() fills and shows it).
  const subnav = h('nav', { class: 'subnav', id: 'subnav', 'aria-label': '管理', hidden: true });
  const outbox = h('a', { class: 'outbox-count', id: 'outbox-count', href: '#/report', hidden: true }, '');
  const header = h('header', { class: 'topbar' },
    h('div', { class: 'brand' }, h('img', { src: '/favicon.ico', alt: '', width: 28, height: 28 }),
      h('span', {}, '雪亮 hub'), h('span', { class: 'node', id: 'my-node' }, nodeName)),
    nav,
    h('div', { class: 'who' }, outbox, clock,
      h('span', { id: 'whoami' }, `${me.display_name || me.username}（${me.role_label}）`),
      h('button', { type: 'button', class: 'link', id: 'logout', onclick: logout }, '退出')));
  const main = h('main', { id: 'page', class: 'page' });
  clear(root).append(header, subnav, main);
  if (state.clockTimer) clearInterval(state.clockTimer);
  state.clockTimer = setInterval(() => { clock.textContent = fmtTime(new Date()); }, 1000);
  window.removeEventListener('hashchange', route);
  window.addEventListener('hashchange', route);
  // Installable as an app on the field roles' phones, whose shell then opens offline. Not on
  // the control room's desks: a service worker sees every request of the pages it controls
  // (live video, playback streams), and a desk has no use for an offline shell.
  if (FIELD_ROLES.includes(me.role) && 'serviceWorker' in navigator && window.isSecureContext) {
    navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((err) => console.warn('service worker', err.message));
  }
  // What the worker entered offline: sent when the network returns; the count always in view.
  startOutbox();
  if (!state.outboxHook) {
    state.outboxHook = onOutbox((list) => {
      const el = document.getElementById('outbox-count');
      if (!el) return;
      const failed = list.filter((i) => i.state === 'failed').length;
      el.hidden = list.length === 0;
      el.textContent = `待发送 ${list.length} 条${failed ? `（${failed} 条被退回）` : ''}`;
      el.classList.toggle('has-failed', failed > 0);
    });
  }
  // Alarms and cases pushed live; a critical alarm sounds and shows on whatever page is open.
  startFeed();
  if (!state.alarmHook) {
    state.alarmHook = onFeed('alarm', (m) => {
      const sum = m.summary || {};
      if (sum.severity === 'critical' && (m.action === 'raised' || m.action === 'reopened')) {
        if (localStorage.getItem('xlhub.sound') !== 'off') beep();
        toast(`紧急告警：${sum.title || eventLabel(sum.type) || ''}（${sourceName(sum.source_id)}）`, 'error', 10000);
      }
    });
  }
  if (me.must_change_password) {
    toast('首次登录请先修改密码。Please change your initial password.', 'warn', 8000);
    if (location.hash !== '#/account') { location.hash = '#/account'; return; }
  }
  await route();
}

function teardownPage() {
  state.module = null;
  if (state.cleanup) {
    try { state.cleanup(); } catch (err) { console.error(err); }
  }
  state.cleanup = null;
}

async function route() {
  if (!state.me) return;
  const [, id, arg] = location.hash.match(/^#\/([a-z][a-z-]*)(?:\/(.+))?/) || [];
  // A page not offered to this role can still be opened by its address: it says why not.
  const page = PAGES.find((p) => p.id === id) || landingFor(state.me);
  if (id !== page.id) history.replaceState(null, '', `#/${page.id}`);
  // The same page with another argument (a case opened or closed, Back): the page follows
  // without being built again.
  if (state.page === page.id && state.module?.onArg && document.getElementById('page')?.dataset.page === page.id) {
    state.module.onArg(arg ? decodeURIComponent(arg) : null);
    return;
  }

  teardownPage();
  document.querySelectorAll('.nav a').forEach((a) => a.classList.toggle('active',
    a.dataset.page === page.id || (!!page.group && a.dataset.group === page.group)));
  showSubnav(page);
  document.title = `${page.label} · 雪亮 hub`;
  const main = document.getElementById('page');
  if (!main) return;
  clear(main).append(h('p', { class: 'loading' }, '加载中…'));
  main.dataset.page = page.id;
  state.page = page.id;
  // Each rendering has its own number: one overtaken while it was loading (the same page
  // opened again, e.g. its menu entry clicked while the landing page still waits for its
  // data) is cleaned up as soon as it returns, or its live sessions would stay open.
  const rendering = (state.rendering = (state.rendering || 0) + 1);
  try {
    const mod = await page.load();
    if (rendering !== state.rendering) return;
    state.module = mod;
    clear(main);
    const cleanup = await mod.render(main, { me: state.me, grid: state.grid, logout, arg: arg ? decodeURIComponent(arg) : null });
    if (rendering === state.rendering) state.cleanup = cleanup || null;
    else if (cleanup) cleanup();
  } catch (err) {
    console.error(err);
    clear(main).append(h('div', { class: 'error-box', role: 'alert' }, `页面出错：${err.message}`));
  }
}

// The tabs of a page's group above it (the administration pages), or none.
function showSubnav(page) {
  const subnav = document.getElementById('subnav');
  if (!subnav) return;
  const mine = page.group ? state.pages.filter((p) => p.group === page.group) : [];
  if (subnav.dataset.group !== (page.group || '')) {
    subnav.dataset.group = page.group || '';
    clear(subnav).append(...mine.map((p) => h('a', { href: `#/${p.id}`, id: `nav-${p.id}`, dataset: { page: p.id } }, p.label)));
  }
  subnav.hidden = !mine.length;
  document.body.classList.toggle('has-subnav', mine.length > 0);
  subnav.querySelectorAll('a').forEach((a) => {
    a.classList.toggle('active', a.dataset.page === page.id);
    if (a.dataset.page === page.id) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
}

export async function logout(message) {
  teardownPage();
  state.rendering = (state.rendering || 0) + 1;     // a page still loading is overtaken
  // Signed out on purpose: the logout call's own 401 (a password change already ended the
  // session) must not show 会话已过期 over this message.
  state.me = null;
  ['me', 'grid', 'vocabulary', 'site'].forEach((k) => offlineCache(k, null));
  try { await api.post('/api/auth/logout'); } catch { /* already out */ }
  stopFeed();
  if (state.clockTimer) clearInterval(state.clockTimer);
  history.replaceState(null, '', '/');
  showLogin(typeof message === 'string' ? message : '已退出登录。Signed out.');
}

window.addEventListener('pagehide', teardownPage);
boot();
