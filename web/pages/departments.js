// 部门管理 — departments (职能部门) of my subtree: create, rename, move to another node, 撤销.
import { clear, gridIndex, h, modal } from '../ui.js';
import { act, call, field, nodeOptions, select, table } from './admin-kit.js';

export async function render(main, { me }) {
  let grid = gridIndex(await call('GET', '/api/grid'));     // fresh: nodes added in 网格管理 since login
  const box = h('div', { id: 'departments-admin' });
  main.append(box);

  async function load() {
    grid = gridIndex(await call('GET', '/api/grid'));
    const rows = await call('GET', '/api/admin/departments');
    clear(box).append(
      h('div', { class: 'panel-head' }, h('h2', {}, '部门管理 ', h('small', {}, 'Departments')),
        h('button', { type: 'button', class: 'primary', id: 'dept-new', onclick: () => edit(null) }, '新建部门')),
      table('departments-table', ['编码', '名称', '所在节点', '在用帐号', '操作'], rows.map((d) => h('tr', { dataset: { code: d.code } },
        h('td', {}, d.code), h('td', {}, d.name), h('td', {}, d.node_name), h('td', {}, String(d.users)),
        h('td', { class: 'row-actions' },
          h('button', { type: 'button', class: 'secondary', onclick: () => edit(d) }, '编辑'),
          h('button', { type: 'button', class: 'danger', dataset: { action: 'retire' }, onclick: () => retire(d) }, '撤销'))))));
  }

  async function retire(d) {
    if (!window.confirm(`撤销部门 ${d.name}？`)) return;
    if (await act(null, () => call('POST', `/api/admin/departments/${encodeURIComponent(d.code)}/retire`), '已撤销')) await load();
  }

  function edit(d) {
    const error = h('p', { class: 'form-error', role: 'alert', id: 'dept-form-error' });
    const code = h('input', { id: 'dept-code', value: d?.code || '', required: true, disabled: !!d, maxlength: 64 });
    const name = h('input', { id: 'dept-name', value: d?.name || '', required: true, maxlength: 200 });
    const node = select('dept-node', nodeOptions(grid), d?.node_code || me.node_code);
    const form = h('form', { class: 'form', id: 'dept-form', onsubmit: async (e) => {
      e.preventDefault();
      const r = d
        ? await act(error, () => call('PATCH', `/api/admin/departments/${encodeURIComponent(d.code)}`, { name: name.value, node_code: node.value }), '已保存')
        : await act(error, () => call('POST', '/api/admin/departments', { code: code.value.trim(), name: name.value.trim(), node_code: node.value }), '已创建');
      if (r) { dialog.close(); await load(); }
    } }, field('编码', code), field('名称', name), field('所在节点', node), error,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'dept-save' }, '保存')));
    const dialog = modal(d ? `编辑部门 ${d.name}` : '新建部门', form);
  }

  await load();
  return null;
}
