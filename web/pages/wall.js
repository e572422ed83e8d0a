// 电视墙 — the video wall, laid out by the grid tree (township → villages), 1/4/9/16 tiles.
import { api, request } from '../api.js';
import { LiveTile, STREAMS, TILE_STATES } from '../live.js';
import { CATEGORIES, URGENCIES, clear, errorBox, fmtTime, h, modal, toast } from '../ui.js';

const LAYOUTS = [1, 4, 9, 16];
// Tile health from GET /api/camera-health: state → badge colour (its label comes with it).
const HEALTH = {
  online: { cls: 'ok' }, offline: { cls: 'bad' }, tampered: { cls: 'warn' }, frozen: { cls: 'warn' },
  maintenance: { cls: 'maint' }, connecting: { cls: 'muted' }, unknown: { label: '状态未知', cls: 'muted' },
};
const PTZ_SPEEDS = [['慢', 0.25], ['中', 0.5], ['快', 1]];
const PTZ_HOLD_S = 2;          // each move lasts this long on the camera unless renewed (a lost stop cannot spin it)
const PTZ_RENEW_MS = 1500;     // while a button is held, the move is renewed this often

function healthOf(row) {
  const base = HEALTH[row.state] || HEALTH.unknown;
  return { ...base, ...row, label: row.label || row.state };
}

export async function render(main, { me, grid }) {
  const saved = JSON.parse(localStorage.getItem('xlhub.wall') || '{}');
  const view = {
    layout: LAYOUTS.includes(saved.layout) ? saved.layout : 4,
    node: saved.node && grid.byCode.has(saved.node) ? saved.node : me.node_code,
    page: 0,
    zoom: null,
    selected: null,
  };
  let cameras = [];
  let ready = false;          // the camera list is in: a layout chosen before then is drawn when it is
  const tiles = new Map();   // camera id → { tile, el, live }
  const streams = new Map(); // camera id → the stream its tile asked for (流畅/高清), while on this page
  let health = new Map();
  let feeds = new Map();
  let timers = [];
  // Only for those who may steer (api/permissions.py cameras.ptz); an older hub without the list: show it.
  const canPtz = !Array.isArray(me.permissions) || me.permissions.includes('cameras.ptz');
  const canPlay = !Array.isArray(me.permissions) || me.permissions.includes('recordings.play');

  const wall = h('section', { class: 'wall', id: 'wall', 'aria-label': '电视墙' });
  const tree = h('nav', { class: 'tree', 'aria-label': '网格树' });
  const pager = h('span', { class: 'pager' });
  const layoutButtons = LAYOUTS.map((n) => h('button', {
    type: 'button', class: 'seg', id: `layout-${n}`, dataset: { layout: n }, 'aria-pressed': String(n === view.layout),
    onclick: () => {
      view.layout = n; view.zoom = null; view.page = 0; persist();
      layoutButtons.forEach((b) => b.setAttribute('aria-pressed', String(Number(b.dataset.layout) === n)));
      if (ready) draw();
    },
  }, `${n} 画面`));
  const title = h('h2', { class: 'wall-title' });
  const toolbar = h('div', { class: 'toolbar' }, title, h('div', { class: 'seg-group', role: 'group', 'aria-label': '布局' }, layoutButtons), pager,
    h('span', { class: 'hint' }, '双击画面放大；选中画面后按 F 标记事件'));
  main.append(h('div', { class: 'wall-page' }, tree, h('div', { class: 'wall-main' }, toolbar, wall)));

  function persist() { localStorage.setItem('xlhub.wall', JSON.stringify({ layout: view.layout, node: view.node })); }

  try {
    cameras = await api.get('/api/cameras');
  } catch (err) {
    wall.append(errorBox(err, '摄像机列表加载失败'));
    return () => {};
  }
  const camerasUnder = (code) => cameras.filter((c) => c.grid_path.includes(code));

  function drawTree() {
    clear(tree);
    const item = (node, depth) => {
      const count = camerasUnder(node.code).length;
      const children = node.children.filter((c) => c.level !== 'grid');
      return h('li', {},
        h('button', {
          type: 'button', class: `tree-node${node.code === view.node ? ' active' : ''}`, dataset: { code: node.code },
          style: { paddingLeft: `${0.5 + depth * 0.9}rem` },
          onclick: () => { view.node = node.code; view.page = 0; view.zoom = null; persist(); draw(); },
        }, node.name, h('span', { class: 'count' }, String(count))),
        children.length ? h('ul', {}, children.map((c) => item(c, depth + 1))) : null);
    };
    tree.append(h('h3', {}, '辖区 ', h('small', {}, 'Area')), h('ul', {}, grid.roots.map((r) => item(r, 0))));
  }

  function visibleCameras() {
    const list = camerasUnder(view.node);
    if (view.zoom) return list.filter((c) => c.id === view.zoom);
    const per = view.layout;
    const pages = Math.max(1, Math.ceil(list.length / per));
    view.page = Math.min(view.page, pages - 1);
    return list.slice(view.page * per, view.page * per + per);
  }

  function draw() {
    drawTree();
    layoutButtons.forEach((b) => b.setAttribute('aria-pressed', String(Number(b.dataset.layout) === view.layout && !view.zoom)));
    const list = camerasUnder(view.node);
    const node = grid.byCode.get(view.node);
    title.textContent = `${node ? node.name : ''} · ${list.length} 路视频`;
    const shown = visibleCameras();
    const per = view.zoom ? 1 : view.layout;
    const cols = Math.sqrt(per);
    wall.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    wall.dataset.layout = String(per);
    clear(pager);
    const pages = Math.max(1, Math.ceil(list.length / view.layout));
    if (!view.zoom && pages > 1) {
      pager.append(
        h('button', { type: 'button', disabled: view.page === 0, onclick: () => { view.page -= 1; draw(); } }, '上一页'),
        h('span', {}, ` ${view.page + 1} / ${pages} `),
        h('button', { type: 'button', disabled: view.page >= pages - 1, onclick: () => { view.page += 1; draw(); } }, '下一页'));
    } else if (view.zoom) {
      pager.append(h('button', { type: 'button', onclick: () => { view.zoom = null; draw(); } }, '返回多画面'));
    }
    // Keep tiles that stay on screen playing; stop the others (their pulls stop on the hub).
    const keep = new Set(shown.map((c) => c.id));
    for (const [id, t] of tiles) {
      if (!keep.has(id)) { t.live.stop(); tiles.delete(id); }
    }
    clear(wall);
    if (!list.length) {
      wall.append(h('div', { class: 'empty' }, '该辖区没有摄像机。No cameras in this area.'));
      return;
    }
    for (const cam of shown) {
      let t = tiles.get(cam.id);
      if (!t) { t = makeTile(cam); tiles.set(cam.id, t); t.live.start(); }
      wall.append(t.el);
    }
    for (let i = shown.length; i < per; i += 1) wall.append(h('div', { class: 'tile tile-empty' }, '空闲画面'));
  }

  function makeTile(cam) {
    const stateBadge = h('span', { class: 'badge state', dataset: { role: 'state' } }, TILE_STATES.idle);
    const healthBadge = h('span', { class: 'badge muted', dataset: { role: 'health' } }, HEALTH.unknown.label);
    // 录像异常 / 录像滞后: shown only when the camera's recording is in trouble (GET /api/camera-health)
    const recBadge = h('span', { class: 'badge bad', dataset: { role: 'recording' }, hidden: true }, '');
    const counter = h('span', { class: 'frames', dataset: { role: 'frames' } }, '');
    const lastSeen = h('span', { class: 'last-seen', dataset: { role: 'last-seen' } }, '');
    const reason = h('span', { class: 'reason' });
    const flagBtn = h('button', { type: 'button', class: 'flag-btn', title: '标记事件 (F)', onclick: (e) => { e.stopPropagation(); openFlag(cam); } }, '标记事件');
    // 回放: this camera's recording from five minutes ago (录像回放 page)
    const playbackBtn = canPlay ? h('a', { class: 'icon-btn playback-btn', href: `#/playback/${encodeURIComponent(cam.id)}/${new Date(Date.now() - 5 * 60e3).toISOString()}`,
      title: '录像回放（最近 5 分钟）', 'aria-label': '回放', onclick: (e) => { e.stopPropagation(); e.currentTarget.href = `#/playback/${encodeURIComponent(cam.id)}/${new Date(Date.now() - 5 * 60e3).toISOString()}`; } }, '回放') : null;
    const ptzBtn = (cam.has_ptz ?? cam.has_onvif) && canPtz ? h('button', { type: 'button', class: 'icon-btn', title: '云台控制 (PTZ)', 'aria-label': '云台', onclick: (e) => { e.stopPropagation(); openPtz(cam); } }, '✥') : null;
    // 流畅 (sub) / 高清 (main): re-opens this tile with the camera's other stream
    const streamBtn = h('button', {
      type: 'button', class: 'stream-btn', dataset: { role: 'stream' }, 'aria-label': '码流', title: '切换码流',
      onclick: (e) => {
        e.stopPropagation();
        const next = (live.playing || live.stream) === 'main' ? 'sub' : 'main';
        streams.set(cam.id, next);
        live.switchStream(next);
        paintStream(next);
      },
    }, '码流');
    const paintStream = (shown) => {
      const s = STREAMS[shown];
      if (!s) return;
      const other = STREAMS[shown === 'main' ? 'sub' : 'main'];
      // asked for sub, plays main: the camera has no substream
      const only = live.requested === 'sub' && live.playing === 'main';
      streamBtn.textContent = s.label;
      streamBtn.dataset.stream = shown;
      streamBtn.disabled = only;
      streamBtn.title = only ? '该摄像机没有子码流，只能播放高清（主码流）'
        : `当前：${s.label}（${s.title}）· 点击切换到${other.label}（${other.title}）`;
      if (el) el.dataset.stream = shown;
    };
    const zoomBtn = h('button', { type: 'button', class: 'icon-btn', title: '放大/还原', 'aria-label': '放大', onclick: (e) => { e.stopPropagation(); toggleZoom(cam.id); } }, '⤢');
    let el;
    const live = new LiveTile(cam, {
      stream: streams.get(cam.id) || null,
      onStream: (playing) => paintStream(playing),
      onState: (state, why) => {
        stateBadge.textContent = TILE_STATES[state] || state;
        stateBadge.className = `badge state state-${state}`;
        reason.textContent = why || '';
        if (el) el.dataset.state = state;
        const tileNow = tiles.get(cam.id);
        if (tileNow) paintHealth(tileNow, cam.id);
        flagBtn.disabled = !['live', 'snapshot'].includes(state);
        if (state === 'offline' && !live.img.src) lastPicture(cam, live);
      },
    });
    el = h('article', {
      class: 'tile', tabindex: 0, dataset: { camera: cam.id, state: 'idle', frames: '0' },
      'aria-label': cam.name,
      onclick: () => select(cam.id),
      ondblclick: () => toggleZoom(cam.id),
      onfocus: () => select(cam.id),
    },
    h('header', {}, h('span', { class: 'cam-name' }, cam.name), h('span', { class: 'cam-place' }, grid.trail(cam.grid_path, 1)), streamBtn, playbackBtn, ptzBtn, zoomBtn),
    live.el,
    h('footer', {}, stateBadge, healthBadge, recBadge, lastSeen, reason, counter, flagBtn));
    flagBtn.disabled = true;
    const t = { el, live, stateBadge, healthBadge, recBadge, counter, lastSeen, shownSnapshot: null };
    paintHealth(t, cam.id);
    return t;
  }

  async function lastPicture(cam, live) {
    // An offline camera's last good picture: the stored one the health says, else ask its worker.
    const hs = health.get(cam.id);
    if (hs && hs.last_snapshot) { showStored(tiles.get(cam.id), hs.last_snapshot); return; }
    try {
      const res = await request(`/api/cameras/${encodeURIComponent(cam.id)}/snapshot`, { raw: true, headers: { Accept: 'image/jpeg' } });
      const blob = await res.blob();
      if (live.stopped || live.img.src) return;
      live.img.src = URL.createObjectURL(blob);
      live.img.classList.add('stale');
      live.img.hidden = false;
      live.video.hidden = true;
    } catch { /* no picture at all */ }
  }

  // PTZ (云台) for ONVIF cameras: hold an arrow or a zoom button to move, let go to stop.
  // Commands go out one after another (a stop never overtakes its move); each move lasts
  // PTZ_HOLD_S on the camera and is renewed while the button is held.
  function openPtz(cam) {
    const path = `/api/cameras/${encodeURIComponent(cam.id)}/ptz`;
    const result = h('p', { role: 'status', id: 'ptz-result', class: 'ptz-result' });
    let speed = 0.5;
    let queue = Promise.resolve();
    let held = null;             // { pan, tilt, zoom, timer }
    const say = (text, outcome) => { clear(result).append(text); result.dataset.outcome = outcome; };
    const failed = (err) => {
      if (err.status === 403) say('当前角色无权控制云台。No PTZ permission.', 'error');
      else if (err.missing) say('云台控制接口不可用。PTZ API not available on this hub.', 'error');
      else say(`云台控制失败：${err.detail || err.message}`, 'error');
    };
    const send = (what, call) => {
      queue = queue.then(call).then(() => { if (what) say(what, 'ok'); }, failed);
      return queue;
    };
    const moveNow = (pan, tilt, zoom) => send(null, () => api.post(`${path}/move`, { pan, tilt, zoom, timeout: PTZ_HOLD_S }));
    const press = (pan, tilt, zoom) => (e) => {
      e.preventDefault();
      release();
      held = { timer: setInterval(() => moveNow(pan * speed, tilt * speed, zoom * speed), PTZ_RENEW_MS) };
      say('云台转动中…', 'moving');
      moveNow(pan * speed, tilt * speed, zoom * speed);
    };
    const release = () => {
      if (!held) return;
      clearInterval(held.timer);
      held = null;
      send('已停止', () => api.post(`${path}/stop`));
    };
    const button = (id, label, title, pan, tilt, zoom) => h('button', {
      type: 'button', id, title, 'aria-label': title,
      onpointerdown: press(pan, tilt, zoom), onpointerup: release, onpointerleave: release, onpointercancel: release,
      onkeydown: (e) => { if ((e.key === 'Enter' || e.key === ' ') && !e.repeat) press(pan, tilt, zoom)(e); },
      onkeyup: (e) => { if (e.key === 'Enter' || e.key === ' ') release(); },
      // a key held on a button that loses focus is let go elsewhere: its keyup never comes here
      onblur: release,
    }, label);
    const stop = h('button', { type: 'button', id: 'ptz-stop', title: '停止', 'aria-label': '停止',
      // Keep the focus where it is: a key held on an arrow would otherwise be let go by the
      // arrow's blur, then the click would find nothing held and stop a second time.
      onpointerdown: (e) => e.preventDefault(),
      // release() already stops a held move: one stop per press, not two
      onclick: () => { if (held) release(); else send('已停止', () => api.post(`${path}/stop`)); } }, '■');
    const speeds = h('div', { class: 'seg-group', role: 'group', 'aria-label': '速度' },
      PTZ_SPEEDS.map(([label, v]) => h('button', {
        type: 'button', class: 'seg', 'aria-pressed': String(v === speed), dataset: { speed: v },
        onclick: (e) => { speed = v; e.target.parentNode.querySelectorAll('button').forEach((b) => b.setAttribute('aria-pressed', String(Number(b.dataset.speed) === v))); },
      }, label)));
    const presets = h('ul', { class: 'ptz-presets', id: 'ptz-presets' }, h('li', { class: 'muted' }, '正在读取预置位…'));
    const loadPresets = async () => {
      try {
        const list = await api.get(`${path}/presets`);
        clear(presets).append(...(list.length ? list.map((p) => h('li', {},
          h('button', { type: 'button', dataset: { token: p.token },
            onclick: () => send(`已转到预置位 ${p.name || p.token}`, () => api.post(`${path}/presets/${encodeURIComponent(p.token)}/goto`)) },
          `转到 ${p.name || p.token}`))) : [h('li', { class: 'muted' }, '该摄像机没有预置位')]));
      } catch (err) {
        clear(presets).append(h('li', { class: 'muted' }, `预置位不可用：${err.detail || err.message}`));
      }
    };
    const { dialog } = modal(`云台 · ${cam.name}`, h('div', { class: 'ptz', id: 'ptz-panel' },
      h('div', { class: 'ptz-pad' },
        h('span'), button('ptz-up', '▲', '向上', 0, 1, 0), h('span'),
        button('ptz-left', '◀', '向左', -1, 0, 0), stop, button('ptz-right', '▶', '向右', 1, 0, 0),
        h('span'), button('ptz-down', '▼', '向下', 0, -1, 0), h('span')),
      h('div', { class: 'row' }, button('ptz-zoom-in', '放大 +', '放大（变倍）', 0, 0, 1), button('ptz-zoom-out', '缩小 −', '缩小（变倍）', 0, 0, -1)),
      h('div', { class: 'row' }, h('span', { class: 'muted' }, '速度'), speeds),
      h('h3', {}, '预置位 ', h('small', {}, 'Presets')), presets,
      result), { onClose: release });
    // A pointer let go anywhere in the panel ends a hold — except on ■, whose click ends it
    // itself: releasing here first would leave the click nothing held, and it would stop again.
    dialog.addEventListener('pointerup', (e) => { if (!stop.contains(e.target)) release(); });
    loadPresets();
  }

  function select(id) {
    view.selected = id;
    for (const [cid, t] of tiles) t.el.classList.toggle('selected', cid === id);
  }

  function toggleZoom(id) {
    view.zoom = view.zoom === id ? null : id;
    draw();
  }

  function paintHealth(t, id) {
    const hs = health.get(id) || HEALTH.unknown;
    // why there is no picture (认证失败, 无法连接 …), in place of the state when there is one
    t.healthBadge.textContent = hs.problem_label ? `${hs.label}：${hs.problem_label}` : hs.label;
    t.healthBadge.className = `badge ${hs.cls}`;
    const since = hs.since ? ` · 自 ${fmtTime(hs.since, { date: true })}` : '';
    const detail = hs.problem_detail ? `\n${hs.problem_detail}` : '';
    t.healthBadge.title = hs.state ? `${hs.label}${since}${hs.stale ? '（摄像机进程无上报）' : ''}${detail}` : '尚无该摄像机的健康数据';
    t.el.dataset.health = hs.state || 'unknown';
    t.el.dataset.problem = hs.problem || '';
    // Pictures arriving say more than a report that is older than them: a playing tile does
    // not also claim 离线 / 连接中 / 状态未知 (the report catches up within 10 s).
    t.healthBadge.hidden = t.live.state === 'live' && ['offline', 'connecting', 'unknown'].includes(hs.state || 'unknown');
    const rec = hs.recording;
    const recTrouble = rec && ['failed', 'behind'].includes(rec.state);
    t.recBadge.hidden = !recTrouble;
    t.recBadge.textContent = recTrouble ? rec.label : '';
    t.recBadge.className = `badge ${rec && rec.state === 'failed' ? 'bad' : 'warn'}`;
    t.recBadge.title = recTrouble ? `${rec.label}${rec.error ? `\n${rec.error}` : ''}` : '';
    t.el.dataset.recording = rec ? rec.state : '';
    clear(t.lastSeen);
    if (hs.state === 'offline' && hs.last_snapshot) {
      showStored(t, hs.last_snapshot);
    }
  }

  // The stored last picture of an offline camera, greyed, when the tile has nothing live.
  function showStored(t, snap) {
    if (!t) return;
    t.lastSeen.textContent = `最后画面 ${fmtTime(snap.captured_at, { date: true })}`;
    const live = t.live;
    if (live.stopped || live.state === 'live' || t.shownSnapshot === snap.id) return;
    if (live.state === 'snapshot' && !live.img.classList.contains('stale')) return;
    t.shownSnapshot = snap.id;
    live.img.src = snap.url;
    live.img.classList.add('stale');
    live.img.hidden = false;
    live.video.hidden = true;
    t.el.dataset.lastSnapshot = snap.id;
  }

  async function refreshHealth() {
    try {
      const rows = await api.get('/api/camera-health');
      health = new Map(rows.map((r) => [r.camera_id, healthOf(r)]));
    } catch { /* keep the last known */ }
    for (const [id, t] of tiles) paintHealth(t, id);
  }

  async function refreshFeeds() {
    try {
      const st = await api.get('/api/live/status');
      feeds = new Map(st.feeds.map((f) => [`${f.camera_id}/${f.stream}`, f]));
    } catch { /* ignore */ }
    for (const [id, t] of tiles) {
      const f = feeds.get(`${id}/${t.live.playing}`);
      // an H.265 camera plays through the hub's H.264 transcode: the tile says so
      const transcoded = f && f.transcoded_from ? ` · 转码 ${f.transcoded_from.toUpperCase()}→H.264` : '';
      t.counter.textContent = `${t.live.frames} 帧${f ? ` · ${f.viewers} 人观看` : ''}${transcoded}`;
      t.el.dataset.frames = String(t.live.frames);
      t.el.dataset.transcoded = f && f.transcoded_from ? f.transcoded_from : '';
    }
  }

  function openFlag(cam) {
    const t = tiles.get(cam.id);
    if (!t) return;
    const shot = t.live.capture();      // the frame on screen now, before the form opens
    const at = new Date(shot.time);
    const urgency = URGENCIES.map((u, i) => h('label', { class: `urgency urgency-${u.colour}` },
      h('input', { type: 'radio', name: 'urgency', value: u.code, checked: i === 1 }), u.label));
    const category = h('select', { id: 'flag-category', name: 'category' },
      CATEGORIES.map((c) => h('option', { value: c.label }, c.label)));
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
          const out = await api.post(`/api/cameras/${encodeURIComponent(cam.id)}/flags`, {
            frame_time: new Date(shot.time).toISOString(),
            category: category.value,
            urgency: u.code,       // the case takes the category, urgency and note as chosen here
            note: note.value.trim(),
          });
          clear(result).append(h('div', {}, h('p', { class: 'ok' }, `已上报。事件编号 ${out.event_id}`),
            out.evidence && out.evidence.length ? h('p', {}, '证据：', out.evidence.map((ev) => h('a', { href: ev.url, target: '_blank', rel: 'noopener' }, ev.kind === 'clip' ? '视频片段 ' : '截图 '))) : null));
          toast(`已标记：${cam.name}`, 'ok');
          result.dataset.eventId = out.event_id;
          result.dataset.outcome = 'ok';
        } catch (err) {
          result.dataset.outcome = 'error';
          submit.disabled = false;
          if (err.missing) {
            clear(result).append(h('p', { class: 'error' }, '标记接口尚未接入：本系统还没有 POST /api/cameras/{id}/flags，事件未上报。'),
              h('small', {}, 'Flag endpoint not available yet: nothing was reported.'));
          } else if (err.status === 403) {
            clear(result).append(h('p', { class: 'error' }, `当前角色无权标记视频事件（${err.detail || ''}）`));
          } else {
            clear(result).append(h('p', { class: 'error' }, `上报失败：${err.detail || err.message}`));
          }
        }
      },
    },
    h('div', { class: 'flag-grid' },
      shot.still ? h('img', { class: 'flag-still', src: shot.still, alt: `${cam.name} ${fmtTime(at)}` }) : h('div', { class: 'flag-still empty' }, '无画面'),
      h('dl', {},
        h('dt', {}, '地点'), h('dd', { id: 'flag-place' }, cam.name),
        h('dt', {}, '网格'), h('dd', { id: 'flag-grid' }, grid.trail(cam.grid_path, 1) || cam.grid_code),
        h('dt', {}, '画面时间'), h('dd', { id: 'flag-time', dataset: { ms: String(shot.time) } }, `${fmtTime(at, { date: true })}.${String(at.getMilliseconds()).padStart(3, '0')}`),
        h('dt', {}, '来源'), h('dd', {}, shot.mode === 'live' ? '实时视频' : '快照'))),
    h('label', { for: 'flag-category' }, '类别'), category,
    h('fieldset', { class: 'urgencies' }, h('legend', {}, '紧急程度'), urgency),
    h('label', { for: 'flag-note' }, '说明'), note,
    result,
    h('div', { class: 'actions' }, submit));
    note.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
    modal(`标记事件 · ${cam.name}`, form);
    submit.focus();
  }

  const onKey = (e) => {
    if (e.target.closest('input, textarea, select, .modal')) return;
    if ((e.key === 'f' || e.key === 'F') && view.selected && tiles.has(view.selected)) { e.preventDefault(); openFlag(tiles.get(view.selected).live.camera); }
    if (e.key === 'Escape' && view.zoom) { view.zoom = null; draw(); }
    const n = Number(e.key);
    if ([1, 4, 9].includes(n) && !e.ctrlKey && !e.altKey) { view.layout = n; view.zoom = null; view.page = 0; persist(); draw(); }
  };
  document.addEventListener('keydown', onKey);

  ready = true;
  draw();
  refreshHealth();
  refreshFeeds();
  timers = [setInterval(refreshHealth, 10000), setInterval(refreshFeeds, 2000)];

  return () => {
    document.removeEventListener('keydown', onKey);
    timers.forEach(clearInterval);
    for (const t of tiles.values()) t.live.stop();
    tiles.clear();
  };
}
