// 上报 — the grid worker reports what they found: category, urgency, what it is, photos or
// video taken with the phone's camera, and where — the phone's position (the hub places the
// case in the grid whose boundary holds it), or a grid chosen by hand when there is no fix.
// Reports go into the outbox (web/outbox.js): without a network they wait on the phone and
// are sent, once, when it returns. The queue is listed here, with the hub's reason for any
// it refused.
import { discard, enqueue, flush, onOutbox, retry } from '../outbox.js';
import { CATEGORIES, URGENCIES, clear, fmtTime, h, toast } from '../ui.js';
import { photoInput } from './tasks.js';

const STATE_TEXT = { pending: '待发送', sending: '发送中', failed: '被退回' };

// Is [lon, lat] inside the polygon (ray casting; boundaries are [lon, lat] rings)?
function inside([x, y], ring) {
  let hit = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i, i += 1) {
    const [xi, yi] = ring[i]; const [xj, yj] = ring[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

// The deepest node of my tree holding the point (what the hub will decide, shown beforehand).
export function gridAt(grid, lat, lon) {
  let best = null;
  for (const n of grid.byCode.values()) {
    if ((n.boundary || []).length >= 3 && inside([lon, lat], n.boundary) && (!best || n.path.length > best.path.length)) best = n;
  }
  return best;
}

export async function render(main, { me, grid }) {
  const category = h('select', { id: 'report-category', required: true },
    CATEGORIES.map((c) => h('option', { value: c.code }, c.label)));
  const urgency = h('select', { id: 'report-urgency' }, URGENCIES.map((u) => h('option', { value: u.code }, u.label)));
  const title = h('input', { id: 'report-title', maxlength: 200, placeholder: '一句话说明（如：井盖缺失）' });
  const description = h('textarea', { id: 'report-description', rows: 4, maxlength: 5000, placeholder: '详细情况、涉及人员与建议' });
  const address = h('input', { id: 'report-address', maxlength: 300, placeholder: '门牌、地标（可选）' });
  const photos = photoInput('report-photos', '照片或视频（拍摄现场）');
  const grids = [...grid.byCode.values()].filter((n) => n.level === 'grid');
  const manual = h('select', { id: 'report-grid' }, h('option', { value: '' }, '按定位自动确定网格'),
    grids.map((n) => h('option', { value: n.code }, grid.trail(n.path, 1) || n.name)));
  const placeText = h('span', { id: 'report-place' }, '正在获取位置…');
  const locate = h('button', { type: 'button', id: 'report-locate' }, '重新定位');
  const error = h('p', { class: 'error', role: 'alert', id: 'report-error' });
  const submit = h('button', { type: 'submit', class: 'primary big-btn', id: 'report-submit' }, '提交上报');
  const queue = h('ul', { class: 'outbox-list', id: 'outbox-list' });
  const queueHead = h('h3', { id: 'outbox-head' }, '待发送');
  let position = null;

  function findMe() {
    position = null;
    placeText.textContent = '正在获取位置…';
    if (!navigator.geolocation) { placeText.textContent = '本设备不支持定位，请选择网格。'; return; }
    navigator.geolocation.getCurrentPosition((pos) => {
      position = { lat: pos.coords.latitude, lon: pos.coords.longitude, accuracy: pos.coords.accuracy };
      const n = gridAt(grid, position.lat, position.lon);
      placeText.textContent = `${position.lat.toFixed(5)}, ${position.lon.toFixed(5)}（±${Math.round(position.accuracy || 0)} 米）`
        + ` · ${n ? grid.trail(n.path, 1) || n.name : '不在本辖区网格内，请选择网格'}`;
      placeText.dataset.grid = n ? n.code : '';
    }, (err) => {
      placeText.textContent = err.code === 1 ? '未允许定位：请在浏览器中允许定位，或选择网格。' : '暂时无法定位，请选择网格或稍后重试。';
    }, { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 });
  }
  locate.addEventListener('click', findMe);

  const form = h('form', {
    class: 'form', id: 'report-form',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      const text = description.value.trim();
      if (!title.value.trim() && !text) { error.textContent = '请填写一句话说明或详细情况。'; title.focus(); return; }
      if (!manual.value && !position) { error.textContent = '还没有定位：请允许定位或选择网格。'; return; }
      const cat = CATEGORIES.find((c) => c.code === category.value);
      const body = {
        title: title.value.trim() || `${cat ? cat.label : ''}：${text.slice(0, 30)}`,
        description: text, category: category.value, urgency: urgency.value,
        address: address.value.trim() || null,
      };
      if (position) Object.assign(body, { lat: position.lat, lon: position.lon });
      if (manual.value) body.grid_code = manual.value;
      submit.disabled = true;
      try {
        await enqueue({ kind: 'report', label: body.title, body, files: photos.files() });
        toast(navigator.onLine ? '上报已提交，正在发送…' : '无网络：上报已保存在手机上，联网后自动发送。', navigator.onLine ? 'info' : 'warn', 6000);
        form.reset(); photos.reset();
      } catch (err) {
        error.textContent = `无法保存上报：${err.message}`;
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('label', { class: 'field' }, h('span', {}, '类别'), category),
  h('label', { class: 'field' }, h('span', {}, '紧急程度'), urgency),
  h('label', { class: 'field' }, h('span', {}, '标题'), title),
  h('label', { class: 'field' }, h('span', {}, '情况描述'), description),
  photos.box,
  h('div', { class: 'place-box' }, h('strong', {}, '位置'), placeText, h('div', { class: 'row' }, locate, manual)),
  h('label', { class: 'field' }, h('span', {}, '地址补充'), address),
  error, submit);

  main.append(h('section', { class: 'phone-page', id: 'report-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, '上报 ', h('small', {}, 'Report an issue'))), form,
    h('section', { class: 'panel' }, queueHead, queue,
      h('button', { type: 'button', id: 'outbox-send', onclick: () => flush() }, '立即发送'))));

  const off = onOutbox((items) => {
    queueHead.textContent = `待发送 ${items.length} 条`;
    if (!items.length) { clear(queue).append(h('li', { class: 'muted', dataset: { state: 'none' } }, '全部已发送。')); return; }
    clear(queue).append(...items.map((i) => h('li', { dataset: { state: i.state, key: i.key } },
      h('strong', {}, `${i.kind === 'report' ? '上报' : '办理'}：${i.label}`),
      h('small', {}, `${STATE_TEXT[i.state] || i.state} · ${fmtTime(i.created, { date: true, seconds: false })}`
        + `${i.files.length ? ` · ${i.files.length} 个文件` : ''}${i.attempts ? ` · 已尝试 ${i.attempts} 次` : ''}`),
      i.error ? h('small', { class: i.state === 'failed' ? 'error' : 'muted' }, i.error) : null,
      i.state === 'failed' ? h('div', { class: 'row' },
        h('button', { type: 'button', onclick: () => retry(i.key) }, '重新发送'),
        h('button', { type: 'button', onclick: () => { if (confirm('删除这条未发送的记录？')) discard(i.key); } }, '删除')) : null)));
  });
  const onSent = (e) => {
    const { item, result } = e.detail;
    if (item.kind === 'report' && result) toast(`上报已送达：案件 ${result.number}（${grid.nameOf(result.grid_code)}）`, 'ok', 6000);
  };
  window.addEventListener('outbox-sent', onSent);
  findMe();
  return () => { off(); window.removeEventListener('outbox-sent', onSent); };
}
