// 广播 — the broadcast console: targets on the grid tree, text (TTS) or an uploaded audio file,
// kind, priority and time; per-speaker receipts update live; history with reports (回执).
// 实时喊话: the operator's microphone over WebRTC to the chosen villages' speakers (api/devices/voice.py).
import { api, request } from '../api.js';
import { onFeed } from '../feed.js';
import { clear, errorBox, fmtTime, h, modal, notAvailable } from '../ui.js';

const OPEN_STATES = ['scheduled', 'sending', 'playing'];
const RECEIPT_CLASS = { finished: 'ok', failed: 'bad', offline: 'bad', rejected: 'bad', expired: 'bad', preempted: 'warn', stopped: 'warn', cancelled: 'muted' };

// 停止播放: a scheduled broadcast is cancelled, a playing one stops on every speaker at once.
async function stopBroadcast(b, after) {
  if (!window.confirm(`停止播放“${b.text || '（音频）'}”？所有喇叭将立即停止。`)) return;
  try {
    await api.del(`/api/broadcasts/${encodeURIComponent(b.id)}`);
  } catch (err) {
    window.alert(`停止失败：${err.detail || err.message}`);
  }
  after();
}

export async function render(main, { grid, me }) {
  // Only those who may send (broadcast.send) get the console; the others see the history.
  const canSend = !me || !Array.isArray(me.permissions) || me.permissions.includes('broadcast.send');
  let speakers = [];
  try {
    speakers = await api.get('/api/devices?kind=speaker');
  } catch (err) {
    main.append(errorBox(err, '广播设备加载失败'));
  }
  const chosen = new Set();
  const targets = h('ul', { class: 'targets', id: 'broadcast-targets' });
  const areas = [...grid.byCode.values()].filter((n) => ['county', 'township', 'village', 'community'].includes(n.level));
  const boxes = new Map();
  for (const v of areas) {
    const here = speakers.filter((s) => s.grid_path.includes(v.code));
    const box = h('input', { type: 'checkbox', value: v.code, disabled: !here.length, dataset: { level: v.level } });
    boxes.set(v.code, box);
    box.addEventListener('change', () => {
      // a township ticks its villages too (the hub expands a node to the speakers under it)
      for (const [code, b] of boxes) {
        const node = grid.byCode.get(code);
        if (code !== v.code && node.path.includes(v.code) && !b.disabled) b.checked = box.checked;
      }
      chosen.clear();
      for (const [code, b] of boxes) {
        const node = grid.byCode.get(code);
        const parentChosen = node.path.slice(0, -1).some((p) => boxes.get(p)?.checked);
        if (b.checked && !parentChosen) chosen.add(code);
      }
    });
    const depth = Math.max(0, v.path.length - 2);
    targets.append(h('li', { style: { paddingLeft: `${depth * 1.2}rem` } }, h('label', {}, box, ` ${v.name} `,
      h('small', {}, here.length ? `${here.length} 个喇叭${v.level === 'village' || v.level === 'community' ? `：${here.map((s) => s.name).join('、')}` : ''}` : '无广播设备'))));
  }
  const text = h('textarea', { id: 'broadcast-text', rows: 4, maxlength: 1000, placeholder: '输入通告内容，系统将转为语音播放' });
  const audio = h('input', { type: 'file', id: 'broadcast-audio', accept: 'audio/mpeg,audio/wav,audio/ogg,audio/aac,audio/mp4,.mp3,.wav,.ogg,.aac,.m4a' });
  const kind = h('select', { id: 'broadcast-kind' }, h('option', { value: 'notice' }, '通告'), h('option', { value: 'emergency' }, '应急预警'));
  const priority = h('select', { id: 'broadcast-priority' }, h('option', { value: 'normal' }, '普通'), h('option', { value: 'high' }, '优先'), h('option', { value: 'urgent' }, '紧急（打断当前播放）'));
  const repeat = h('input', { type: 'number', id: 'broadcast-repeat', min: 1, max: 10, value: 1 });
  const when = h('input', { type: 'datetime-local', id: 'broadcast-when' });
  const result = h('div', { id: 'broadcast-result', role: 'status' });
  const send = h('button', { type: 'submit', class: 'primary', id: 'broadcast-send' }, '发送广播');
  const form = h('form', {
    class: 'panel form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(result);
      delete result.dataset.outcome;
      if (!chosen.size) { result.append(h('p', { class: 'error' }, '请选择播放范围（至少一个村或社区）。')); return; }
      if (!text.value.trim() && !audio.files.length) { result.append(h('p', { class: 'error' }, '请输入广播内容或选择音频文件。')); return; }
      send.disabled = true;
      try {
        let audioId = null;
        if (audio.files.length) {
          const fd = new FormData();
          fd.append('file', audio.files[0]);
          const res = await request('/api/broadcasts/audio', { method: 'POST', raw: true, headers: {}, bodyRaw: fd });
          audioId = (await res.json()).audio_id;
        }
        const out = await api.post('/api/broadcasts', {
          targets: [...chosen], text: text.value.trim() || null, audio_id: audioId, kind: kind.value,
          priority: kind.value === 'emergency' ? null : priority.value, repeat: Number(repeat.value) || 1,
          at: when.value ? new Date(when.value).toISOString() : null,
        });
        result.dataset.outcome = 'ok';
        result.append(h('p', { class: 'ok' }, `已发送（${out.kind_label}）：${out.state_label || out.state}`));
        loadHistory();
        showReport(out.id);
      } catch (err) {
        result.dataset.outcome = 'error';
        result.append(h('p', { class: 'error' }, err.missing
          ? '广播接口尚未接入：本系统还没有 POST /api/broadcasts，广播未发送。'
          : err.status === 403 ? '当前角色无权发送广播。' : `发送失败：${err.detail || err.message}`));
      } finally {
        send.disabled = false;
      }
    },
  },
  h('h2', {}, '广播 ', h('small', {}, 'Broadcast console')),
  h('h3', {}, '播放范围'), targets,
  h('label', { for: 'broadcast-text' }, '内容（文字转语音）'), text,
  h('label', { for: 'broadcast-audio' }, '或上传音频文件（MP3/WAV/OGG/AAC）'), audio,
  h('div', { class: 'row' },
    h('label', {}, '类型 ', kind), h('label', {}, '优先级 ', priority), h('label', {}, '重复次数 ', repeat),
    h('label', {}, '定时（留空立即）', when)),
  result, h('div', { class: 'actions' }, send));
  const history = h('section', { class: 'panel', id: 'broadcast-history' });
  const live = livePanel(chosen, () => { loadHistory(); });
  main.append(canSend ? h('div', { class: 'two-col' }, h('div', {}, form, live.panel), history) : history);

  let pollTimer = null;
  let stopped = false;
  async function loadHistory() {
    clearTimeout(pollTimer);
    let rows;
    try {
      rows = await api.get('/api/broadcasts?limit=30');
    } catch (err) {
      clear(history).append(h('h2', {}, '广播记录 ', h('small', {}, 'History & receipts')),
        err.missing ? notAvailable('广播记录与回执') : errorBox(err, '广播记录加载失败'));
      return;
    }
    clear(history).append(h('h2', {}, '广播记录 ', h('small', {}, 'History & receipts')));
    history.append(rows.length ? h('ol', { class: 'feed', id: 'broadcast-list' }, rows.map((b) => {
      const sp = b.speakers || {};
      const total = Object.values(sp).reduce((a, n) => a + n, 0);
      return h('li', { class: b.kind === 'emergency' ? 'sev-critical' : '', dataset: { id: b.id, state: b.state } },
        h('span', { class: `badge ${b.kind === 'emergency' ? 'sev-critical' : ''}` }, b.kind_label),
        h('div', { class: 'grow' }, h('strong', {}, b.text || '（音频）'),
          h('div', { class: 'muted small' }, `${b.targets.map((t) => grid.nameOf(t)).join('、')} · ${b.requested_by} · ${fmtTime(b.created_at, { date: true })}`)),
        h('span', { class: `badge ${b.state === 'done' ? 'ok' : ['failed', 'no_speakers'].includes(b.state) ? 'bad' : b.state === 'partial' ? 'warn' : 'muted'}` }, b.state_label || b.state),
        h('span', { class: 'small receipts' }, total ? `${sp.finished || 0}/${total} 播完` : ''),
        canSend && OPEN_STATES.includes(b.state) && !b.stop
          ? h('button', { type: 'button', class: 'link danger', dataset: { action: 'stop' }, onclick: () => stopBroadcast(b, loadHistory) }, '停止')
          : null,
        h('button', { type: 'button', class: 'link', onclick: () => showReport(b.id) }, '回执'));
    })) : h('p', { class: 'empty' }, '暂无广播记录。'));
    // receipts update live: while something is playing, look again every few seconds
    if (!stopped && rows.some((b) => OPEN_STATES.includes(b.state))) pollTimer = setTimeout(loadHistory, 3000);
  }

  function showReport(id) {
    const body = h('div', { class: 'report', id: 'broadcast-report' }, '加载中…');
    let timer = null;
    const dlg = modal('广播回执', body, { wide: true, onClose: () => clearTimeout(timer) });
    const paint = async () => {
      let r;
      try { r = await api.get(`/api/broadcasts/${encodeURIComponent(id)}/report`); } catch (err) {
        clear(body).append(errorBox(err, '回执加载失败'));
        return;
      }
      clear(body).append(
        h('p', {}, h('strong', {}, `${r.kind_label}：`), r.text || '（音频）'),
        h('p', { id: 'report-summary' }, h('span', { class: `badge ${r.state === 'done' ? 'ok' : 'muted'}` }, r.state_label || r.state), ' ', r.summary),
        h('table', { class: 'receipts-table' },
          h('thead', {}, h('tr', {}, h('th', {}, '村（社区）'), h('th', {}, '喇叭'), h('th', {}, '状态'), h('th', {}, '开始'), h('th', {}, '结束'))),
          h('tbody', {}, (r.villages || []).flatMap((v) => v.speakers.map((s, i) => h('tr', { dataset: { speaker: s.id, status: s.status } },
            h('td', {}, i === 0 ? `${v.name}（${v.status_label}）` : ''), h('td', {}, s.name || s.id),
            h('td', {}, h('span', { class: `badge ${RECEIPT_CLASS[s.status] || 'muted'}` }, s.status_label), s.detail ? h('small', {}, ` ${typeof s.detail === 'string' ? s.detail : ''}`) : null),
            h('td', {}, fmtTime(s.started_at)), h('td', {}, fmtTime(s.finished_at))))))));
      if (dlg.dialog.isConnected && OPEN_STATES.includes(r.state)) timer = setTimeout(paint, 2000);
    };
    paint();
  }

  const off = onFeed('broadcast', () => { if (!stopped) loadHistory(); });
  await loadHistory();
  return () => { stopped = true; clearTimeout(pollTimer); off(); live.stop(); };
}

function waitIceComplete(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    setTimeout(resolve, ms);
  });
}

// 实时喊话: the same targets as above; a live notice is 紧急 (interrupts routine notices) by default,
// an emergency warning interrupts it; 结束喊话 ends it and the speakers report it played.
function livePanel(chosen, onChange) {
  const kind = h('select', { id: 'live-kind' }, h('option', { value: 'notice' }, '通告'), h('option', { value: 'emergency' }, '应急预警'));
  const priority = h('select', { id: 'live-priority' }, h('option', { value: 'urgent' }, '紧急（打断当前播放）'), h('option', { value: 'high' }, '优先'), h('option', { value: 'normal' }, '普通'));
  const status = h('div', { id: 'live-status', role: 'status' });
  const start = h('button', { type: 'button', class: 'primary', id: 'live-start' }, '开始喊话');
  const stop = h('button', { type: 'button', id: 'live-stop', disabled: true }, '结束喊话');
  let pc = null;
  let mic = null;
  let broadcastId = null;
  const say = (cls, text, state) => { clear(status).append(h('p', { class: cls }, text)); status.dataset.state = state; };
  const hangUp = () => {
    if (pc) pc.close();
    if (mic) mic.getTracks().forEach((t) => t.stop());
    pc = null; mic = null;
    start.disabled = false; stop.disabled = true;
  };
  start.addEventListener('click', async () => {
    if (!chosen.size) { say('error', '请选择喊话范围（至少一个村或社区）。', 'error'); return; }
    start.disabled = true;
    try {
      // no noise suppression: it treats a steady voice or a siren as noise; the level is kept even (AGC)
      mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: true } });
    } catch (err) {
      say('error', `无法使用麦克风：${err.message}（请允许浏览器使用麦克风）`, 'error');
      hangUp();
      return;
    }
    pc = new RTCPeerConnection({ iceServers: [] });
    mic.getAudioTracks().forEach((t) => pc.addTransceiver(t, { direction: 'sendonly', streams: [mic] }));
    pc.onconnectionstatechange = () => {
      if (pc && ['failed', 'closed'].includes(pc.connectionState)) { say('error', '喊话连接中断，已结束。', 'ended'); hangUp(); onChange(); }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitIceComplete(pc, 3000);
      const out = await api.post('/api/broadcasts/live', {
        sdp: pc.localDescription.sdp, type: 'offer', targets: [...chosen], kind: kind.value,
        priority: kind.value === 'emergency' ? null : priority.value,
      });
      broadcastId = out.broadcast_id;
      status.dataset.broadcast = broadcastId;
      await pc.setRemoteDescription({ type: 'answer', sdp: out.sdp });
      say('ok', `正在喊话（${out.kind_label}，优先级 ${out.priority}，最长 ${Math.round(out.max_s / 60)} 分钟）……`, 'live');
      stop.disabled = false;
      onChange();
    } catch (err) {
      say('error', err.status === 403 ? '当前角色无权喊话。' : err.status === 404 ? '所选范围不在本辖区。' : `喊话失败：${err.detail || err.message}`, 'error');
      hangUp();
    }
  });
  const end = async () => {
    const id = broadcastId;
    broadcastId = null;
    stop.disabled = true;
    if (!id) { hangUp(); return; }
    // the hub ends the broadcast first (recorded as the operator's), then the microphone hangs up
    try {
      await api.del(`/api/broadcasts/live/${encodeURIComponent(id)}`);
      say('ok', '喊话已结束。', 'ended');
    } catch (err) {
      say('error', `结束喊话失败：${err.detail || err.message}`, 'error');
    }
    hangUp();
    onChange();
  };
  stop.addEventListener('click', end);
  const panel = h('section', { class: 'panel form', id: 'live-voice' },
    h('h2', {}, '实时喊话 ', h('small', {}, 'Live voice')),
    h('p', { class: 'muted small' }, '对上方所选的村（社区）喇叭实时讲话。'),
    h('div', { class: 'row' }, h('label', {}, '类型 ', kind), h('label', {}, '优先级 ', priority)),
    status, h('div', { class: 'actions' }, start, stop));
  return { panel, stop: () => { if (broadcastId) end(); else hangUp(); } };
}
