// 案件 — the case board: cases by state of the shared lifecycle, overdue ones highlighted,
// filters; the case page with its timeline (电子档案), evidence, SLA clock and the actions
// this user may take at this state (and only those: the hub decides, per role and state).
import { api, request } from '../api.js';
import { onFeed } from '../feed.js';
import { CATEGORIES, URGENCIES, clear, errorBox, fmtAgo, fmtTime, h, modal, notAvailable, toast } from '../ui.js';
import { evidenceFigure } from './alerts.js';
import { openIntake } from './intake.js';

const BOARD_STATES = ['reported', 'accepted', 'registered', 'dispatched', 'handling', 'feedback', 'verified', 'closed', 'evaluated'];
const STATE_FALLBACK = {
  reported: '待受理', accepted: '已受理', registered: '已立案', dispatched: '已派遣', handling: '处置中', feedback: '已反馈',
  verified: '已核查', closed: '已结案', evaluated: '已评价', rejected: '不予受理', cancelled: '已撤销', suspended: '已挂起',
};
const SATISFACTION = ['', '不满意', '基本满意', '满意', '比较满意', '非常满意'];
const PART_STATES = { assigned: '待签收', accepted: '处置中', done: '已反馈', returned: '已退单', withdrawn: '已撤回' };
const PHOTO_TYPES = 'image/jpeg,image/png,image/webp,video/mp4,video/quicktime';

// Attach the chosen files to the case; returns the reasons of those that failed.
async function uploadAll(caseId, files) {
  const failed = [];
  for (const file of files) {
    const fd = new FormData();
    fd.append('file', file);
    try { await request(`/api/cases/${encodeURIComponent(caseId)}/attachments`, { method: 'POST', bodyRaw: fd }); } catch (err) { failed.push(`${file.name}：${err.detail || err.message}`); }
  }
  return failed;
}

function remaining(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const late = seconds < 0;
  let s = Math.abs(Math.round(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60);
  const text = `${d ? `${d}天` : ''}${hr ? `${hr}小时` : ''}${m}分钟`;
  return late ? `已超时 ${text}` : `剩余 ${text}`;
}

// The SLA clock: time left in the current stage and overall (negative: late).
function slaText(c) {
  if (['closed', 'evaluated', 'rejected', 'cancelled'].includes(c.state)) return c.closed_at ? `已办结 ${fmtTime(c.closed_at, { date: true })}` : '已办结';
  const r = c.remaining_s && typeof c.remaining_s === 'object' ? c.remaining_s : { total: c.remaining_s, stage: null };
  const parts = [];
  if (c.stage_label && r.stage !== null && r.stage !== undefined) parts.push(`${c.stage_label}环节${remaining(r.stage)}`);
  if (r.total !== null && r.total !== undefined) parts.push(`全程${remaining(r.total)}`);
  if (c.suspended) parts.push('（已挂起，计时暂停）');
  return parts.join(' · ') || '不计时';
}

export async function render(main, { me, grid, arg }) {
  const perms = Array.isArray(me.permissions) ? me.permissions : null;
  const may = (p) => !perms || perms.includes(p);
  let vocab = null;
  try { vocab = await api.get('/api/alerts/vocabulary'); } catch (err) {
    if (err.missing) { main.append(notAvailable('案件看板')); return null; }
    if (err.status === 403) { main.append(h('div', { class: 'empty' }, '当前角色不处理案件（管理员不查看案件）。')); return null; }
  }
  const stateLabel = (s) => (vocab && vocab.states[s]) || STATE_FALLBACK[s] || s;
  const filters = { category: '', urgency: '', overdue: false, q: '', grid: '' };
  const category = h('select', { 'aria-label': '类别', id: 'case-category' }, h('option', { value: '' }, '全部类别'),
    CATEGORIES.map((c) => h('option', { value: c.code }, c.label)));
  const urgency = h('select', { 'aria-label': '紧急程度', id: 'case-urgency' }, h('option', { value: '' }, '全部紧急程度'),
    URGENCIES.map((u) => h('option', { value: u.code }, u.label)));
  const areas = [...grid.byCode.values()].filter((n) => n.level !== 'grid');
  const area = h('select', { 'aria-label': '辖区', id: 'case-grid' }, h('option', { value: '' }, '全部辖区'),
    areas.map((n) => h('option', { value: n.code }, grid.trail(n.path, 1) || n.name)));
  const overdue = h('input', { type: 'checkbox', id: 'case-overdue' });
  const q = h('input', { type: 'search', id: 'case-q', placeholder: '编号或标题', maxlength: 100 });
  const board = h('section', { class: 'board', id: 'case-board' });
  const count = h('span', { class: 'muted', id: 'case-count' });
  for (const [el, key] of [[category, 'category'], [urgency, 'urgency'], [area, 'grid']]) {
    el.addEventListener('change', () => { filters[key] = el.value; load(); });
  }
  overdue.addEventListener('change', () => { filters.overdue = overdue.checked; load(); });
  let qTimer = null;
  q.addEventListener('input', () => { clearTimeout(qTimer); qTimer = setTimeout(() => { filters.q = q.value.trim(); load(); }, 300); });
  const newBtn = may('cases.create') ? h('button', { type: 'button', class: 'primary', id: 'case-new',
    onclick: () => openIntake(me, grid, (c) => { load(); loadTasks(); openCase(c.id); }) }, me.role === 'hotline' ? '热线受理' : '新建工单') : null;
  // 我的任务: a department's parts waiting to be signed for or handled, nearest deadline first.
  const tasks = me.department_code ? h('section', { class: 'panel', id: 'my-tasks' }) : null;
  main.append(h('div', { class: 'toolbar' }, h('h2', {}, '案件 ', h('small', {}, 'Cases')), newBtn, category, urgency, area,
    h('label', { class: 'inline' }, overdue, ' 仅看超时'), q, count), ...(tasks ? [tasks] : []), board);

  async function loadTasks() {
    if (!tasks) return;
    let rows;
    try {
      rows = await api.get(`/api/cases?department=${encodeURIComponent(me.department_code)}&state=dispatched&state=handling&limit=200`);
    } catch (err) { clear(tasks).append(errorBox(err, '任务加载失败')); return; }
    rows.sort((a, b) => String(a.stage_due_at || a.due_at).localeCompare(String(b.stage_due_at || b.due_at)));
    clear(tasks).append(h('h3', {}, '我的任务 ', h('small', {}, `${rows.length} 件待办`)),
      rows.length ? h('ol', { class: 'feed', id: 'task-list' }, rows.map((c) => h('li', { dataset: { id: c.id, number: c.number } },
        h('span', { class: `badge urgency-${c.urgency_colour}` }, c.urgency_label),
        h('button', { type: 'button', class: 'link grow', onclick: () => openCase(c.id) }, `${c.number} ${c.title}`),
        h('span', { class: 'badge' }, c.state_label),
        h('small', { class: c.overdue || c.stage_overdue ? 'late' : 'muted' }, c.stage_due_at || c.due_at ? `期限 ${fmtTime(c.stage_due_at || c.due_at, { date: true, seconds: false })}` : ''))))
        : h('p', { class: 'empty' }, '当前没有派给本部门的待办任务。'));
  }

  async function load() {
    const qs = new URLSearchParams({ limit: '300' });
    if (filters.category) qs.set('category', filters.category);
    if (filters.urgency) qs.set('urgency', filters.urgency);
    if (filters.grid) qs.set('grid', filters.grid);
    if (filters.overdue) qs.set('overdue', 'true');
    if (filters.q) qs.set('q', filters.q);
    let cases;
    try {
      cases = await api.get(`/api/cases?${qs}`);
    } catch (err) {
      clear(board).append(err.missing ? notAvailable('案件看板') : err.status === 403 ? h('div', { class: 'empty' }, '当前角色不处理案件。') : errorBox(err, '案件加载失败'));
      return;
    }
    count.textContent = `${cases.length} 件`;
    const columns = BOARD_STATES.map((s) => ({ state: s, cases: cases.filter((c) => c.state === s) }));
    const others = cases.filter((c) => !BOARD_STATES.includes(c.state));
    if (others.length) columns.push({ state: 'other', label: '其他（挂起、撤销、不予受理）', cases: others });
    clear(board).append(h('div', { class: 'columns' }, columns.map((col) => h('div', { class: 'column', dataset: { state: col.state } },
      h('h3', {}, `${col.label || stateLabel(col.state)} `, h('span', { class: 'count' }, String(col.cases.length))),
      col.cases
        .sort((a, b) => Number(b.overdue || b.stage_overdue) - Number(a.overdue || a.stage_overdue) || String(a.due_at).localeCompare(String(b.due_at)))
        .map(card)))));
  }

  function card(c) {
    const late = c.overdue || c.stage_overdue;
    return h('button', {
      type: 'button', class: `card urgency-${c.urgency_colour || ''}${late ? ' overdue' : ''}${c.warned ? ' warned' : ''}`,
      dataset: { id: c.id, number: c.number }, onclick: () => openCase(c.id),
    },
    h('span', { class: 'card-top' }, h('strong', {}, c.number), h('span', { class: `badge urgency-${c.urgency_colour}` }, c.urgency_label)),
    h('span', { class: 'card-title' }, c.title),
    h('small', {}, `${c.category_label} · ${grid.nameOf(c.grid_code)} · ${c.channel_label || ''}`),
    late ? h('small', { class: 'late' }, c.overdue ? '已超时' : `${c.stage_label || ''}环节超时`) : h('small', {}, c.due_at ? `期限 ${fmtTime(c.due_at, { date: true, seconds: false })}` : ''));
  }

  async function openCase(id) {
    const body = h('div', { class: 'case-page', id: 'case-page' }, '加载中…');
    const dlg = modal('案件', body, { wide: true });
    const paint = async () => {
      let c;
      try { c = await api.get(`/api/cases/${encodeURIComponent(id)}`); } catch (err) {
        clear(body).append(errorBox(err, err.status === 404 ? '案件不存在或不在本辖区' : '案件加载失败'));
        return;
      }
      dlg.dialog.querySelector('h2').textContent = `案件 ${c.number}`;
      const late = c.overdue || c.stage_overdue;
      // h() flattens the optional sections (arrays) and skips the absent ones (null)
      clear(body).append(h('div', { class: 'case-body' },
        h('div', { class: 'case-head' },
          h('h3', {}, c.title),
          h('div', { class: 'row' },
            h('span', { class: 'badge', id: 'case-state' }, c.state_label),
            h('span', { class: `badge urgency-${c.urgency_colour}` }, c.urgency_label),
            h('span', { class: 'badge' }, c.category_label),
            h('span', { class: 'badge muted' }, c.channel_label || c.channel),
            h('span', { class: `sla${late ? ' late' : ''}`, id: 'case-sla' }, slaText(c)))),
        h('dl', {},
          h('dt', {}, '地点'), h('dd', {}, `${grid.trail(c.grid_path, 1)}${c.address ? ` · ${c.address}` : ''}`),
          h('dt', {}, '责任单位'), h('dd', {}, grid.trail(c.owner_path, 1) || c.owner_code),
          h('dt', {}, '立案时间'), h('dd', {}, fmtTime(c.created_at, { date: true })),
          h('dt', {}, '办结期限'), h('dd', {}, fmtTime(c.due_at, { date: true })),
          c.description ? [h('dt', {}, '描述'), h('dd', {}, c.description)] : null,
          c.reporter ? [h('dt', {}, '报告人'), h('dd', { id: 'case-reporter' }, Object.values(c.reporter).join(' · '),
            c.reporter_revealable ? h('button', { type: 'button', class: 'link', id: 'reporter-reveal', onclick: (e) => reveal(c, e.target) }, ' 查看完整信息（记入审计）') : null)] : null,
          c.satisfaction ? [h('dt', {}, '满意度'), h('dd', {}, SATISFACTION[c.satisfaction] || String(c.satisfaction))] : null),
        actionsBox(c, paint),
        h('h4', {}, '办理过程 ', h('small', {}, '电子档案')),
        h('ol', { class: 'timeline', id: 'case-timeline' }, (c.timeline || []).map((t) => h('li', {},
          h('time', {}, fmtTime(t.at, { date: true })),
          h('strong', {}, t.label || t.action), t.to_state_label ? h('span', { class: 'muted' }, ` → ${t.to_state_label}`) : null,
          h('span', { class: 'muted' }, ` ${t.actor || ''}${t.actor_department ? `（${t.actor_department}）` : ''}`),
          t.note && t.note !== 'null' ? h('div', { class: 'note' }, t.note) : null))),
        (c.assignments || []).length ? [h('h4', {}, '派遣'), h('ul', {}, c.assignments.map((a) => h('li', {},
          `${a.department_name || a.assignee || a.node_code} · ${PART_STATES[a.state] || a.state}${a.note ? ` · ${a.note}` : ''}${a.done_at ? ` · ${fmtTime(a.done_at, { date: true })}` : ''}`)))] : null,
        h('h4', {}, '证据'),
        (c.evidence || []).length
          ? h('div', { class: 'evidence', id: 'case-evidence' }, c.evidence.map((e) => evidenceFigure({ ...e, url: e.media_type || e.evidence_id ? `/api/cases/${encodeURIComponent(c.id)}/evidence/${e.id}` : null })))
          : h('p', { class: 'muted' }, '暂无证据。'),
        (c.broadcasts || []).length ? [h('h4', {}, '广播'), h('ul', {}, c.broadcasts.map((b) => h('li', {}, `${b.message || ''} · ${b.status} · ${b.finished}/${b.speakers} 个喇叭`)))] : null));
    };
    await paint();
  }

  async function reveal(c, button) {
    button.disabled = true;
    try {
      const r = await api.get(`/api/cases/${encodeURIComponent(c.id)}/reporter`);
      const dd = document.getElementById('case-reporter');
      if (dd) clear(dd).append(h('span', { id: 'reporter-full' }, Object.values(r.reporter).join(' · ')), h('small', { class: 'muted' }, ' （已记入审计日志）'));
    } catch (err) {
      button.disabled = false;
      toast(`无法查看：${err.detail || err.message}`, 'error');
    }
  }

  function actionsBox(c, repaint) {
    const allowed = c.allowed_actions || [];
    const box = h('div', { class: 'case-actions', id: 'case-actions' });
    if (!allowed.length) { box.append(h('p', { class: 'muted' }, '当前状态下您没有可执行的操作。')); return box; }
    const feedbackOffered = allowed.some((a) => a.action === 'feedback');
    const note = h('textarea', { rows: 2, id: 'action-note', placeholder: feedbackOffered ? '处置结果（反馈必填）/ 办理意见' : '办理意见（部分操作必填）', maxlength: 2000 });
    const extra = h('div', { class: 'row' });
    const result = h('div', { role: 'status', id: 'action-result' });
    const needsParam = (p) => allowed.some((a) => (a.params || []).includes(p));
    // 派遣: the departments and people who serve the case's place (GET /api/cases/{id}/assignees)
    const departments = h('div', { class: 'picker', id: 'action-departments' }, h('span', { class: 'muted small' }, '加载处置部门…'));
    const assignee = h('select', { id: 'action-assignee' }, h('option', { value: '' }, '不派给网格员'));
    if (needsParam('departments')) {
      api.get(`/api/cases/${encodeURIComponent(c.id)}/assignees`).then((picks) => {
        clear(departments).append(h('span', { class: 'small' }, '处置部门：'),
          ...(picks.departments.length ? picks.departments.map((d) => h('label', { class: 'inline' },
            h('input', { type: 'checkbox', name: 'department', value: d.code }), ` ${d.name}`, h('small', { class: 'muted' }, `（${d.node_name}）`)))
            : [h('span', { class: 'muted small' }, '无可派部门')]));
        picks.people.forEach((p) => assignee.append(h('option', { value: p.username }, `${p.display_name || p.username}（${p.role_label} · ${p.node_name}）`)));
      }).catch((err) => clear(departments).append(h('span', { class: 'error' }, `派遣对象加载失败：${err.detail || err.message}`)));
    }
    const target = h('select', { id: 'action-target' }, h('option', { value: '' }, '交办至下级…'),
      [...grid.byCode.values()].filter((n) => n.path.includes(c.owner_code) && n.code !== c.owner_code).map((n) => h('option', { value: n.code }, grid.trail(n.path, 1))));
    const satisfaction = h('select', { id: 'action-satisfaction' }, [5, 4, 3, 2, 1].map((n) => h('option', { value: n }, SATISFACTION[n])));
    if (needsParam('departments')) extra.append(departments, h('label', { class: 'inline' }, '网格员 ', assignee));
    if (needsParam('target_node')) extra.append(target);
    if (needsParam('satisfaction')) extra.append(h('label', { class: 'inline' }, '满意度 ', satisfaction));
    const photos = h('input', { type: 'file', id: 'action-photos', multiple: true, accept: PHOTO_TYPES });
    const buttons = allowed.map((a) => h('button', {
      type: 'button', class: 'action-btn', dataset: { action: a.action },
      onclick: async () => {
        clear(result);
        if (a.needs_note && !note.value.trim()) {
          result.append(h('p', { class: 'error' }, a.action === 'feedback' ? '反馈须填写处置结果。' : `“${a.label}”需要填写办理意见。`));
          note.focus();
          return;
        }
        const body = { note: note.value.trim() || null, expected_state: c.state };
        if ((a.params || []).includes('departments')) body.departments = [...departments.querySelectorAll('input[name=department]:checked')].map((x) => x.value);
        if ((a.params || []).includes('assignee') && assignee.value) body.assignee = assignee.value;
        if ((a.params || []).includes('target_node')) body.target_node = target.value || null;
        if ((a.params || []).includes('satisfaction')) body.satisfaction = Number(satisfaction.value);
        if (a.action === 'dispatch' && !(body.departments || []).length && !body.assignee) {
          result.append(h('p', { class: 'error' }, '请选择处置部门或网格员。'));
          return;
        }
        buttons.forEach((b) => { b.disabled = true; });
        try {
          // photos first: the result photos are on the case when the feedback is recorded
          const failed = photos.files.length ? await uploadAll(c.id, photos.files) : [];
          if (failed.length) throw new Error(`附件上传失败：${failed.join('；')}`);
          await api.post(`/api/cases/${encodeURIComponent(c.id)}/actions/${a.action}`, body);
          toast(`${a.label}：已办理`, 'ok');
          await repaint();
          load();
          loadTasks();
        } catch (err) {
          buttons.forEach((b) => { b.disabled = false; });
          result.append(h('p', { class: 'error' }, `${a.label}失败：${err.detail || err.message}`));
        }
      },
    }, a.label));
    box.append(h('h4', {}, '可执行操作'), note, extra,
      h('label', { class: 'inline', for: 'action-photos' }, '附件照片 ', photos),
      h('div', { class: 'row' }, buttons), result);
    return box;
  }

  let reload = null;
  const off = onFeed('case', () => { clearTimeout(reload); reload = setTimeout(load, 400); });
  board.append(h('p', { class: 'loading' }, '加载中…'));
  await Promise.all([load(), loadTasks()]);
  if (arg) openCase(arg);
  return () => { off(); clearTimeout(reload); clearTimeout(qTimer); };
}
