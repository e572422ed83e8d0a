// 设备 — the field devices of this area with their state, and the actions an operator takes
// on them: door remote unlock (远程开门, a reason required, audited), drone mission and return
// home (执行任务 / 返航), speaker volume and stop (音量 / 停止播放). Each action is offered only
// to roles with its permission (door.unlock, device.command: /api/auth/me lists them).
import { api } from '../api.js';
import { KIND_LABELS, clear, errorBox, fmtAgo, h, modal, toast } from '../ui.js';

const KIND_ORDER = ['door', 'speaker', 'drone', 'radio'];
const OPEN_BROADCAST = ['queued', 'scheduled', 'sending', 'playing', 'pending'];

export async function render(main, { me, grid }) {
  const perms = Array.isArray(me.permissions) ? me.permissions : null;
  const may = (p) => !perms || perms.includes(p);
  const list = h('section', { class: 'panel', id: 'device-list' }, h('p', { class: 'loading' }, '加载中…'));
  const kindFilter = h('select', { id: 'device-kind', 'aria-label': '设备类型' }, h('option', { value: '' }, '全部设备'),
    KIND_ORDER.map((k) => h('option', { value: k }, KIND_LABELS[k] || k)));
  kindFilter.addEventListener('change', load);
  main.append(h('div', { class: 'toolbar' }, h('h2', {}, '设备 ', h('small', {}, 'Field devices')), kindFilter), list);

  async function load() {
    let devices;
    let states = new Map();
    try {
      devices = await api.get(`/api/devices${kindFilter.value ? `?kind=${kindFilter.value}` : ''}`);
      try { states = new Map((await api.get('/api/device-state')).map((d) => [d.id, d])); } catch { /* state optional */ }
    } catch (err) {
      clear(list).append(errorBox(err, '设备加载失败'));
      return;
    }
    devices.sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind) || String(a.name).localeCompare(String(b.name), 'zh'));
    clear(list).append(devices.length ? h('table', { class: 'table', id: 'devices-table' },
      h('thead', {}, h('tr', {}, ['设备', '类型', '地点', '状态', '操作'].map((t) => h('th', {}, t)))),
      h('tbody', {}, devices.map((d) => row(d, states.get(d.id))))) : h('p', { class: 'empty' }, '本辖区没有设备。'));
  }

  function row(d, st) {
    const status = st ? st.status_label : '未知';
    const tele = (st && st.telemetry) || {};
    const extra = d.kind === 'speaker' && tele.volume !== undefined ? ` · 音量 ${tele.volume}${tele.playing ? ' · 播放中' : ''}`
      : d.kind === 'drone' && tele.mode ? ` · ${tele.mode}${tele.battery_pct !== undefined ? ` · 电量 ${tele.battery_pct}%` : ''}` : '';
    return h('tr', { dataset: { device: d.id, kind: d.kind } },
      h('td', {}, h('strong', {}, d.name), h('div', { class: 'muted small' }, d.id)),
      h('td', {}, KIND_LABELS[d.kind] || d.kind),
      h('td', {}, grid.trail(d.grid_path, 1) || grid.nameOf(d.grid_code)),
      h('td', {}, h('span', { class: `badge ${st && st.status === 'online' ? 'ok' : st && st.status === 'offline' ? 'bad' : 'muted'}` }, status),
        h('span', { class: 'muted small' }, `${extra}${st && st.last_seen_at ? ` · ${fmtAgo(st.last_seen_at)}` : ''}`)),
      h('td', { class: 'row' }, actions(d)));
  }

  function actions(d) {
    const out = [];
    if (d.kind === 'door' && may('door.unlock')) {
      out.push(h('button', { type: 'button', class: 'danger', dataset: { action: 'unlock' }, onclick: () => unlockForm(d) }, '远程开门'));
    }
    if (!may('device.command')) return out.length ? out : [h('span', { class: 'muted small' }, '—')];
    if (d.kind === 'drone') {
      out.push(h('button', { type: 'button', dataset: { action: 'mission' }, onclick: () => confirmSend(d, 'mission', {}, `让 ${d.name} 起飞执行预设任务？`, '执行任务') }, '执行任务'));
      out.push(h('button', { type: 'button', dataset: { action: 'return_home' }, onclick: () => confirmSend(d, 'return_home', {}, `让 ${d.name} 立即返航？`, '返航') }, '返航'));
    }
    if (d.kind === 'speaker') {
      const volume = h('input', { type: 'range', min: 0, max: 100, step: 5, value: 60, 'aria-label': '音量', dataset: { field: 'volume' } });
      const shown = h('span', { class: 'small' }, '60');
      volume.addEventListener('input', () => { shown.textContent = volume.value; });
      out.push(h('label', { class: 'inline' }, '音量 ', volume, shown),
        h('button', { type: 'button', dataset: { action: 'volume' }, onclick: () => send(d, 'volume', { volume: Number(volume.value) }, `音量已设为 ${volume.value}`) }, '设置音量'),
        h('button', { type: 'button', dataset: { action: 'stop' }, onclick: () => stopSpeaker(d) }, '停止播放'));
    }
    return out.length ? out : [h('span', { class: 'muted small' }, '—')];
  }

  async function send(d, name, body, okText) {
    try {
      const out = await api.post(`/api/devices/${encodeURIComponent(d.id)}/commands?wait=5`, { name, body });
      const done = out.state === 'finished' || out.state === 'succeeded';
      toast(`${d.name}：${okText}（${out.state_label || out.state}）`, done ? 'ok' : 'info');
      return out;
    } catch (err) {
      toast(`${d.name}：操作失败：${err.detail || err.message}`, 'error', 8000);
      return null;
    }
  }

  function confirmSend(d, name, body, question, label) {
    const result = h('div', { role: 'status', id: 'device-result' });
    const go = h('button', { type: 'button', class: 'primary', id: 'device-confirm' }, label);
    const dlg = modal(`${label} · ${d.name}`, h('div', {}, h('p', {}, question), result, h('div', { class: 'actions' }, go)));
    go.addEventListener('click', async () => {
      go.disabled = true;
      const out = await send(d, name, body, `${label}指令已发送`);
      if (out) dlg.close();
      else go.disabled = false;
    });
  }

  async function stopSpeaker(d) {
    // The speaker's current broadcast: the newest open one that reaches its village.
    let rows = [];
    try { rows = await api.get('/api/broadcasts?limit=30'); } catch (err) { toast(`广播记录加载失败：${err.detail || err.message}`, 'error'); return; }
    const b = rows.find((x) => OPEN_BROADCAST.includes(x.state) && (x.targets || []).some((t) => d.grid_path.includes(t)));
    if (!b) { toast(`${d.name} 当前没有正在播放的广播。`, 'info'); return; }
    await send(d, 'stop', { broadcast_id: b.id, reason: `${me.display_name || me.username} 在设备页停止` }, '已停止播放');
  }

  function unlockForm(d) {
    const reason = h('textarea', { id: 'unlock-reason', rows: 2, maxlength: 200, 'aria-required': 'true', placeholder: '开门事由（必填，记入审计日志）' });
    const duration = h('input', { id: 'unlock-duration', type: 'number', min: 1, max: 300, value: 5 });
    const result = h('div', { role: 'status', id: 'unlock-result' });
    const go = h('button', { type: 'submit', class: 'primary danger', id: 'unlock-submit' }, '确认开门');
    const form = h('form', {
      class: 'form', id: 'unlock-form',
      onsubmit: async (e) => {
        e.preventDefault();
        clear(result);
        delete result.dataset.outcome;
        if (!reason.value.trim()) {
          result.dataset.outcome = 'error';
          result.append(h('p', { class: 'error' }, '请填写开门事由。'));
          reason.focus();
          return;
        }
        go.disabled = true;
        try {
          const out = await api.post(`/api/doors/${encodeURIComponent(d.id)}/unlock?wait=5`, { duration_s: Number(duration.value) || 5, reason: reason.value.trim() });
          result.dataset.outcome = 'ok';
          result.dataset.commandId = out.id;
          result.append(h('p', { class: 'ok' }, `开门指令已发送：${out.state_label || out.state}`));
          toast(`${d.name}：已远程开门`, 'ok');
        } catch (err) {
          result.dataset.outcome = 'error';
          result.append(h('p', { class: 'error' }, `开门失败：${err.detail || err.message}`));
        } finally {
          go.disabled = false;
        }
      },
    },
    h('p', { class: 'warn' }, `远程开门将打开 ${d.name}，操作记入审计日志。`),
    h('label', { for: 'unlock-reason' }, '开门事由'), reason,
    h('label', { for: 'unlock-duration' }, '开门时长（秒）'), duration,
    result, h('div', { class: 'actions' }, go));
    modal(`远程开门 · ${d.name}`, form);
    reason.focus();
  }

  await load();
  const timer = setInterval(load, 15000);
  return () => clearInterval(timer);
}
