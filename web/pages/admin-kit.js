// Small helpers shared by the administration pages (用户管理, 部门管理, 网格管理, 告警规则).
import { request } from '../api.js';
import { h, toast } from '../ui.js';

export const call = (method, path, body) => request(path, { method, body });

let vocabulary = null;
export async function roles() {
  vocabulary = vocabulary || await request('/api/vocabulary');
  return vocabulary.roles;
}

export function can(me, permission) {
  return !Array.isArray(me.permissions) || me.permissions.includes(permission);
}

// A labelled field: [label, input].
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('label', { for: id }, label, hint ? h('small', {}, ` ${hint}`) : null, input);
}

export function select(id, options, value) {
  return h('select', { id }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

// The grid nodes in the caller's subtree as <select> options, indented by depth.
export function nodeOptions(grid, filter = () => true) {
  const out = [];
  const walk = (n, depth) => {
    if (filter(n)) out.push([n.code, `${'\u3000'.repeat(depth)}${n.name}（${n.code}）`]);
    n.children.forEach((c) => walk(c, depth + 1));
  };
  grid.roots.forEach((r) => walk(r, 0));
  return out;
}

// Run an action: errors (in Chinese from the hub, naming the field) shown in `where` and as a toast.
export async function act(where, fn, done) {
  if (where) where.textContent = '';
  try {
    const result = await fn();
    if (done) toast(done, 'info');
    return result;
  } catch (err) {
    const text = err.detail || err.message;
    if (where) where.textContent = text;
    toast(text, 'error', 8000);
    return undefined;
  }
}

export function table(id, headers, rows) {
  return h('table', { class: 'receipts-table admin-table', id },
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows));
}
