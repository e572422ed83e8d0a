// 统计 — figures for the control room's LED wall: cases by category and state, on-time rate
// by area and department (考核评价), device and camera availability. Every figure comes from
// the hub; a block whose API is not reachable for this role says so.
import { api } from '../api.js';
import { CATEGORIES, KIND_LABELS, clear, fmtTime, h, s } from '../ui.js';

function barChart(title, rows, { id, unit = '', max: fixedMax } = {}) {
  const max = fixedMax || Math.max(1, ...rows.map((r) => r.value));
  const bw = 400;
  const rowH = 26;
  const svg = s('svg', { viewBox: `0 0 640 ${Math.max(1, rows.length) * rowH + 10}`, class: 'chart', role: 'img', 'aria-label': title });
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    const w = Math.max(2, (r.value / max) * bw);
    svg.append(
      s('text', { x: 170, y: y + 17, 'text-anchor': 'end', class: 'chart-label' }, r.label),
      s('rect', { x: 180, y: y + 3, width: w, height: rowH - 8, rx: 3, class: `bar ${r.cls || ''}` }),
      s('text', { x: 188 + w, y: y + 17, class: 'chart-value' }, `${r.text ?? r.value}${unit}`));
  });
  return h('figure', { class: 'panel chart-box', id }, h('figcaption', {}, title), rows.length ? svg : h('p', { class: 'empty' }, '暂无数据'));
}

const big = (label, value, id, cls = '') => h('div', { class: `kpi ${cls}`, id }, h('span', { class: 'kpi-value' }, String(value)), h('span', { class: 'kpi-label' }, label));
const pct = (x) => (x === null || x === undefined ? '—' : `${Math.round(x * 100)}%`);
const unavailable = (title, id, why) => h('figure', { class: 'panel chart-box', id }, h('figcaption', {}, title), h('p', { class: 'muted' }, why));

export async function render(main, { grid, me }) {
  // Figures a role may not read are not asked for (no 403s): the block says why instead.
  const may = (perm) => !me || !me.permissions || me.permissions.includes(perm);
  const denied = Promise.resolve({ error: { status: 403, detail: '当前角色无权查看考核评价' } });
  const kpis = h('div', { class: 'kpis', id: 'kpis' });
  const charts = h('div', { class: 'charts' });
  const wrap = h('div', { class: 'stats' });
  const led = h('button', { type: 'button', id: 'led-mode', onclick: () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else wrap.requestFullscreen?.().catch(() => wrap.classList.toggle('led'));
  } }, '大屏模式 (LED)');
  const stamp = h('span', { class: 'muted', id: 'stats-time' });
  wrap.append(h('div', { class: 'toolbar' }, h('h2', {}, '统计 ', h('small', {}, 'Statistics')), led, stamp), kpis, charts);
  main.append(wrap);
  let timer = null;
  let stopped = false;

  const soft = (p) => p.then((data) => ({ data }), (error) => ({ error }));

  async function load() {
    const since30 = new Date(Date.now() - 30 * 86400 * 1000).toISOString();
    const [cameras, devices, health, live, deviceState, cases, byArea, byDept] = await Promise.all([
      api.get('/api/cameras'), api.get('/api/devices'),
      soft(api.get('/api/camera-health')),
      soft(api.get('/api/live/status')),
      soft(api.get('/api/device-state')),
      may('cases.read') ? soft(api.get(`/api/cases?limit=1000&since=${encodeURIComponent(since30)}`)) : denied,
      may('stats.read') ? soft(api.get('/api/alerts/stats?by=area&level=village')) : denied,
      may('stats.read') ? soft(api.get('/api/alerts/stats?by=department')) : denied,
    ]);
    // camera availability from the workers' health reports; a camera no worker reports on
    // (never, or not for a minute) is unknown, not online
    const lastHealth = new Map();
    for (const c of health.data || []) {
      if (c.state !== 'unknown' && !c.stale) lastHealth.set(c.camera_id, c.state);
    }
    const camOnline = [...lastHealth.values()].filter((t) => t === 'online').length;
    const states = deviceState.data || [];
    const devOnline = states.filter((d) => d.status === 'online').length;
    const openCases = (cases.data || []).filter((c) => !['closed', 'evaluated', 'rejected', 'cancelled'].includes(c.state));
    const overdue = openCases.filter((c) => c.overdue || c.stage_overdue).length;
    // cameras the workers never reported on are unknown, not online
    const camKnown = cameras.filter((c) => lastHealth.has(c.id)).length;
    clear(kpis).append(
      camKnown ? big('摄像机在线', `${camOnline}/${cameras.length}`, 'kpi-cameras', camOnline < cameras.length ? 'bad' : 'ok')
        : big(`摄像机 ${cameras.length} 台（暂无健康数据）`, '—', 'kpi-cameras'),
      big('设备在线', deviceState.data ? `${devOnline}/${devices.length}` : '—', 'kpi-devices', deviceState.data && devOnline < devices.length ? 'bad' : ''),
      big('正在直播', live.data ? live.data.feeds.filter((f) => f.state === 'live').length : '—', 'kpi-live'),
      big('在办案件', cases.data ? openCases.length : '—', 'kpi-open-cases'),
      big('超时案件', cases.data ? overdue : '—', 'kpi-overdue', overdue ? 'bad' : 'ok'),
      big('按期办结率', byArea.data ? pct(byArea.data.total.on_time_rate) : '—', 'kpi-on-time'));
    stamp.textContent = `更新于 ${fmtTime(new Date())}`;

    const blocks = [];
    if (cases.data) {
      const byCat = CATEGORIES.map((c) => ({ label: c.label, value: cases.data.filter((x) => x.category === c.code).length }));
      const byState = new Map();
      cases.data.forEach((c) => byState.set(c.state_label || c.state, (byState.get(c.state_label || c.state) || 0) + 1));
      blocks.push(barChart('近30天案件（按类别）', byCat, { id: 'chart-case-category' }),
        barChart('近30天案件（按状态）', [...byState].map(([label, value]) => ({ label, value })), { id: 'chart-case-state' }));
    } else {
      blocks.push(unavailable('案件统计', 'chart-case-category', cases.error?.status === 403 ? '当前角色不查看案件。' : `案件数据不可用：${cases.error?.message || ''}`));
    }
    const rateRows = (r) => r.data.groups.filter((g) => g.cases).map((g) => ({
      label: g.name || g.key, value: g.on_time_rate === null ? 0 : g.on_time_rate * 100,
      text: g.on_time_rate === null ? `— (${g.cases}件)` : `${Math.round(g.on_time_rate * 100)}% (${g.closed}/${g.cases})`,
      cls: g.on_time_rate !== null && g.on_time_rate < 0.8 ? 'bad' : '',
    }));
    blocks.push(byArea.data ? barChart('按期办结率（按村/社区）', rateRows(byArea), { id: 'chart-on-time-area', max: 100 })
      : unavailable('按期办结率（按地区）', 'chart-on-time-area', byArea.error?.status === 403 ? '考核评价仅对调度员和中心主任开放。' : `不可用：${byArea.error?.message || ''}`));
    blocks.push(byDept.data ? barChart('按期办结率（按部门）', rateRows(byDept), { id: 'chart-on-time-dept', max: 100 })
      : unavailable('按期办结率（按部门）', 'chart-on-time-dept', byDept.error?.status === 403 ? '考核评价仅对调度员和中心主任开放。' : `不可用：${byDept.error?.message || ''}`));
    const byKind = new Map();
    for (const d of devices) {
      const st = states.find((x) => x.id === d.id);
      const k = byKind.get(d.kind) || { total: 0, online: 0 };
      k.total += 1;
      if (st && st.status === 'online') k.online += 1;
      byKind.set(d.kind, k);
    }
    blocks.push(barChart('设备在线率（按类型）', [...byKind].map(([kind, k]) => ({
      label: KIND_LABELS[kind] || kind, value: deviceState.data ? (k.online / k.total) * 100 : 0,
      text: deviceState.data ? `${k.online}/${k.total}` : `${k.total} 台（状态不可用）`, cls: k.online < k.total ? 'bad' : '',
    })), { id: 'chart-devices', max: 100 }));
    const byVillage = new Map();
    for (const c of cameras) {
      const v = c.grid_path.find((code) => ['village', 'community'].includes(grid.byCode.get(code)?.level));
      const name = v ? grid.nameOf(v) : grid.nameOf(c.grid_code);
      const cur = byVillage.get(name) || { total: 0, online: 0 };
      cur.total += 1;
      if (lastHealth.get(c.id) === 'online') cur.online += 1;
      byVillage.set(name, cur);
    }
    blocks.push(barChart(camKnown ? '摄像机在线（按村/社区）' : '摄像机数量（按村/社区，暂无健康数据）', [...byVillage].map(([label, v]) => ({
      label, value: camKnown ? v.online : v.total, text: camKnown ? `${v.online}/${v.total}` : `${v.total}`,
      cls: camKnown && v.online < v.total ? 'bad' : '',
    })), { id: 'chart-cameras' }));
    clear(charts).append(...blocks);
  }

  async function loop() {
    try { await load(); } catch (err) { clear(kpis).append(h('p', { class: 'error' }, `统计加载失败：${err.message}`)); }
    if (!stopped) timer = setTimeout(loop, 30000);
  }
  await loop();
  return () => { stopped = true; clearTimeout(timer); };
}
