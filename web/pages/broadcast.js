// 广播 — the broadcast console: targets on the grid tree, text (TTS), priority, time.
import { api, probe } from '../api.js';
import { clear, errorBox, fmtTime, h, notAvailable } from '../ui.js';

export async function render(main, { grid }) {
  let speakers = [];
  try {
    speakers = await api.get('/api/devices?kind=speaker');
  } catch (err) {
    main.append(errorBox(err, '广播设备加载失败'));
  }
  const chosen = new Set();
  const targets = h('ul', { class: 'targets', id: 'broadcast-targets' });
  const villages = [...grid.byCode.values()].filter((n) => n.level === 'village' || n.level === 'community');
  for (const v of villages) {
    const here = speakers.filter((s) => s.grid_path.includes(v.code));
    const box = h('input', { type: 'checkbox', value: v.code, disabled: !here.length });
    box.addEventListener('change', () => { if (box.checked) chosen.add(v.code); else chosen.delete(v.code); });
    targets.append(h('li', {}, h('label', {}, box, ` ${grid.trail(v.path, 1)} `,
      h('small', {}, here.length ? `${here.length} 个喇叭：${here.map((s) => s.name).join('、')}` : '无广播设备'))));
  }
  const text = h('textarea', { id: 'broadcast-text', rows: 4, maxlength: 500, placeholder: '输入通告内容，系统将转为语音播放' });
  const kind = h('select', { id: 'broadcast-kind' }, h('option', { value: 'notice' }, '通告'), h('option', { value: 'emergency' }, '应急预警'));
  const priority = h('select', { id: 'broadcast-priority' }, h('option', { value: 'normal' }, '普通'), h('option', { value: 'high' }, '优先'), h('option', { value: 'urgent' }, '紧急（打断当前播放）'));
  const when = h('input', { type: 'datetime-local', id: 'broadcast-when' });
  const result = h('div', { id: 'broadcast-result', role: 'status' });
  const send = h('button', { type: 'submit', class: 'primary', id: 'broadcast-send' }, '发送广播');
  const form = h('form', {
    class: 'panel form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(result);
      if (!chosen.size) { result.append(h('p', { class: 'error' }, '请选择至少一个村（社区）。')); return; }
      if (!text.value.trim()) { result.append(h('p', { class: 'error' }, '请输入广播内容。')); return; }
      send.disabled = true;
      try {
        const out = await api.post('/api/broadcasts', {
          targets: [...chosen], text: text.value.trim(), kind: kind.value, priority: priority.value,
          at: when.value ? new Date(when.value).toISOString() : null,
        });
        result.append(h('p', { class: 'ok' }, `已发送。编号 ${out.id || ''}`));
        loadHistory();
      } catch (err) {
        result.dataset.outcome = 'error';
        result.append(h('p', { class: 'error' }, err.missing
          ? '广播接口尚未接入：本系统还没有 POST /api/broadcasts，广播未发送。Broadcast API not available yet.'
          : `发送失败：${err.detail || err.message}`));
      } finally {
        send.disabled = false;
      }
    },
  },
  h('h2', {}, '广播 ', h('small', {}, 'Broadcast console')),
  h('h3', {}, '播放范围'), targets,
  h('label', { for: 'broadcast-text' }, '内容（文字转语音）'), text,
  h('div', { class: 'row' },
    h('label', {}, '类型 ', kind), h('label', {}, '优先级 ', priority), h('label', {}, '定时（留空立即）', when)),
  h('p', { class: 'muted' }, '上传音频文件将在广播接口上线后提供。'),
  result, h('div', { class: 'actions' }, send));
  const history = h('section', { class: 'panel', id: 'broadcast-history' }, h('h2', {}, '广播记录 ', h('small', {}, 'History & receipts')));
  main.append(h('div', { class: 'two-col' }, form, history));

  async function loadHistory() {
    clear(history).append(h('h2', {}, '广播记录 ', h('small', {}, 'History & receipts')));
    const res = await probe('/api/broadcasts?limit=50');
    if (res.missing) { history.append(notAvailable('广播记录与回执', '每个喇叭的播放回执将在广播接口上线后实时显示。')); return; }
    if (!res.ok) { history.append(errorBox(res.error)); return; }
    const rows = Array.isArray(res.data) ? res.data : (res.data.items || []);
    history.append(rows.length ? h('ol', { class: 'feed' }, rows.map((b) => h('li', {},
      h('strong', {}, b.text || b.message || b.id), h('span', { class: 'muted' }, fmtTime(b.created_at || b.at, { date: true })),
      h('span', {}, b.state || '')))) : h('p', { class: 'empty' }, '暂无广播记录。'));
  }
  loadHistory();
  return null;
}
