// 告警规则 as a list and a form: which events (by name, grouped by source kind), which sources
// and grid subtrees, what alarm, which case, which automatic actions. The form edits a copy of
// the rule, so fields it does not show are kept; the whole rules list is saved through
// PUT /api/admin/alerting/rules and the hub's check places its refusals beside the fields.
import { CATEGORIES, URGENCIES, VOCAB, h, modal } from '../ui.js';
import {
  DURATION_HINT, boxLabel, chips, durationInput, eventSeverityLabel, eventTypeGroups, fieldBox, gridOptions,
  patternLabel, severityLabel, showProblems, sourceGroups,
} from './alerting-kit.js';
import { table } from './admin-kit.js';

const labelOf = (list, code) => (list.find((x) => x.code === code) || {}).label || code || '';
const opt = (v, label, cur) => h('option', { value: v, selected: v === (cur ?? '') }, label);
const sel = (id, options, cur, disabled) => h('select', { id, disabled }, options.map(([v, l]) => opt(v, l, cur)));
const entries = (o) => Object.entries(o || {});

// What a rule matches, in words: 门禁被强行打开、摄像机遭破坏（全部） · 东山镇 · 任意设备 · 不低于 重要
export function matchWords(rule, ctx) {
  const w = rule.when || {};
  const parts = [(w.types || []).map(patternLabel).join('、') || '（未选事件）'];
  parts.push(w.grids && w.grids.length ? w.grids.map((c) => ctx.grid.nameOf(c)).join('、') : '全部网格');
  parts.push(w.sources && w.sources.length ? w.sources.map(ctx.sourceLabel).join('、') : '任意设备');
  if (w.min_severity) parts.push(`不低于${eventSeverityLabel(w.min_severity)}`);
  if (rule.armed) parts.push(`仅在「${(ctx.schedules[rule.armed] || {}).name || rule.armed}」布防`);
  return parts.join(' · ');
}

export function rulesPanel(rules, ctx) {
  const { editable, save } = ctx;
  const rows = rules.map((r, i) => h('tr', { dataset: { rule: r.id } },
    h('td', {}, r.name, h('br'), h('small', { class: 'muted' }, r.id)),
    h('td', { class: 'rule-match' }, matchWords(r, ctx)),
    h('td', {}, severityLabel((r.alarm || {}).severity)),
    h('td', {}, r.case ? `${labelOf(CATEGORIES, r.case.category)} · ${labelOf(URGENCIES, r.case.urgency)}` : '否'),
    h('td', {}, h('span', { class: `badge ${r.enabled === false ? 'muted' : 'ok'}` }, r.enabled === false ? '停用' : '启用')),
    h('td', { class: 'row-actions' },
      h('button', { type: 'button', class: 'secondary', dataset: { action: 'edit' }, onclick: () => editRule(rules, i, ctx) }, editable ? '编辑' : '查看'),
      editable ? [
        i > 0 ? h('button', { type: 'button', class: 'secondary', dataset: { action: 'up' }, title: '上移：先于上一条匹配', onclick: async () => {
          const moved = [...rules];
          [moved[i - 1], moved[i]] = [moved[i], moved[i - 1]];
          await save('rules', moved, ctx.rulesError);
        } }, '上移') : null,
        h('button', { type: 'button', class: 'secondary', dataset: { action: 'duplicate' }, onclick: () => {
          const copy = structuredClone(r);
          copy.id = uniqueId(rules, `${r.id}-copy`.slice(0, 63));
          copy.name = `${r.name}（副本）`.slice(0, 200);
          editRule([...rules, copy], rules.length, ctx, true);
        } }, '复制'),
        h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' }, onclick: async () => {
          if (!window.confirm(`删除告警规则「${r.name}」？`)) return;
          await save('rules', rules.filter((_, j) => j !== i), ctx.rulesError);
        } }, '删除'),
      ] : null)));
  return h('section', { class: 'panel form', id: 'rules-editor' },
    h('div', { class: 'panel-head' }, h('h3', {}, '告警规则 ', h('small', {}, '事件 → 告警 → 工单；按顺序匹配，第一条生效')),
      editable ? h('button', { type: 'button', class: 'primary', id: 'rule-new', onclick: () => editRule([...rules, blankRule(rules)], rules.length, ctx, true) }, '新增规则') : null),
    h('div', { class: 'table-scroll' }, table('rules-table', ['名称', '匹配条件', '告警级别', '生成工单', '状态', '操作'], rows)),
    ctx.rulesError);
}

function uniqueId(rules, base) {
  let id = base;
  for (let n = 2; rules.some((r) => r.id === id); n += 1) id = `${base.slice(0, 59)}-${n}`;
  return id;
}

const blankRule = (rules) => ({ id: uniqueId(rules, `rule-${rules.length + 1}`), name: '', enabled: true, when: { types: [] }, alarm: { severity: 'major' } });

// The editor: `list` is the rules list as it would be saved, `i` the rule edited in it.
function editRule(list, i, ctx, isNew = false) {
  const { editable: ed, save, grid } = ctx;
  const dis = !ed;
  const r = structuredClone(list[i]);
  const when = r.when || {};
  const alarm = r.alarm || {};
  const corr = alarm.correlate || null;
  const kase = r.case || null;
  const general = h('p', { class: 'form-error', role: 'alert', id: 'rule-form-error' });

  const id = h('input', { id: 'rule-id', value: r.id, disabled: dis || !isNew, maxlength: 63, spellcheck: 'false' });
  const name = h('input', { id: 'rule-name', value: r.name || '', disabled: dis, maxlength: 200 });
  const enabled = h('input', { id: 'rule-enabled', type: 'checkbox', checked: r.enabled !== false, disabled: dis });
  const types = chips('rule-types', eventTypeGroups(), when.types, { label: patternLabel, empty: '（请选择事件类型）', free: '或写 camera.tamper.*', disabled: dis });
  const sources = chips('rule-sources', sourceGroups(ctx.sources), when.sources, { label: ctx.sourceLabel, empty: '任意', disabled: dis });
  const grids = chips('rule-grids', gridOptions(grid), when.grids, { label: grid.nameOf, empty: '全部', disabled: dis });
  const minSev = sel('rule-min-severity', [['', '不限'], ...entries(VOCAB.event_severities)], when.min_severity, dis);
  const armed = sel('rule-armed', [['', '始终布防'], ...entries(ctx.schedules).map(([k, s]) => [k, s.name || k])], r.armed, dis);

  const severity = sel('rule-severity', entries(VOCAB.alarm_severities), alarm.severity, dis);
  const title = h('input', { id: 'rule-title', value: alarm.title || '', disabled: dis, maxlength: 200, placeholder: '默认与规则名称相同' });
  const clearAfter = durationInput('rule-clear-after', alarm.clear_after, dis, '不自动清除');
  const clearedBy = chips('rule-cleared-by', eventTypeGroups(), alarm.cleared_by, { label: patternLabel, empty: '（无）', free: '事件类型', disabled: dis });
  const flapWindow = durationInput('rule-flap-window', alarm.flap_window, dis, '默认 5m');
  const flapLimit = h('input', { id: 'rule-flap-limit', type: 'number', min: 1, max: 100, value: alarm.flap_limit ?? '', placeholder: '默认 3', disabled: dis });

  const corrOn = h('input', { id: 'rule-correlate', type: 'checkbox', checked: !!corr, disabled: dis });
  const c = corr || {};
  const corrWindow = durationInput('rule-corr-window', c.window, dis, '默认 60s');
  const corrNearest = h('input', { id: 'rule-corr-nearest', type: 'number', min: 1, max: 8, value: c.nearest_cameras ?? '', placeholder: '默认 2', disabled: dis });
  const corrDist = h('input', { id: 'rule-corr-distance', type: 'number', min: 1, max: 100000, value: c.max_distance_m ?? '', placeholder: '默认 3000', disabled: dis });
  const corrTypes = chips('rule-corr-types', eventTypeGroups(), c.types || ['camera.*'], { label: patternLabel, disabled: dis });
  const corrEvidence = h('input', { id: 'rule-corr-evidence', type: 'checkbox', checked: c.request_evidence !== false, disabled: dis });
  const corrBox = h('fieldset', { class: 'sub', hidden: !corr }, h('legend', {}, '关联'),
    h('div', { class: 'row' }, fieldBox('alarm.correlate.window', '时间窗', corrWindow, DURATION_HINT),
      fieldBox('alarm.correlate.nearest_cameras', '最近摄像机数', corrNearest),
      fieldBox('alarm.correlate.max_distance_m', '最大距离（米）', corrDist)),
    fieldBox('alarm.correlate.types', '关联的事件类型', corrTypes),
    h('label', {}, corrEvidence, ' 向摄像机调取抓图与录像片段'));
  corrOn.addEventListener('change', () => { corrBox.hidden = !corrOn.checked; });

  const caseOn = h('input', { id: 'rule-case', type: 'checkbox', checked: !!kase, disabled: dis });
  const k = kase || {};
  const category = sel('rule-case-category', CATEGORIES.map((x) => [x.code, x.label]), k.category || CATEGORIES[0]?.code, dis);
  const urgency = sel('rule-case-urgency', URGENCIES.map((x) => [x.code, x.label]), k.urgency || URGENCIES[0]?.code, dis);
  const level = sel('rule-case-level', entries(VOCAB.levels), k.level || 'township', dis);
  const caseWhen = sel('rule-case-when', [['immediately', '立即'], ['repeats', '重复出现达到次数'], ['unacknowledged', '告警未确认超时']], k.when || 'immediately', dis);
  const repeats = h('input', { id: 'rule-case-repeats', type: 'number', min: 2, max: 10000, value: k.repeats ?? '', disabled: dis });
  const unack = durationInput('rule-case-unack', k.unacknowledged_for, dis, '如 10m');
  const autoReg = h('input', { id: 'rule-case-auto-register', type: 'checkbox', checked: !!k.auto_register, disabled: dis });
  const dispatch = chips('rule-case-dispatch', ctx.departments.map((d) => [d.code, d.name]), k.dispatch_to,
    { label: (x) => (ctx.departments.find((d) => d.code === x) || {}).name || x, empty: '（不自动派遣）', disabled: dis });
  const caseTitle = h('input', { id: 'rule-case-title', value: k.title || '', disabled: dis, maxlength: 200, placeholder: '默认与告警标题相同' });
  const caseBox = h('fieldset', { class: 'sub', hidden: !kase }, h('legend', {}, '工单'),
    h('div', { class: 'row' }, fieldBox('case.category', '类别', category), fieldBox('case.urgency', '紧急程度', urgency), fieldBox('case.level', '责任层级', level)),
    h('div', { class: 'row' }, fieldBox('case.when', '生成时机', caseWhen), fieldBox('case.repeats', '次数', repeats),
      fieldBox('case.unacknowledged_for', '未确认时长', unack, DURATION_HINT)),
    fieldBox('case.auto_register', '自动受理立案', h('span', {}, autoReg, ' 系统立即受理并立案')),
    fieldBox('case.dispatch_to', '立即派遣到部门', dispatch),
    fieldBox('case.title', '工单标题', caseTitle));
  caseOn.addEventListener('change', () => { caseBox.hidden = !caseOn.checked; });
  const syncWhen = () => {
    repeats.closest('.field').hidden = caseWhen.value !== 'repeats' && !repeats.value;
    unack.closest('.field').hidden = caseWhen.value !== 'unacknowledged' && !unack.value;
  };
  caseWhen.addEventListener('change', syncWhen);
  syncWhen();

  const actionsList = h('div', { class: 'rule-actions', id: 'rule-actions' });
  const actionRow = (a, j) => {
    const kind = a.broadcast ? 'broadcast' : 'notify';
    const b = a.broadcast || {};
    const n = a.notify || {};
    const kindSel = sel(`rule-action-${j}-kind`, [['broadcast', '广播喊话'], ['notify', '通知人员']], kind, dis);
    const bArea = sel(`rule-action-${j}-area`, entries(VOCAB.levels), b.area || 'village', dis);
    const bMsg = h('input', { id: `rule-action-${j}-message`, value: b.message || n.message || '', disabled: dis, maxlength: 1000, placeholder: '播放或通知的内容' });
    const bKind = sel(`rule-action-${j}-bkind`, [['emergency', '紧急'], ['notice', '通知']], b.kind || 'emergency', dis);
    const bRepeat = h('input', { id: `rule-action-${j}-repeat`, type: 'number', min: 1, max: 10, value: b.repeat ?? 2, disabled: dis });
    const nRole = sel(`rule-action-${j}-role`, entries(VOCAB.roles), n.role || 'dispatcher', dis);
    const nLevel = sel(`rule-action-${j}-level`, entries(VOCAB.levels), n.level || 'township', dis);
    const bOnly = h('span', { class: 'row' }, fieldBox(`actions[${j}].broadcast.area`, '广播范围', bArea), fieldBox(`actions[${j}].broadcast.kind`, '类型', bKind),
      fieldBox(`actions[${j}].broadcast.repeat`, '播放次数', bRepeat));
    const nOnly = h('span', { class: 'row' }, fieldBox(`actions[${j}].notify.role`, '角色', nRole), fieldBox(`actions[${j}].notify.level`, '层级', nLevel));
    const sync = () => { bOnly.hidden = kindSel.value !== 'broadcast'; nOnly.hidden = kindSel.value !== 'notify'; };
    kindSel.addEventListener('change', sync);
    sync();
    const row = h('fieldset', { class: 'sub rule-action' }, h('legend', {}, `动作 ${j + 1}`),
      fieldBox(`actions[${j}]`, '动作', kindSel), bOnly, nOnly, fieldBox(`actions[${j}].${kind}.message`, '内容', bMsg),
      dis ? null : h('button', { type: 'button', class: 'secondary', onclick: () => row.remove() }, '移除此动作'));
    row.read = () => (kindSel.value === 'broadcast'
      ? { broadcast: { ...(a.broadcast || {}), area: bArea.value, message: bMsg.value.trim(), kind: bKind.value, repeat: Number(bRepeat.value) } }
      : { notify: { ...(a.notify || {}), role: nRole.value, level: nLevel.value, ...(bMsg.value.trim() ? { message: bMsg.value.trim() } : { message: undefined }) } });
    return row;
  };
  (r.actions || []).forEach((a, j) => actionsList.append(actionRow(a, j)));

  const num = (input) => (input.value === '' ? undefined : Number(input.value));
  const str = (input) => input.value.trim() || undefined;
  const prune = (o) => JSON.parse(JSON.stringify(o));      // drops the undefined keys
  const read = () => {
    const out = { ...r, id: id.value.trim(), name: name.value.trim(), enabled: enabled.checked };
    out.when = prune({ ...when, types: types.value(), sources: sources.value(), grids: grids.value(), min_severity: minSev.value || undefined });
    for (const key of ['sources', 'grids']) if (!out.when[key].length) delete out.when[key];
    out.alarm = prune({ ...alarm, severity: severity.value, title: str(title), clear_after: str(clearAfter), flap_window: str(flapWindow),
      flap_limit: num(flapLimit), cleared_by: clearedBy.value(),
      correlate: corrOn.checked ? { ...c, window: str(corrWindow), nearest_cameras: num(corrNearest), max_distance_m: num(corrDist),
        types: corrTypes.value(), request_evidence: corrEvidence.checked } : undefined });
    if (!out.alarm.cleared_by.length) delete out.alarm.cleared_by;
    if (caseOn.checked) {
      out.case = prune({ ...k, category: category.value, urgency: urgency.value, level: level.value, when: caseWhen.value,
        repeats: num(repeats), unacknowledged_for: str(unack), auto_register: autoReg.checked || undefined,
        dispatch_to: dispatch.value(), title: str(caseTitle) });
      if (!out.case.dispatch_to.length) delete out.case.dispatch_to;
      if (out.case.level === 'township' && !k.level) delete out.case.level;
      if (out.case.when === 'immediately' && !k.when) delete out.case.when;
    } else delete out.case;
    out.actions = [...actionsList.children].map((row) => prune(row.read()));
    if (!out.actions.length) delete out.actions;
    if (armed.value) out.armed = armed.value; else delete out.armed;
    return out;
  };

  const form = h('form', { class: 'form rule-form', id: 'rule-form', onsubmit: async (e) => {
    e.preventDefault();
    if (dis) return;
    const rules = list.map((x, j) => (j === i ? read() : x));
    const ok = await save('rules', rules, general, (text) => showProblems(text, form, `rules[${i}]`, general, boxLabel));
    if (ok) dialog.close();
  } },
  h('div', { class: 'row' }, fieldBox('name', '名称', name), fieldBox('id', '编号', id, '小写字母、数字、-'),
    fieldBox('enabled', '启用', h('span', {}, enabled, ' 启用此规则'))),
  h('fieldset', {}, h('legend', {}, '匹配哪些事件'),
    fieldBox('when.types', '事件类型', types, '可选一类（如“摄像机遭破坏（全部）”）'),
    fieldBox('when.sources', '设备', sources, '不选即任意摄像机或设备'),
    fieldBox('when.grids', '网格', grids, '含下级；不选即全部'),
    h('div', { class: 'row' }, fieldBox('when.min_severity', '最低事件级别', minSev), fieldBox('armed', '布防时间', armed))),
  h('fieldset', {}, h('legend', {}, '告警'),
    h('div', { class: 'row' }, fieldBox('alarm.severity', '告警级别', severity), fieldBox('alarm.title', '告警标题', title)),
    h('div', { class: 'row' }, fieldBox('alarm.clear_after', '静默多久自动清除', clearAfter, DURATION_HINT),
      fieldBox('alarm.flap_window', '抖动判定时间窗', flapWindow, DURATION_HINT), fieldBox('alarm.flap_limit', '时间窗内重复次数上限', flapLimit)),
    fieldBox('alarm.cleared_by', '由哪些事件清除（同一设备）', clearedBy),
    fieldBox('alarm.correlate', '关联附近摄像机', h('span', {}, corrOn, ' 将附近摄像机的事件并入本告警')), corrBox),
  h('fieldset', {}, h('legend', {}, '工单'), fieldBox('case', '生成工单', h('span', {}, caseOn, ' 告警生成工单')), caseBox),
  h('fieldset', {}, h('legend', {}, '自动动作'), fieldBox('actions', '动作', actionsList),
    dis ? null : h('button', { type: 'button', class: 'secondary', id: 'rule-action-add', onclick: () => actionsList.append(actionRow({ notify: {} }, actionsList.children.length)) }, '新增动作')),
  general,
  dis ? null : h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'rule-save' }, '保存规则')));
  const dialog = modal(dis ? `告警规则 ${r.name}` : (isNew ? '新增告警规则' : `编辑告警规则 ${r.name}`), form, { wide: true });
  if (!dis) name.focus();
}
