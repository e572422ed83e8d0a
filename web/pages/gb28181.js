// 国标设备 — the GB/T 28181 cameras, NVRs and platforms that register to the hub: registration
// (在线/离线/注册过期), transport and address, last keepalive, clock skew, their channels and the
// camera each became; and 未接入设备, the unknown devices that tried to register, with 接入
// (准入, 一机一帐号): the grid node its channels go to, then its SIP password, shown ONCE here.
// Labels come from the hub (cameras/gb28181/admission.py), not from a copy here.
import { clear, errorBox, fmtTime, gridIndex, h, modal, toast } from '../ui.js';
import { act, call, can, field, nodeOptions } from './admin-kit.js';

const REFRESH_MS = 10_000;
const SKEW_NOTE_S = 10;       // the hub notes a device whose Date differs more (XLHUB_GB28181 clock_skew_note_s)
const BADGE = { online: 'ok', offline: 'bad', expired: 'warn', never: 'muted', refused: 'muted' };

export async function render(main, { me }) {
  const grid = gridIndex(await call('GET', '/api/grid'));
  const known = h('div', { id: 'gb-devices', class: 'gb-cards' }, h('p', { class: 'loading' }, '加载中…'));
  const unknown = h('div', { id: 'gb-unknown', class: 'gb-cards' });
  main.append(h('section', { class: 'panel gb-page' },
    h('header', { class: 'panel-head' }, h('h2', {}, '国标设备 ', h('small', {}, 'GB/T 28181')),
      h('button', { type: 'button', id: 'gb-refresh', onclick: () => load() }, '刷新')),
    h('p', { class: 'muted' }, '通过 GB/T 28181 向本平台注册的摄像机、NVR 与下级平台。设备需先接入（分配 SIP 密码）才能注册；每路视频通道成为一台摄像机。'),
    known,
    h('h3', {}, '未接入设备 ', h('small', {}, '尝试注册但未分配帐号的设备')),
    unknown));

  const place = (d) => (d.grid_code ? grid.trail(grid.byCode.get(d.grid_code)?.path, 1) || grid.nameOf(d.grid_code) : '—');
  const address = (d) => (d.host ? `${(d.transport || '').toUpperCase()} ${d.host}:${d.port}` : '—');

  function skewNote(d) {
    if (d.clock_skew_s === null || d.clock_skew_s === undefined || Math.abs(d.clock_skew_s) < SKEW_NOTE_S) return null;
    const s = Math.round(d.clock_skew_s);
    return h('p', { class: 'warn gb-skew' }, `设备时钟${s > 0 ? '快' : '慢'} ${Math.abs(s)} 秒（已在注册应答中下发校时）`);
  }

  function channelItem(c) {
    return h('li', { dataset: { channel: c.channel_id, state: c.state } },
      h('span', { class: `badge ${c.state === 'online' ? 'ok' : c.state === 'retired' ? 'muted' : 'bad'}` }, c.state_label),
      ' ', h('span', { class: 'gb-ch-name' }, c.camera_name || c.name),
      h('small', { class: 'muted' }, ` 通道 ${c.channel_id} → 摄像机 ${c.camera_id}`));
  }

  // 目录订阅 / 报警订阅: active, refused by the device (the catalog is then queried periodically), or none
  const SUB = { active: '已订阅', unsupported: '设备不支持', none: '未订阅' };
  function subscriptions(d) {
    const one = (what, state, reason) => h('span', { class: `gb-sub gb-sub-${state}`, title: reason || '', dataset: { kind: what } },
      `${what}${SUB[state] || state}`);
    return [one('目录', d.catalog_subscription, d.catalog_subscription_reason), ' · ',
      one('报警', d.alarm_subscription, d.alarm_subscription_reason),
      d.catalog_subscription === 'unsupported' ? h('small', { class: 'muted' }, '（改为定期查询目录）') : null];
  }

  function deviceCard(d) {
    const live = d.channels.filter((c) => c.state !== 'retired').length;
    return h('article', { class: 'gb-card', dataset: { device: d.id, registration: d.registration } },
      h('header', {}, h('strong', {}, d.name || '未命名设备'),
        h('span', { class: `badge ${BADGE[d.registration] || 'muted'} gb-reg` }, d.registration_label)),
      h('dl', {},
        h('dt', {}, '设备编码'), h('dd', {}, d.id),
        h('dt', {}, '所属网格'), h('dd', {}, place(d)),
        h('dt', {}, '传输 / 地址'), h('dd', { class: 'gb-address' }, address(d)),
        h('dt', {}, '最后心跳'), h('dd', { class: 'gb-keepalive' }, fmtTime(d.last_keepalive, { date: true })),
        h('dt', {}, '注册有效至'), h('dd', {}, fmtTime(d.expires_at, { date: true })),
        d.manufacturer || d.model ? [h('dt', {}, '厂商 / 型号'), h('dd', {}, [d.manufacturer, d.model, d.firmware].filter(Boolean).join(' · '))] : null,
        h('dt', {}, '目录 / 报警订阅'), h('dd', { class: 'gb-subscriptions' }, subscriptions(d)),
        h('dt', {}, '通道'), h('dd', { class: 'gb-channel-count' }, `${live} 路${d.channels.length > live ? `（另有 ${d.channels.length - live} 路已退役）` : ''}`)),
      skewNote(d),
      d.last_refusal && d.registration !== 'online' ? h('p', { class: 'muted small' }, `最近一次拒绝：${d.refusal_label}`) : null,
      d.channels.length ? h('details', { class: 'gb-channels', open: d.channels.length <= 8 },
        h('summary', {}, `通道与摄像机（${d.channels.length}）`),
        h('ul', {}, d.channels.map(channelItem))) : h('p', { class: 'muted small' }, '尚未收到设备目录。'));
  }

  function unknownCard(d) {
    return h('article', { class: 'gb-card', dataset: { device: d.id } },
      h('header', {}, h('strong', {}, d.id), h('span', { class: 'badge muted' }, '未接入')),
      h('dl', {},
        h('dt', {}, '地址'), h('dd', {}, address(d)),
        h('dt', {}, '尝试次数'), h('dd', { class: 'gb-attempts' }, String(d.attempts)),
        h('dt', {}, '最后尝试'), h('dd', {}, fmtTime(d.last_seen, { date: true })),
        h('dt', {}, '拒绝原因'), h('dd', {}, d.refusal_label || '—')),
      can(me, 'gb28181.manage') ? h('div', { class: 'row-actions' },
        h('button', { type: 'button', class: 'primary', dataset: { action: 'admit' }, onclick: () => admit(d) }, '接入')) : null);
  }

  let timer = null;
  let busy = false;       // no refresh under an open admission dialog (the password must not vanish)
  async function load() {
    try {
      const devices = await call('GET', '/api/gb28181/devices');
      const mine = devices.filter((d) => d.admitted);
      const others = devices.filter((d) => !d.admitted);
      clear(known).append(...(mine.length ? mine.map(deviceCard) : [h('p', { class: 'muted' }, '辖区内还没有已接入的国标设备。')]));
      clear(unknown).append(...(others.length ? others.map(unknownCard) : [h('p', { class: 'muted', id: 'gb-unknown-empty' }, '没有未接入的设备。')]));
    } catch (err) {
      clear(known).append(errorBox(err, '国标设备加载失败'));
    }
  }

  function admit(d) {
    busy = true;
    const name = h('input', { id: 'gb-admit-name', maxlength: 100, placeholder: '如 东山村二组 NVR' });
    const node = h('select', { id: 'gb-admit-grid' }, h('option', { value: '' }, '按站点配置自动放置'),
      nodeOptions(grid).map(([v, label]) => h('option', { value: v }, label)));
    const error = h('p', { class: 'form-error', role: 'alert', id: 'gb-admit-error' });
    const body = h('div', { class: 'form', id: 'gb-admit-form' },
      h('p', {}, `设备 ${d.id}（${address(d)}）已尝试注册 ${d.attempts} 次。接入后将为其生成 SIP 认证密码（一机一帐号），其视频通道成为摄像机。`),
      field('设备名称', name, '可选'), field('所属网格', node, '通道摄像机放置的位置'), error,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'gb-admit-submit', onclick: submit }, '确认接入')));
    const dialog = modal(`接入设备 ${d.id}`, body, { wide: true, onClose: () => { busy = false; load(); } });

    async function submit() {
      const where = node.value ? grid.nameOf(node.value) : '按站点配置自动放置';
      if (!window.confirm(`确认接入设备 ${d.id}？\n所属网格：${where}\n将生成新的 SIP 密码，原密码（如有）立即失效。`)) return;
      const answer = await act(error, () => call('POST', `/api/gb28181/devices/${encodeURIComponent(d.id)}/admit`,
        { name: name.value.trim() || null, grid: node.value || null }));
      if (!answer) return;
      const secret = h('pre', { id: 'gb-admit-password', class: 'secret' }, answer.password);
      const copied = h('span', { class: 'ok', id: 'gb-admit-copied', role: 'status' });
      clear(body).append(
        h('p', { class: 'warn', id: 'gb-admit-once' }, '⚠ 此密码仅显示这一次，关闭后无法再次查看。请立即复制并配置到设备上。'),
        h('dl', {},
          h('dt', {}, '设备编号 / SIP 用户名'), h('dd', {}, d.id),
          h('dt', {}, 'SIP 认证密码'), h('dd', {}, secret),
          answer.sip_id ? [h('dt', {}, 'SIP 服务器编号'), h('dd', {}, answer.sip_id), h('dt', {}, 'SIP 服务器域'), h('dd', {}, answer.domain)] : null,
          h('dt', {}, '所属网格'), h('dd', {}, answer.grid_code ? grid.nameOf(answer.grid_code) : '按站点配置自动放置')),
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'primary', id: 'gb-admit-copy', onclick: () => copy(answer.password, secret, copied) }, '复制密码'),
          h('button', { type: 'button', id: 'gb-admit-done', onclick: () => dialog.close() }, '我已记下，关闭')),
        copied);
      toast(`设备 ${d.id} 已接入，设备下次注册时生效`, 'info', 6000);
    }
  }

  async function copy(text, el, status) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // without the clipboard API (plain http, a refused permission): select it for Ctrl+C
      const range = document.createRange();
      range.selectNodeContents(el);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      if (!document.execCommand('copy')) { status.textContent = '请手动选中并复制'; return; }
    }
    status.textContent = '已复制到剪贴板';
  }

  await load();
  timer = setInterval(() => { if (!busy && !document.hidden) load(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
