// One live tile: WebRTC (the camera's H.264 passed through by the hub), falling back to
// refreshed snapshots (frame.jpg, decoded by the hub from the same pull) when WebRTC
// cannot connect or no frame arrives. A tile asks for one of the camera's streams
// (?stream=sub 流畅 / main 高清; none: the hub's default, sub) and learns which one plays
// (a camera without a substream plays main).
import { api, request, toHubTime } from './api.js';
import { h } from './ui.js';

const FIRST_FRAME_TIMEOUT_MS = 12000;
const SNAPSHOT_EVERY_MS = 1000;
const RETRY_WEBRTC_MS = 30000;

export const STREAMS = {
  sub: { label: '流畅', title: '子码流' },
  main: { label: '高清', title: '主码流' },
};

export const TILE_STATES = {
  idle: '未播放',
  connecting: '连接中',
  live: '直播',
  snapshot: '快照',
  offline: '离线',
  denied: '无权限',
  error: '错误',
};

function waitIceComplete(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') { pc.removeEventListener('icegatheringstatechange', done); resolve(); } };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ms);
  });
}

export class LiveTile {
  constructor(camera, { onState, onStream, preferSnapshots = false, stream = null } = {}) {
    this.camera = camera;
    this.onState = onState;
    this.onStream = onStream;
    this.preferSnapshots = preferSnapshots;
    this.stream = stream;         // asked for: 'sub', 'main' or null (the hub's default)
    this.playing = null;          // what the hub says plays: 'sub' or 'main'
    this.requested = null;        // what the hub says was asked (its default when stream is null)
    this.opened = 0;              // bumped by switchStream
    this.state = 'idle';
    this.reason = '';
    this.frames = 0;              // frames presented (requestVideoFrameCallback)
    this.lastFrame = null;        // { hubTime, mediaTime, rtpTimestamp }
    this.snapshotTime = null;     // X-Frame-Time of the picture shown in snapshot mode
    this.pc = null;
    this.sessionId = null;
    this.timers = new Set();
    this.stopped = false;
    this.video = h('video', { muted: true, autoplay: true, playsinline: true, class: 'tile-video' });
    this.video.muted = true;
    this.img = h('img', { class: 'tile-img', alt: '', hidden: true });
    this.el = h('div', { class: 'tile-media' }, this.video, this.img);
  }

  setState(state, reason = '') {
    this.state = state;
    this.reason = reason;
    this.onState?.(state, reason, this);
  }

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  streamQuery() {
    return this.stream ? `?stream=${encodeURIComponent(this.stream)}` : '';
  }

  setPlaying(stream, requested = this.stream) {
    if (!stream || (stream === this.playing && requested === this.requested)) return;
    this.playing = stream;
    this.requested = requested;
    this.onStream?.(stream, this);
  }

  // Re-open the tile with the other stream of its camera (a new pull on the hub, shared
  // with other viewers of that stream; the old one stops after its linger).
  switchStream(stream) {
    if (stream === this.stream) return;
    this.stream = stream;
    this.opened += 1;             // answers to the previous opening are dropped
    this.timers.forEach((t) => clearTimeout(t));
    this.timers.clear();
    this.closePeer();
    this.frames = 0;
    this.lastFrame = null;
    this.playing = null;
    this.requested = null;
    if (!this.stopped) this.start();
  }

  start() {
    this.stopped = false;
    if (this.preferSnapshots || !('RTCPeerConnection' in window)) this.fallback('快照模式');
    else this.connect();
  }

  async connect() {
    this.closePeer();
    this.img.hidden = true;
    this.video.hidden = false;
    this.setState('connecting');
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.ontrack = (e) => {
      this.video.srcObject = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc || this.stopped) return;
      if (pc.connectionState === 'failed') this.fallback('WebRTC 连接失败');
      else if (pc.connectionState === 'disconnected') {
        this.later(() => { if (this.pc === pc && pc.connectionState === 'disconnected') this.fallback('WebRTC 连接中断'); }, 5000);
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitIceComplete(pc, 3000);
      if (this.pc !== pc || this.stopped) return;
      const answer = await api.post(`/api/live/${encodeURIComponent(this.camera.id)}/offer${this.streamQuery()}`,
        { sdp: pc.localDescription.sdp, type: 'offer' });
      if (this.pc !== pc || this.stopped) {
        this.endSession(answer.session_id);
        return;
      }
      this.sessionId = answer.session_id;
      this.setPlaying(answer.stream, answer.requested_stream);
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    } catch (err) {
      if (this.pc !== pc || this.stopped) return;
      if (err.status === 404) { this.closePeer(); this.setState('denied', '不在本辖区或摄像机不存在'); return; }
      if (err.status === 403) { this.closePeer(); this.setState('denied', '当前角色无权查看实时视频'); return; }
      this.fallback(`WebRTC 不可用：${err.detail || err.message}`);
      return;
    }
    this.watchFrames(pc);
    this.later(() => {
      if (this.pc === pc && this.frames === 0 && !this.stopped) this.fallback('未收到视频帧');
    }, FIRST_FRAME_TIMEOUT_MS);
  }

  watchFrames(pc) {
    const v = this.video;
    if ('requestVideoFrameCallback' in v) {
      const onFrame = (now, meta) => {
        if (this.pc !== pc || this.stopped) return;
        this.frames += 1;
        // receiveTime: when the frame's last packet reached this browser (its clock);
        // aligned to the hub's clock it names the frame for the flag endpoint.
        const received = meta.receiveTime !== undefined ? performance.timeOrigin + meta.receiveTime : Date.now();
        this.lastFrame = { hubTime: toHubTime(received), mediaTime: meta.mediaTime, rtpTimestamp: meta.rtpTimestamp };
        if (this.state !== 'live') this.setState('live');
        v.requestVideoFrameCallback(onFrame);
      };
      v.requestVideoFrameCallback(onFrame);
    } else {
      const poll = () => {
        if (this.pc !== pc || this.stopped) return;
        const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
        const n = q ? q.totalVideoFrames : 0;
        if (n > this.frames) {
          this.frames = n;
          this.lastFrame = { hubTime: toHubTime(Date.now()) };
          if (this.state !== 'live') this.setState('live');
        }
        this.later(poll, 250);
      };
      poll();
    }
  }

  fallback(reason) {
    if (this.stopped) return;
    this.closePeer();
    this.video.hidden = true;
    this.img.hidden = false;
    this.setState('snapshot', reason);
    this.refreshSnapshot();
    if (!this.preferSnapshots) this.later(() => { if (this.state === 'snapshot' && !this.stopped) this.connect(); }, RETRY_WEBRTC_MS);
  }

  async refreshSnapshot() {
    if (this.stopped || this.pc) return;
    const opened = this.opened;
    try {
      const res = await request(`/api/live/${encodeURIComponent(this.camera.id)}/frame.jpg${this.streamQuery()}`, { raw: true, headers: { Accept: 'image/jpeg' } });
      const blob = await res.blob();
      if (this.stopped || this.pc || opened !== this.opened) return;
      this.setPlaying(res.headers.get('X-Stream'));
      const old = this.img.src;
      this.img.src = URL.createObjectURL(blob);
      if (old && old.startsWith('blob:')) URL.revokeObjectURL(old);
      this.img.classList.remove('stale');
      this.snapshotTime = Number(res.headers.get('X-Frame-Time')) || null;
      this.frames += 1;
      if (this.state !== 'snapshot') this.setState('snapshot', this.reason);
    } catch (err) {
      if (this.stopped || this.pc || opened !== this.opened) return;
      if (err.status === 404) { this.setState('denied', '不在本辖区或摄像机不存在'); return; }
      if (err.status === 403) { this.setState('denied', '当前角色无权查看实时视频'); return; }
      this.img.classList.add('stale'); // keep the last picture, greyed
      this.setState('offline', err.detail || err.message);
    }
    this.later(() => this.refreshSnapshot(), this.state === 'offline' ? 5000 : SNAPSHOT_EVERY_MS);
  }

  // The frame being shown now: its hub time (ms since epoch) and a still of it.
  capture() {
    let still = null;
    try {
      const src = this.state === 'live' ? this.video : this.img;
      const w = src.videoWidth || src.naturalWidth;
      const hgt = src.videoHeight || src.naturalHeight;
      if (w && hgt) {
        const c = document.createElement('canvas');
        c.width = w; c.height = hgt;
        c.getContext('2d').drawImage(src, 0, 0, w, hgt);
        still = c.toDataURL('image/jpeg', 0.8);
      }
    } catch { still = null; }
    const time = this.state === 'live' && this.lastFrame ? this.lastFrame.hubTime
      : (this.snapshotTime || toHubTime(Date.now()));
    return { time: Math.round(time), still, mode: this.state };
  }

  endSession(id) {
    if (!id) return;
    api.del(`/api/live/sessions/${encodeURIComponent(id)}`, { keepalive: true }).catch(() => {});
  }

  closePeer() {
    if (this.sessionId) { this.endSession(this.sessionId); this.sessionId = null; }
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      try { pc.close(); } catch { /* closed */ }
    }
    if (this.video.srcObject) { this.video.srcObject = null; }
  }

  stop() {
    this.stopped = true;
    this.timers.forEach((t) => clearTimeout(t));
    this.timers.clear();
    this.closePeer();
    if (this.img.src && this.img.src.startsWith('blob:')) URL.revokeObjectURL(this.img.src);
    this.setState('idle');
  }
}
