// 案件 — the case board: cases by stage of the shared lifecycle, overdue ones first.
import { probe } from '../api.js';
import { CATEGORIES, URGENCIES, errorBox, fmtTime, h, notAvailable } from '../ui.js';

const STAGES = [
  { code: 'accept', label: '受理' }, { code: 'register', label: '立案' }, { code: 'dispatch', label: '派遣' },
  { code: 'handle', label: '处置' }, { code: 'feedback', label: '反馈' }, { code: 'verify', label: '核查' },
  { code: 'close', label: '结案' }, { code: 'evaluate', label: '评价' },
];

export async function render(main) {
  const filters = h('div', { class: 'toolbar' },
    h('h2', {}, '案件 ', h('small', {}, 'Cases')),
    h('select', { 'aria-label': '类别', disabled: true }, h('option', {}, '全部类别'), CATEGORIES.map((c) => h('option', {}, c.label))),
    h('select', { 'aria-label': '紧急程度', disabled: true }, h('option', {}, '全部紧急程度'), URGENCIES.map((u) => h('option', {}, u.label))));
  const lifecycle = h('ol', { class: 'lifecycle', 'aria-label': '案件流程' }, STAGES.map((s) => h('li', {}, s.label)));
  const board = h('section', { class: 'panel', id: 'case-board' });
  main.append(filters, lifecycle, board);

  const res = await probe('/api/cases?limit=200');
  if (res.missing) {
    board.append(notAvailable('案件看板', '案件（受理→立案→派遣→处置→反馈→核查→结案→评价）由案件服务提供；接口上线后此处按状态显示案件、超时高亮、时间线与可执行操作。'));
    return null;
  }
  if (!res.ok) {
    board.append(errorBox(res.error, '案件加载失败'));
    return null;
  }
  // Generic rendering until the case page is wired to the cases API's exact shape.
  const cases = Array.isArray(res.data) ? res.data : (res.data.items || []);
  const columns = h('div', { class: 'columns' });
  for (const stage of STAGES) {
    const inStage = cases.filter((c) => (c.stage || c.state) === stage.code);
    columns.append(h('div', { class: 'column' }, h('h3', {}, `${stage.label} (${inStage.length})`),
      inStage.map((c) => h('div', { class: `card${c.overdue ? ' overdue' : ''}` },
        h('strong', {}, c.title || c.id), h('small', {}, fmtTime(c.created_at, { date: true }))))));
  }
  board.append(columns);
  return null;
}
