// 告警 — the alert feed: alarms (when the alarms API is on this hub) and the live stream of
// events from cameras and field devices, with sound for critical ones.
import { api, probe } from '../api.js';
import { SEVERITY_LABELS, beep, clear, errorBox, eventLabel, fmtAgo, fmtTime, h, modal, notAvailable } from '../ui.js';

const EVENTS_EVERY_MS = 5000;

export async function render(main, { grid }) {
  const alarmsBox = h('section', { class: 'panel', id: 'alarms' }, h('h2', {}, '告警 ', h('small', {}, 'Alarms')));
  const eventsList = h('ol', { class: 'feed', id: 'event-feed' });
  const soundToggle = h('input', { type: 'checkbox', id: 'sound', checked: localStorage.getItem('xlhub.sound') !== 'off' });
  soundToggle.addEventListener('change', () => localStorage.setItem('xlhub.sound', soundToggle.checked ? 'on' : 'off'));
  const eventsBox = h('section', { class: 'panel', id: 'events' },
    h('header', { class: 'panel-head' }, h('h2', {}, '最近事件 ', h('small', {}, 'Recent events (live)')),
      h('label', { class: 'inline' }, soundToggle, ' 紧急告警声音')),
    eventsList);
  main.append(h('div', { class: 'two-col' }, alarmsBox, eventsBox));

  // Alarms: the alerts API (alarms, acknowledge, SSE feed) is built elsewhere; until it is
  // on this hub, say so.
  const alarms = await probe('/api/alarms?limit=50');
  if (alarms.missing) {
    alarmsBox.append(notAvailable('告警列表与确认', '告警（含确认、实时推送）由告警服务提供，接口上线前此处不显示告警。下方为设备与摄像机上报的实时事件。'));
  } else if (!alarms.ok) {
    alarmsBox.append(errorBox(alarms.error, '告警加载失败'));
  } else {
    const rows = Array.isArray(alarms.data) ? alarms.data : (alarms.data.items || []);
    alarmsBox.append(rows.length ? h('ol', { class: 'feed' }, rows.map((a) => h('li', { class: `sev-${a.severity || 'minor'}` },
      h('span', { class: 'badge' }, SEVERITY_LABELS[a.severity] || a.severity || ''),
      h('strong', {}, a.title || a.name || eventLabel(a.type || '')),
      h('span', { class: 'muted' }, fmtTime(a.raised_at || a.time || a.created_at, { date: true })),
      h('span', { class: 'muted' }, a.state || '')))) : h('p', { class: 'empty' }, '当前没有告警。'));
  }

  const seen = new Set();
  let first = true;
  let timer = null;
  let stopped = false;

  async function showEvidence(ev) {
    const body = h('div', { class: 'evidence' }, '加载中…');
    modal(`证据 · ${eventLabel(ev.type)}`, body, { wide: true });
    try {
      const items = await api.get(`/api/events/${encodeURIComponent(ev.id)}/evidence`);
      clear(body);
      if (!items.length) body.append(h('p', {}, '该事件暂无证据文件。'));
      for (const it of items) {
        body.append(it.media_type === 'image/jpeg'
          ? h('figure', {}, h('img', { src: it.url, alt: '证据截图' }), h('figcaption', {}, fmtTime(it.captured_at, { date: true })))
          : h('figure', {}, h('video', { src: it.url, controls: true, preload: 'metadata' }), h('figcaption', {}, `视频片段 ${fmtTime(it.captured_at, { date: true })}`)));
      }
    } catch (err) {
      clear(body).append(err.missing ? notAvailable('证据查看') : errorBox(err, '证据加载失败'));
    }
  }

  function row(ev) {
    const sev = ev.severity || 'info';
    const hasEvidence = (ev.evidence && ev.evidence.length) || ev.type === 'camera.flag';
    return h('li', { class: `sev-${sev}`, dataset: { id: ev.id, type: ev.type } },
      h('span', { class: `badge sev-${sev}` }, SEVERITY_LABELS[sev] || sev),
      h('strong', {}, eventLabel(ev.type)),
      h('span', {}, ev.source_id),
      h('span', { class: 'muted' }, ev.grid_code ? grid.nameOf(ev.grid_code) : ''),
      h('time', { datetime: ev.time, title: fmtTime(ev.time, { date: true }) }, fmtAgo(ev.time)),
      hasEvidence ? h('button', { type: 'button', class: 'link', onclick: () => showEvidence(ev) }, '证据') : null);
  }

  async function poll() {
    try {
      const events = await api.get('/api/events?limit=100');
      const fresh = events.filter((e) => !seen.has(e.id));
      fresh.forEach((e) => seen.add(e.id));
      if (first) {
        clear(eventsList);
        if (!events.length) eventsList.append(h('li', { class: 'empty' }, '暂无事件。'));
        events.forEach((e) => eventsList.append(row(e)));
      } else if (fresh.length) {
        eventsList.querySelector('.empty')?.remove();
        fresh.reverse().forEach((e) => {
          const r = row(e);
          r.classList.add('new');
          eventsList.prepend(r);
        });
        while (eventsList.children.length > 200) eventsList.lastChild.remove();
        if (soundToggle.checked && fresh.some((e) => e.severity === 'critical')) beep();
      }
      first = false;
    } catch (err) {
      if (first) clear(eventsList).append(h('li', {}, errorBox(err, '事件加载失败')));
    }
    if (!stopped) timer = setTimeout(poll, EVENTS_EVERY_MS);
  }
  eventsList.append(h('li', { class: 'loading' }, '加载中…'));
  poll();
  return () => { stopped = true; clearTimeout(timer); };
}
