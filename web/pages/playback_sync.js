// 2×2 同步回放 — four cameras around one place played together: one time cursor drives four
// players; seek, speed, pause and frame step apply to all. The three others are chosen from the
// cameras the caller may see: the same grid node first, then the deepest shared grid ancestor,
// then distance from the first camera.
//
// Each tile is its own GET /api/recordings/{camera}/play?t=… stream in Media Source (as the single
// player, web/pages/playback.js). The cursor is a clock of its own (wall time × speed); every tick
// each tile is put back on it when it drifts, and the clock holds while a tile that has footage at
// the cursor is still loading — so the four show the same moment, and a tile without footage then
// says 无录像 instead of holding the others. Paused, each tile is set to the cursor exactly.
// Route: #/playback/sync/camera[/ISO time].
import { api, request, hubNow } from '../api.js';
import { clear, fmtTime, h, toast } from '../ui.js';

const SPEEDS = [1, 2, 4, 8];
const RANGE_MS = 3600e3;      // the timeline shows an hour
const AHEAD_S = 20;           // buffer at most this far ahead of each tile's playhead
const DRIFT_MS = 250;         // a playing tile further than this (× speed) from the cursor is put back on it
const TICK_MS = 100;
const REFRESH_MS = 10e3;    // timelines reload this often while the range reaches the present

const iso = (ms) => new Date(ms).toISOString();
const clock = (ms) => { const d = new Date(ms); return `${fmtTime(d, { date: true })}.${String(d.getMilliseconds()).padStart(3, '0')}`; };

function metres(a, b) {
  if (a.lat == null || a.lon == null || b.lat == null || b.lon == null) return Infinity;
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLon = (b.lon - a.lon) * rad;
  const x = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLon / 2) ** 2;
  return 12742e3 * Math.asin(Math.sqrt(x));
}

// The cameras "around" ``first``: same grid node, then the deepest shared ancestor, then distance.
export function nearby(first, cameras, n = 3) {
  const shared = (a = [], b = []) => { let i = 0; while (i < a.length && i < b.length && a[i] === b[i]) i += 1; return i; };
  return cameras.filter((c) => c.id !== first.id)
    .map((c) => ({ c, same: c.grid_code === first.grid_code ? 0 : 1, depth: -shared(c.grid_path, first.grid_path), d: metres(c, first) }))
    .sort((x, y) => x.same - y.same || x.depth - y.depth || x.d - y.d || x.c.id.localeCompare(y.c.id))
    .slice(0, n).map((x) => x.c);
}

export async function renderSync(main, { cameras, camId, at }) {
  const first = cameras.find((c) => c.id === camId) || cameras[0];
  if (!first) { main.append(h('p', {}, '没有可回放的摄像机')); return () => {}; }
  const chosen = [first, ...nearby(first, cameras)];
  const sync = { t: at || hubNow() - 5 * 60e3, playing: false, rate: 1, anchorT: 0, anchorWall: 0, fps: 25 };
  const end = Math.max(sync.t + 10 * 60e3, Math.min(hubNow(), sync.t + 30 * 60e3));
  const t0 = end - RANGE_MS;
  main.dataset.view = 'sync';

  const position = h('span', { class: 'pb-position', id: 'sync-position' }, '—');
  const playBtn = h('button', { type: 'button', id: 'sync-play', class: 'primary', onclick: () => (sync.playing ? pause() : play()) }, '播放');
  const speedButtons = SPEEDS.map((r) => h('button', {
    type: 'button', class: 'seg', id: `sync-rate-${r}`, 'aria-pressed': String(r === 1), onclick: () => setRate(r),
  }, `${r}×`));
  const bar = h('div', { class: 'pb-timeline sync-timeline', id: 'sync-timeline', tabindex: 0, 'aria-label': '时间轴：点击定位，四路同时跳转' });
  const cursor = h('div', { class: 'pb-cursor' });
  const axis = h('div', { class: 'pb-axis' }, [0, 0.25, 0.5, 0.75, 1].map((f) => h('span', { style: { left: `${f * 100}%` } }, fmtTime(new Date(t0 + f * RANGE_MS)))));
  const grid = h('div', { class: 'sync-grid', id: 'sync-grid' });
  main.append(h('div', { class: 'playback-page' },
    h('div', { class: 'toolbar' }, h('h2', {}, '2×2 同步回放'),
      h('span', { class: 'muted' }, `${first.name} 及附近摄像机`),
      h('a', { href: `#/playback/${encodeURIComponent(first.id)}/${iso(sync.t)}`, id: 'sync-single', class: 'button',
        onclick: (e) => { e.currentTarget.href = `#/playback/${encodeURIComponent(first.id)}/${iso(now())}`; } }, '单路回放')),
    grid,
    h('div', { class: 'pb-controls toolbar' },
      h('button', { type: 'button', id: 'sync-step-back', title: '四路后退一帧', onclick: () => step(-1) }, '◀ 帧'),
      playBtn,
      h('button', { type: 'button', id: 'sync-step', title: '四路前进一帧', onclick: () => step(1) }, '帧 ▶'),
      h('div', { class: 'seg-group', role: 'group', 'aria-label': '倍速' }, speedButtons),
      position),
    h('div', { class: 'pb-track' }, bar, axis)));
  bar.append(cursor);
  const xOf = (ms) => `${((ms - t0) / RANGE_MS) * 100}%`;
  bar.addEventListener('click', (e) => {
    const r = bar.getBoundingClientRect();
    seek(t0 + Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)) * RANGE_MS);
  });

  // ------------------------------------------------------------------ the tiles
  const tiles = chosen.map((cam, i) => {
    const video = h('video', { muted: true, playsinline: true });
    video.muted = true;
    const note = h('div', { class: 'pb-overlay' }, '加载中…');
    const el = h('div', { class: 'sync-tile', dataset: { camera: cam.id, index: String(i), state: 'loading' } },
      video, h('div', { class: 'sync-name' }, cam.name), note);
    grid.append(el);
    return { cam, el, video, note, tl: null, stream: null, placed: null };
  });

  const spanAt = (tile, ms) => tile.tl && tile.tl.spans.find((s) => Date.parse(s.start) <= ms + 1 && ms < Date.parse(s.end));
  const posOf = (tile) => (tile.stream && tile.stream.start != null ? tile.stream.start + tile.video.currentTime * 1000 : null);
  const isBuffered = (tile, ms) => {
    const s = tile.stream;
    if (!s || s.start == null) return false;
    const x = (ms - s.start) / 1000;
    const b = tile.video.buffered;
    for (let i = 0; i < b.length; i += 1) if (x >= b.start(i) && x <= b.end(i) - 0.05) return true;
    return false;
  };
  const setState = (tile, state, text) => {
    if (tile.el.dataset.state !== state) tile.el.dataset.state = state;
    if (text !== undefined && tile.note.textContent !== text) tile.note.textContent = text;
  };

  function close(tile) {
    if (tile.stream) tile.stream.abort.abort();
    tile.stream = null;
    tile.placed = null;
    tile.video.removeAttribute('src');
    tile.video.load();
  }

  async function open(tile, ms) {
    close(tile);
    const abort = new AbortController();
    const s = { abort, start: null, spanEnd: null, requested: ms, ready: false };
    tile.stream = s;
    setState(tile, 'loading', '正在加载录像…');
    let res;
    try {
      res = await request(`/api/recordings/${encodeURIComponent(tile.cam.id)}/play?t=${encodeURIComponent(iso(ms))}`,
        { raw: true, signal: abort.signal, headers: { Accept: 'video/mp4' } });
    } catch (err) {
      if (err.name === 'AbortError') return;
      s.failed = true;
      setState(tile, 'error', err.status === 404 ? (err.detail || '该时刻没有录像') : `回放失败：${err.detail || err.message}`);
      return;
    }
    const type = res.headers.get('Content-Type').replace(/;\s*codecs=/, '; codecs=');
    if (!window.MediaSource || !MediaSource.isTypeSupported(type)) {
      abort.abort();
      s.failed = true;
      setState(tile, 'noplay', `浏览器无法播放此录像编码（${res.headers.get('X-Codec')}），请在单路回放中逐帧查看或导出录像`);
      return;
    }
    s.start = Date.parse(res.headers.get('X-Start-Time'));
    s.spanEnd = Date.parse(res.headers.get('X-Span-End'));
    const source = new MediaSource();
    tile.video.src = URL.createObjectURL(source);
    await new Promise((r) => source.addEventListener('sourceopen', r, { once: true }));
    const sb = source.addSourceBuffer(type);
    const appended = () => new Promise((r) => sb.addEventListener('updateend', r, { once: true }));
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || tile.stream !== s) break;
        sb.appendBuffer(value);
        await appended();
        if (!s.ready && tile.video.buffered.length) { s.ready = true; tick(); }
        const v = tile.video;
        while (tile.stream === s && v.buffered.length && v.buffered.end(v.buffered.length - 1) - v.currentTime > AHEAD_S) {
          if (v.currentTime - v.buffered.start(0) > AHEAD_S * 2) { sb.remove(0, v.currentTime - AHEAD_S); await appended(); }
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      if (tile.stream === s && source.readyState === 'open') source.endOfStream();
    } catch (err) {
      if (err.name !== 'AbortError' && tile.stream === s) setState(tile, 'error', `回放中断：${err.message}`);
    }
  }

  // ------------------------------------------------------------------ the cursor
  const now = () => (sync.playing ? sync.anchorT + (performance.now() - sync.anchorWall) * sync.rate : sync.t);
  const anchor = (ms) => { sync.t = ms; sync.anchorT = ms; sync.anchorWall = performance.now(); };

  // Where a tile stands against the cursor T: gap (no footage there), loading, or ready.
  function stand(tile, T) {
    const span = spanAt(tile, T);
    if (!span) return 'gap';
    if (!span.plays_in_browser) return 'noplay';
    const s = tile.stream;
    if (s && s.failed) {
      if (Math.abs(s.requested - T) < 5000) return 'failed';
      open(tile, T);
      return 'loading';
    }
    const inStream = s && s.start != null && T >= s.start && T < s.spanEnd;
    if (!s || (s.start != null && !inStream)) { open(tile, T); return 'loading'; }
    if (!s.ready) return 'loading';
    if (isBuffered(tile, T)) return 'ready';
    const b = tile.video.buffered;
    const from = s.start + (b.length ? b.start(0) * 1000 : 0);
    const to = s.start + (b.length ? b.end(b.length - 1) * 1000 : 0);
    if (T < from || T > to + 5000) open(tile, T);    // far from what it holds: from the cursor
    return 'loading';
  }

  function tick() {
    let T = now();
    const stands = tiles.map((t) => stand(t, T));
    const waiting = stands.includes('loading');
    if (sync.playing && waiting) anchor(T);            // the clock holds for a tile still loading
    T = now();
    tiles.forEach((tile, i) => {
      const v = tile.video;
      if (stands[i] !== 'ready') {
        if (!v.paused) v.pause();
        if (stands[i] === 'gap') {
          setState(tile, 'gap', `${clock(T)} 无录像`);
          if (pastKnown(tile, T)) refresh(true);        // written since the timeline was loaded?
        }
        else if (stands[i] === 'noplay') setState(tile, 'noplay', '浏览器无法播放此录像编码（H.265），请在单路回放中逐帧查看或导出录像');
        else if (stands[i] === 'loading') setState(tile, 'loading');
        return;
      }
      const drift = posOf(tile) - T;
      if (sync.playing && !waiting) {
        if (v.playbackRate !== sync.rate) v.playbackRate = sync.rate;
        if (Math.abs(drift) > DRIFT_MS * Math.max(1, sync.rate)) v.currentTime = (T - tile.stream.start) / 1000;
        if (v.paused) v.play().catch(() => {});
        tile.placed = null;
      } else {
        if (!v.paused) v.pause();
        if (tile.placed !== T) { v.currentTime = (T - tile.stream.start) / 1000; tile.placed = T; }
      }
      setState(tile, sync.playing && !waiting ? 'playing' : 'paused', '');
    });
    cursor.style.left = xOf(T);
    position.textContent = clock(T);
    main.dataset.position = String(Math.round(T));
    main.dataset.waiting = String(waiting);
  }

  function play() {
    anchor(sync.t);
    sync.playing = true;
    playBtn.textContent = '暂停';
    main.dataset.playing = 'true';
    tick();
  }
  function pause() {
    anchor(now());
    sync.playing = false;
    playBtn.textContent = '播放';
    main.dataset.playing = 'false';
    tick();
  }
  function seek(ms) {
    anchor(ms);
    tiles.forEach((t) => { t.placed = null; });
    tick();
  }
  function setRate(r) {
    anchor(now());
    sync.rate = r;
    speedButtons.forEach((b, i) => b.setAttribute('aria-pressed', String(SPEEDS[i] === r)));
    tick();
  }
  function step(dir) {
    if (sync.playing) pause();
    seek(now() + (dir * 1000) / (sync.fps || 25));
  }

  // ------------------------------------------------------------------ timelines
  // Loaded on open and again while footage is still being written: every REFRESH_MS when the
  // range reaches the present, and at once (at most every 2 s) when the cursor runs past a
  // tile's last known footage — so playing up to "now" does not turn a recording camera into 无录像.
  let refreshing = null;
  let refreshedAt = 0;
  async function loadTimelines() {
    refreshedAt = performance.now();
    const rows = await Promise.all(tiles.map(async (tile) => {
      try {
        return await api.get(`/api/recordings/${encodeURIComponent(tile.cam.id)}/timeline?start=${encodeURIComponent(iso(t0))}&end=${encodeURIComponent(iso(end))}`);
      } catch (err) {
        setState(tile, 'error', err.status === 403 ? '当前角色无权调阅录像' : `时间轴加载失败：${err.detail || err.message}`);
        return { spans: [], marks: [], failed: true };
      }
    }));
    bar.querySelectorAll('.pb-span, .pb-mark').forEach((el) => el.remove());
    tiles.forEach((tile, i) => {
      if (rows[i].failed && tile.tl) return;        // a failed refresh keeps what was known
      tile.tl = rows[i];
      const top = `${i * 25}%`;
      for (const s of tile.tl.spans) {
        if (s.fps && i === 0) sync.fps = s.fps;
        bar.append(h('div', { class: `pb-span${s.plays_in_browser ? '' : ' pb-span-noplay'}`, title: `${tile.cam.name} 有录像 ${clock(Date.parse(s.start))} – ${clock(Date.parse(s.end))}`,
          style: { left: xOf(Date.parse(s.start)), width: `${((Date.parse(s.end) - Date.parse(s.start)) / RANGE_MS) * 100}%`, top, height: '25%', bottom: 'auto' } }));
      }
    });
    for (const m of tiles[0].tl.marks || []) {
      bar.append(h('button', { type: 'button', class: `pb-mark pb-mark-${m.kind}`, title: `${m.title || m.label} ${clock(Date.parse(m.time))}`,
        style: { left: xOf(Date.parse(m.time)) }, onclick: (e) => { e.stopPropagation(); seek(Date.parse(m.time)); } }));
    }
    const n = tiles.map((t) => t.tl.spans.length);
    bar.dataset.spans = String(n.reduce((a, b) => a + b, 0));
    return n;
  }
  function refresh(soon) {
    if (refreshing || (soon && performance.now() - refreshedAt < 2000)) return;
    refreshing = loadTimelines().catch(() => {}).finally(() => { refreshing = null; tick(); });
  }
  const pastKnown = (tile, T) => {
    const spans = tile.tl ? tile.tl.spans : [];
    const last = spans.length ? Date.parse(spans[spans.length - 1].end) : -Infinity;
    return T >= last && T < hubNow();
  };
  const rows = await loadTimelines();
  if (!rows.some(Boolean)) toast('所选时段四路摄像机都没有录像', 'warn');
  anchor(sync.t);
  main.dataset.playing = 'false';
  tick();
  const timer = setInterval(tick, TICK_MS);
  const reload = setInterval(() => { if (end > hubNow() - RANGE_MS / 60) refresh(false); }, REFRESH_MS);
  const onKey = (e) => {
    if (e.target.closest('input, textarea, select, .modal')) return;
    if (e.key === ' ') { e.preventDefault(); if (sync.playing) pause(); else play(); }
    if (e.key === ',' || e.key === 'ArrowLeft') step(-1);
    if (e.key === '.' || e.key === 'ArrowRight') step(1);
  };
  document.addEventListener('keydown', onKey);
  return () => { clearInterval(timer); clearInterval(reload); document.removeEventListener('keydown', onKey); tiles.forEach(close); clear(grid); };
}
