// 统计 — figures for the control room's LED wall: what is measured today from cameras,
// devices and events; case assessment (考核评价) once the cases API is on this hub.
import { api, probe } from '../api.js';
import { KIND_LABELS, clear, eventLabel, h, notAvailable, s } from '../ui.js';

function barChart(title, rows, { id } = {}) {
  const max = Math.max(1, ...rows.map((r) => r.value));
  const bw = 420;
  const rowH = 26;
  const svg = s('svg', { viewBox: `0 0 640 ${Math.max(1, rows.length) * rowH + 10}`, class: 'chart', role: 'img', 'aria-label': title });
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    svg.append(
      s('text', { x: 150, y: y + 17, 'text-anchor': 'end', class: 'chart-label' }, r.label),
      s('rect', { x: 160, y: y + 3, width: Math.max(2, (r.value / max) * bw), height: rowH - 8, rx: 3, class: `bar ${r.cls || ''}` }),
      s('text', { x: 168 + (r.value / max) * bw, y: y + 17, class: 'chart-value' }, String(r.value)));
  });
  return h('figure', { class: 'panel chart-box', id }, h('figcaption', {}, title), rows.length ? svg : h('p', { class: 'empty' }, '暂无数据'));
}

const big = (label, value, id, cls = '') => h('div', { class: `kpi ${cls}`, id }, h('span', { class: 'kpi-value' }, String(value)), h('span', { class: 'kpi-label' }, label));

export async function render(main, { grid }) {
  const kpis = h('div', { class: 'kpis', id: 'kpis' });
  const charts = h('div', { class: 'charts' });
  const led = h('button', { type: 'button', id: 'led-mode', onclick: () => {
    const el = main.querySelector('.stats');
    if (document.fullscreenElement) document.exitFullscreen();
    else el.requestFullscreen?.().catch(() => el.classList.toggle('led'));
  } }, '大屏模式 (LED)');
  const wrap = h('div', { class: 'stats' }, h('div', { class: 'toolbar' }, h('h2', {}, '统计 ', h('small', {}, 'Statistics')), led), kpis, charts);
  main.append(wrap);
  let timer = null;
  let stopped = false;

  async function load() {
    const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
    const [cameras, devices, events, live] = await Promise.all([
      api.get('/api/cameras'), api.get('/api/devices'),
      api.get(`/api/events?limit=1000&since=${encodeURIComponent(since)}`),
      api.get('/api/live/status').catch(() => ({ feeds: [] })),
    ]);
    // camera health: the newest online/offline event of each camera
    const lastHealth = new Map();
    for (const e of events) {
      if (e.source_kind === 'camera' && (e.type === 'camera.offline' || e.type === 'camera.online') && !lastHealth.has(e.source_id)) {
        lastHealth.set(e.source_id, e.type);
      }
    }
    const offline = [...lastHealth.values()].filter((t) => t === 'camera.offline').length;
    clear(kpis).append(
      big('摄像机', cameras.length, 'kpi-cameras'),
      big('离线摄像机', offline, 'kpi-offline', offline ? 'bad' : 'ok'),
      big('正在直播', live.feeds.filter((f) => f.state === 'live').length, 'kpi-live'),
      big('物联设备', devices.length, 'kpi-devices'),
      big('24小时事件', events.length, 'kpi-events'));

    const byVillage = new Map();
    for (const c of cameras) {
      const v = c.grid_path.find((code) => ['village', 'community'].includes(grid.byCode.get(code)?.level));
      const name = v ? grid.nameOf(v) : grid.nameOf(c.grid_code);
      byVillage.set(name, (byVillage.get(name) || 0) + 1);
    }
    const byKind = new Map();
    devices.forEach((d) => byKind.set(d.kind, (byKind.get(d.kind) || 0) + 1));
    const byType = new Map();
    events.forEach((e) => byType.set(e.type, (byType.get(e.type) || 0) + 1));
    const typeRows = [...byType].sort((a, b) => b[1] - a[1]).slice(0, 10)
      .map(([t, n]) => ({ label: eventLabel(t), value: n, cls: t.includes('offline') || t.includes('tamper') || t.includes('sos') ? 'bad' : '' }));

    clear(charts).append(
      barChart('各村（社区）摄像机数量', [...byVillage].map(([label, value]) => ({ label, value })), { id: 'chart-cameras' }),
      barChart('物联设备（按类型）', [...byKind].map(([k, value]) => ({ label: KIND_LABELS[k] || k, value })), { id: 'chart-devices' }),
      barChart('近24小时事件（按类型）', typeRows, { id: 'chart-events' }),
      h('section', { class: 'panel', id: 'case-stats' }, h('h3', {}, '案件统计与考核评价'), await caseStats()));
  }

  async function caseStats() {
    const res = await probe('/api/cases/stats');
    if (res.missing) return notAvailable('案件统计（按类别、状态、按期办结率）', '考核评价数据来自案件服务，接口上线后此处显示按地区、部门的按期办结率与满意度。');
    if (!res.ok) return h('p', { class: 'error' }, res.error.message);
    return h('pre', {}, JSON.stringify(res.data, null, 1));
  }

  async function loop() {
    try { await load(); } catch (err) { clear(kpis).append(h('p', { class: 'error' }, `统计加载失败：${err.message}`)); }
    if (!stopped) timer = setTimeout(loop, 30000);
  }
  await loop();
  return () => { stopped = true; clearTimeout(timer); };
}
