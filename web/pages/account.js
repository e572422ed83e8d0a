// 账户 — who I am, change my password (一人一密码), log out.
import { api } from '../api.js';
import { clear, h } from '../ui.js';

export async function render(main, { me, grid, logout }) {
  const oldPw = h('input', { type: 'password', id: 'pw-old', autocomplete: 'current-password', required: true });
  const newPw = h('input', { type: 'password', id: 'pw-new', autocomplete: 'new-password', required: true, minlength: 8 });
  const again = h('input', { type: 'password', id: 'pw-again', autocomplete: 'new-password', required: true });
  const result = h('div', { id: 'pw-result', role: 'status' });
  const form = h('form', {
    class: 'panel form', id: 'password-form',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(result);
      if (newPw.value !== again.value) { result.append(h('p', { class: 'error' }, '两次输入的新密码不一致。')); return; }
      try {
        await api.post('/api/auth/password', { old_password: oldPw.value, new_password: newPw.value });
        // The hub ends every session of this person: log in again with the new password.
        logout('密码已修改，所有会话已结束，请用新密码重新登录。Password changed: please log in again.');
      } catch (err) {
        result.append(h('p', { class: 'error' }, String(err.detail || '').startsWith('原密码错误') ? '原密码不正确。' : `修改失败：${err.detail || err.message}`));
      }
    },
  },
  h('h2', {}, '修改密码 ', h('small', {}, 'Change password')),
  me.must_change_password ? h('p', { class: 'warn' }, '这是初始密码，请立即修改。') : null,
  h('label', { for: 'pw-old' }, '原密码'), oldPw,
  h('label', { for: 'pw-new' }, '新密码'), newPw,
  h('label', { for: 'pw-again' }, '再次输入新密码'), again,
  result,
  h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'pw-submit' }, '修改密码')));

  const info = h('section', { class: 'panel', id: 'me' }, h('h2', {}, '我的账户 ', h('small', {}, 'Account')),
    h('dl', {},
      h('dt', {}, '用户名'), h('dd', {}, me.username),
      h('dt', {}, '姓名'), h('dd', {}, me.display_name || '—'),
      h('dt', {}, '角色'), h('dd', {}, me.role_label),
      h('dt', {}, '辖区'), h('dd', { id: 'me-node' }, grid.trail(me.node_path) || me.node_code),
      me.department_code ? [h('dt', {}, '部门'), h('dd', {}, me.department_code)] : null),
    h('p', { class: 'muted' }, '一级一权限：您只能看到本辖区及下级的视频、设备与事件。'),
    h('button', { type: 'button', id: 'logout-btn', onclick: () => logout() }, '退出登录'));
  main.append(h('div', { class: 'two-col' }, info, form));
  return null;
}
