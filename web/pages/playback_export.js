// 导出录像 from the playback page: a range of the camera around the playback position to one MP4
// (the camera's own codec, no re-encoding — H.265 footage the browser cannot play is exported as
// it is), with the reason the audit log requires; the dialog follows the export's progress and
// ends with the download link and the file's SHA-256 (for handing to police or a court).
// With the page on 设备录像 (a GB/T 28181 channel), the range is downloaded from the NVR itself
// (…/device/exports: s=Download at 4×, or 1× playback when the device refuses — said in the result).
import { api } from '../api.js';
import { clear, fmtTime, h, modal, toast } from '../ui.js';

const pad = (n) => String(n).padStart(2, '0');
// <input type=datetime-local> speaks local time without an offset; the API wants the offset.
const localValue = (ms) => { const d = new Date(ms); return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };
const fromLocal = (value) => new Date(value).toISOString();

export function openExport(cam, at, source = 'hub') {
  const device = source === 'device';
  const start = h('input', { type: 'datetime-local', id: 'export-start', step: 1, required: true, value: localValue(at - 30e3) });
  const end = h('input', { type: 'datetime-local', id: 'export-end', step: 1, required: true, value: localValue(at + 30e3) });
  const reason = h('textarea', { id: 'export-reason', rows: 2, required: true, minlength: 2, maxlength: 500,
    placeholder: '导出事由（必填），如：派出所调取，案件编号 2026-118' });
  const result = h('div', { class: 'flag-result', role: 'status', id: 'export-result' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'export-submit' }, '开始导出');
  let alive = true;
  const form = h('form', {
    class: 'flag-form', id: 'export-form',
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      clear(result).append('正在提交…');
      let rec;
      try {
        const range = { start: fromLocal(start.value), end: fromLocal(end.value), reason: reason.value.trim() };
        rec = device
          ? await api.post(`/api/recordings/${encodeURIComponent(cam.id)}/device/exports`, range)
          : await api.post('/api/recordings/exports', { camera_id: cam.id, ...range });
      } catch (err) {
        submit.disabled = false;
        result.dataset.outcome = 'error';
        clear(result).append(h('p', { class: 'error' }, err.status === 403 ? '当前角色无权导出录像' : `无法导出：${err.detail || err.message}`));
        return;
      }
      result.dataset.exportId = rec.id;
      // The export is a job of the hub (it goes on if the page is closed or the hub restarts):
      // poll it; a failed poll (the hub restarting) is retried, not the end of the export.
      let misses = 0;
      while (alive && (rec.state === 'queued' || rec.state === 'running')) {
        const mb = (n) => (n / 1e6).toFixed(1);
        result.dataset.progress = String(rec.progress || 0);
        clear(result).append(
          h('p', {}, `${rec.state === 'queued' ? '排队中' : '导出中'}… ${Math.round((rec.progress || 0) * 100)}%`
            + (device ? `（从设备${rec.download_speed > 1 ? ` ${rec.download_speed} 倍速` : ''}下载）`
              : `（${mb(rec.bytes_done || 0)} / ${mb(rec.bytes_total || 0)} MB）`)
            + (rec.attempts > 1 ? '，服务重启后继续导出' : '')),
          h('progress', { id: 'export-progress', max: 1, value: rec.progress || 0 }),
          ...(misses ? [h('p', { class: 'warn' }, '暂时无法获取进度，正在重试…')] : []));
        await new Promise((r) => setTimeout(r, 500));
        try { rec = await api.get(rec.status_url); misses = 0; } catch (err) {
          if (err.status === 404 || err.status === 403 || ++misses > 60) {
            clear(result).append(h('p', { class: 'error' }, `查询导出进度失败：${err.detail || err.message}`));
            return;
          }
        }
      }
      if (!alive) return;
      if (rec.state !== 'done') {
        result.dataset.outcome = 'error';
        clear(result).append(h('p', { class: 'error' }, rec.state === 'expired' ? '导出文件已过期删除，请重新导出' : (rec.error || '导出失败')));
        submit.disabled = false;
        return;
      }
      result.dataset.outcome = 'ok';
      clear(result).append(...[
        h('p', { class: 'ok' }, `${device ? '已从设备导出' : '已导出'} ${fmtTime(new Date(rec.first_frame_at), { date: true })} – ${fmtTime(new Date(device ? rec.requested.end : rec.last_frame_at))}，${(rec.bytes / 1e6).toFixed(1)} MB（${rec.codec === 'hevc' ? 'H.265' : 'H.264'}，未重新编码）`),
        rec.download_refused ? h('p', { class: 'warn', id: 'export-download-refused' }, rec.download_refused) : null,
        h('p', {}, 'SHA-256：', h('code', { id: 'export-sha256' }, rec.sha256)),
        rec.gaps && rec.gaps.length ? h('p', { class: 'warn' }, `此时段有 ${rec.gaps.length} 处无录像（摄像机离线或未录制）`) : null,
        rec.expires_at ? h('p', { class: 'muted' }, `文件保留至 ${fmtTime(new Date(rec.expires_at), { date: true })}，之后需重新导出；每次下载均记入审计`) : null,
        h('a', { href: rec.file_url, id: 'export-download', class: 'button primary', download: '' }, '下载 MP4')].filter(Boolean));
      toast('录像已导出', 'ok');
    },
  },
  h('dl', {}, h('dt', {}, '摄像机'), h('dd', {}, `${cam.name}（${cam.id}）`),
    ...(device ? [h('dt', {}, '来源'), h('dd', {}, '设备录像（NVR），由设备下载，最长 2 小时')] : [])),
  h('label', { for: 'export-start' }, '开始'), start,
  h('label', { for: 'export-end' }, '结束'), end,
  h('label', { for: 'export-reason' }, '事由（记入审计）'), reason,
  result, h('div', { class: 'actions' }, submit));
  modal(`导出录像 · ${cam.name}`, form, { onClose: () => { alive = false; } });
}
