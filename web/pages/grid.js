// 网格管理 — the grid tree of my subtree: add a child, rename, move (re-parent), 撤销, and
// draw (click points on the map) or paste (GeoJSON) a boundary. Checked by the hub with the
// site file's rules (level order, centre within the boundary …) and audited.
import { LEVEL_LABELS, clear, h, s } from '../ui.js';
import { act, call, field, select } from './admin-kit.js';

const CHILD_LEVEL = { county: ['township'], township: ['village', 'community'], village: ['grid'], community: ['grid'], grid: [] };
const W = 520;
const H = 380;

export async function render(main, { me }) {
  const treeBox = h('aside', { class: 'tree', id: 'grid-tree' });
  const detail = h('section', { class: 'panel', id: 'grid-detail' });
  main.append(h('div', { class: 'grid-admin' }, treeBox, detail));
  let nodes = [];
  let byCode = new Map();
  let selected = me.node_code;

  async function load() {
    nodes = await call('GET', '/api/admin/grid/nodes');
    byCode = new Map(nodes.map((n) => [n.code, { ...n, kids: [] }]));
    for (const n of byCode.values()) byCode.get(n.parent_code)?.kids.push(n);
    const roots = [...byCode.values()].filter((n) => !byCode.has(n.parent_code));
    const item = (n) => h('li', {},
      h('button', { type: 'button', class: `tree-node${n.code === selected ? ' active' : ''}`, dataset: { code: n.code },
        onclick: () => { selected = n.code; load(); } },
      h('span', {}, n.name), h('span', { class: 'count' }, LEVEL_LABELS[n.level] || n.level)),
      n.kids.length ? h('ul', {}, n.kids.map(item)) : null);
    clear(treeBox).append(h('h3', {}, '网格树'), h('ul', {}, roots.map(item)));
    show(byCode.get(selected) || roots[0]);
  }

  function show(n) {
    if (!n) return;
    selected = n.code;
    const error = h('p', { class: 'form-error', role: 'alert', id: 'grid-error' });
    const name = h('input', { id: 'grid-name', value: n.name, maxlength: 200 });
    const parents = nodes.filter((p) => p.code !== n.code && !p.path.includes(n.code) && (CHILD_LEVEL[p.level] || []).includes(n.level));
    const moveTo = select('grid-move-to', parents.map((p) => [p.code, `${p.name}（${p.code}）`]), n.parent_code);
    const levels = CHILD_LEVEL[n.level] || [];
    const childCode = h('input', { id: 'grid-child-code', maxlength: 64, placeholder: '省级分配的网格编码' });
    const childName = h('input', { id: 'grid-child-name', maxlength: 200 });
    const childLevel = select('grid-child-level', levels.map((l) => [l, LEVEL_LABELS[l] || l]), levels[0]);
    const own = n.code === me.node_code;
    clear(detail).append(h('div', {},
      h('h2', {}, `${n.name} `, h('small', {}, `${LEVEL_LABELS[n.level] || n.level} · ${n.code}`)),
      h('p', { class: 'muted', id: 'grid-counts' }, `下级 ${n.children} · 摄像机 ${n.cameras} · 设备 ${n.devices} · 在用帐号 ${n.users}`),
      error,
      h('form', { class: 'form', id: 'grid-rename', onsubmit: async (e) => {
        e.preventDefault();
        if (await act(error, () => call('PATCH', `/api/admin/grid/nodes/${encodeURIComponent(n.code)}`, { name: name.value.trim() }), '已改名')) await load();
      } }, field('名称', name), h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'secondary' }, '改名'))),
      levels.length ? h('form', { class: 'form', id: 'grid-add', onsubmit: async (e) => {
        e.preventDefault();
        const r = await act(error, () => call('POST', '/api/admin/grid/nodes', { code: childCode.value.trim(), name: childName.value.trim(),
          level: childLevel.value, parent_code: n.code }), '已新增');
        if (r) { selected = r.code; await load(); }
      } }, h('h3', {}, '新增下级'), h('div', { class: 'row' }, field('编码', childCode), field('名称', childName), field('层级', childLevel)),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'grid-add-submit' }, '新增'))) : null,
      !own && n.parent_code ? h('form', { class: 'form', id: 'grid-move', onsubmit: async (e) => {
        e.preventDefault();
        if (await act(error, () => call('POST', `/api/admin/grid/nodes/${encodeURIComponent(n.code)}/move`, { parent_code: moveTo.value }), '已移动')) await load();
      } }, h('div', { class: 'row' }, field('移到', moveTo, '下级随之移动，摄像机与设备的归属历史保留')),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'secondary' }, '移动'),
        h('button', { type: 'button', class: 'danger', id: 'grid-retire', onclick: async () => {
          if (!window.confirm(`撤销 ${n.name}？节点保留在历史中，不再使用。`)) return;
          if (await act(error, () => call('POST', `/api/admin/grid/nodes/${encodeURIComponent(n.code)}/retire`), '已撤销')) { selected = n.parent_code; await load(); }
        } }, '撤销节点'))) : null,
      boundaryEditor(n, error)));
  }

  // The boundary: click on the map to add points (drawn in [lon, lat]), or paste GeoJSON.
  function boundaryEditor(n, error) {
    let ring = (n.boundary || []).map((p) => [...p]);
    const around = [n, byCode.get(n.parent_code), ...(byCode.get(n.parent_code)?.kids || [])].filter(Boolean);
    const pts = around.flatMap((x) => [...(x.boundary || []), ...(x.center_lon != null ? [[x.center_lon, x.center_lat]] : [])]);
    if (!pts.length) pts.push([104.45, 30.6]);
    let [minX, maxX, minY, maxY] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0])), Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
    const pad = Math.max(maxX - minX, maxY - minY, 0.01) * 0.15;
    minX -= pad; maxX += pad; minY -= pad; maxY += pad;
    const X = (lon) => ((lon - minX) / (maxX - minX)) * W;
    const Y = (lat) => H - ((lat - minY) / (maxY - minY)) * H;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'boundary-map', id: 'boundary-map', role: 'img', 'aria-label': '边界绘制' });
    const draw = () => {
      while (svg.firstChild) svg.firstChild.remove();
      svg.append(s('rect', { x: 0, y: 0, width: W, height: H, fill: '#0d1b2a' }));
      for (const x of around) {
        if (x.code !== n.code && x.boundary) svg.append(s('polygon', { points: x.boundary.map(([a, b]) => `${X(a)},${Y(b)}`).join(' '), fill: 'none', stroke: '#456', 'stroke-dasharray': '4 3' }));
      }
      if (ring.length) svg.append(s(ring.length > 2 ? 'polygon' : 'polyline', { points: ring.map(([a, b]) => `${X(a)},${Y(b)}`).join(' '), fill: 'rgba(79,195,247,.2)', stroke: '#4fc3f7', 'stroke-width': 2 }));
      ring.forEach(([a, b]) => svg.append(s('circle', { cx: X(a), cy: Y(b), r: 4, fill: '#4fc3f7' })));
      if (n.center_lon != null) svg.append(s('circle', { cx: X(n.center_lon), cy: Y(n.center_lat), r: 5, fill: '#ffb74d' }));
    };
    svg.addEventListener('click', (e) => {
      const box = svg.getBoundingClientRect();
      const px = ((e.clientX - box.left) / box.width) * W;
      const py = ((e.clientY - box.top) / box.height) * H;
      ring.push([+(minX + (px / W) * (maxX - minX)).toFixed(6), +(minY + ((H - py) / H) * (maxY - minY)).toFixed(6)]);
      draw();
    });
    draw();
    const paste = h('textarea', { id: 'boundary-geojson', rows: 4, placeholder: '粘贴 GeoJSON（Polygon / MultiPolygon / Feature），或在上图点击绘制' });
    const save = async (boundary) => {
      if (await act(error, () => call('PATCH', `/api/admin/grid/nodes/${encodeURIComponent(n.code)}`, { boundary }), '边界已保存')) await load();
    };
    return h('div', { class: 'form', id: 'grid-boundary' }, h('h3', {}, '边界 ', h('small', {}, '点击地图逐点绘制（橙点为中心点）')), svg,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', onclick: () => { ring.pop(); draw(); } }, '删除上一点'),
        h('button', { type: 'button', class: 'secondary', onclick: () => { ring = []; draw(); } }, '清空'),
        h('button', { type: 'button', class: 'primary', id: 'boundary-save-drawn', onclick: () => save(ring) }, '保存绘制的边界')),
      paste,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'boundary-save-pasted', onclick: () => {
        let parsed;
        try { parsed = JSON.parse(paste.value); } catch (err) { error.textContent = `GeoJSON 无法解析：${err.message}`; return; }
        save(parsed);
      } }, '保存粘贴的边界')));
  }

  await load();
  return null;
}
