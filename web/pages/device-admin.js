// 设备管理 — add, edit, decommission field devices and issue their broker credentials
// (一机一帐号: a password, or a client certificate, shown ONCE here and never again).
import { api, request } from '../api.js';
import { KIND_LABELS, clear, errorBox, h, modal, toast } from '../ui.js';

const KINDS = ['door', 'speaker', 'drone', 'radio'];

export async function render(main, { grid }) {
  const list = h('div', { id: 'dev-admin-list' }, h('p', { class: 'loading' }, '加载中…'));
  main.append(h('section', { class: 'panel' },
    h('header', { class: 'panel-head' }, h('h2', {}, '设备管理 ', h('small', {}, 'Devices')),
      h('button', { type: 'button', class: 'primary', id: 'dev-add', onclick: () => openForm(null) }, '添加设备')),
    h('p', { class: 'muted' }, '新设备登记后请签发设备账号；账号与证书仅显示一次，请立即交给安装人员。停用的设备立即断开并无法再登录。'),
    list));

  async function load() {
    try {
      const devices = await api.get('/api/devices');
      clear(list).append(devices.length ? h('table', { class: 'table', id: 'dev-admin-table' },
        h('thead', {}, h('tr', {}, ['名称', '编号', '类型', '位置', '操作'].map((t) => h('th', {}, t)))),
        h('tbody', {}, devices.map((d) => h('tr', { dataset: { device: d.id } },
          h('td', {}, d.name), h('td', {}, d.id), h('td', {}, KIND_LABELS[d.kind] || d.kind),
          h('td', {}, grid.trail(d.grid_path, 1) || d.grid_code),
          h('td', { class: 'actions' },
            h('button', { type: 'button', dataset: { action: 'edit' }, onclick: () => openForm(d) }, '编辑'),
            h('button', { type: 'button', dataset: { action: 'credentials' }, onclick: () => issue(d) }, '签发账号'),
            h('button', { type: 'button', class: 'danger', dataset: { action: 'decommission' }, onclick: () => decommission(d) }, '停用'))))))
        : h('p', { class: 'muted' }, '辖区内还没有设备。'));
    } catch (err) {
      clear(list).append(errorBox(err, '设备列表加载失败'));
    }
  }

  async function decommission(dev) {
    if (!window.confirm(`停用设备「${dev.name}」？其账号与证书立即作废，连接将被断开。`)) return;
    try {
      const answer = await api.del(`/api/devices/${encodeURIComponent(dev.id)}`);
      list.querySelector(`tr[data-device="${CSS.escape(dev.id)}"]`)?.remove();
      toast(answer.note || '已停用', 'info', 6000);
      setTimeout(load, 1500);
    } catch (err) { toast(`停用失败：${err.detail || err.message}`, 'error', 8000); }
  }

  function issue(dev) {
    const cert = h('input', { type: 'checkbox', id: 'dev-cred-cert' });
    const rotate = h('input', { type: 'checkbox', id: 'dev-cred-rotate' });
    const out = h('div', { id: 'dev-cred-result', role: 'status' });
    const go = h('button', { type: 'button', class: 'primary', id: 'dev-cred-issue', onclick: async () => {
      clear(out);
      try {
        const b = await api.post(`/api/devices/${encodeURIComponent(dev.id)}/credentials`, { client_certificate: cert.checked, rotate: rotate.checked });
        go.disabled = true;
        const pre = (id, text) => h('pre', { id, class: 'secret' }, text);
        out.append(h('div', {}, h('p', { class: 'warn' }, '以下信息仅显示这一次，关闭后无法再次查看。'),
          h('dl', {}, h('dt', {}, '服务器'), h('dd', {}, `${b.host}  TLS 端口 ${b.mqtt.tls_port || '未开启'}${b.mqtt.client_cert_port ? `，证书端口 ${b.mqtt.client_cert_port}` : ''}`),
            h('dt', {}, '用户名 / 客户端标识'), h('dd', {}, b.mqtt.username),
            h('dt', {}, '密码'), h('dd', {}, pre('dev-cred-password', b.mqtt.password)),
            b.command_signing_key ? [h('dt', {}, '指令签名密钥'), h('dd', {}, pre('dev-cred-key', b.command_signing_key))] : null),
          b.client_cert ? [h('h3', {}, '客户端证书'), pre('dev-cred-cert-pem', b.client_cert.cert_pem), h('h3', {}, '私钥'), pre('dev-cred-key-pem', b.client_cert.key_pem)] : null,
          h('h3', {}, 'CA 证书'), pre('dev-cred-ca', b.ca_pem),
          h('button', { type: 'button', onclick: () => {
            const blob = new Blob([JSON.stringify(b, null, 2)], { type: 'application/json' });
            const a = h('a', { href: URL.createObjectURL(blob), download: `${dev.id}.json` });
            a.click();
            URL.revokeObjectURL(a.href);
          } }, '下载安装包 (JSON)')));
      } catch (err) {
        out.append(h('p', { class: 'error', id: 'dev-cred-error' }, `签发失败：${err.detail || err.message}`));
      }
    } }, '签发');
    modal(`签发设备账号 ${dev.name}`, h('div', { class: 'form' },
      h('label', {}, cert, ' 同时签发客户端证书（一机一证）'), h('label', {}, rotate, ' 重新签发（原密码/证书立即作废）'),
      h('div', { class: 'actions' }, go), out), { wide: true });
  }

  function openForm(existing) {
    const v = existing || {};
    const id = h('input', { id: 'dev-id', required: true, maxlength: 64, value: v.id || '', disabled: Boolean(existing) });
    const name = h('input', { id: 'dev-name', required: true, maxlength: 100, value: v.name || '' });
    const kind = h('select', { id: 'dev-kind', disabled: Boolean(existing) }, KINDS.map((k) => h('option', { value: k, selected: k === v.kind }, KIND_LABELS[k] || k)));
    const nodes = [...grid.byCode.values()].sort((a, b) => a.path.length - b.path.length || a.code.localeCompare(b.code));
    const node = h('select', { id: 'dev-grid' }, nodes.map((n) => h('option', { value: n.code, selected: n.code === v.grid_code }, grid.trail(n.path) || n.name)));
    const lat = h('input', { id: 'dev-lat', type: 'number', step: 'any', value: v.lat ?? '' });
    const lon = h('input', { id: 'dev-lon', type: 'number', step: 'any', value: v.lon ?? '' });
    const error = h('p', { class: 'form-error', role: 'alert', id: 'dev-form-error' });
    const form = h('form', {
      class: 'form', id: 'dev-form',
      onsubmit: async (e) => {
        e.preventDefault();
        error.textContent = '';
        const body = { name: name.value.trim(), grid: node.value, lat: lat.value === '' ? null : Number(lat.value), lon: lon.value === '' ? null : Number(lon.value) };
        try {
          if (existing) await request(`/api/devices/${encodeURIComponent(existing.id)}`, { method: 'PATCH', body });
          else await api.post('/api/devices', { id: id.value.trim(), kind: kind.value, ...body });
          dialog.close();
          toast(existing ? '已保存' : '已登记，请签发设备账号', 'info', 6000);
          load();
          setTimeout(load, 1500);
        } catch (err) { error.textContent = `保存失败：${err.detail || err.message}`; }
      },
    },
    h('label', { for: 'dev-id' }, '编号'), id, h('label', { for: 'dev-name' }, '名称'), name,
    h('label', { for: 'dev-kind' }, '类型'), kind, h('label', { for: 'dev-grid' }, '所属网格'), node,
    h('label', { for: 'dev-lat' }, '纬度'), lat, h('label', { for: 'dev-lon' }, '经度'), lon,
    error, h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'dev-save' }, '保存')));
    const dialog = modal(existing ? `编辑设备 ${existing.name}` : '添加设备', form, { wide: true });
  }

  await load();
  return null;
}
