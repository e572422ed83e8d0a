// 告警规则 — the alerting rules, arming schedules, arming and SLA limits (办结时限) as the hub
// applies them, edited in forms (alerting-rules.js, alerting-schedules.js; each section also
// as JSON under 高级) and saved through PUT /api/admin/alerting/{section}: the hub checks the
// section with the rest of the site (the one validator) and the alerts worker reloads at once.
// Only the county's administrators edit; everyone else who may read sees the same forms read-only.
import { CATEGORIES, URGENCIES, clear, gridIndex, h, sourceName, toast } from '../ui.js';
import { call, can } from './admin-kit.js';
import { jsonPanel, showProblems } from './alerting-kit.js';
import { rulesPanel } from './alerting-rules.js';
import { armingPanel, schedulesPanel } from './alerting-schedules.js';

const STAGES = [['accept', '受理'], ['dispatch', '派遣'], ['handle', '处置'], ['verify', '核查'], ['close', '结案']];

export async function render(main, { me }) {
  const box = h('div', { id: 'alerting-admin' });
  main.append(box);
  const editable = can(me, 'alerting.manage') && (me.node_path || []).length === 1;
  const [gridNodes, cameras, devices, departments] = await Promise.all([
    call('GET', '/api/grid'), call('GET', '/api/cameras').catch(() => []), call('GET', '/api/devices').catch(() => []),
    can(me, 'departments.manage') ? call('GET', '/api/admin/departments').catch(() => []) : Promise.resolve([])]);
  const grid = gridIndex(gridNodes);
  const sources = [...cameras.map((c) => ({ id: c.id, name: c.name, kind: 'camera' })), ...devices.map((d) => ({ id: d.id, name: d.name, kind: d.kind }))];
  const sourceLabel = (id) => (sources.find((x) => x.id === id) || {}).name || sourceName(id);
  const rulesError = h('p', { class: 'form-error', role: 'alert', id: 'rules-error' });

  // One PUT per section; a refusal goes to onError (placing it by the fields) or to `where`.
  async function save(section, data, where, onError) {
    if (where) where.textContent = '';
    try {
      await call('PUT', `/api/admin/alerting/${section}`, { data });
    } catch (err) {
      const text = err.detail || err.message;
      if (onError) onError(text); else if (where) showProblems(text, where.parentElement || where, `${section}`, where);
      toast('未保存：请按提示修改', 'error', 6000);
      return false;
    }
    toast('已保存，立即生效', 'info');
    await load();
    return true;
  }

  async function load() {
    const cfg = await call('GET', '/api/admin/alerting');
    const ctx = { editable, grid, sources, sourceLabel, departments, save, schedules: cfg.schedules, rules: cfg.rules, rulesError };
    const fromFile = (name) => (cfg.edited_in_ui.includes(name) ? null : h('span', { class: 'badge muted' }, '来自站点文件'));
    const section = (name, panel) => {
      panel.dataset.section = name;
      panel.querySelector('h3')?.append(' ', fromFile(name) || '');
      panel.append(jsonPanel(name, cfg[name], editable, (data, error) => save(name, data, error, (text) => { error.textContent = text; })));
      return panel;
    };
    clear(box).append(h('div', {}, h('h2', {}, '告警规则与办结时限 ', h('small', {}, 'Alerting rules and SLA limits')),
      editable ? null : h('p', { class: 'muted', id: 'alerting-readonly' }, '全县通用，仅县级管理员可修改；此处只读。'),
      section('rules', rulesPanel(cfg.rules, ctx)),
      section('schedules', schedulesPanel(cfg.schedules, ctx)),
      section('arming', armingPanel(cfg.arming, ctx)),
      section('sla', slaTable(cfg.sla))));
  }

  // 办结时限 as a table: one row per limit (类别 × 紧急程度, either may be 任意), the default first.
  function slaTable(sla) {
    const error = h('p', { class: 'form-error', role: 'alert', id: 'sla-error' });
    const warnAt = h('input', { id: 'sla-warn-at', type: 'number', step: '0.05', min: '0.05', max: '0.95', value: sla.warn_at ?? 0.8, disabled: !editable });
    const body = h('tbody', {});
    const matchOf = (list, v) => (list.find((x) => x.code === v || x.label === v) || {}).code || '';
    const row = (lim, isDefault) => {
      const pick = (list, v, what) => h('select', { dataset: { f: what }, disabled: isDefault || !editable },
        h('option', { value: '' }, isDefault ? '（默认）' : '任意'), list.map((x) => h('option', { value: x.code, selected: x.code === matchOf(list, v) }, x.label)));
      const dur = (v, what) => h('input', { dataset: { f: what }, value: v || '', size: 5, placeholder: '如 4h', disabled: !editable });
      return h('tr', { dataset: { default: isDefault ? 'true' : '' } },
        h('td', {}, pick(CATEGORIES, lim.category, 'category')), h('td', {}, pick(URGENCIES, lim.urgency, 'urgency')),
        h('td', {}, dur(lim.total, 'total')), STAGES.map(([k]) => h('td', {}, dur((lim.stages || {})[k], `stage-${k}`))),
        h('td', {}, h('input', { type: 'checkbox', dataset: { f: 'auto_escalate' }, checked: !!lim.auto_escalate, disabled: !editable })),
        h('td', {}, isDefault || !editable ? null : h('button', { type: 'button', class: 'secondary', onclick: (e) => e.target.closest('tr').remove() }, '删除')));
    };
    body.append(row(sla.default || {}, true), ...(sla.limits || []).map((l) => row(l, false)));
    const read = () => {
      const rows = [...body.querySelectorAll('tr')].map((tr) => {
        const f = (name) => tr.querySelector(`[data-f="${name}"]`);
        const out = { total: f('total').value.trim() };
        const stages = Object.fromEntries(STAGES.map(([k]) => [k, f(`stage-${k}`).value.trim()]).filter(([, v]) => v));
        if (Object.keys(stages).length) out.stages = stages;
        if (f('auto_escalate').checked) out.auto_escalate = true;
        if (f('category').value) out.category = f('category').value;
        if (f('urgency').value) out.urgency = f('urgency').value;
        return out;
      });
      return { warn_at: Number(warnAt.value), default: rows[0], limits: rows.slice(1) };
    };
    return h('section', { class: 'panel form', id: 'sla-editor' },
      h('h3', {}, '办结时限 ', h('small', {}, '时长写作 30m、4h、3d；更具体的一行优先')),
      h('label', { for: 'sla-warn-at' }, '到达时限的比例时预警 ', warnAt),
      h('div', { class: 'table-scroll' }, h('table', { class: 'receipts-table', id: 'sla-table' },
        h('thead', {}, h('tr', {}, ['类别', '紧急程度', '总时限', ...STAGES.map(([, l]) => l), '超时自动升级', ''].map((t) => h('th', {}, t)))), body)),
      error,
      editable ? h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', id: 'sla-add', onclick: () => body.append(row({}, false)) }, '新增一行'),
        h('button', { type: 'button', class: 'primary', id: 'sla-save', onclick: async () => {
          await save('sla', read(), error);
        } }, '保存办结时限')) : null);
  }

  await load();
  return null;
}
