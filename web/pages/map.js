// 地图 — grids, devices and cameras drawn as SVG from the site file's coordinates (no online
// map tiles: the hub has no internet), devices coloured by status, drone and radio tracks
// replayed over a chosen window, SOS brought to the front.
import { api } from '../api.js';
import { onFeed } from '../feed.js';
import { KIND_LABELS, LEVEL_LABELS, clear, errorBox, eventLabel, fmtTime, h, s } from '../ui.js';

const W = 1000;
const H = 720;
const KIND_COLOURS = { camera: '#4fc3f7', door: '#ffb74d', speaker: '#81c784', drone: '#ba68c8', radio: '#f06292' };
const WINDOWS = [{ h: 1, label: '近1小时' }, { h: 6, label: '近6小时' }, { h: 24, label: '近24小时' }];

export async function render(main, { me, grid }) {
  let cameras = [];
  let devices = [];
  try {
    [cameras, devices] = await Promise.all([api.get('/api/cameras'), api.get('/api/devices')]);
  } catch (err) {
    main.append(errorBox(err, '地图数据加载失败'));
    return null;
  }
  let states = new Map();
  let stateNote = '';
  try {
    states = new Map((await api.get('/api/device-state')).map((d) => [d.id, d]));
  } catch (err) {
    stateNote = err.missing ? '设备状态接口尚未接入' : `设备状态不可用：${err.message}`;
  }
  const nodes = [...grid.byCode.values()];
  const points = [];
  for (const n of nodes) {
    (n.boundary || []).forEach(([lon, lat]) => points.push([lon, lat]));
    if (n.center_lat !== null && n.center_lon !== null) points.push([n.center_lon, n.center_lat]);
  }
  [...cameras, ...devices].forEach((d) => { if (d.lat !== null && d.lon !== null) points.push([d.lon, d.lat]); });
  if (!points.length) {
    main.append(h('div', { class: 'empty' }, '站点文件中没有坐标，无法绘制地图。'));
    return null;
  }
  const lons = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  const [minLon, maxLon, minLat, maxLat] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);   // equirectangular, true at mid latitude
  const spanX = Math.max((maxLon - minLon) * kx, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const scale = Math.min((W - 60) / spanX, (H - 60) / spanY);
  const ox = (W - spanX * scale) / 2;
  const oy = (H - spanY * scale) / 2;
  const X = (lon) => ox + (lon - minLon) * kx * scale;
  const Y = (lat) => H - oy - (lat - minLat) * scale;

  const legend = h('div', {}, h('h3', {}, '图例 ', h('small', {}, 'Legend')),
    h('ul', { class: 'legend' }, Object.entries(KIND_COLOURS).map(([k, c]) => h('li', {},
      h('span', { class: 'swatch', style: { background: c } }), KIND_LABELS[k])),
    h('li', {}, h('span', { class: 'swatch offline-swatch' }), '离线（灰色）'),
    h('li', {}, h('span', { class: 'swatch', style: { background: '#f9a825', transform: 'rotate(45deg)' } }), '在办案件（按紧急程度着色，点击打开）'),
    h('li', {}, h('span', { class: 'swatch', style: { border: '3px solid #ff5252', borderRadius: '50%' } }), '未清除告警'),
    h('li', {}, h('span', { class: 'swatch', style: { border: '1px dashed #4fc3f7', borderRadius: '50%' } }), '同一地点的多个标记（散开显示）')),
    stateNote ? h('p', { class: 'muted' }, stateNote) : h('p', { class: 'muted' }, '点击设备或区域查看详情。'));
  const details = h('div', { id: 'map-details' });
  const sosBox = h('div', { id: 'sos', class: 'sos', hidden: true });
  const windowSel = h('select', { id: 'track-window' }, WINDOWS.map((w) => h('option', { value: w.h }, w.label)));
  const replayBtn = h('button', { type: 'button', id: 'track-replay' }, '回放轨迹');
  const trackNote = h('p', { class: 'muted small', id: 'track-note' });
  const info = h('aside', { class: 'panel map-info', id: 'map-info' }, sosBox, legend,
    h('h3', {}, '无人机与对讲机轨迹'), h('div', { class: 'row' }, windowSel, replayBtn), trackNote, details);
  const show = (title, rows) => {
    clear(details).append(h('h3', {}, title), h('dl', {}, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };

  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map', id: 'map-svg', role: 'img', 'aria-label': '辖区地图' });
  const order = ['county', 'township', 'village', 'community', 'grid'];
  const sorted = nodes.filter((n) => n.boundary && n.boundary.length >= 3)
    .sort((a, b) => order.indexOf(a.level) - order.indexOf(b.level));
  for (const n of sorted) {
    const d = n.boundary.map(([lon, lat], i) => `${i ? 'L' : 'M'}${X(lon).toFixed(1)},${Y(lat).toFixed(1)}`).join(' ') + 'Z';
    svg.append(s('path', { d, class: `area level-${n.level}`, 'data-code': n.code,
      onclick: () => show(`${n.name}`, [['级别', LEVEL_LABELS[n.level] || n.level], ['编码', n.code],
        ['摄像机', String(cameras.filter((c) => c.grid_path.includes(n.code)).length)],
        ['设备', String(devices.filter((x) => x.grid_path.includes(n.code)).length)]]) },
    s('title', {}, `${n.name}（${LEVEL_LABELS[n.level] || n.level}）`)));
  }
  for (const n of sorted) {
    if (n.center_lat === null || n.level === 'grid') continue;
    svg.append(s('text', { x: X(n.center_lon), y: Y(n.center_lat), class: `label level-${n.level}`, 'text-anchor': 'middle' }, n.name));
  }
  const tracksLayer = s('g', { class: 'tracks' });
  const spreadLayer = s('g', { class: 'spread' });
  const markersLayer = s('g', { class: 'markers' });
  svg.append(tracksLayer, spreadLayer, markersLayer);
  const markers = new Map();
  // Every marker is drawn around (0, 0) and placed by layout(): things at the same place
  // are spread on a small ring (with a line to where they are), and markers keep their size
  // on screen whatever the map's width (a phone shows the 1000-unit map at ~380 px).
  const placed = [];           // {g, x, y}
  const put = (g, x, y) => { placed.push({ g, x, y }); markersLayer.append(g); return g; };
  const mark = (item, kind) => {
    const st = states.get(item.id);
    const lat = st && st.lat !== null ? st.lat : item.lat;
    const lon = st && st.lon !== null ? st.lon : item.lon;
    if (lat === null || lon === null) return;
    const x = X(lon);
    const y = Y(lat);
    const offline = st && st.status === 'offline';
    const colour = offline ? '#607d8b' : KIND_COLOURS[kind] || '#ccc';
    const shape = kind === 'camera'
      ? s('path', { d: 'M-7,6 L7,6 L0,-8 Z', fill: colour })
      : s('circle', { cx: 0, cy: 0, r: 5.5, fill: colour });
    const g = s('g', { class: `marker kind-${kind}${offline ? ' offline' : ''}`, 'data-id': item.id, 'data-status': st ? st.status || 'unknown' : 'unknown', tabindex: 0,
      onclick: () => show(`${KIND_LABELS[kind]} · ${item.name}`, [['编号', item.id], ['网格', grid.trail(item.grid_path, 1) || grid.nameOf(item.grid_code)],
        ['状态', st ? `${st.status_label}${st.status_reason ? `（${st.status_reason}）` : ''}` : (kind === 'camera' ? '见电视墙' : '未知')],
        ['最后通信', st && st.last_seen_at ? fmtTime(st.last_seen_at, { date: true }) : '—'],
        ['坐标', `${lat.toFixed(5)}, ${lon.toFixed(5)}`]]) },
    shape, s('title', {}, `${KIND_LABELS[kind]}：${item.name}${st ? `（${st.status_label}）` : ''}`));
    put(g, x, y);
    markers.set(item.id, { g, x, y, name: item.name });
  };
  devices.forEach((d) => mark(d, d.kind));
  cameras.forEach((c) => mark(c, 'camera'));

  // Open cases where they happened, and the active alarms at their device or camera.
  const caseLayerNote = h('p', { class: 'muted small', id: 'map-overlays' });
  const URGENCY_FILL = { green: '#43a047', yellow: '#f9a825', red: '#e53935' };
  async function overlays() {
    const qs = new URLSearchParams({ limit: '300' });
    ['reported', 'accepted', 'registered', 'dispatched', 'handling', 'feedback', 'verified'].forEach((x) => qs.append('state', x));
    const [cs, al] = await Promise.allSettled([api.get(`/api/cases?${qs}`), api.get('/api/alarms?state=active&state=acknowledged&limit=200')]);
    const cases = cs.status === 'fulfilled' ? cs.value.filter((c) => c.lat !== null && c.lon !== null) : [];
    const alarms = al.status === 'fulfilled' ? al.value.filter((a) => markers.has(a.source_id)) : [];
    for (const c of cases) {
      const g = s('g', { class: 'case-marker', 'data-id': c.id, tabindex: 0,
        onclick: () => { location.hash = `#/cases/${encodeURIComponent(c.id)}`; } },
      s('rect', { x: -6, y: -6, width: 12, height: 12, rx: 2, transform: 'rotate(45)', fill: URGENCY_FILL[c.urgency_colour] || '#90a4ae', class: 'marker-case' }),
      s('title', {}, `案件 ${c.number}：${c.title}（${c.state_label}）`));
      put(g, X(c.lon), Y(c.lat));
    }
    for (const a of alarms) {
      const m = markers.get(a.source_id);
      const g = s('g', { class: 'alarm-marker', 'data-id': a.id, tabindex: 0,
        onclick: () => show(`告警 · ${a.title || eventLabel(a.type)}`, [['设备', m.name], ['级别', a.severity_label || a.severity],
          ['状态', a.state_label || a.state], ['最近', fmtTime(a.last_at, { date: true })]]) },
      s('circle', { r: 9, fill: 'none', stroke: '#ff5252', 'stroke-width': 3 }), s('text', { y: 4, 'text-anchor': 'middle', fill: '#ff5252', 'font-size': 11, 'font-weight': 700 }, '!'),
      s('title', {}, `告警：${a.title || eventLabel(a.type)}（${m.name}）`));
      put(g, m.x, m.y);
    }
    caseLayerNote.textContent = `${cases.length} 件在办案件 · ${alarms.length} 条未清除告警`;
    layout();
  }

  function layout() {
    const width = svg.getBoundingClientRect().width || W;
    const k = Math.min(3, Math.max(1, W / width));        // viewBox units per screen pixel (≥ 1)
    const near = 18 * k;
    const groups = [];
    for (const m of placed) {
      const g = groups.find((gr) => Math.hypot(gr.x - m.x, gr.y - m.y) < near);
      if (g) { g.items.push(m); g.x = (g.x * (g.items.length - 1) + m.x) / g.items.length; g.y = (g.y * (g.items.length - 1) + m.y) / g.items.length; }
      else groups.push({ x: m.x, y: m.y, items: [m] });
    }
    clear(spreadLayer);
    for (const gr of groups) {
      const n = gr.items.length;
      const r = n > 1 ? (10 + 3.5 * n) * k : 0;
      if (n > 1) spreadLayer.append(s('circle', { cx: gr.x, cy: gr.y, r, class: 'spread-ring', fill: 'rgba(79,195,247,.06)', stroke: '#4fc3f7', 'stroke-opacity': 0.35, 'stroke-dasharray': '3 3' }));
      gr.items.forEach((m, i) => {
        const a = (2 * Math.PI * i) / n - Math.PI / 2;
        const px = gr.x + r * Math.cos(a);
        const py = gr.y + r * Math.sin(a);
        if (n > 1) spreadLayer.append(s('line', { x1: m.x, y1: m.y, x2: px, y2: py, stroke: '#4fc3f7', 'stroke-opacity': 0.4 }));
        m.g.setAttribute('transform', `translate(${px.toFixed(1)},${py.toFixed(1)}) scale(${k.toFixed(2)})`);
      });
    }
  }
  let resizeTimer = null;
  const onResize = () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(layout, 150); };
  window.addEventListener('resize', onResize);
  info.prepend(caseLayerNote);

  main.append(h('div', { class: 'toolbar' }, h('h2', {}, '地图 ', h('small', {}, 'Map (offline, from the site file)')),
    h('span', { class: 'muted' }, `${cameras.length} 台摄像机 · ${devices.length} 台设备`)),
  h('div', { class: 'map-page' }, h('div', { class: 'map-wrap' }, svg), info));

  // tracks of drones and radios over the chosen window
  let tracks = new Map();
  async function loadTracks() {
    const hours = Number(windowSel.value);
    const since = new Date(Date.now() - hours * 3600 * 1000).toISOString();
    clear(tracksLayer);
    try {
      const pts = await api.get(`/api/grid/${encodeURIComponent(me.node_code)}/tracks?since=${encodeURIComponent(since)}&limit=20000`);
      tracks = new Map();
      pts.forEach((p) => { if (!tracks.has(p.device_id)) tracks.set(p.device_id, []); tracks.get(p.device_id).push(p); });
      for (const [id, list] of tracks) {
        const dev = devices.find((d) => d.id === id);
        const colour = KIND_COLOURS[dev ? dev.kind : 'drone'];
        tracksLayer.append(s('polyline', { class: 'track', 'data-device': id, stroke: colour,
          points: list.map((p) => `${X(p.lon).toFixed(1)},${Y(p.lat).toFixed(1)}`).join(' ') }, s('title', {}, `${dev ? dev.name : id} 轨迹`)));
      }
      trackNote.textContent = tracks.size ? `${tracks.size} 台设备，${pts.length} 个定位点` : '该时段内没有定位数据。';
    } catch (err) {
      trackNote.textContent = err.missing ? '轨迹接口尚未接入。' : `轨迹不可用：${err.detail || err.message}`;
    }
  }
  let anim = null;
  function replay() {
    cancelAnimationFrame(anim);
    if (!tracks.size) return;
    const all = [...tracks.values()].flat();
    const t0 = Math.min(...all.map((p) => new Date(p.time).getTime()));
    const t1 = Math.max(...all.map((p) => new Date(p.time).getTime()));
    const dots = new Map([...tracks.keys()].map((id) => {
      const dot = s('circle', { r: 7, class: 'replay-dot' });
      tracksLayer.append(dot);
      return [id, dot];
    }));
    const started = performance.now();
    const DURATION = 10000;
    const step = (now) => {
      const f = Math.min(1, (now - started) / DURATION);
      const t = t0 + (t1 - t0) * f;
      for (const [id, list] of tracks) {
        let p = list[0];
        for (const q of list) { if (new Date(q.time).getTime() <= t) p = q; else break; }
        dots.get(id).setAttribute('cx', X(p.lon));
        dots.get(id).setAttribute('cy', Y(p.lat));
      }
      trackNote.textContent = `回放 ${fmtTime(new Date(t), { date: true })}`;
      if (f < 1) anim = requestAnimationFrame(step);
      else setTimeout(() => dots.forEach((d) => d.remove()), 1500);
    };
    anim = requestAnimationFrame(step);
  }
  windowSel.addEventListener('change', loadTracks);
  replayBtn.addEventListener('click', replay);
  loadTracks();

  // SOS (对讲机紧急求助): the radio pulses and the alarm is on top of the panel
  async function loadSos() {
    try {
      const sos = await api.get('/api/alarms?state=active&state=acknowledged&type=radio.sos&limit=20');
      markers.forEach((m) => m.g.classList.remove('sos'));
      clear(sosBox);
      sosBox.hidden = !sos.length;
      for (const a of sos) {
        markers.get(a.source_id)?.g.classList.add('sos');
        markersLayer.append(markers.get(a.source_id)?.g || s('g'));   // to the front
        sosBox.append(h('div', {}, h('strong', {}, `SOS · ${a.title || eventLabel('radio.sos')}`), ` ${markers.get(a.source_id)?.name || a.source_id} · ${fmtTime(a.last_at, { date: true })} `,
          a.case_id ? h('a', { href: `#/cases/${encodeURIComponent(a.case_id)}` }, '案件') : null));
      }
    } catch { sosBox.hidden = true; }
  }
  layout();
  overlays();
  loadSos();
  const off = onFeed('alarm', (m) => { if ((m.summary || {}).type === 'radio.sos') loadSos(); });
  return () => { cancelAnimationFrame(anim); off(); clearTimeout(resizeTimer); window.removeEventListener('resize', onResize); };
}
