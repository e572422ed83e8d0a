// 告警规则 — the alerting rules, arming schedules and SLA limits (办结时限) as the hub applies
// them, edited as the site file writes them (JSON here), checked by the hub with the rest of
// the site and applied live (the alerts worker reloads at once). County administrators edit.
import { CATEGORIES, URGENCIES, clear, h } from '../ui.js';
import { act, call, can } from './admin-kit.js';

const STAGES = [['accept', '受理'], ['dispatch', '派遣'], ['handle', '处置'], ['verify', '核查'], ['close', '结案']];
const SECTIONS = [
  ['sla', '办结时限 (JSON)', '与上表相同，可直接编辑'],
  ['rules', '告警规则', '事件 → 告警 → 案件的规则'],
  ['schedules', '布防时间表', ''],
  ['arming', '布防', ''],
];

export async function render(main, { me }) {
  const box = h('div', { id: 'alerting-admin' });
  main.append(box);
  const editable = can(me, 'alerting.manage') && (me.node_path || []).length === 1;

  async function load() {
    const cfg = await call('GET', '/api/admin/alerting');
    clear(box).append(h('div', {}, h('h2', {}, '告警规则与办结时限 ', h('small', {}, 'Alerting rules and SLA limits')),
      editable ? null : h('p', { class: 'muted' }, '全县通用，仅县级管理员可修改。'),
      slaTable(cfg.sla),
      SECTIONS.map(([name, label, hint]) => {
        const text = h('textarea', { id: `alerting-${name}`, rows: name === 'rules' ? 18 : 10, spellcheck: 'false', class: 'code', readonly: !editable },
          JSON.stringify(cfg[name], null, 2));
        const error = h('p', { class: 'form-error', role: 'alert', id: `alerting-${name}-error` });
        return h('section', { class: 'panel form', dataset: { section: name } },
          h('h3', {}, label, hint ? h('small', {}, ` ${hint}`) : null,
            cfg.edited_in_ui.includes(name) ? null : h('span', { class: 'badge muted' }, '来自站点文件')),
          text, error,
          editable ? h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: `alerting-${name}-save`, onclick: async () => {
            let data;
            try { data = JSON.parse(text.value); } catch (err) { error.textContent = `JSON 格式错误：${err.message}`; return; }
            if (await act(error, () => call('PUT', `/api/admin/alerting/${name}`, { data }), '已保存，立即生效')) await load();
          } }, '保存')) : null);
      })));
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
      h('table', { class: 'receipts-table', id: 'sla-table' },
        h('thead', {}, h('tr', {}, ['类别', '紧急程度', '总时限', ...STAGES.map(([, l]) => l), '超时自动升级', ''].map((t) => h('th', {}, t)))), body),
      error,
      editable ? h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', id: 'sla-add', onclick: () => body.append(row({}, false)) }, '新增一行'),
        h('button', { type: 'button', class: 'primary', id: 'sla-save', onclick: async () => {
          if (await act(error, () => call('PUT', '/api/admin/alerting/sla', { data: read() }), '办结时限已保存，立即生效')) await load();
        } }, '保存办结时限')) : null);
  }

  await load();
  return null;
}
