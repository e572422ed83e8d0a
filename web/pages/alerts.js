// 告警 — the alert feed: alarms pushed live (SSE), acknowledged from the list, evidence one
// click away; below, the raw stream of events from cameras and field devices.
import { api } from '../api.js';
import { onFeed, onFeedStatus } from '../feed.js';
import { CATEGORIES, SEVERITY_LABELS, URGENCIES, clear, errorBox, eventLabel, fmtAgo, fmtTime, h, modal, notAvailable, toast } from '../ui.js';

const EVENTS_EVERY_MS = 5000;
const FILTERS = [
  { id: 'open', label: '未处理', states: ['active', 'acknowledged'] },
  { id: 'active', label: '未确认', states: ['active'] },
  { id: 'all', label: '全部', states: [] },
];

export function evidenceUrl(item) {
  if (item.url) return item.url;
  const id = item.evidence_id || item.ref || item.id;
  return id ? `/api/evidence/${encodeURIComponent(id)}` : null;
}

export function evidenceFigure(item) {
  const url = evidenceUrl(item);
  const when = fmtTime(item.captured_at, { date: true });
  if (item.missing) {
    return h('figure', { class: 'missing', dataset: { reason: item.missing.reason } },
      h('p', { class: 'muted' }, `未生成视频片段：${item.missing.text}`), h('figcaption', {}, when));
  }
  if (item.detail && !url) return h('figure', {}, h('pre', {}, JSON.stringify(item.detail, null, 1)), h('figcaption', {}, when));
  if (item.pending) return h('figure', {}, h('p', { class: 'muted' }, '视频片段录制中，稍后可查看。'), h('figcaption', {}, when));
  // evidence taken from a recording links back to that moment of the footage (录像回放)
  const rec = item.recording || (item.detail && item.detail.recording);
  const back = rec ? h('a', { class: 'recording-link', href: `#/playback/${encodeURIComponent(rec.camera_id)}/${rec.at || rec.start}` }, ' 回放此刻录像') : null;
  if (item.kind === 'recording' && rec) {
    // a range of footage the case holds (保全): play it, or export it from the playback page
    const gaps = (rec.gaps || []).length;
    return h('figure', { class: 'held-recording' },
      h('p', {}, `录像 ${fmtTime(rec.start, { date: true })} 至 ${fmtTime(rec.end)}（已保全，${(rec.segments || []).length} 段${gaps ? `，其中 ${gaps} 处无录像` : ''}）`),
      h('figcaption', {}, item.sha256 ? h('small', {}, `SHA-256 ${item.sha256.slice(0, 16)}…`) : null, back));
  }
  if ((item.media_type || '').startsWith('image/') || item.kind === 'snapshot') {
    return h('figure', {}, h('img', { src: url, alt: '证据截图', loading: 'lazy' }), h('figcaption', {}, `截图 ${when}`, item.sha256 ? h('small', {}, ` SHA-256 ${item.sha256.slice(0, 16)}…`) : null, back));
  }
  return h('figure', {}, h('video', { src: url, controls: true, preload: 'metadata' }), h('figcaption', {}, `视频片段 ${when}`, back));
}

export function showEvidence(title, loader) {
  const body = h('div', { class: 'evidence', id: 'evidence' }, '加载中…');
  modal(`证据 · ${title}`, body, { wide: true });
  Promise.resolve(loader()).then((items) => {
    clear(body);
    if (!items || !items.length) body.append(h('p', {}, '暂无证据文件。'));
    (items || []).forEach((it) => body.append(evidenceFigure(it)));
  }).catch((err) => clear(body).append(err.missing ? notAvailable('证据查看') : errorBox(err, '证据加载失败')));
}

export async function render(main, { me, grid }) {
  let filter = FILTERS[0];
  const perms = Array.isArray(me.permissions) ? me.permissions : null;
  const may = (p) => !perms || perms.includes(p);
  const feedBadge = h('span', { class: 'badge muted', id: 'feed-status' }, '实时推送：—');
  const tabs = FILTERS.map((f) => h('button', {
    type: 'button', class: 'seg', 'aria-pressed': String(f === filter), dataset: { filter: f.id },
    onclick: () => { filter = f; tabs.forEach((t) => t.setAttribute('aria-pressed', String(t.dataset.filter === f.id))); loadAlarms(); },
  }, f.label));
  const alarmList = h('ol', { class: 'feed', id: 'alarm-list' });
  const alarmsBox = h('section', { class: 'panel', id: 'alarms' },
    h('header', { class: 'panel-head' }, h('h2', {}, '告警 ', h('small', {}, 'Alarms')),
      h('div', { class: 'seg-group' }, tabs), feedBadge),
    alarmList);
  const eventsList = h('ol', { class: 'feed', id: 'event-feed' });
  const soundToggle = h('input', { type: 'checkbox', id: 'sound', checked: localStorage.getItem('xlhub.sound') !== 'off' });
  soundToggle.addEventListener('change', () => localStorage.setItem('xlhub.sound', soundToggle.checked ? 'on' : 'off'));
  const eventsBox = h('section', { class: 'panel', id: 'events' },
    h('header', { class: 'panel-head' }, h('h2', {}, '最近事件 ', h('small', {}, 'Recent events')),
      h('label', { class: 'inline' }, soundToggle, ' 紧急告警声音')),
    eventsList);
  main.append(h('div', { class: 'two-col' }, alarmsBox, eventsBox));
  const offStatus = onFeedStatus((s) => {
    feedBadge.textContent = `实时推送：${{ live: '已连接', connecting: '连接中', unavailable: '不可用', off: '未连接' }[s]}`;
    feedBadge.className = `badge ${s === 'live' ? 'ok' : s === 'unavailable' ? 'bad' : 'muted'}`;
  });

  const fresh = new Set();
  function alarmRow(a) {
    const ackBtn = a.state === 'active' && may('alarms.handle') ? h('button', {
      type: 'button', class: 'ack-btn', onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api.post(`/api/alarms/${encodeURIComponent(a.id)}/acknowledge`, {});
          toast(`已确认：${a.title || a.type_label}`, 'ok');
          loadAlarms();
        } catch (err) {
          e.target.disabled = false;
          toast(err.status === 403 ? '当前角色无权确认告警。' : `确认失败：${err.detail || err.message}`, 'error');
        }
      },
    }, '确认') : null;
    const ev = a.evidence || [];
    return h('li', { class: `sev-${a.severity}${fresh.has(a.id) ? ' new' : ''}`, dataset: { id: a.id, state: a.state } },
      h('span', { class: `badge sev-${a.severity}` }, a.severity_label || SEVERITY_LABELS[a.severity] || a.severity),
      h('div', { class: 'grow' },
        h('strong', {}, a.title || a.type_label || eventLabel(a.type)),
        h('div', { class: 'muted small' }, `${a.source_id} · ${grid.trail(a.grid_path, 1) || a.grid_code || ''}`,
          a.count > 1 ? ` · ${a.count} 次` : '', a.flapping ? ' · 反复' : '')),
      h('span', { class: `badge state-${a.state}` }, a.state_label || a.state),
      h('time', { datetime: a.last_at, title: fmtTime(a.first_at, { date: true }) }, fmtAgo(a.last_at)),
      ev.length ? h('button', { type: 'button', class: 'link', onclick: () => showEvidence(a.title || a.type_label, () => ev) }, `证据(${ev.length})`) : null,
      a.case_id ? h('a', { href: `#/cases/${encodeURIComponent(a.case_id)}` }, '案件') : null,
      !a.case_id && a.state !== 'cleared' && may('cases.create')
        ? h('button', { type: 'button', class: 'case-btn', onclick: () => caseFromAlarm(a) }, '立案') : null,
      ackBtn,
      a.state !== 'cleared' && may('alarms.handle')
        ? h('button', { type: 'button', class: 'clear-btn', onclick: () => clearAlarm(a) }, '清除') : null);
  }

  // 清除: the alarm is over (a note on why, kept with the alarm and in the audit log).
  function clearAlarm(a) {
    const note = h('textarea', { id: 'clear-note', rows: 2, maxlength: 1000, placeholder: '清除原因（可选）' });
    const go = h('button', { type: 'button', class: 'primary', id: 'clear-submit' }, '清除告警');
    const dlg = modal(`清除告警 · ${a.title || a.type_label}`, h('div', { class: 'form' }, note, h('div', { class: 'actions' }, go)));
    go.addEventListener('click', async () => {
      go.disabled = true;
      try {
        await api.post(`/api/alarms/${encodeURIComponent(a.id)}/clear`, { note: note.value.trim() || null });
        toast(`已清除：${a.title || a.type_label}`, 'ok');
        dlg.close();
        loadAlarms();
      } catch (err) {
        go.disabled = false;
        toast(`清除失败：${err.detail || err.message}`, 'error');
      }
    });
  }

  // 立案 from an alarm: the case is linked to it and takes its evidence.
  function caseFromAlarm(a) {
    const category = h('select', { id: 'alarm-case-category' }, CATEGORIES.map((c) => h('option', { value: c.code }, c.label)));
    const urgency = h('select', { id: 'alarm-case-urgency' }, URGENCIES.map((u) => h('option', { value: u.code, selected: u.code === 'medium' }, u.label)));
    const title = h('input', { id: 'alarm-case-title', maxlength: 200, value: a.title || '' });
    const description = h('textarea', { id: 'alarm-case-description', rows: 3, maxlength: 5000, placeholder: '情况说明（留空则按告警生成）' });
    const result = h('div', { role: 'status', id: 'alarm-case-result' });
    const go = h('button', { type: 'button', class: 'primary', id: 'alarm-case-submit' }, '生成案件');
    const dlg = modal(`由告警立案 · ${a.title || a.type_label}`, h('div', { class: 'form' },
      h('label', { for: 'alarm-case-title' }, '标题'), title,
      h('div', { class: 'row' }, h('label', {}, '类别 ', category), h('label', {}, '紧急程度 ', urgency)),
      h('label', { for: 'alarm-case-description' }, '说明'), description, result, h('div', { class: 'actions' }, go)));
    go.addEventListener('click', async () => {
      go.disabled = true;
      clear(result);
      try {
        const c = await api.post(`/api/alarms/${encodeURIComponent(a.id)}/case`, {
          title: title.value.trim() || null, category: category.value, urgency: urgency.value, description: description.value.trim(),
        });
        toast(`已生成案件 ${c.number}`, 'ok');
        dlg.close();
        location.hash = `#/cases/${encodeURIComponent(c.id)}`;
      } catch (err) {
        go.disabled = false;
        result.append(h('p', { class: 'error' }, `立案失败：${err.detail || err.message}`));
      }
    });
  }

  let alarmsAvailable = true;
  async function loadAlarms() {
    const qs = new URLSearchParams({ limit: '100' });
    filter.states.forEach((s) => qs.append('state', s));
    try {
      const rows = await api.get(`/api/alarms?${qs}`);
      clear(alarmList);
      if (!rows.length) alarmList.append(h('li', { class: 'empty' }, filter.id === 'all' ? '暂无告警。' : '当前没有待处理的告警。'));
      rows.forEach((a) => alarmList.append(alarmRow(a)));
    } catch (err) {
      clear(alarmList);
      if (err.missing) { alarmsAvailable = false; alarmList.append(h('li', {}, notAvailable('告警列表与确认'))); }
      else if (err.status === 403) alarmList.append(h('li', { class: 'empty' }, '当前角色不处理告警。'));
      else alarmList.append(h('li', {}, errorBox(err, '告警加载失败')));
    }
  }

  let reloadTimer = null;
  const offAlarm = onFeed('alarm', (m) => {
    if (!alarmsAvailable) return;
    fresh.add(m.ref);
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(loadAlarms, 300);
  });

  const seen = new Set();
  let first = true;
  let timer = null;
  let stopped = false;
  function eventRow(ev) {
    const sev = ev.severity || 'info';
    const hasEvidence = (ev.evidence && ev.evidence.length) || ev.type === 'camera.flag';
    return h('li', { class: `sev-${sev}`, dataset: { id: ev.id, type: ev.type } },
      h('span', { class: `badge sev-${sev}` }, SEVERITY_LABELS[sev] || sev),
      h('strong', {}, eventLabel(ev.type)),
      h('span', {}, ev.source_id),
      h('span', { class: 'muted' }, ev.grid_code ? grid.nameOf(ev.grid_code) : ''),
      h('time', { datetime: ev.time, title: fmtTime(ev.time, { date: true }) }, fmtAgo(ev.time)),
      hasEvidence ? h('button', { type: 'button', class: 'link', onclick: () => showEvidence(eventLabel(ev.type), () => api.get(`/api/events/${encodeURIComponent(ev.id)}/evidence`)) }, '证据') : null);
  }
  async function pollEvents() {
    try {
      const events = await api.get('/api/events?limit=100');
      const newOnes = events.filter((e) => !seen.has(e.id));
      newOnes.forEach((e) => seen.add(e.id));
      if (first) {
        clear(eventsList);
        if (!events.length) eventsList.append(h('li', { class: 'empty' }, '暂无事件。'));
        events.forEach((e) => eventsList.append(eventRow(e)));
      } else if (newOnes.length) {
        eventsList.querySelector('.empty')?.remove();
        newOnes.reverse().forEach((e) => { const r = eventRow(e); r.classList.add('new'); eventsList.prepend(r); });
        while (eventsList.children.length > 200) eventsList.lastChild.remove();
      }
      first = false;
    } catch (err) {
      if (first) clear(eventsList).append(h('li', {}, errorBox(err, '事件加载失败')));
    }
    if (!stopped) timer = setTimeout(pollEvents, EVENTS_EVERY_MS);
  }
  alarmList.append(h('li', { class: 'loading' }, '加载中…'));
  eventsList.append(h('li', { class: 'loading' }, '加载中…'));
  loadAlarms();
  pollEvents();
  return () => { stopped = true; clearTimeout(timer); clearTimeout(reloadTimer); offAlarm(); offStatus(); };
}
