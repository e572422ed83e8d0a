// Form parts of 告警规则 (alerting.js, alerting-rules.js, alerting-schedules.js): chips pickers
// (event types by name, cameras/devices, grid subtrees, rules), duration inputs, and the hub's
// refusals (422, "字段 X (rules[3].alarm.clear_after)：…") placed beside the field they name.
// The server's check (config/alerting.py through api/admin/alerting.py) is the only validator.
import { VOCAB, clear, h, sourceName } from '../ui.js';

export const DURATION_HINT = '时长写作 30s、5m、4h、1d 或 1h30m';
export const WEEK = [['mon', '周一'], ['tue', '周二'], ['wed', '周三'], ['thu', '周四'], ['fri', '周五'], ['sat', '周六'], ['sun', '周日']];
// Event kinds by name: the sources and the hub's own families (config/vocabulary.py EVENT_FAMILY_LABELS).
export const kindLabel = (kind) => (VOCAB.event_kinds || VOCAB.source_kinds || {})[kind] || kind;
export const severityLabel = (s) => (VOCAB.alarm_severities || {})[s] || s;
export const eventSeverityLabel = (s) => (VOCAB.event_severities || {})[s] || s;

// camera.tamper.covered → 摄像机被遮挡; camera.tamper.* → 摄像机遭破坏（全部）; camera.* → 全部摄像机事件
export function patternLabel(p) {
  if (!p) return '';
  const types = VOCAB.event_types || {};
  if (types[p]) return types[p].label;
  if (p.endsWith('.*')) {
    const stem = p.slice(0, -2);
    if (!stem.includes('.')) return `全部${kindLabel(stem)}事件`;
    const fam = (VOCAB.event_families || {})[stem] || (types[stem] && types[stem].label);
    if (fam) return `${fam}（全部）`;
  }
  return p;
}

// Event type options grouped by source kind: the kind's wildcard, its families, its types.
export function eventTypeGroups() {
  const types = Object.keys(VOCAB.event_types || {});
  const kinds = [...new Set(types.map((t) => t.split('.')[0]))];
  return kinds.map((kind) => {
    const own = types.filter((t) => t.startsWith(`${kind}.`));
    const families = [...new Set(own.map((t) => t.split('.').slice(0, 2).join('.')))]
      .filter((f) => own.some((t) => t.startsWith(`${f}.`)));
    return [kindLabel(kind), [[`${kind}.*`, `全部${kindLabel(kind)}事件`],
      ...families.map((f) => [`${f}.*`, patternLabel(`${f}.*`)]),
      ...own.map((t) => [t, patternLabel(t)])]];
  });
}

// A multi-value picker: the chosen values as chips (× removes), a <select> that adds one, and
// optionally a text box for values the list does not have (an event pattern). `groups` is
// [[groupLabel, [[value, label], …]], …] or a flat [[value, label], …].
export function chips(id, groups, values, { label = (v) => v, empty = '（无）', free = null, disabled = false } = {}) {
  let chosen = [...(values || [])];
  const list = h('span', { class: 'chips-list' });
  const flat = groups.length && Array.isArray(groups[0][1]) ? groups.flatMap(([, opts]) => opts) : groups;
  const nameOf = (v) => ((flat.find(([x]) => x === v) || [])[1] || label(v)).trim();      // (tree options are indented)
  const draw = () => {
    clear(list).append(...(chosen.length ? chosen.map((v) => h('span', { class: 'chip', dataset: { value: v }, title: v }, nameOf(v),
      disabled ? null : h('button', { type: 'button', class: 'chip-x', 'aria-label': `移除 ${nameOf(v)}`, onclick: () => { chosen = chosen.filter((x) => x !== v); draw(); } }, '×')))
      : [h('span', { class: 'muted chip-empty' }, empty)]));
  };
  const add = (v) => { if (v && !chosen.includes(v)) { chosen.push(v); draw(); } };
  const option = ([v, l]) => h('option', { value: v }, l);
  const pick = h('select', { id: `${id}-pick`, 'aria-label': '添加', disabled, onchange: () => { add(pick.value); pick.value = ''; } },
    h('option', { value: '' }, '添加…'),
    groups.length && Array.isArray(groups[0][1]) ? groups.map(([g, opts]) => h('optgroup', { label: g }, opts.map(option))) : groups.map(option));
  const text = free && !disabled ? h('input', { id: `${id}-free`, placeholder: free, size: 14,
    onkeydown: (e) => { if (e.key === 'Enter') { e.preventDefault(); add(text.value.trim()); text.value = ''; } } }) : null;
  const addText = text ? h('button', { type: 'button', class: 'secondary', id: `${id}-free-add`, onclick: () => { add(text.value.trim()); text.value = ''; } }, '添加') : null;
  draw();
  const el = h('div', { class: 'chips', id }, list, h('span', { class: 'chips-add' }, disabled ? null : pick, text, addText));
  el.value = () => [...chosen];
  return el;
}

export const gridOptions = (grid) => {
  const out = [];
  const walk = (n, depth) => { out.push([n.code, `${'\u3000'.repeat(depth)}${n.name}`]); n.children.forEach((c) => walk(c, depth + 1)); };
  grid.roots.forEach((r) => walk(r, 0));
  return out;
};

export const sourceGroups = (sources) => {
  const kinds = [...new Set(sources.map((s) => s.kind || 'camera'))];
  return kinds.map((k) => [kindLabel(k), sources.filter((s) => (s.kind || 'camera') === k).map((s) => [s.id, s.name || sourceName(s.id)])]);
};

// A labelled field that can show its own error: data-path is the place in the section the
// hub's error names (when.types, alarm.clear_after …).
export function fieldBox(path, label, input, hint) {
  const err = h('p', { class: 'field-error', role: 'alert' });
  const lab = input.id && ['INPUT', 'SELECT', 'TEXTAREA'].includes(input.tagName) ? h('label', { for: input.id }, label) : h('span', { class: 'field-label' }, label);
  return h('div', { class: 'field', dataset: { path } }, lab, hint ? h('small', { class: 'muted' }, ` ${hint}`) : null, input, err);
}

export const durationInput = (id, value, disabled, placeholder = '如 5m') =>
  h('input', { id, value: value === undefined || value === null ? '' : String(value), size: 8, placeholder, disabled, autocomplete: 'off', spellcheck: 'false' });

// "字段 X (path)：reason；字段 Y (path)：reason" → [{path, reason}] (reason in Chinese).
export function parseProblems(text) {
  const re = /字段 [^()（）]*?\(([^()]*)\)：/g;
  const heads = [...String(text || '').matchAll(re)];
  if (!heads.length) return [{ path: '', reason: text }];
  return heads.map((m, i) => {
    const end = i + 1 < heads.length ? heads[i + 1].index : text.length;
    const reason = text.slice(m.index + m[0].length, end).replace(/；\s*$/, '');
    return { path: m[1], reason };
  });
}

// Place each problem beside the field whose data-path is the longest prefix of the problem's
// path below `prefix` (rules[3]. for the rule being edited); the rest go to `general`.
// Returns the number placed by a field.
export function showProblems(text, root, prefix, general, labelOf = () => '') {
  root.querySelectorAll('.field-error').forEach((e) => { e.textContent = ''; });
  root.querySelectorAll('.invalid').forEach((e) => e.classList.remove('invalid'));
  const lines = [];
  let placed = 0;
  for (const p of parseProblems(text)) {
    let box = null;
    if (p.path && p.path.startsWith(prefix)) {
      const parts = p.path.slice(prefix.length).replace(/^\./, '').split('.');
      const hit = (path) => [...root.querySelectorAll('.field')].find((f) => f.dataset.path === path);
      for (let n = parts.length; n > 0 && !box; n -= 1) {
        const exact = parts.slice(0, n).join('.');
        box = hit(exact) || hit(exact.replace(/\[\d+\]/g, ''));
      }
    }
    if (box) {
      const err = box.querySelector(':scope > .field-error');
      err.textContent = err.textContent ? `${err.textContent}；${p.reason}` : p.reason;
      box.classList.add('invalid');
      placed += 1;
      lines.push(`${labelOf(box) || box.dataset.path}：${p.reason}`);
    } else lines.push(p.path ? `${p.path}：${p.reason}` : p.reason);
  }
  if (general) general.textContent = lines.join('；');
  const first = root.querySelector('.field.invalid');
  if (first) first.scrollIntoView({ block: 'nearest' });
  return placed;
}

// The label text of a field box (for the summary line).
export const boxLabel = (box) => (box.querySelector(':scope > label, :scope > .field-label') || {}).textContent || '';

// "高级：JSON" — the section as the site file writes it; editable only for the county admin.
export function jsonPanel(name, value, editable, save) {
  const text = h('textarea', { id: `alerting-${name}`, rows: 14, spellcheck: 'false', class: 'code', readonly: !editable }, JSON.stringify(value, null, 2));
  const error = h('p', { class: 'form-error', role: 'alert', id: `alerting-${name}-error` });
  return h('details', { class: 'json-advanced', dataset: { section: name } },
    h('summary', {}, '高级：JSON', editable ? '' : '（只读）'),
    text, error,
    editable ? h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', id: `alerting-${name}-save`, onclick: async () => {
      let data;
      try { data = JSON.parse(text.value); } catch (err) { error.textContent = `JSON 格式错误：${err.message}`; return; }
      await save(data, error);
    } }, '按 JSON 保存')) : null);
}
