// 摄像机管理 — add, edit, retire cameras and switch maintenance, applied live (no restart);
// 测试连接 opens the stream before saving and shows its first picture. Credentials are chosen
// by name (the site file's credentials entries); a password is never typed or shown here.
import { api, request } from '../api.js';
import { clear, errorBox, h, modal, toast } from '../ui.js';

const TRANSPORTS = [['auto', '自动（TCP 优先）'], ['tcp', 'TCP'], ['udp', 'UDP']];
const RECORDING = [['', '默认（按标签策略）'], ['always', '全天录像'], ['events', '事件前后录像'], ['schedule', '按时段录像'], ['off', '不录像']];

export async function render(main, { grid }) {
  const list = h('div', { id: 'cam-admin-list' }, h('p', { class: 'loading' }, '加载中…'));
  const add = h('button', { type: 'button', class: 'primary', id: 'cam-add', onclick: async () => openForm(null, await credentialRefs()) }, '添加摄像机');
  main.append(h('section', { class: 'panel' },
    h('header', { class: 'panel-head' }, h('h2', {}, '摄像机管理 ', h('small', {}, 'Cameras')), add),
    h('p', { class: 'muted' }, '修改即时生效，无需重启：新增的摄像机数秒内开始接入，停用的立即停止读取。凭据按名称引用站点配置中的条目，不在此处填写密码。'),
    list));
  let credentials = null;
  async function credentialRefs() {
    if (credentials) return credentials;
    try { credentials = await api.get('/api/camera-credentials'); } catch (err) {
      toast(`凭据列表加载失败：${err.detail || err.message}`, 'error', 8000);
      return [];
    }
    return credentials;
  }

  async function load() {
    try {
      const cams = await api.get('/api/cameras');
      const settings = await Promise.all(cams.map((c) => api.get(`/api/cameras/${encodeURIComponent(c.id)}/settings`).catch(() => null)));
      clear(list).append(table(cams, settings));
    } catch (err) {
      clear(list).append(errorBox(err, '摄像机列表加载失败'));
    }
  }

  // A change is committed just after its answer and the list is cached until the registry's
  // notification: show what the answer said now, and read the list again a moment later.
  function refresh() { load(); setTimeout(load, 1500); }

  function table(cams, settings) {
    if (!cams.length) return h('p', { class: 'muted' }, '辖区内还没有摄像机。');
    return h('table', { class: 'table', id: 'cam-admin-table' },
      h('thead', {}, h('tr', {}, ['名称', '编号', '位置', '状态', '维护', '操作'].map((t) => h('th', {}, t)))),
      h('tbody', {}, cams.map((c, i) => {
        const s = settings[i];
        const maint = Boolean(s && s.maintenance);
        return h('tr', { dataset: { camera: c.id } },
          h('td', {}, c.name), h('td', {}, c.id), h('td', {}, grid.trail(c.grid_path, 1) || c.grid_code),
          h('td', { class: 'cam-state' }, c.problem_label ? `${c.state_label || ''}（${c.problem_label}）` : (c.state_label || '—')),
          h('td', { class: 'cam-maint' }, maint ? '维护中' : '—'),
          h('td', { class: 'actions' },
            h('button', { type: 'button', dataset: { action: 'edit' }, onclick: async () => openForm(s, await credentialRefs()) }, '编辑'),
            h('button', { type: 'button', dataset: { action: 'maintenance' }, onclick: () => maintenance(c, !maint) }, maint ? '结束维护' : '维护'),
            h('button', { type: 'button', class: 'danger', dataset: { action: 'retire' }, onclick: () => retire(c) }, '停用')));
      })));
  }

  async function maintenance(cam, on) {
    try {
      const after = await api.post(`/api/cameras/${encodeURIComponent(cam.id)}/maintenance`, { on });
      const cell = list.querySelector(`tr[data-camera="${CSS.escape(cam.id)}"] .cam-maint`);
      if (cell) cell.textContent = after.maintenance ? '维护中' : '—';
      toast(on ? `${cam.name} 已进入维护：不再产生告警` : `${cam.name} 已结束维护`, 'info');
      setTimeout(load, 1500);
    } catch (err) { toast(`操作失败：${err.detail || err.message}`, 'error', 8000); }
  }

  async function retire(cam) {
    if (!window.confirm(`停用摄像机「${cam.name}」？停用后立即停止接入，历史录像与事件保留。`)) return;
    try {
      const answer = await api.del(`/api/cameras/${encodeURIComponent(cam.id)}`);
      list.querySelector(`tr[data-camera="${CSS.escape(cam.id)}"]`)?.remove();
      toast(answer.note || '已停用', 'info', 6000);
      setTimeout(load, 1500);
    } catch (err) { toast(`停用失败：${err.detail || err.message}`, 'error', 8000); }
  }

  function openForm(existing, credentials) {
    const v = existing || {};
    const field = (id, label, input) => [h('label', { for: id }, label), input];
    const id = h('input', { id: 'cam-id', required: true, maxlength: 64, value: v.id || '', disabled: Boolean(existing) });
    const name = h('input', { id: 'cam-name', required: true, maxlength: 100, value: v.name || '' });
    const nodes = [...grid.byCode.values()].sort((a, b) => a.path.length - b.path.length || a.code.localeCompare(b.code));
    const node = h('select', { id: 'cam-grid', required: true },
      nodes.map((n) => h('option', { value: n.code, selected: n.code === v.grid_code }, grid.trail(n.path) || n.name)));
    const url = h('input', { id: 'cam-url', maxlength: 1000, placeholder: 'rtsp://192.168.1.64:554/Streaming/Channels/101', value: v.rtsp_url || '' });
    const sub = h('input', { id: 'cam-sub', maxlength: 1000, placeholder: '子码流（可选）', value: v.substream_url || '' });
    const cred = h('select', { id: 'cam-cred' }, h('option', { value: '' }, '无需认证'),
      credentials.map((c) => h('option', { value: c.name, selected: c.name === v.credentials }, `${c.name}（用户 ${c.username}）`)));
    const transport = h('select', { id: 'cam-transport' }, TRANSPORTS.map(([k, l]) => h('option', { value: k, selected: k === (v.transport || 'auto') }, l)));
    const lat = h('input', { id: 'cam-lat', type: 'number', step: 'any', value: v.lat ?? '' });
    const lon = h('input', { id: 'cam-lon', type: 'number', step: 'any', value: v.lon ?? '' });
    const analytics = v.analytics || {};
    const motion = h('input', { id: 'cam-motion', type: 'checkbox', checked: Boolean(analytics.motion && analytics.motion.enabled) });
    const tamper = h('input', { id: 'cam-tamper', type: 'checkbox', checked: !(analytics.tamper && analytics.tamper.enabled === false) });
    const recording = h('select', { id: 'cam-recording' }, RECORDING.map(([k, l]) => h('option', { value: k, selected: k === ((v.recording || {}).mode || '') }, l)));
    const schedule = h('input', { id: 'cam-schedule', placeholder: '如 22:00-06:00, 12:00-13:00', value: ((v.recording || {}).schedule || []).join(', ') });
    const result = h('div', { id: 'cam-test-result', role: 'status' });
    const error = h('p', { class: 'form-error', role: 'alert', id: 'cam-form-error' });

    async function testConnection() {
      clear(result).append(h('p', { class: 'loading' }, '正在连接…'));
      try {
        const r = await api.post('/api/camera-connection-tests', { rtsp_url: url.value.trim(), credentials: cred.value || null, transport: transport.value });
        clear(result);
        if (r.ok) {
          result.append(h('p', { class: 'ok', id: 'cam-test-ok' }, `连接成功：${(r.codec || '').toUpperCase()} ${r.width}×${r.height}${r.fps ? ` ${Math.round(r.fps)} 帧/秒` : ''}（${r.transport || ''}，${r.elapsed_ms} 毫秒）`),
            h('img', { id: 'cam-test-snapshot', alt: '测试画面', src: `data:image/jpeg;base64,${r.snapshot_jpeg_b64}`, style: 'max-width: 100%' }));
        } else {
          result.append(h('p', { class: 'error', id: 'cam-test-problem' }, `无法播放：${r.problem_label || r.problem}`), h('small', {}, r.detail || ''));
        }
      } catch (err) {
        clear(result).append(h('p', { class: 'error', id: 'cam-test-problem' }, `测试失败：${err.detail || err.message}`));
      }
    }

    const form = h('form', {
      class: 'form', id: 'cam-form',
      onsubmit: async (e) => {
        e.preventDefault();
        error.textContent = '';
        const rec = recording.value ? { mode: recording.value, ...(recording.value === 'schedule' ? { schedule: schedule.value.split(/[,，\s]+/).filter(Boolean) } : {}) } : null;
        const an = { ...analytics, motion: { ...(analytics.motion || {}), enabled: motion.checked }, tamper: { ...(analytics.tamper || {}), enabled: tamper.checked } };
        const body = {
          name: name.value.trim(), grid: node.value, rtsp_url: url.value.trim() || null, substream_url: sub.value.trim() || null,
          credentials: cred.value || null, transport: transport.value, analytics: an, recording: rec,
          position: lat.value !== '' && lon.value !== '' ? { lat: Number(lat.value), lon: Number(lon.value) } : null,
        };
        try {
          if (existing) await request(`/api/cameras/${encodeURIComponent(existing.id)}`, { method: 'PATCH', body });
          else await api.post('/api/cameras', { id: id.value.trim(), ...body });
          dialog.close();
          toast(existing ? '已保存，摄像机将按新设置重新接入' : '已添加，摄像机服务将在数秒内开始接入', 'info', 6000);
          refresh();
        } catch (err) { error.textContent = `保存失败：${err.detail || err.message}`; }
      },
    },
    field('cam-id', '编号', id), field('cam-name', '名称', name), field('cam-grid', '所属网格', node),
    field('cam-url', '主码流地址 (RTSP)', url), field('cam-sub', '子码流地址', sub), field('cam-cred', '凭据', cred),
    field('cam-transport', '传输方式', transport), field('cam-lat', '纬度', lat), field('cam-lon', '经度', lon),
    h('label', {}, motion, ' 移动侦测'), h('label', {}, tamper, ' 遮挡/移位检测'),
    field('cam-recording', '录像计划', recording), field('cam-schedule', '录像时段', schedule),
    result, error,
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'cam-test', onclick: testConnection }, '测试连接'),
      h('button', { type: 'submit', class: 'primary', id: 'cam-save' }, '保存')));
    const dialog = modal(existing ? `编辑摄像机 ${existing.name}` : '添加摄像机', form, { wide: true });
  }

  await load();
  return null;
}
