// 地图 — grids, devices and cameras drawn as SVG from the site file's coordinates
// (no online map tiles: the hub has no internet).
import { api } from '../api.js';
import { KIND_LABELS, LEVEL_LABELS, clear, errorBox, h, notAvailable, s } from '../ui.js';

const W = 1000;
const H = 720;
const KIND_COLOURS = { camera: '#4fc3f7', door: '#ffb74d', speaker: '#81c784', drone: '#ba68c8', radio: '#f06292' };

export async function render(main, { grid }) {
  let cameras = [];
  let devices = [];
  try {
    [cameras, devices] = await Promise.all([api.get('/api/cameras'), api.get('/api/devices')]);
  } catch (err) {
    main.append(errorBox(err, '地图数据加载失败'));
    return null;
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

  const info = h('aside', { class: 'panel map-info', id: 'map-info' }, h('h3', {}, '图例 ', h('small', {}, 'Legend')),
    h('ul', { class: 'legend' }, Object.entries(KIND_COLOURS).map(([k, c]) => h('li', {},
      h('span', { class: 'swatch', style: { background: c } }), KIND_LABELS[k]))),
    h('p', { class: 'muted' }, '点击设备查看详情。'),
    notAvailable('设备在线状态与轨迹回放', '无人机、对讲机轨迹回放与 SOS 置顶将在定位接口上线后提供。'));
  const show = (title, rows) => {
    clear(info).append(h('h3', {}, title), h('dl', {}, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      h('button', { type: 'button', class: 'link', onclick: () => render(clear(main), { grid }) }, '返回图例'));
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
  const mark = (item, kind) => {
    if (item.lat === null || item.lon === null) return;
    const x = X(item.lon);
    const y = Y(item.lat);
    const colour = KIND_COLOURS[kind] || '#ccc';
    const shape = kind === 'camera'
      ? s('path', { d: `M${x - 7},${y + 6} L${x + 7},${y + 6} L${x},${y - 8} Z`, fill: colour })
      : s('circle', { cx: x, cy: y, r: 5.5, fill: colour });
    const g = s('g', { class: `marker kind-${kind}`, 'data-id': item.id, tabindex: 0,
      onclick: () => show(`${KIND_LABELS[kind]} · ${item.name}`, [['编号', item.id], ['网格', grid.trail(item.grid_path, 1)],
        ['坐标', `${item.lat.toFixed(5)}, ${item.lon.toFixed(5)}`]]) },
    shape, s('title', {}, `${KIND_LABELS[kind]}：${item.name}`));
    svg.append(g);
  };
  devices.forEach((d) => mark(d, d.kind));
  cameras.forEach((c) => mark(c, 'camera'));

  main.append(h('div', { class: 'toolbar' }, h('h2', {}, '地图 ', h('small', {}, 'Map (offline, from the site file)')),
    h('span', { class: 'muted' }, `${cameras.length} 台摄像机 · ${devices.length} 台设备`)),
  h('div', { class: 'map-page' }, h('div', { class: 'map-wrap' }, svg), info));
  return null;
}
