// 录像回放 — playback of recorded footage: pick a camera, a timeline (coverage, gaps, event and
// alarm marks), click or drag to seek, play/pause, 1×/2×/4×/8×, frame step, previous/next event,
// and 标记事件 from the playback position (the exact frame, decoded by the hub from the recording).
//
// The stream is GET /api/recordings/{camera}/play?t=… — one fragmented MP4 from the keyframe at or
// before t, fed to Media Source as it arrives; its X-Start-Time header is the first frame's time,
// so the position on the timeline is X-Start-Time + currentTime and a seek to t lands on t exactly.
// A GB/T 28181 camera (an NVR's or IPC's channel) has a second source, 设备录像 (NVR): the footage
// the device keeps itself — its RecordInfo ranges on the timeline (GET …/device/timeline), played
// from the device (GET …/device/play?t=&end=, INVITE s=Playback in the hub) as the same fMP4.
// Route: #/playback[/camera[/ISO time]].
import { api, request, hubNow } from '../api.js';
import { CATEGORIES, URGENCIES, clear, errorBox, fmtTime, h, modal, toast } from '../ui.js';

const RANGES = [['10 分钟', 10 * 60e3], ['1 小时', 3600e3], ['6 小时', 6 * 3600e3], ['24 小时', 24 * 3600e3]];
const SPEEDS = [1, 2, 4, 8];
const AHEAD_S = 30;        // buffer at most this far ahead of the playhead
const BEHIND_S = 30;       // and keep this much behind it

const iso = (ms) => new Date(ms).toISOString();
const clock = (ms) => { const d = new Date(ms); return `${fmtTime(d, { date: true })}.${String(d.getMilliseconds()).padStart(3, '0')}`; };

export async function render(main, { me, arg }) {
  if (Array.isArray(me.permissions) && !me.permissions.includes('recordings.play')) {
    main.append(h('div', { class: 'error-box', role: 'alert', id: 'playback-denied' },
      '当前角色无权调阅录像（调阅录像涉及人脸、车牌等个人信息，仅视频监督员、调度员和中心主任可用）。'));
    return () => {};
  }
  const synced = arg && arg.startsWith('sync/');          // #/playback/sync/camera[/ISO time]: 2×2
  if (synced) arg = arg.slice(5);
  let argCam = arg || null;
  let argTime = null;
  if (arg && arg.includes('/')) {       // camera/ISO time (from the wall's 回放 or a case's evidence)
    const i = arg.lastIndexOf('/');
    const t = Date.parse(arg.slice(i + 1));
    if (!Number.isNaN(t)) { argCam = arg.slice(0, i); argTime = t; }
  }
  let cameras = [];
  try { cameras = await api.get('/api/cameras'); } catch (err) { main.append(errorBox(err, '摄像机列表加载失败')); return () => {}; }
  if (synced) return (await import('./playback_sync.js')).renderSync(main, { cameras, camId: argCam, at: argTime });
  const view = {
    cam: cameras.find((c) => c.id === argCam) || cameras[0] || null,
    rangeMs: 3600e3, end: hubNow(), tl: null, fps: 25,
    stream: null,     // { start: ms, spanEnd: ms, abort }
    rate: 1, dragging: false,
    source: 'hub',    // 'hub' 本机录像 | 'device' 设备录像 (GB/T 28181 cameras)
  };
  const isGb = (c) => !!c && (c.origin === 'gb28181' || String(c.id).startsWith('gb-'));
  const base = () => `/api/recordings/${encodeURIComponent(view.cam.id)}${view.source === 'device' ? '/device' : ''}`;
  if (argTime) view.end = Math.max(argTime + 5 * 60e3, Math.min(hubNow(), argTime + 30 * 60e3));

  const sourceButtons = [['hub', '本机录像'], ['device', '设备录像 (NVR)']].map(([src, label]) => h('button', {
    type: 'button', class: 'seg', id: `pb-source-${src}`, 'aria-pressed': String(src === view.source), dataset: { source: src },
    onclick: () => setSource(src),
  }, label));
  const sourceGroup = h('div', { class: 'seg-group', role: 'group', 'aria-label': '录像来源', id: 'pb-source' }, sourceButtons);
  function setSource(src) {
    view.source = isGb(view.cam) ? src : 'hub';
    sourceGroup.hidden = !isGb(view.cam);
    sourceButtons.forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.source === view.source)));
    main.dataset.source = view.source;
    stop();
    loadTimeline();
  }
  const camSelect = h('select', { id: 'pb-camera', onchange: () => { view.cam = cameras.find((c) => c.id === camSelect.value); setSource(view.source); } },
    cameras.map((c) => h('option', { value: c.id, selected: view.cam && c.id === view.cam.id }, `${c.name}（${c.id}）`)));
  const rangeButtons = RANGES.map(([label, ms]) => h('button', {
    type: 'button', class: 'seg', 'aria-pressed': String(ms === view.rangeMs), dataset: { range: ms },
    onclick: () => { view.rangeMs = ms; view.end = hubNow(); rangeButtons.forEach((b) => b.setAttribute('aria-pressed', String(Number(b.dataset.range) === ms))); loadTimeline(); },
  }, `最近 ${label}`));
  const video = h('video', { id: 'pb-video', muted: true, playsinline: true });
  video.muted = true;
  const still = h('img', { id: 'pb-still', class: 'pb-still', alt: '', hidden: true });
  const overlay = h('div', { class: 'pb-overlay', id: 'pb-message', role: 'status' }, '选择时间轴上的位置开始回放');
  const position = h('span', { class: 'pb-position', id: 'pb-position' }, '—');
  const codecNote = h('p', { class: 'pb-codec', id: 'pb-codec' });
  const bar = h('div', { class: 'pb-timeline', id: 'pb-timeline', tabindex: 0, 'aria-label': '时间轴：点击或拖动定位' });
  const cursor = h('div', { class: 'pb-cursor', id: 'pb-cursor' });
  const hover = h('div', { class: 'pb-hover' });
  const axis = h('div', { class: 'pb-axis' });
  const playBtn = h('button', { type: 'button', id: 'pb-play', class: 'primary', onclick: () => togglePlay() }, '播放');
  const speedButtons = SPEEDS.map((r) => h('button', {
    type: 'button', class: 'seg', id: `pb-rate-${r}`, 'aria-pressed': String(r === 1), onclick: () => setRate(r),
  }, `${r}×`));
  const flagBtn = h('button', { type: 'button', id: 'pb-flag', class: 'flag-btn', onclick: () => openFlag() }, '标记事件');
  // The recording's sound (AAC; G.711 cameras' transcoded): muted until asked, as autoplay needs.
  const soundBtn = h('button', {
    type: 'button', id: 'pb-sound', 'aria-pressed': 'false', hidden: true, title: '此录像含声音',
    onclick: () => { video.muted = !video.muted; soundBtn.setAttribute('aria-pressed', String(!video.muted)); soundBtn.textContent = video.muted ? '声音：关' : '声音：开'; },
  }, '声音：关');
  const mayExport = !Array.isArray(me.permissions) || me.permissions.includes('recordings.export');
  const exportBtn = h('button', {
    type: 'button', id: 'pb-export', disabled: !mayExport, title: mayExport ? '导出所选时段为 MP4（原编码，附 SHA-256）' : '当前角色无权导出录像',
    onclick: async () => {
      const at = now() ?? (Number(position.dataset.ms) || hubNow() - 60e3);
      (await import('./playback_export.js')).openExport(view.cam, at, view.source);
    },
  }, '导出录像');
  const controls = h('div', { class: 'pb-controls toolbar' },
    h('button', { type: 'button', id: 'pb-prev-event', title: '上一个事件', onclick: () => jumpEvent(-1) }, '⏮ 上一事件'),
    h('button', { type: 'button', id: 'pb-step-back', title: '后退一帧', onclick: () => step(-1) }, '◀ 帧'),
    playBtn,
    h('button', { type: 'button', id: 'pb-step', title: '前进一帧', onclick: () => step(1) }, '帧 ▶'),
    h('button', { type: 'button', id: 'pb-next-event', title: '下一个事件', onclick: () => jumpEvent(1) }, '下一事件 ⏭'),
    h('div', { class: 'seg-group', role: 'group', 'aria-label': '倍速' }, speedButtons),
    position, soundBtn, flagBtn, exportBtn);
  main.append(h('div', { class: 'playback-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, '录像回放'), camSelect, sourceGroup, h('div', { class: 'seg-group', role: 'group', 'aria-label': '时间范围' }, rangeButtons),
      h('button', { type: 'button', id: 'pb-sync', title: '与附近三路摄像机同步回放', onclick: () => {
        const at = now() ?? (Number(position.dataset.ms) || hubNow() - 5 * 60e3);
        location.hash = `#/playback/sync/${encodeURIComponent(view.cam.id)}/${iso(at)}`;
      } }, '2×2 同步回放')),
    h('div', { class: 'pb-screen' }, video, still, overlay),
    controls,
    h('div', { class: 'pb-track' }, bar, axis),
    codecNote));
  bar.append(hover, cursor);

  // ------------------------------------------------------------------ timeline
  const t0 = () => view.end - view.rangeMs;
  const xOf = (ms) => `${((ms - t0()) / view.rangeMs) * 100}%`;
  const msAt = (clientX) => { const r = bar.getBoundingClientRect(); return t0() + Math.min(1, Math.max(0, (clientX - r.left) / r.width)) * view.rangeMs; };

  async function loadTimeline() {
    if (!view.cam) { overlay.textContent = '没有可回放的摄像机'; return; }
    bar.querySelectorAll('.pb-span, .pb-gap, .pb-mark').forEach((el) => el.remove());
    if (view.source === 'device') overlay.textContent = '正在向设备查询录像…';
    try {
      const got = await api.get(`${base()}/timeline?start=${encodeURIComponent(iso(t0()))}&end=${encodeURIComponent(iso(view.end))}`);
      view.tl = view.source === 'device' ? deviceTimeline(got) : got;
    } catch (err) {
      overlay.textContent = err.status === 403 ? '当前角色无权调阅录像' : `时间轴加载失败：${err.detail || err.message}`;
      return;
    }
    const tl = view.tl;
    for (const s of tl.spans) {
      bar.append(h('div', { class: `pb-span${s.plays_in_browser ? '' : ' pb-span-noplay'}${s.device ? ' pb-span-device' : ''}`,
        title: `${s.device ? `设备录像（${{ time: '定时', alarm: '报警', manual: '手动' }[s.type] || s.type}）` : '有录像'} ${clock(Date.parse(s.start))} – ${clock(Date.parse(s.end))}`,
        style: { left: xOf(Date.parse(s.start)), width: `${((Date.parse(s.end) - Date.parse(s.start)) / view.rangeMs) * 100}%` } }));
      if (s.fps) view.fps = s.fps;
    }
    for (const g of tl.gaps) {
      bar.append(h('div', { class: `pb-gap${g.pruned ? ' pb-gap-pruned' : ''}`, title: g.pruned ? '录像已按保存期限删除' : '无录像（摄像机离线或未录制）',
        style: { left: xOf(Date.parse(g.start)), width: `${((Date.parse(g.end) - Date.parse(g.start)) / view.rangeMs) * 100}%` } }));
    }
    tl.marks.forEach((m, i) => {
      bar.append(h('button', {
        type: 'button', class: `pb-mark pb-mark-${m.kind} sev-${m.severity || 'info'}`, id: `pb-mark-${i}`,
        dataset: { time: m.time, kind: m.kind, type: m.type }, title: `${m.kind === 'alarm' ? '告警' : '事件'}：${m.title || m.label} ${clock(Date.parse(m.time))}`,
        style: { left: xOf(Date.parse(m.time)) },
        onclick: (e) => { e.stopPropagation(); seek(Date.parse(m.time)); },
      }));
    });
    clear(axis).append(...[0, 0.25, 0.5, 0.75, 1].map((f) => h('span', { style: { left: `${f * 100}%` } }, fmtTime(new Date(t0() + f * view.rangeMs)))));
    clear(codecNote).append(...tl.playable.map((p) => h('span', { class: p.browser ? 'ok' : 'warn', dataset: { codec: p.codec } }, p.text)));
    bar.dataset.spans = String(tl.spans.length);
    bar.dataset.marks = String(tl.marks.length);
    if (!tl.spans.length) overlay.textContent = '所选时段没有录像';
    else if (!view.stream) overlay.textContent = '点击时间轴上的位置开始回放';
    if (argTime && !view.stream) seek(argTime);
  }

  function deviceTimeline(got) {
    // the device's records as spans (clamped to the range); what it lacks is simply not drawn
    const lo = t0(); const hi = view.end;
    const spans = got.records.map((r) => ({
      start: iso(Math.max(lo, Date.parse(r.start))), end: iso(Math.min(hi, Date.parse(r.end))),
      codec: 'h264', plays_in_browser: true, device: true, type: r.type, name: r.name,
    })).filter((sp) => Date.parse(sp.end) > Date.parse(sp.start));
    return { spans, gaps: [], marks: [], playable: [{ codec: 'device', browser: true, text: `设备录像（${got.device_id}）：${spans.length} 段，由设备按需回放` }] };
  }

  bar.addEventListener('pointerdown', (e) => { if (e.target.closest('.pb-mark')) return; view.dragging = true; bar.setPointerCapture(e.pointerId); moveCursor(msAt(e.clientX)); });
  bar.addEventListener('pointermove', (e) => {
    const ms = msAt(e.clientX);
    hover.style.left = xOf(ms); hover.dataset.label = fmtTime(new Date(ms));
    if (view.dragging) moveCursor(ms);
  });
  bar.addEventListener('pointerup', (e) => { if (!view.dragging) return; view.dragging = false; seek(msAt(e.clientX)); });

  function moveCursor(ms) { cursor.style.left = xOf(ms); position.textContent = clock(ms); position.dataset.ms = String(Math.round(ms)); }

  // ------------------------------------------------------------------ playing
  const now = () => (view.stream ? view.stream.start + video.currentTime * 1000 : null);
  const buffered = (ms) => {
    if (!view.stream) return false;
    const at = (ms - view.stream.start) / 1000;
    for (let i = 0; i < video.buffered.length; i += 1) if (at >= video.buffered.start(i) && at <= video.buffered.end(i) - 0.05) return true;
    return false;
  };

  async function seek(ms, { autoplay = true } = {}) {
    const spans = view.tl ? view.tl.spans : [];
    if (spans.length && !spans.some((s) => Date.parse(s.start) <= ms + 1 && ms < Date.parse(s.end))) {
      const next = spans.find((s) => Date.parse(s.start) > ms);     // in a gap: from where footage resumes
      if (next) { toast(`${clock(ms)} 无录像，从 ${clock(Date.parse(next.start))} 开始回放`); ms = Date.parse(next.start); }
    }
    moveCursor(ms);
    still.hidden = true;
    if (buffered(ms)) { video.currentTime = (ms - view.stream.start) / 1000; return; }
    const span = view.tl && view.tl.spans.find((s) => Date.parse(s.start) <= ms + 1 && ms < Date.parse(s.end));
    if (span && !span.plays_in_browser) {
      // the browser cannot play this codec (H.265): the hub's frame at the moment, and the way out
      stop();
      overlay.textContent = `浏览器无法播放${span.codec === 'hevc' ? ' H.265 ' : '此编码的'}录像：此处显示该时刻的单帧画面（可逐帧查看、标记事件），完整录像请点“导出录像”下载 MP4。`;
      main.dataset.state = 'still';
      showFrame(ms);
      return;
    }
    await open(ms, autoplay);
  }

  function stop() {
    if (view.stream) view.stream.abort.abort();
    view.stream = null;
    video.removeAttribute('src');
    video.load();
  }

  async function open(ms, autoplay) {
    stop();
    const abort = new AbortController();
    const opening = { abort, start: null, spanEnd: null, requested: ms };
    view.stream = opening;
    overlay.textContent = '正在加载录像…';
    main.dataset.state = 'loading';
    let res;
    try {
      const span = view.source === 'device' && view.tl && view.tl.spans.find((s) => Date.parse(s.start) <= ms + 1 && ms < Date.parse(s.end));
      const until = span ? `&end=${encodeURIComponent(span.end)}` : '';
      res = await request(`${base()}/play?t=${encodeURIComponent(iso(ms))}${until}`, { raw: true, signal: abort.signal, headers: { Accept: 'video/mp4' } });
    } catch (err) {
      if (err.name === 'AbortError') return;
      view.stream = null;
      overlay.textContent = err.status === 404 ? `${err.detail || '该时刻没有录像'}` : `回放失败：${err.detail || err.message}`;
      main.dataset.state = 'error';
      return;
    }
    opening.start = Date.parse(res.headers.get('X-Start-Time'));
    opening.spanEnd = Date.parse(res.headers.get('X-Span-End'));
    opening.session = res.headers.get('X-Session');     // a device stream: paused and sped up at the NVR too
    const type = res.headers.get('Content-Type').replace(/;\s*codecs=/, '; codecs=');
    if (!window.MediaSource || !MediaSource.isTypeSupported(type)) {
      abort.abort();
      view.stream = null;
      overlay.textContent = `浏览器无法播放此录像编码（${res.headers.get('X-Codec')}）：可逐帧查看、标记事件并导出录像。`;
      showFrame(ms);
      return;
    }
    soundBtn.hidden = !/mp4a\./.test(type);      // the segment files carry the camera's audio, if it sent any
    const source = new MediaSource();
    video.src = URL.createObjectURL(source);
    await new Promise((r) => source.addEventListener('sourceopen', r, { once: true }));
    const sb = source.addSourceBuffer(type);
    const appended = () => new Promise((r) => sb.addEventListener('updateend', r, { once: true }));
    let first = true;
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || view.stream !== opening) break;
        sb.appendBuffer(value);
        await appended();
        if (first && video.buffered.length) {
          first = false;
          video.currentTime = Math.max(0, (ms - opening.start) / 1000);
          overlay.textContent = '';
          main.dataset.state = 'playing';
          if (autoplay) video.play().catch(() => {});
        }
        // back-pressure: read on only when the player is near the end of what it has
        while (view.stream === opening && video.buffered.length && video.buffered.end(video.buffered.length - 1) - video.currentTime > AHEAD_S) {
          if (video.currentTime - video.buffered.start(0) > BEHIND_S * 2) { sb.remove(0, video.currentTime - BEHIND_S); await appended(); }
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      if (view.stream === opening && source.readyState === 'open') source.endOfStream();
    } catch (err) {
      if (err.name !== 'AbortError' && view.stream === opening) overlay.textContent = `回放中断：${err.message}`;
    }
  }

  // The position shown: timeupdate comes only every ~250 ms, so a pause and a seek (frame step)
  // set it too — a paused picture and the time beside it must agree.
  const showPosition = () => { const ms = now(); if (ms && !view.dragging) moveCursor(ms); main.dataset.position = ms ? String(Math.round(ms)) : ''; };
  video.addEventListener('timeupdate', showPosition);
  video.addEventListener('seeked', showPosition);
  video.addEventListener('play', () => { playBtn.textContent = '暂停'; main.dataset.playing = 'true'; if (view.stream && view.stream.pausedAtDevice) deviceControl({ action: 'play' }); });
  video.addEventListener('pause', () => {
    playBtn.textContent = '播放'; main.dataset.playing = 'false'; showPosition();
    // The picture on screen may run ahead of currentTime when paused under load (a frame late
    // is 0.4 s of footage at 4×): a seek to where it stopped paints that very frame.
    if (!video.ended && !video.seeking) video.currentTime = video.currentTime;
    if (!video.ended) deviceControl({ action: 'pause' });
  });
  video.addEventListener('ratechange', () => { view.rate = video.playbackRate; });
  video.addEventListener('ended', () => {
    // the footage of this stream ended (a gap or a change of stream follows): on to the next span
    const at = view.stream && view.stream.spanEnd;
    const next = view.tl && view.tl.spans.find((s) => Date.parse(s.start) > at + 100);
    if (next) { overlay.textContent = `无录像至 ${clock(Date.parse(next.start))}，继续回放`; open(Date.parse(next.start), true).then(() => setRate(view.rate)); }
    else overlay.textContent = '录像已播放完毕';
  });

  function togglePlay() {
    if (!view.stream) { const s = view.tl && view.tl.spans[0]; if (s) seek(Date.parse(s.start)); return; }
    if (video.paused) { still.hidden = true; video.play().catch(() => {}); } else video.pause();
  }
  // Device footage comes at the pace the NVR sends it: a pause stops the NVR sending (MANSRTSP
  // PAUSE), a speed asks it to send faster (Scale, at most 4×) so the buffer keeps up.
  function deviceControl(body) {
    const s = view.source === 'device' && view.stream;
    if (!s || !s.session) return;
    s.pausedAtDevice = body.action === 'pause';
    api.post(`${base()}/control`, { session: s.session, ...body }).then((got) => { main.dataset.deviceScale = String(got.scale); main.dataset.devicePaused = String(got.paused); })
      .catch((err) => { if (err.status !== 404 && err.status !== 409) toast(`设备回放控制失败：${err.detail || err.message}`, 'warn'); });
  }
  function setRate(r) {
    if (view.source === 'device' && (r !== view.rate || r !== 1)) deviceControl({ action: 'play', scale: Math.min(r, 4) });
    video.playbackRate = r; view.rate = r;
    speedButtons.forEach((b, i) => b.setAttribute('aria-pressed', String(SPEEDS[i] === r)));
  }
  function step(dir) {
    video.pause();
    const ms = (now() ?? Number(position.dataset.ms)) + (dir * 1000) / (view.fps || 25);
    if (buffered(ms)) { video.currentTime = (ms - view.stream.start) / 1000; moveCursor(ms); } else seek(ms, { autoplay: false });
  }
  function jumpEvent(dir) {
    if (!view.tl) return;
    const at = now() ?? (Number(position.dataset.ms) || t0());
    const times = view.tl.marks.map((m) => Date.parse(m.time));
    const target = dir > 0 ? times.find((t) => t > at + 500) : [...times].reverse().find((t) => t < at - 500);
    if (target !== undefined) seek(target);
    else toast(dir > 0 ? '后面没有事件了' : '前面没有事件了');
  }
  async function showFrame(ms) {
    if (view.source === 'device') { overlay.textContent = '设备录像不支持单帧查看'; return; }
    // a codec the browser cannot play: the hub's exact frame, decoded from the recording
    try {
      const res = await request(`/api/recordings/${encodeURIComponent(view.cam.id)}/frame?t=${encodeURIComponent(iso(ms))}`, { raw: true, headers: { Accept: 'image/jpeg' } });
      still.src = URL.createObjectURL(await res.blob());
      still.dataset.frameTime = res.headers.get('X-Frame-Time');
      still.hidden = false;
      moveCursor(Date.parse(res.headers.get('X-Frame-Time')));
    } catch (err) { overlay.textContent = err.detail || err.message; }
  }

  // ------------------------------------------------------------------ flag from playback
  async function openFlag() {
    const at = now() ?? Number(position.dataset.ms);
    if (!at) { toast('请先在时间轴上选择回放位置', 'warn'); return; }
    if (view.source === 'device') { toast('设备录像暂不支持标记事件：请切换到本机录像', 'warn'); return; }
    video.pause();
    const stillImg = h('img', { class: 'flag-still', id: 'pb-flag-still', alt: `${view.cam.name} ${clock(at)}` });
    const frameTime = h('dd', { id: 'flag-time', dataset: { ms: String(Math.round(at)) } }, clock(at));
    request(`/api/recordings/${encodeURIComponent(view.cam.id)}/frame?t=${encodeURIComponent(iso(at))}`, { raw: true, headers: { Accept: 'image/jpeg' } })
      .then(async (res) => {
        const data = await res.blob();
        const reader = new FileReader();
        reader.onload = () => { stillImg.src = reader.result; stillImg.dataset.frameTime = res.headers.get('X-Frame-Time'); };
        reader.readAsDataURL(data);
      }).catch((err) => { stillImg.alt = `无画面：${err.detail || err.message}`; });
    const urgency = URGENCIES.map((u, i) => h('label', { class: `urgency urgency-${u.colour}` },
      h('input', { type: 'radio', name: 'urgency', value: u.code, checked: i === 1 }), u.label));
    const category = h('select', { id: 'flag-category', name: 'category' }, CATEGORIES.map((c) => h('option', { value: c.label }, c.label)));
    const note = h('textarea', { id: 'flag-note', name: 'note', rows: 3, maxlength: 500, placeholder: '简要描述所见情况（可选）' });
    const result = h('div', { class: 'flag-result', role: 'status', id: 'flag-result' });
    const submit = h('button', { type: 'submit', class: 'primary', id: 'flag-submit' }, '上报事件');
    const form = h('form', {
      class: 'flag-form', id: 'flag-form',
      onsubmit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        clear(result).append('正在上报…');
        const u = URGENCIES.find((x) => x.code === form.querySelector('input[name=urgency]:checked').value);
        try {
          const out = await api.post(`/api/recordings/${encodeURIComponent(view.cam.id)}/flags`, {
            at: iso(at), category: category.value, severity: u ? u.severity : undefined,
            note: [note.value.trim(), u ? `紧急程度：${u.label}` : '', `录像回放 ${clock(at)}`].filter(Boolean).join('\n'),
          });
          clear(result).append(h('p', { class: 'ok' }, `已上报。事件编号 ${out.event_id}（录像第 ${out.recording.segment_seq} 段）`),
            h('p', {}, '证据：', out.evidence.map((ev) => h('a', { href: ev.url, target: '_blank', rel: 'noopener' }, ev.media_type === 'video/mp4' ? '视频片段 ' : '截图 '))));
          result.dataset.eventId = out.event_id;
          result.dataset.outcome = 'ok';
          toast(`已标记：${view.cam.name} ${clock(at)}`, 'ok');
          loadTimeline();
        } catch (err) {
          result.dataset.outcome = 'error';
          submit.disabled = false;
          clear(result).append(h('p', { class: 'error' }, err.status === 403 ? `当前角色无权标记视频事件（${err.detail || ''}）` : `上报失败：${err.detail || err.message}`));
        }
      },
    },
    h('div', { class: 'flag-grid' }, stillImg,
      h('dl', {}, h('dt', {}, '地点'), h('dd', { id: 'flag-place' }, view.cam.name),
        h('dt', {}, '画面时间'), frameTime, h('dt', {}, '来源'), h('dd', {}, '录像回放'))),
    h('label', { for: 'flag-category' }, '类别'), category,
    h('fieldset', { class: 'urgencies' }, h('legend', {}, '紧急程度'), urgency),
    h('label', { for: 'flag-note' }, '说明'), note, result, h('div', { class: 'actions' }, submit));
    modal(`标记事件（录像）· ${view.cam.name}`, form);
  }

  const onKey = (e) => {
    if (e.target.closest('input, textarea, select, .modal')) return;
    if (e.key === ' ') { e.preventDefault(); togglePlay(); }
    if (e.key === ',' || e.key === 'ArrowLeft') step(-1);
    if (e.key === '.' || e.key === 'ArrowRight') step(1);
    if (e.key === 'f' || e.key === 'F') openFlag();
  };
  document.addEventListener('keydown', onKey);
  sourceGroup.hidden = !isGb(view.cam);
  main.dataset.source = view.source;
  loadTimeline();
  return () => { document.removeEventListener('keydown', onKey); stop(); };
}
