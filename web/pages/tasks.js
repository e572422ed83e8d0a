// 我的任务 — the grid worker's phone: the open cases of my grid (those dispatched to me among
// them), nearest deadline first; a case opens at #/tasks/<id> (Back closes it) with the steps
// I may take here and now — 签收, 反馈 with the result photos, 核查 on site with a photo,
// 自行处置结案 — each sent through the outbox, so it works without a network too.
import { api } from '../api.js';
import { onFeed } from '../feed.js';
import { enqueue, onOutbox } from '../outbox.js';
import { clear, errorBox, fmtTime, h, modal, toast } from '../ui.js';
import { evidenceFigure } from './alerts.js';

const OPEN = ['reported', 'accepted', 'registered', 'dispatched', 'handling', 'feedback', 'verified', 'suspended'];
// Steps a phone offers; the others (派遣 to departments, 交办 …) belong to the control room.
const PHONE_ACTIONS = new Set(['accept', 'register', 'sign', 'send_back', 'feedback', 'verify', 'reopen', 'close',
  'self_close', 'escalate', 'note', 'evaluate']);
const WITH_PHOTOS = new Set(['feedback', 'verify', 'reopen', 'self_close', 'note']);
// 反馈 needs the result in words as well as in pictures.
const NOTE_REQUIRED = new Set(['feedback', 'send_back', 'reopen', 'self_close', 'note']);
const SATISFACTION = ['', '不满意', '基本满意', '满意', '比较满意', '非常满意'];

const dueOf = (c) => c.stage_due_at || c.due_at;
// Element.append() writes null as "null" and an array as "a,b": flatten and skip the absent.
const add = (el, ...xs) => { el.append(...xs.flat(Infinity).filter((x) => x !== null && x !== undefined && x !== false)); return el; };

export function remainingText(c) {
  const due = dueOf(c);
  if (!due) return { text: '不计时', late: false };
  const ms = new Date(due).getTime() - Date.now();
  const late = ms < 0 || c.overdue || c.stage_overdue;
  let m = Math.round(Math.abs(ms) / 60000);
  const d = Math.floor(m / 1440); m -= d * 1440;
  const hr = Math.floor(m / 60); m -= hr * 60;
  const span = `${d ? `${d}天` : ''}${hr ? `${hr}小时` : ''}${m}分钟`;
  return { text: ms < 0 ? `已超时 ${span}` : `剩余 ${span}（${fmtTime(due, { date: true, seconds: false })}）`, late };
}

export function photoInput(id, label = '拍照或选择照片/视频') {
  const input = h('input', { type: 'file', id, accept: 'image/*,video/*', capture: 'environment', multiple: true });
  const thumbs = h('div', { class: 'thumbs', id: `${id}-thumbs` });
  const urls = [];
  input.addEventListener('change', () => {
    urls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    clear(thumbs).append(...[...input.files].map((f) => {
      const u = URL.createObjectURL(f); urls.push(u);
      return f.type.startsWith('video/') ? h('video', { src: u, muted: true }) : h('img', { src: u, alt: f.name });
    }));
  });
  const box = h('label', { class: 'photo-input field' }, h('span', {}, label), input, thumbs);
  return { box, input, files: () => [...input.files], reset: () => { input.value = ''; clear(thumbs); urls.splice(0).forEach((u) => URL.revokeObjectURL(u)); } };
}

export async function render(main, { me, grid, arg }) {
  const list = h('ul', { class: 'task-list', id: 'task-list' });
  const count = h('span', { class: 'muted', id: 'task-count' });
  const pending = h('p', { class: 'muted', id: 'task-pending', hidden: true });
  main.append(h('section', { class: 'phone-page', id: 'tasks-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, '我的任务 ', h('small', {}, 'My tasks')), count,
      h('button', { type: 'button', id: 'task-refresh', onclick: () => load() }, '刷新')),
    pending, list));
  let queued = [];
  const offOutbox = onOutbox((items) => {
    queued = items;
    pending.hidden = !items.length;
    pending.textContent = `待发送 ${items.length} 条：联网后自动发送。`;
  });

  async function load() {
    const qs = new URLSearchParams({ limit: '300' });
    OPEN.forEach((s) => qs.append('state', s));
    let cases;
    try { cases = await api.get(`/api/cases?${qs}`); } catch (err) {
      clear(list).append(h('li', {}, errorBox(err, err.status === 0 ? '无网络：任务列表暂不可用（上报与反馈仍可离线录入）' : '任务加载失败')));
      return;
    }
    cases.sort((a, b) => String(dueOf(a) || '9999').localeCompare(String(dueOf(b) || '9999')));
    count.textContent = `${cases.length} 件`;
    if (!cases.length) { clear(list).append(h('li', { class: 'empty' }, '当前没有待办任务。')); return; }
    clear(list).append(...cases.map((c) => {
      const r = remainingText(c);
      return h('li', {}, h('button', {
        type: 'button', class: `task urgency-${c.urgency_colour || ''}${r.late ? ' overdue' : ''}`,
        dataset: { id: c.id, number: c.number }, onclick: () => { location.hash = `#/tasks/${encodeURIComponent(c.id)}`; },
      },
      h('span', { class: 'task-top' }, h('strong', {}, c.number), h('span', { class: 'badge' }, c.state_label)),
      h('span', { class: 'task-title' }, c.title),
      h('small', {}, `${c.category_label} · ${c.urgency_label} · ${grid.nameOf(c.grid_code)}`),
      h('small', { class: `due${r.late ? ' late' : ''}` }, r.text)));
    }));
  }

  let dlg = null;
  let pushed = false;       // opened from the list (an entry in the history): closing goes Back
  function closeCase() { if (dlg) { const d = dlg; dlg = null; d.close(); } }
  async function openCase(id) {
    closeCase();
    const body = h('div', { class: 'case-page phone-case', id: 'case-page' }, '加载中…');
    dlg = modal('案件', body, {
      wide: true,
      onClose: () => {
        if (!dlg) return;
        dlg = null;
        if (pushed) history.back(); else history.replaceState(null, '', '#/tasks');
        pushed = false;
      },
    });
    await paintCase(id, body, dlg);
  }
  current = (a) => { if (a) { pushed = true; openCase(a); } else { pushed = false; closeCase(); } };

  async function paintCase(id, body, d) {
    let c;
    try { c = await api.get(`/api/cases/${encodeURIComponent(id)}`); } catch (err) {
      clear(body).append(errorBox(err, err.status === 404 ? '案件不存在或不在本辖区' : err.status === 0 ? '无网络，无法打开案件' : '案件加载失败'));
      return;
    }
    d.dialog.querySelector('h2').textContent = `案件 ${c.number}`;
    // A repaint (an action arrived) keeps what the worker was typing.
    const typed = body.querySelector('#action-note')?.value || '';
    const chosen = body.querySelector('#action-photos')?.files;
    const r = remainingText(c);
    const waiting = queued.filter((i) => i.caseId === c.id);
    add(clear(body),
      h('h3', {}, c.title),
      h('div', { class: 'row' }, h('span', { class: 'badge', id: 'case-state' }, c.state_label),
        h('span', { class: `badge urgency-${c.urgency_colour}` }, c.urgency_label), h('span', { class: 'badge' }, c.category_label)),
      h('p', { class: `due${r.late ? ' late' : ''}`, id: 'case-sla' }, r.text),
      h('dl', {},
        h('dt', {}, '地点'), h('dd', {}, `${grid.trail(c.grid_path, 1)}${c.address ? ` · ${c.address}` : ''}`),
        h('dt', {}, '立案时间'), h('dd', { id: 'case-created' }, fmtTime(c.created_at, { date: true })),
        c.description ? [h('dt', {}, '描述'), h('dd', {}, c.description)] : null),
      waiting.length ? h('p', { class: 'warn' }, `本案有 ${waiting.length} 条操作待发送。`) : null,
      actionsFor(c, body, d),
      (c.evidence || []).length ? [h('h4', {}, '照片与证据'), h('div', { class: 'evidence', id: 'case-evidence' },
        c.evidence.map((e) => evidenceFigure({ ...e, url: e.media_type || e.evidence_id ? `/api/cases/${encodeURIComponent(c.id)}/evidence/${e.id}` : null })))] : null,
      h('h4', {}, '办理过程'),
      h('ol', { class: 'timeline', id: 'case-timeline' }, (c.timeline || []).map((t) => h('li', {},
        h('time', {}, fmtTime(t.at, { date: true })), h('strong', {}, t.label),
        h('span', { class: 'muted' }, ` ${t.actor_label || t.actor || ''}${t.actor_department_label ? `（${t.actor_department_label}）` : ''}`),
        t.note ? h('div', { class: 'note' }, t.note) : null))));
    if (typed && body.querySelector('#action-note')) body.querySelector('#action-note').value = typed;
    const photosInput = body.querySelector('#action-photos');
    if (chosen && chosen.length && photosInput) {
      photosInput.files = chosen;
      photosInput.dispatchEvent(new Event('change'));
    }
  }

  function actionsFor(c, body, d) {
    const allowed = (c.allowed_actions || []).filter((a) => PHONE_ACTIONS.has(a.action));
    const box = h('div', { class: 'case-actions', id: 'case-actions' });
    if (!allowed.length) { box.append(h('p', { class: 'muted' }, '当前状态下您没有可执行的操作。')); return box; }
    const note = h('textarea', { rows: 3, id: 'action-note', placeholder: '办理意见 / 处置结果', maxlength: 2000 });
    const photos = photoInput('action-photos', '现场照片（可多张）');
    const satisfaction = h('select', { id: 'action-satisfaction' }, [5, 4, 3, 2, 1].map((n) => h('option', { value: n }, SATISFACTION[n])));
    const result = h('div', { role: 'status', id: 'action-result' });
    const wantsPhotos = allowed.some((a) => WITH_PHOTOS.has(a.action));
    add(box, h('h4', {}, '办理'), note, wantsPhotos ? photos.box : null,
      allowed.some((a) => (a.params || []).includes('satisfaction')) ? h('label', { class: 'inline' }, '满意度 ', satisfaction) : null,
      h('div', { class: 'row' }, allowed.map((a) => h('button', {
        type: 'button', class: 'action-btn big-btn', dataset: { action: a.action },
        onclick: async (e) => {
          clear(result);
          const text = note.value.trim();
          if ((a.needs_note || NOTE_REQUIRED.has(a.action)) && !text) {
            result.append(h('p', { class: 'error' }, `“${a.label}”需要填写办理意见${a.action === 'feedback' ? '（处置结果）' : ''}。`));
            note.focus();
            return;
          }
          const files = WITH_PHOTOS.has(a.action) ? photos.files() : [];
          const reqBody = { note: text || null, expected_state: c.state };
          if ((a.params || []).includes('satisfaction')) reqBody.satisfaction = Number(satisfaction.value);
          e.currentTarget.disabled = true;
          await enqueue({ kind: 'action', label: `${a.label} · ${c.number}`, caseId: c.id, action: a.action, body: reqBody, files });
          if (!navigator.onLine) toast(`${a.label}：已保存在手机上，联网后自动发送`, 'warn');
          note.value = ''; photos.reset();
          if (!navigator.onLine) paintCase(c.id, body, d);     // shows what waits; online, the answer repaints
        },
      }, a.label))), result);
    return box;
  }

  const onSent = (e) => {
    const { item, result } = e.detail;
    if (item.kind === 'action') toast(`${item.label}：已送达`, 'ok');
    load();
    if (dlg && result && result.id && document.querySelector('#case-page')) paintCase(result.id, document.querySelector('#case-page'), dlg);
  };
  window.addEventListener('outbox-sent', onSent);
  let reload = null;
  const off = onFeed('case', () => { clearTimeout(reload); reload = setTimeout(load, 400); });
  await load();
  if (arg) openCase(arg);
  return () => { off(); offOutbox(); clearTimeout(reload); window.removeEventListener('outbox-sent', onSent); current = null; closeCase(); };
}

// Back (or a link) changes only the case argument: open it, or close the open one.
let current = null;
export function onArg(arg) { current?.(arg); }
