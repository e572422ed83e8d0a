// 用户管理 — accounts of my subtree: create, edit role/node/department, 停用/启用, 重置密码,
// 强制下线. Every change is checked by the hub with the site file's rules and audited.
import { clear, gridIndex, h, modal } from '../ui.js';
import { act, call, can, field, nodeOptions, roles, select, table } from './admin-kit.js';

export async function render(main, { me }) {
  let grid = gridIndex(await call('GET', '/api/grid'));     // fresh: nodes added in 网格管理 since login
  const roleLabels = await roles();
  const box = h('div', { id: 'users-admin' });
  main.append(box);
  let departments = [];

  async function load() {
    grid = gridIndex(await call('GET', '/api/grid'));
    const [users, depts] = await Promise.all([call('GET', '/api/users'),
      can(me, 'departments.manage') ? call('GET', '/api/admin/departments') : Promise.resolve([])]);
    departments = depts;
    clear(box).append(
      h('div', { class: 'panel-head' }, h('h2', {}, '用户管理 ', h('small', {}, 'Users')),
        can(me, 'users.manage') ? h('button', { type: 'button', class: 'primary', id: 'user-new', onclick: () => edit(null) }, '新建用户') : null),
      table('users-table', ['用户名', '姓名', '角色', '所属节点', '部门', '状态', '操作'], users.map((u) => h('tr', { dataset: { username: u.username } },
        h('td', {}, u.username), h('td', {}, u.display_name), h('td', {}, roleLabels[u.role] || u.role),
        h('td', {}, grid.nameOf(u.node_code)), h('td', {}, departments.find((d) => d.code === u.department_code)?.name || u.department_code || '—'),
        h('td', {}, h('span', { class: `badge ${u.active ? 'ok' : 'bad'}` }, u.active ? '启用' : '停用'),
          u.must_change_password ? h('span', { class: 'badge warn' }, '待改密码') : null),
        h('td', { class: 'row-actions' }, can(me, 'users.manage') && u.username !== me.username ? [
          h('button', { type: 'button', class: 'secondary', onclick: () => edit(u) }, '编辑'),
          h('button', { type: 'button', class: u.active ? 'danger' : 'secondary', dataset: { action: u.active ? 'disable' : 'enable' },
            onclick: () => setActive(u, !u.active) }, u.active ? '停用' : '启用'),
          h('button', { type: 'button', class: 'secondary', dataset: { action: 'reset' }, onclick: () => reset(u) }, '重置密码'),
          h('button', { type: 'button', class: 'secondary', dataset: { action: 'end-sessions' }, onclick: () => endSessions(u) }, '强制下线'),
        ] : null)))));
  }

  async function setActive(u, active) {
    if (!active && !window.confirm(`停用 ${u.display_name}（${u.username}）？其所有会话将立即结束。`)) return;
    if (await act(null, () => call('PATCH', `/api/users/${encodeURIComponent(u.username)}`, { active }), active ? '已启用' : '已停用，会话已结束') !== undefined) await load();
  }

  async function reset(u) {
    if (!window.confirm(`重置 ${u.username} 的密码？其所有会话将结束，下次登录须修改密码。`)) return;
    const r = await act(null, () => call('POST', `/api/users/${encodeURIComponent(u.username)}/password`, {}));
    if (r) modal('新密码', h('div', { class: 'panel' }, h('p', {}, `${u.username} 的新密码（只显示这一次）：`), h('code', { id: 'new-password' }, r.password)));
    await load();
  }

  async function endSessions(u) {
    const r = await act(null, () => call('POST', `/api/users/${encodeURIComponent(u.username)}/sessions/end`));
    if (r) await load();
  }

  function edit(u) {
    const error = h('p', { class: 'form-error', role: 'alert', id: 'user-form-error' });
    const username = h('input', { id: 'user-username', value: u?.username || '', required: true, disabled: !!u, maxlength: 32 });
    const name = h('input', { id: 'user-name', value: u?.display_name || '', required: true, maxlength: 64 });
    const role = select('user-role', Object.entries(roleLabels), u?.role || 'grid_worker');
    const node = select('user-node', nodeOptions(grid), u?.node_code || me.node_code);
    const dept = select('user-department', [['', '（无）'], ...departments.map((d) => [d.code, `${d.name}（${grid.nameOf(d.node_code)}）`])], u?.department_code || '');
    const password = h('input', { id: 'user-password', type: 'password', autocomplete: 'new-password', placeholder: '留空则自动生成' });
    const form = h('form', { class: 'form', id: 'user-form', onsubmit: async (e) => {
      e.preventDefault();
      let r;
      if (u) {
        const body = {};
        if (name.value !== u.display_name) body.display_name = name.value;
        if (role.value !== u.role) body.role = role.value;
        if (node.value !== u.node_code) body.node_code = node.value;
        if ((dept.value || null) !== (u.department_code || null)) body.department_code = dept.value || null;
        r = await act(error, () => call('PATCH', `/api/users/${encodeURIComponent(u.username)}`, body), '已保存');
      } else {
        r = await act(error, () => call('POST', '/api/users', { username: username.value.trim(), display_name: name.value.trim(),
          role: role.value, node_code: node.value, department_code: dept.value || null, password: password.value || null }), '已创建');
        if (r && r.initial_password) modal('初始密码', h('div', { class: 'panel' }, h('p', {}, `${r.username} 的初始密码（只显示这一次，首次登录须修改）：`), h('code', { id: 'initial-password' }, r.initial_password)));
      }
      if (r) { dialog.close(); await load(); }
    } },
    field('用户名', username, '小写字母、数字'), field('姓名', name), field('角色', role), field('所属节点', node),
    field('部门', dept, '仅职能部门用户'), u ? null : field('初始密码', password),
    error, h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'user-save' }, '保存')));
    const dialog = modal(u ? `编辑用户 ${u.username}` : '新建用户', form);
  }

  await load();
  return null;
}
