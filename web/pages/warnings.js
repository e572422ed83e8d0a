// 预警 — emergency warnings (CAP 1.2): paste or upload an alert, see what it will do (the
// matched villages on a list and a map, the speakers, the text they will speak, what stops
// it), then confirm; below, the warnings imported (by people and from the CAP feeds) with
// their cases and broadcasts, and the feeds' state.
import { api, request } from '../api.js';
import { clear, errorBox, fmtTime, h, s } from '../ui.js';

const ACTIONS = {
  create: '新预警：立案并向下列村广播',
  update: '预警更新：在原案件中记录',
  cancel: '预警解除：撤销原案件',
  duplicate: '已导入过：不会重复处理',
  ignored: '回执/错误消息：不处理',
};
const MSG_TYPES = { Alert: '发布', Update: '更新', Cancel: '解除', Ack: '回执', Error: '错误' };
const BROADCAST_STATES = { scheduled: '待播', sending: '发送中', playing: '播放中', done: '已播完', partial: '部分收听', failed: '未收听', cancelled: '已停止', no_speakers: '无喇叭' };
const ENTRY_STATES = { failed: '获取失败（将重试）', refused: '已拒收' };
const W = 360;
const H = 240;

export async function render(main, { me }) {
  const canImport = !Array.isArray(me.permissions) || me.permissions.includes('cap.import');
  const history = h('div', { id: 'cap-history' });
  const feeds = h('div', { id: 'cap-feeds' });
  const page = h('div', { class: 'warnings-page' });
  main.append(page);
  if (canImport) page.append(importPanel(() => loadHistory(history)));
  else page.append(h('p', { class: 'muted' }, '您的角色不能导入预警（需要调度员或中心主任）。'));
  page.append(h('section', { class: 'panel' }, h('h2', {}, '已导入的预警'), history));
  if (canImport) page.append(h('section', { class: 'panel' }, h('h2', {}, '预警订阅源 (CAP feeds)'), feeds));
  await loadHistory(history);
  if (canImport) await loadFeeds(feeds);
  return () => {};
}

function importPanel(onImported) {
  const xml = h('textarea', { id: 'cap-xml', rows: 10, spellcheck: 'false', placeholder: '粘贴 CAP 1.2 预警（<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">…）或选择文件' });
  const file = h('input', { type: 'file', id: 'cap-file', accept: '.xml,.cap,application/xml,text/xml,application/cap+xml' });
  file.addEventListener('change', () => {
    if (!file.files.length) return;
    // The bytes as sent: an alert in GBK or UTF-16 is decoded by the hub, not the browser.
    xml.value = '';
    xml.dataset.file = file.files[0].name;
  });
  xml.addEventListener('input', () => { delete xml.dataset.file; file.value = ''; });
  const result = h('div', { id: 'cap-preview-result', role: 'status' });
  const done = h('div', { id: 'cap-result', role: 'status' });
  const confirm = h('button', { type: 'button', class: 'primary', id: 'cap-confirm', disabled: true }, '确认导入');
  let body = null;
  const payload = async () => (file.files.length ? new Uint8Array(await file.files[0].arrayBuffer()) : xml.value);
  const preview = h('button', { type: 'button', id: 'cap-preview' }, '预览');
  preview.addEventListener('click', async () => {
    clear(result); clear(done);
    confirm.disabled = true;
    body = await payload();
    if (!body || !body.length) { result.append(h('p', { class: 'error' }, '请粘贴预警内容或选择文件。')); return; }
    preview.disabled = true;
    try {
      const out = await request('/api/alerts/cap/preview', { method: 'POST', bodyRaw: body, headers: { 'Content-Type': 'application/xml' } });
      showPreview(result, out);
      confirm.disabled = !out.can_import;
    } catch (err) {
      result.dataset.outcome = 'refused';
      result.append(errorBox(err, '预警无法导入'));
    } finally {
      preview.disabled = false;
    }
  });
  confirm.addEventListener('click', async () => {
    confirm.disabled = true;
    clear(done);
    try {
      const out = await request('/api/alerts/cap', { method: 'POST', bodyRaw: body, headers: { 'Content-Type': 'application/xml' } });
      done.dataset.outcome = out.action;
      done.append(h('p', { class: 'ok' }, `已导入（${out.action}）`,
        out.case_number ? [' 案件 ', h('a', { href: `#/cases/${out.case_id}`, id: 'cap-result-case' }, out.case_number)] : null,
        out.speakers ? `，${out.speakers} 个喇叭将播放` : ''));
      await onImported();
    } catch (err) {
      done.dataset.outcome = 'refused';
      done.append(errorBox(err, '导入失败'));
    }
  });
  return h('section', { class: 'panel form', id: 'cap-import' }, h('h2', {}, '导入应急预警 (CAP 1.2)'),
    xml, h('div', { class: 'row' }, file, preview, confirm), result, done);
}

function showPreview(box, p) {
  box.dataset.outcome = p.action;
  const rows = [
    ['预警', p.headline || p.event || '—'], ['发布单位', p.sender_name || p.sender], ['标识', `${p.identifier}（${MSG_TYPES[p.msg_type] || p.msg_type}）`],
    ['级别', [p.severity, p.urgency, p.certainty].filter(Boolean).join(' / ') || '—'],
    ['生效 / 失效', `${p.effective ? fmtTime(p.effective, { date: true }) : '—'} / ${p.expires ? fmtTime(p.expires, { date: true }) : '—'}`],
    ['签名', p.signed ? '已验证 (XML 签名有效)' : '未验证（该发送方未配置证书）'],
    ['将要执行', ACTIONS[p.action] || p.action],
  ];
  box.append(h('dl', { class: 'cap-summary' }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  if (p.problems.length) box.append(h('ul', { class: 'error-list', id: 'cap-problems' }, p.problems.map((t) => h('li', {}, t))));
  if (p.references && p.references.length) {
    box.append(h('p', {}, '涉及案件：', p.references.map((r) => h('a', { href: `#/cases/${r.id}` }, `${r.number} `))));
  }
  if (p.text) box.append(h('h3', {}, '将播放的内容'), h('blockquote', { id: 'cap-text' }, p.text));
  if (p.villages.length) {
    box.append(h('h3', {}, `覆盖的村（社区）：${p.villages.length} 个，喇叭 ${p.speakers} 个`),
      h('ul', { id: 'cap-villages' }, p.villages.map((v) => h('li', { dataset: { code: v.code } }, `${v.name} `,
        h('small', {}, v.speakers.length ? v.speakers.map((x) => x.name).join('、') : '无广播设备')))));
  }
  if (p.map && p.map.length) box.append(drawMap(p.map));
}

function drawMap(villages) {
  const pts = villages.flatMap((v) => v.boundary || (v.center ? [[v.center[1], v.center[0]]] : []));
  if (!pts.length) return null;
  const lons = pts.map((q) => q[0]);
  const lats = pts.map((q) => q[1]);
  const [x0, x1, y0, y1] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  const k = Math.min((W - 20) / ((x1 - x0) || 0.01), (H - 20) / ((y1 - y0) || 0.01));
  const X = (lon) => 10 + (lon - x0) * k;
  const Y = (lat) => H - 10 - (lat - y0) * k;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map cap-map', id: 'cap-map', role: 'img', 'aria-label': '预警覆盖范围' });
  for (const v of villages) {
    if (v.boundary && v.boundary.length >= 3) {
      const d = v.boundary.map(([lon, lat], i) => `${i ? 'L' : 'M'}${X(lon).toFixed(1)},${Y(lat).toFixed(1)}`).join(' ') + 'Z';
      svg.append(s('path', { d, class: `area${v.matched ? ' matched' : ''}`, 'data-code': v.code }, s('title', {}, v.name)));
    }
    if (v.center) svg.append(s('text', { x: X(v.center[1]), y: Y(v.center[0]), class: 'label', 'text-anchor': 'middle' }, v.name));
  }
  return svg;
}

async function loadHistory(box) {
  clear(box);
  let data;
  try {
    data = await api.get('/api/alerts/cap');
  } catch (err) {
    box.append(errorBox(err, '预警记录加载失败'));
    return;
  }
  if (!data.warnings.length) { box.append(h('p', { class: 'muted' }, '暂无导入的预警。')); return; }
  box.append(h('table', { class: 'cap-history' },
    h('thead', {}, h('tr', {}, ['导入时间', '预警', '类型', '来源', '案件', '广播', '回执'].map((t) => h('th', {}, t)))),
    h('tbody', {}, data.warnings.map((w) => h('tr', { dataset: { identifier: w.identifier } },
      h('td', {}, fmtTime(w.imported_at, { date: true })),
      h('td', {}, w.title),
      h('td', {}, MSG_TYPES[w.msg_type] || w.msg_type),
      h('td', {}, w.source === 'feed' ? `订阅源 ${w.imported_by.replace('system:cap-feed:', '')}` : w.imported_by),
      h('td', {}, h('a', { href: `#/cases/${w.case_id}` }, w.case_number)),
      h('td', { class: 'broadcast-state' }, w.broadcast_id ? BROADCAST_STATES[w.broadcast_state] || w.broadcast_state : '—'),
      h('td', {}, Object.entries(w.receipts).map(([k, n]) => `${k} ${n}`).join('，') || '—'))))));
}

async function loadFeeds(box) {
  clear(box);
  let data;
  try {
    data = await api.get('/api/alerts/cap/feeds');
  } catch (err) {
    box.append(errorBox(err, '订阅源状态加载失败'));
    return;
  }
  if (!data.feeds.length) { box.append(h('p', { class: 'muted' }, '未配置预警订阅源（站点文件 cap_feeds）。')); return; }
  for (const f of data.feeds) {
    box.append(h('div', { class: 'cap-feed', dataset: { feed: f.name } },
      h('h3', {}, f.name, ' ', h('small', {}, f.url || '')),
      h('p', { class: f.last_error ? 'error' : 'muted' },
        f.last_error ? `订阅源出错（连续 ${f.failures} 次），${fmtTime(f.next_poll_at)} 重试：${f.last_error}`
          : `上次检查 ${fmtTime(f.polled_at, { date: true })}，条目 ${f.entries ?? 0} 条，已导入 ${(f.counts.imported || 0)} 条`),
      f.problems.length ? h('ul', { class: 'error-list' }, f.problems.map((e) => h('li', { dataset: { state: e.state } },
        `${e.title || e.entry_id}：${ENTRY_STATES[e.state] || e.state}（${e.attempts} 次）${e.reason || ''}`))) : null));
  }
}
