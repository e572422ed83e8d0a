// 告警规则 — the alerting rules, arming schedules and SLA limits (办结时限) as the hub applies
// them, edited as the site file writes them (JSON here), checked by the hub with the rest of
// the site and applied live (the alerts worker reloads at once). County administrators edit.
import { clear, h } from '../ui.js';
import { act, call, can } from './admin-kit.js';

const SECTIONS = [
  ['sla', '办结时限 (SLA)', '默认时限、各类别与紧急程度的时限、预警比例 warn_at'],
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

  await load();
  return null;
}
