// 新建工单 — intake of a report by a person (the hotline seat's phone call, a dispatcher's own
// case, a grid worker's report): caller's name and phone (personal information: the hub
// shows them masked afterwards), the place picked on the map or from the grid list,
// category, urgency, description and photos. The hub decides the responsible level (the
// place's township for a county seat).
import { api, request } from '../api.js';
import { CATEGORIES, URGENCIES, clear, h, modal, s, toast } from '../ui.js';

const W = 520;
const H = 300;

// The grid as an SVG to click on: a click picks the deepest area under the pointer and the
// point's coordinates.
function mapPicker(grid, onPick) {
  const nodes = [...grid.byCode.values()].filter((n) => n.boundary && n.boundary.length >= 3);
  const points = nodes.flatMap((n) => n.boundary);
  if (!points.length) return null;
  const lons = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  const [minLon, maxLon, minLat, maxLat] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  const kx = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * kx, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const scale = Math.min((W - 20) / spanX, (H - 20) / spanY);
  const ox = (W - spanX * scale) / 2;
  const oy = (H - spanY * scale) / 2;
  const X = (lon) => ox + (lon - minLon) * kx * scale;
  const Y = (lat) => H - oy - (lat - minLat) * scale;
  const lonOf = (x) => minLon + (x - ox) / (kx * scale);
  const latOf = (y) => minLat + (H - oy - y) / scale;
  const order = ['county', 'township', 'village', 'community', 'grid'];
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map intake-map', id: 'intake-map', role: 'img', 'aria-label': '在地图上选择事发地点' });
  const marker = s('circle', { r: 6, class: 'intake-pin', cx: -20, cy: -20 });
  nodes.sort((a, b) => order.indexOf(a.level) - order.indexOf(b.level)).forEach((n) => {
    const d = n.boundary.map(([lon, lat], i) => `${i ? 'L' : 'M'}${X(lon).toFixed(1)},${Y(lat).toFixed(1)}`).join(' ') + 'Z';
    const path = s('path', { d, class: `area level-${n.level}`, 'data-code': n.code }, s('title', {}, grid.trail(n.path, 1) || n.name));
    path.addEventListener('click', (e) => {
      const pt = svg.createSVGPoint();
      pt.x = e.clientX; pt.y = e.clientY;
      const local = pt.matrixTransform(svg.getScreenCTM().inverse());
      marker.setAttribute('cx', local.x.toFixed(1));
      marker.setAttribute('cy', local.y.toFixed(1));
      onPick(n.code, Number(latOf(local.y).toFixed(6)), Number(lonOf(local.x).toFixed(6)));
    });
    svg.append(path);
  });
  svg.append(marker);
  return svg;
}

export function openIntake(me, grid, onCreated) {
  const hotline = me.role === 'hotline';
  const title = h('input', { id: 'intake-title', maxlength: 200, 'aria-required': 'true', placeholder: '简要概括，如“东山村路灯不亮”' });
  const callerName = h('input', { id: 'intake-caller-name', maxlength: 50, autocomplete: 'off', placeholder: '来电人姓名' });
  const callerPhone = h('input', { id: 'intake-caller-phone', maxlength: 20, autocomplete: 'off', inputmode: 'tel', placeholder: '联系电话' });
  const places = [...grid.byCode.values()].filter((n) => n.level !== 'county');
  const place = h('select', { id: 'intake-grid', 'aria-required': 'true' }, h('option', { value: '' }, '选择网格或村（社区）…'),
    places.map((n) => h('option', { value: n.code }, grid.trail(n.path, 1) || n.name)));
  const picked = h('span', { class: 'muted small', id: 'intake-picked' }, '也可在下方地图上点击事发地点。');
  let lat = null;
  let lon = null;
  place.addEventListener('change', () => { lat = null; lon = null; picked.textContent = place.value ? `已选：${grid.trail(grid.byCode.get(place.value)?.path, 1)}` : ''; });
  const map = mapPicker(grid, (code, la, lo) => {
    place.value = code;
    lat = la; lon = lo;
    picked.textContent = `已选：${grid.trail(grid.byCode.get(code)?.path, 1)}（${la.toFixed(5)}, ${lo.toFixed(5)}）`;
  });
  const address = h('input', { id: 'intake-address', maxlength: 300, placeholder: '详细地址（可选）' });
  const category = h('select', { id: 'intake-category' }, CATEGORIES.map((c) => h('option', { value: c.code }, c.label)));
  const urgency = h('div', { class: 'urgencies', role: 'radiogroup', 'aria-label': '紧急程度' }, URGENCIES.map((u, i) => h('label', { class: `urgency urgency-${u.colour}` },
    h('input', { type: 'radio', name: 'intake-urgency', value: u.code, checked: i === 0 }), u.label)));
  const description = h('textarea', { id: 'intake-description', rows: 4, maxlength: 5000, placeholder: '来电反映的情况' });
  const photos = h('input', { id: 'intake-photos', type: 'file', multiple: true, accept: 'image/jpeg,image/png,image/webp,video/mp4,video/quicktime' });
  const result = h('div', { role: 'status', id: 'intake-result' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'intake-submit' }, '提交工单');
  let dlg = null;
  const form = h('form', {
    class: 'form intake-form', id: 'intake-form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(result);
      delete result.dataset.outcome;
      const problems = [];
      if (!title.value.trim()) problems.push('请填写标题');
      if (!place.value) problems.push('请选择事发地点（网格或地图）');
      if (hotline && !callerPhone.value.trim()) problems.push('请填写来电人联系电话');
      if (problems.length) { result.dataset.outcome = 'error'; result.append(h('p', { class: 'error' }, `${problems.join('；')}。`)); return; }
      submit.disabled = true;
      const reporter = {};
      if (callerName.value.trim()) reporter.name = callerName.value.trim();
      if (callerPhone.value.trim()) reporter.phone = callerPhone.value.trim();
      try {
        const c = await api.post('/api/cases', {
          title: title.value.trim(), description: description.value.trim(), category: category.value,
          urgency: form.querySelector('input[name=intake-urgency]:checked').value, grid_code: place.value,
          lat, lon, address: address.value.trim() || null, reporter: Object.keys(reporter).length ? reporter : null,
        });
        const failed = [];
        for (const file of photos.files) {
          const fd = new FormData();
          fd.append('file', file);
          try { await request(`/api/cases/${encodeURIComponent(c.id)}/attachments`, { method: 'POST', bodyRaw: fd }); } catch (err) { failed.push(`${file.name}：${err.detail || err.message}`); }
        }
        result.dataset.outcome = 'ok';
        result.dataset.caseId = c.id;
        toast(`工单已提交，编号 ${c.number}（责任单位：${grid.nameOf(c.owner_code)}）`, 'ok', 6000);
        if (failed.length) toast(`部分附件上传失败：${failed.join('；')}`, 'error', 10000);
        dlg.close();
        onCreated(c);
      } catch (err) {
        result.dataset.outcome = 'error';
        result.append(h('p', { class: 'error' }, `提交失败：${err.detail || err.message}`));
        submit.disabled = false;
      }
    },
  },
  h('label', { for: 'intake-title' }, '标题'), title,
  h('fieldset', {}, h('legend', {}, hotline ? '来电人（个人信息，仅授权人员可查看完整内容）' : '报告人（可选，个人信息）'),
    h('div', { class: 'row' }, callerName, callerPhone)),
  h('label', { for: 'intake-grid' }, '事发地点'), place, picked, map,
  address,
  h('div', { class: 'row' }, h('label', {}, '类别 ', category)),
  h('fieldset', {}, h('legend', {}, '紧急程度'), urgency),
  h('label', { for: 'intake-description' }, '情况描述'), description,
  h('label', { for: 'intake-photos' }, '附件（照片或视频）'), photos,
  result, h('div', { class: 'actions' }, submit));
  dlg = modal(hotline ? '新建工单 · 热线来电' : '新建工单', form, { wide: true });
  title.focus();
  return dlg;
}
