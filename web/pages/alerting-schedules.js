// 布防时间表 as weekly grids (周一…周日, each with its HH:MM ranges) and 布防 as rows of
// pickers (which grids / cameras and devices / rules are armed only while which schedule is on).
// The site file's windows ({days, start, end}) are spread over the days for editing and gathered
// back on saving: one window per distinct range with the days it applies to.
import { h } from '../ui.js';
import { WEEK, boxLabel, chips, fieldBox, gridOptions, showProblems, sourceGroups } from './alerting-kit.js';

const ALL_DAYS = WEEK.map(([d]) => d);

function rangeRow(start, end, dis) {
  const row = h('span', { class: 'range' },
    h('input', { class: 'range-start', value: start || '', disabled: dis, size: 5, maxlength: 5, placeholder: '08:00', inputmode: 'numeric', 'aria-label': '开始 HH:MM' }), '–',
    h('input', { class: 'range-end', value: end || '', disabled: dis, size: 5, maxlength: 5, placeholder: '18:00', inputmode: 'numeric', 'aria-label': '结束 HH:MM（早于开始即跨越午夜）' }),
    dis ? null : h('button', { type: 'button', class: 'chip-x', 'aria-label': '删除时段', onclick: () => row.remove() }, '×'));
  return row;
}

function weekGrid(sid, sched, dis) {
  const byDay = Object.fromEntries(ALL_DAYS.map((d) => [d, []]));
  (sched.windows || []).forEach((w, j) => (w.days && w.days.length ? w.days : ALL_DAYS).forEach((d) => byDay[d]?.push([w.start, w.end, j])));
  const rows = WEEK.map(([d, label]) => {
    const ranges = h('span', { class: 'ranges' }, byDay[d].map(([s, e, j]) => {
      const r = rangeRow(s, e, dis);
      r.dataset.window = j;
      return r;
    }));
    return h('div', { class: 'week-day', dataset: { day: d } }, h('span', { class: 'day-label' }, label), ranges,
      dis ? null : h('button', { type: 'button', class: 'secondary small', dataset: { action: 'add-range' }, onclick: () => ranges.append(rangeRow('', '', false)) }, '+ 时段'));
  });
  const el = h('div', { class: 'week-grid', id: `schedule-${sid}-week` }, rows);
  // The windows to save, and for each the range inputs it came from (to mark a refused one).
  el.read = () => {
    const groups = new Map();
    el.querySelectorAll('.week-day').forEach((day) => day.querySelectorAll('.range').forEach((r) => {
      const start = r.querySelector('.range-start').value.trim();
      const end = r.querySelector('.range-end').value.trim();
      if (!start && !end) return;
      const key = `${start}|${end}`;
      if (!groups.has(key)) groups.set(key, { window: { days: [], start, end }, rows: [] });
      groups.get(key).window.days.push(day.dataset.day);
      groups.get(key).rows.push(r);
    }));
    return [...groups.values()];
  };
  return el;
}

export function schedulesPanel(schedules, ctx) {
  const { editable, save } = ctx;
  const dis = !editable;
  const error = h('p', { class: 'form-error', role: 'alert', id: 'schedules-error' });
  const list = h('div', { class: 'schedule-list' });
  const card = (sid, sched, isNew) => {
    const idInput = h('input', { class: 'schedule-id', value: sid, disabled: dis || !isNew, maxlength: 63, spellcheck: 'false' });
    const name = h('input', { class: 'schedule-name', value: sched.name || '', disabled: dis, maxlength: 200 });
    const grid = weekGrid(sid, sched, dis);
    const el = h('div', { class: 'schedule panel', dataset: { schedule: sid } },
      h('div', { class: 'row' }, fieldBox(`${sid}.name`, '名称', name), fieldBox(`${sid}`, '编号', idInput),
        dis ? null : h('button', { type: 'button', class: 'danger', dataset: { action: 'delete-schedule' }, onclick: () => el.remove() }, '删除此时间表')),
      fieldBox(`${sid}.windows`, '每周时段', grid, '结束早于开始即跨越午夜；24:00 表示当天结束'));
    el.read = () => {
      const groups = grid.read();
      return { id: idInput.value.trim(), groups, data: { ...sched, name: name.value.trim() || undefined, windows: groups.map((g) => g.window) } };
    };
    return el;
  };
  Object.entries(schedules).forEach(([sid, s]) => list.append(card(sid, s, false)));
  const onSave = async () => {
    const read = [...list.children].map((c) => c.read());
    const data = Object.fromEntries(read.map((r) => [r.id, JSON.parse(JSON.stringify(r.data))]));
    await save('schedules', data, error, (text) => {
      const root = list;
      showProblems(text, root, 'schedules.', error, boxLabel);
      // schedules.<id>.windows[j].start → the ranges window j was gathered from
      for (const m of String(text).matchAll(/schedules\.([^.\s()]+)\.windows\[(\d+)\]/g)) {
        const r = read.find((x) => x.id === m[1]);
        (r?.groups[Number(m[2])]?.rows || []).forEach((row) => row.classList.add('invalid'));
      }
    });
  };
  return h('section', { class: 'panel form', id: 'schedules-editor' },
    h('h3', {}, '布防时间表 ', h('small', {}, '每周的布防时段，供告警规则与布防引用')),
    list, error,
    editable ? h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', id: 'schedule-new', onclick: () => {
        let n = Object.keys(schedules).length + 1;
        while (list.querySelector(`[data-schedule="schedule-${n}"]`)) n += 1;
        list.append(card(`schedule-${n}`, { name: '', windows: [] }, true));
      } }, '新增时间表'),
      h('button', { type: 'button', class: 'primary', id: 'schedules-save', onclick: onSave }, '保存布防时间表')) : null);
}

export function armingPanel(arming, ctx) {
  const { editable, save, grid } = ctx;
  const dis = !editable;
  const error = h('p', { class: 'form-error', role: 'alert', id: 'arming-error' });
  const body = h('div', { class: 'arming-list' });
  const scheduleOptions = Object.entries(ctx.schedules).map(([k, s]) => [k, s.name || k]);
  const ruleOptions = ctx.rules.map((r) => [r.id, r.name || r.id]);
  const row = (entry) => {
    const schedule = h('select', { class: 'arming-schedule', disabled: dis }, scheduleOptions.map(([v, l]) => h('option', { value: v, selected: v === entry.schedule }, l)));
    const idx = () => [...body.children].indexOf(el);
    const grids = chips(`arming-grids-${Math.random().toString(36).slice(2, 7)}`, gridOptions(grid), entry.grids, { label: grid.nameOf, empty: '（无）', disabled: dis });
    const sources = chips(`arming-sources-${Math.random().toString(36).slice(2, 7)}`, sourceGroups(ctx.sources), entry.sources, { label: ctx.sourceLabel, empty: '（无）', disabled: dis });
    const rules = chips(`arming-rules-${Math.random().toString(36).slice(2, 7)}`, ruleOptions, entry.rules, { empty: '全部规则', disabled: dis });
    const el = h('fieldset', { class: 'sub arming-entry' }, h('legend', {}, '布防'),
      fieldBox('schedule', '时间表', schedule), fieldBox('grids', '网格（含下级）', grids), fieldBox('sources', '摄像机或设备', sources),
      fieldBox('rules', '规则', rules, '不选即全部规则'),
      dis ? null : h('button', { type: 'button', class: 'secondary', onclick: () => el.remove() }, '删除此项'));
    el.read = () => {
      const out = { ...entry, schedule: schedule.value, grids: grids.value(), sources: sources.value(), rules: rules.value() };
      for (const k of ['grids', 'sources', 'rules']) if (!out[k].length) delete out[k];
      return out;
    };
    el.index = idx;
    return el;
  };
  arming.forEach((a) => body.append(row(a)));
  return h('section', { class: 'panel form', id: 'arming-editor' },
    h('h3', {}, '布防 ', h('small', {}, '这些网格或设备的事件只在时间表的时段内产生告警')),
    arming.length || editable ? null : h('p', { class: 'muted' }, '没有布防限制：规则全天生效。'),
    body, error,
    editable ? h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', id: 'arming-new', disabled: !scheduleOptions.length, title: scheduleOptions.length ? '' : '请先新增布防时间表',
        onclick: () => body.append(row({ schedule: scheduleOptions[0]?.[0] })) }, '新增布防'),
      h('button', { type: 'button', class: 'primary', id: 'arming-save', onclick: async () => {
        const data = [...body.children].map((c) => c.read());
        await save('arming', data, error, (text) => {
          const lines = [];
          body.querySelectorAll('.field-error').forEach((e) => { e.textContent = ''; });
          [...body.children].forEach((entry, i) => { showProblems(text, entry, `arming[${i}]`, null, boxLabel); });
          showProblems(text, document.createElement('div'), '\u0000', { set textContent(v) { lines.push(v); } });
          error.textContent = lines.join('');
        });
      } }, '保存布防')) : null);
}
