"""Device playback (录像回放 from an NVR's own storage): the gb28181 process's loopback service
the API asks for a device's record list (RecordInfo) and for a range of its footage
(INVITE s=Playback), served as fragmented MP4 — the same form as the hub's own recordings
(cameras/recording/playback.py), so the playback page plays both alike.

    API ──HTTP (loopback, HMAC with the camera tap key)──▶ DevicePlayback (gb28181 process)
        GET /records?device=&channel=&start=&end=   → JSON (RecordInfo, all packets)
        GET /play?device=&channel=&start=&end=[&speed=4]  → video/mp4 (fMP4), X-Start-Time, X-Session,
                                                       X-Download (the speed, or "refused")
                                                       ▲ MediaSession ◀─RTP/PS── device (s=Playback)
        GET /control?session=&action=pause|play&scale=&at=   → JSON; MANSRTSP in INFO ──▶ device

Each ``/play`` is one INVITE of its own (playback sessions are never shared: each viewer asks
for another range): s=Playback at 1× for a viewer; with ``speed`` (an export) s=Download with
``a=downloadspeed`` (录像下载, GB/T 28181-2016 §9.9), the device sending its file that many times
faster — a device that refuses Download (488 and the like) is asked for s=Playback at 1× in
its place, and ``X-Download: refused`` says so, over the transport the channel's live video uses (``transport_of``:
MediaHub.transport_for — UDP, TCP passive or TCP active, the same receiver). It ends at the
range's end, when the device says its file ended (MediaStatus NotifyType 121: what is still in
flight is taken, then BYE), when it says BYE, when its media stops for ``idle_s`` (not while
paused), or when the API closes the connection — then BYE. The fMP4 is written by
cameras/recording/fmp4.py, as the hub's own recordings are.
Requests are signed ``X-Xlhub-Auth: <unix time>:<HMAC-SHA256(key, "<time>|<path?query>")>``
with the hub's tap key (cameras/tap.py), valid for a minute; the service listens on loopback
only. The address is in the gb28181 process's heartbeat (``detail.playback``)."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import json
import logging
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av

from cameras.gb28181 import mansrtsp
from cameras.gb28181.media.receiver import MediaSession
from cameras.gb28181.session import InviteFailed, Transport
from cameras.recording.fmp4 import Fmp4Writer
from cameras.recording.playback import codec_string

log = logging.getLogger(__name__)

MAX_RANGE = timedelta(hours=2)
AUTH_HEADER = "X-Xlhub-Auth"
AUTH_AGE_S = 60
MAX_PAUSE_S = 600.0         # a paused playback nobody resumes ends after this
EOF_DRAIN_S = 0.5           # after MediaStatus 121 (or the device's BYE): media still arriving is taken this long
TRANSPORT_TEXT = {"udp": "UDP", "tcp-passive": "TCP 被动", "tcp-active": "TCP 主动"}
DOWNLOAD_SPEEDS = (1, 2, 4, 8)      # a=downloadspeed values asked for (2016: 1, 2, 4; many NVRs take 8)
# A refusal of s=Download that asking for s=Playback may cure (not: no such channel, busy)
DOWNLOAD_NOT_RETRIED = frozenset({404, 486})


class PlaybackFailed(Exception):
    """The device could not give what was asked; ``reason`` is Chinese (shown to operators)."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def sign(key: bytes, target: str, now: float | None = None) -> str:
    ts = str(int(now if now is not None else time.time()))
    return ts + ":" + hmac.new(key, f"{ts}|{target}".encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, target: str, value: str | None) -> bool:
    ts, _, mac = (value or "").partition(":")
    if not ts.isdigit() or abs(time.time() - int(ts)) > AUTH_AGE_S:
        return False
    return hmac.compare_digest(mac, hmac.new(key, f"{ts}|{target}".encode(), hashlib.sha256).hexdigest())


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- the stream
def _parameter_sets(data: bytes) -> bytes | None:
    """SPS and PPS of an H.264 Annex B keyframe (as Annex B), for the MP4's avcC."""
    out = []
    for nal in data.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F in (7, 8):
            out.append(b"\x00\x00\x00\x01" + nal)
    return b"".join(out) or None


class DeviceStream:
    """One s=Playback session of (device, channel, start, end), as fMP4 chunks, over the media
    transport the device's live video uses (``transport``: udp, tcp-passive, tcp-active — the
    same receiver as live media, cameras/gb28181/media/receiver.py). Controlled in the dialog
    by MANSRTSP (``pause``, ``play(scale=, at=)``); ended by the range's end, the device's
    MediaStatus 121 (``media_ended``), its BYE, lost media, or the viewer."""

    def __init__(self, server, device_id: str, channel_id: str, start: datetime, end: datetime, *,
                 transport: Transport = "udp", host: str = "127.0.0.1", advertise: str | None = None,
                 idle_s: float = 3.0, first_media_s: float = 10.0, max_pause_s: float = MAX_PAUSE_S,
                 download: int | None = None) -> None:
        self.server, self.device_id, self.channel_id = server, device_id, channel_id
        # SDP t= is whole seconds: the device starts at the second, and so does the stream's clock
        start = start.replace(microsecond=0)
        self.start, self.end, self.idle_s, self.first_media_s = start, end, idle_s, first_media_s
        self.transport: Transport = transport
        self.host, self.advertise = host, advertise
        self.max_pause_s = max_pause_s
        self.download = download                # s=Download at this speed (None: s=Playback)
        self.download_refused: str | None = None     # the device's refusal of s=Download, when it played instead
        self.id = secrets.token_hex(8)
        self.codec = "h264"
        self.codec_string = "avc1.42E01E"
        self.width = self.height = 0
        self.packets = 0
        self.last: datetime | None = None
        self.ended_by: str | None = None
        self.paused = False
        self.scale = 1.0
        self.controls: list[str] = []           # what was sent (MANSRTSP first lines + fields), for the log
        self._q: queue.Queue = queue.Queue(maxsize=2000)
        self._session: MediaSession | None = None
        self._answer = None
        self._first: list[av.Packet] = []
        self._media_ended = threading.Event()
        self._cseq = 0
        self._control_lock = threading.Lock()

    @property
    def call_id(self) -> str | None:
        return self._answer.call_id if self._answer is not None else None

    def open(self) -> DeviceStream:
        ssrc = self.server.next_ssrc(True)
        label = f"gb playback {self.device_id}/{self.channel_id}"
        session = MediaSession.open(self.transport, ssrc, host=self.host, advertise=self.advertise, label=label,
                                    on_open=lambda video, demuxer: self._q.put(("open", video)),
                                    on_packet=lambda packet, arrival: self._q.put(("packet", packet)),
                                    on_end=lambda reason: self._q.put(("end", reason)))
        self._session = session
        offer = dataclasses.replace(session.receiver.offer(ssrc), start=self.start, end=self.end,
                                    download_speed=self.download)
        try:
            try:
                self._answer = self.server.play(self.device_id, self.channel_id, offer, timeout_s=5.0)
            except InviteFailed as exc:
                if not self.download or exc.status is None or exc.status in DOWNLOAD_NOT_RETRIED:
                    raise
                log.info("%s: s=Download refused (%s); asking for s=Playback at 1x", label, exc.reason)
                self.download_refused, self.download = exc.reason, None
                self._answer = self.server.play(self.device_id, self.channel_id,
                                                dataclasses.replace(offer, download_speed=None), timeout_s=5.0)
        except InviteFailed as exc:
            session.stop()
            raise PlaybackFailed(f"设备拒绝录像回放：{exc.reason}") from None
        except Exception as exc:       # noqa: BLE001 - the SIP loop's own trouble, said
            session.stop()
            raise PlaybackFailed(f"录像回放请求失败 ({type(exc).__name__})") from None
        try:
            session.start(self._answer)
        except OSError as exc:          # tcp-active: the device's media port would not take our connection
            where = self._answer_where()
            self.close()
            raise PlaybackFailed(f"无法连接设备的录像媒体端口 {where}（{type(exc).__name__}）") from None
        try:
            kind, value = self._q.get(timeout=self.first_media_s)
        except queue.Empty:
            self.close()
            raise PlaybackFailed(f"设备在 {self.first_media_s:g} 秒内未发送录像数据（{TRANSPORT_TEXT[self.transport]}）"
                                 ) from None
        if kind != "open":
            self.close()
            raise PlaybackFailed(f"设备的录像数据无法读取 ({value})")
        self.codec, self.width, self.height = value.codec, value.width, value.height
        if self.codec != "h264":
            self.close()
            raise PlaybackFailed(f"设备录像编码为 {value.codec}，浏览器无法直接播放", status=415)
        # the first keyframe gives the parameter sets (PS carries them in-band)
        try:
            kind, packet = self._q.get(timeout=self.idle_s)
        except queue.Empty:
            self.close()
            raise PlaybackFailed("设备录像数据中断") from None
        if kind != "packet":
            self.close()
            raise PlaybackFailed("设备录像数据中断")
        self._first.append(packet)
        self.extradata = value.extradata or _parameter_sets(bytes(packet))
        self.codec_string = codec_string("h264", self.extradata)
        return self

    def _answer_where(self) -> str:
        return f"{self._answer.host}:{self._answer.port}" if self._answer is not None else "?"

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
        answer, self._answer = self._answer, None
        if answer is not None:
            self.server.bye(answer)

    # -- control (MANSRTSP in the dialog) ----------------------------------------------------
    def _control(self, body: bytes) -> None:
        answer = self._answer
        if answer is None:
            raise PlaybackFailed("回放会话已结束，无法控制", 409)
        try:
            self.server.info(answer, body, mansrtsp.CONTENT_TYPE)
        except InviteFailed as exc:
            raise PlaybackFailed(exc.reason, 502) from None
        self.controls.append(body.decode("ascii").split("\r\n")[0])

    def pause(self) -> None:
        with self._control_lock:
            self._cseq += 1
            self.paused = True                  # no media from now on is not a loss
            try:
                self._control(mansrtsp.pause(self._cseq))
            except PlaybackFailed:
                self.paused = False
                raise
            self._q.put(("control", None))

    def play(self, *, scale: float | None = None, at: datetime | None = None) -> None:
        """Resume (and/or change speed, and/or seek to ``at`` inside the range)."""
        if scale is not None and scale not in mansrtsp.SCALES:
            raise PlaybackFailed(f"不支持的回放倍速 {scale:g}（可选 {'/'.join(f'{s:g}' for s in mansrtsp.SCALES)}）", 400)
        npt = None
        if at is not None:
            if not self.start <= at < self.end:
                raise PlaybackFailed("跳转时间不在回放范围内", 400)
            npt = round((at - self.start).total_seconds(), 3)
        with self._control_lock:
            self._cseq += 1
            self._control(mansrtsp.play(self._cseq, scale=scale, npt=npt))
            if scale is not None:
                self.scale = scale
            self.paused = False
            self._q.put(("control", None))

    def media_ended(self) -> None:
        """The device's MediaStatus 121: what is still on its way is taken, then the stream ends."""
        self._media_ended.set()
        self._q.put(("eof", None))

    def _device_gone(self) -> bool:
        return self._answer is not None and self._answer.call_id not in self.server.dialogs

    def _wait(self) -> float:
        if self._media_ended.is_set() or self._device_gone():
            return EOF_DRAIN_S
        return self.max_pause_s if self.paused else self.idle_s

    def _packets(self) -> Iterator[av.Packet]:
        yield from self._first
        self._first = []
        while True:
            try:
                kind, value = self._q.get(timeout=self._wait())
            except queue.Empty:
                if self._media_ended.is_set():
                    self.ended_by = "media-status"
                elif self._device_gone():
                    self.ended_by = "bye"
                else:
                    self.ended_by = "paused-too-long" if self.paused else "idle"
                return
            if kind in ("control", "eof"):
                continue
            if kind != "packet":
                self.ended_by = "stream"
                return
            yield value

    def chunks(self) -> Iterator[bytes]:
        tb = Fraction(1, 90000)
        w = Fmp4Writer()
        w.add_video(self.codec, self.width, self.height, tb, self.extradata)
        origin = None
        try:
            for pkt in self._packets():
                # the media receiver's demuxer hands video packets only, not bound to a stream
                if pkt.pts is None or (pkt.stream is not None and pkt.stream.type != "video"):
                    continue
                src_tb = pkt.time_base or tb
                ts = round(pkt.pts * src_tb / tb)
                dts_in = round((pkt.dts if pkt.dts is not None else pkt.pts) * src_tb / tb)
                if origin is None:
                    origin = dts_in
                wall = self.start + timedelta(seconds=float((ts - origin) * tb))
                if wall > self.end:
                    self.ended_by = "end"
                    break
                chunk = w.write(pkt, dts_in - origin, ts - origin)
                self.packets += 1
                self.last = wall
                if chunk:
                    yield chunk
        finally:
            tail = w.close()
            self.close()
        if tail:
            yield tail


# --------------------------------------------------------------------------- the service
class DevicePlayback:
    """The loopback HTTP service (ThreadingHTTPServer: one thread per request)."""

    def __init__(self, server, key: bytes, *, host: str = "127.0.0.1", port: int = 0,
                 media_host: str = "127.0.0.1", media_advertise: str | None = None,
                 transport_of: Callable[[str, str], Transport] | None = None) -> None:
        self.server, self.key = server, key
        self.media_host, self.media_advertise = media_host, media_advertise
        # the media transport of a (device, channel): the live media's choice (process.py)
        self.transport_of = transport_of or (lambda device, channel: "udp")
        self.streams: dict[str, DeviceStream] = {}
        self.finished: collections.deque[DeviceStream] = collections.deque(maxlen=20)    # the last ended
        self._lock = threading.Lock()
        server.media_status_listeners.append(self._media_status)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt, *args) -> None:      # noqa: D102 - quiet; errors are logged by us
                pass

            def do_GET(self) -> None:                        # noqa: N802 - http.server's name
                outer._handle(self)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DevicePlayback:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gb28181-playback", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.server.media_status_listeners.remove(self._media_status)
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def active(self) -> int:
        return len(self.streams)

    def _media_status(self, device_id: str, channel_id: str, notify_type: str, call_id: str) -> None:
        """MediaStatus from a device (on the SIP loop): 121 ends the playback it names — by the
        dialog's Call-ID when the device sends it in the dialog, else every playback of that
        channel (one still receiving media drains only what is in flight; see EOF_DRAIN_S)."""
        if notify_type != mansrtsp.MEDIA_END:
            log.info("GB/T 28181: MediaStatus %r from %s/%s ignored", notify_type, device_id, channel_id)
            return
        with self._lock:
            streams = list(self.streams.values())
        hit = [s for s in streams if s.call_id == call_id]
        if not hit:
            hit = [s for s in streams if s.device_id == device_id and channel_id in (s.channel_id, device_id)]
        log.info("GB/T 28181: end of file (MediaStatus 121) from %s/%s: %d playback(s)", device_id, channel_id,
                 len(hit))
        for s in hit:
            s.media_ended()

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if not verify(self.key, h.path, h.headers.get(AUTH_HEADER)):
            self._json(h, 401, {"reason": "回放服务认证失败 (bad or stale signature)"})
            return
        url = urllib.parse.urlsplit(h.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/control":
            self._control(h, q)
            return
        try:
            device, channel = q["device"], q["channel"]
            start, end = datetime.fromisoformat(q["start"]), datetime.fromisoformat(q["end"])
            if start.tzinfo is None or end.tzinfo is None or end <= start:
                raise ValueError("start/end need an offset and end after start")
        except (KeyError, ValueError) as exc:
            self._json(h, 400, {"reason": f"参数错误 ({exc})"})
            return
        try:
            if url.path == "/records":
                items = self.server.record_info(device, channel, start, end)
                self._json(h, 200, {"records": [
                    {"start": _iso(r.start), "end": _iso(r.end), "type": r.type, "name": r.name,
                     "file_path": r.file_path} for r in items]})
            elif url.path == "/play":
                if end - start > MAX_RANGE:
                    raise PlaybackFailed("回放时间范围超过 2 小时", 400)
                speed = q.get("speed")
                if speed is not None and (not speed.isdigit() or int(speed) not in DOWNLOAD_SPEEDS):
                    raise PlaybackFailed(f"不支持的下载倍速 {speed}（可选 {'/'.join(map(str, DOWNLOAD_SPEEDS))}）", 400)
                self._play(h, device, channel, start, end, int(speed) if speed else None)
            else:
                self._json(h, 404, {"reason": f"no such path {url.path!r}"})
        except InviteFailed as exc:
            self._json(h, 502, {"reason": exc.reason})
        except PlaybackFailed as exc:
            self._json(h, exc.status, {"reason": exc.reason})

    def _control(self, h: BaseHTTPRequestHandler, q: dict) -> None:
        """``/control?session=&action=pause|play[&scale=2][&at=<ISO time>][&device=&channel=]``:
        MANSRTSP to the device (a device/channel given must be the session's)."""
        stream = self.streams.get(q.get("session", ""))
        if stream is None or (q.get("device"), q.get("channel")) not in ((None, None),
                                                                          (stream.device_id, stream.channel_id)):
            self._json(h, 404, {"reason": "回放会话不存在或已结束"})     # nor one of another channel's
            return
        try:
            action = q.get("action")
            if action == "pause":
                stream.pause()
            elif action == "play":
                scale = float(q["scale"]) if q.get("scale") else None
                at = datetime.fromisoformat(q["at"]) if q.get("at") else None
                if at is not None and at.tzinfo is None:
                    raise ValueError("at needs an offset")
                stream.play(scale=scale, at=at)
            else:
                raise ValueError(f"action must be pause or play, not {action!r}")
        except ValueError as exc:
            self._json(h, 400, {"reason": f"参数错误 ({exc})"})
            return
        except PlaybackFailed as exc:
            self._json(h, exc.status, {"reason": exc.reason})
            return
        self._json(h, 200, {"session": stream.id, "paused": stream.paused, "scale": stream.scale})

    def _play(self, h: BaseHTTPRequestHandler, device: str, channel: str, start: datetime, end: datetime,
              download: int | None = None) -> None:
        stream = DeviceStream(self.server, device, channel, start, end, transport=self.transport_of(device, channel),
                              host=self.media_host, advertise=self.media_advertise, download=download).open()
        with self._lock:
            self.streams[stream.id] = stream
        try:
            h.send_response(200)
            h.send_header("Content-Type", f'video/mp4; codecs="{stream.codec_string}"')
            h.send_header("X-Start-Time", _iso(stream.start))
            h.send_header("X-Codec", stream.codec)
            h.send_header("X-Session", stream.id)
            h.send_header("X-Transport", stream.transport)
            if download:
                h.send_header("X-Download", str(stream.download) if stream.download else "refused")
            h.end_headers()
            chunks = stream.chunks()
            try:
                for chunk in chunks:
                    h.wfile.write(chunk)
                    h.wfile.flush()
            except OSError:                      # the API (the viewer) went away
                pass
            finally:
                chunks.close()
                stream.close()
            log.info("device %s %s/%s %s–%s over %s: %d packets, ended by %s",
                     f"download at {stream.download}x" if stream.download else "playback", device, channel,
                     _iso(start), _iso(end), stream.transport, stream.packets, stream.ended_by or "viewer")
        finally:
            with self._lock:
                self.streams.pop(stream.id, None)
                self.finished.append(stream)


# --------------------------------------------------------------------------- the API's side
class PlaybackClient:
    """The API's way to the service (address from the gb28181 heartbeat's ``detail.playback``)."""

    def __init__(self, address: str, key: bytes, timeout_s: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(address)
        self.host, self.port, self.key, self.timeout_s = parts.hostname, parts.port, key, timeout_s

    def _get(self, path: str, params: dict) -> http.client.HTTPResponse:
        target = path + "?" + urllib.parse.urlencode(params)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", target, headers={AUTH_HEADER: sign(self.key, target)})
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise PlaybackFailed(f"GB/T 28181 回放服务不可达 ({type(exc).__name__})", 503) from None
        if resp.status != 200:
            try:
                reason = json.loads(resp.read() or b"{}").get("reason") or f"HTTP {resp.status}"
            except ValueError:
                reason = f"HTTP {resp.status}"
            conn.close()
            raise PlaybackFailed(reason, resp.status if resp.status in (400, 404, 409, 415) else 502)
        return resp

    @staticmethod
    def _params(device: str, channel: str, start: datetime, end: datetime) -> dict:
        return {"device": device, "channel": channel, "start": start.isoformat(), "end": end.isoformat()}

    def control(self, session: str, action: str, *, scale: float | None = None, at: datetime | None = None,
                device: str | None = None, channel: str | None = None) -> dict:
        """Pause or play (speed ``scale``, seek to ``at``) the playback ``session`` (its X-Session);
        with ``device``/``channel``, only a session of that channel (else 404)."""
        params = {"session": session, "action": action}
        if device is not None:
            params.update(device=device, channel=channel or "")
        if scale is not None:
            params["scale"] = f"{scale:g}"
        if at is not None:
            params["at"] = at.isoformat()
        resp = self._get("/control", params)
        try:
            return json.loads(resp.read())
        finally:
            resp.close()

    def records(self, device: str, channel: str, start: datetime, end: datetime) -> list[dict]:
        resp = self._get("/records", self._params(device, channel, start, end))
        try:
            return json.loads(resp.read())["records"]
        finally:
            resp.close()

    def play(self, device: str, channel: str, start: datetime, end: datetime, *,
             speed: int | None = None) -> tuple[dict, Iterator[bytes]]:
        """The range as fMP4 chunks; ``speed``: downloaded (s=Download) that many times faster than
        real time, or at 1× when the device refuses (headers ``X-Download``)."""
        params = self._params(device, channel, start, end)
        if speed is not None:
            params["speed"] = str(speed)
        resp = self._get("/play", params)
        headers = {k: v for k, v in resp.getheaders()}

        def body() -> Iterator[bytes]:
            try:
                while True:
                    data = resp.read1(65536)
                    if not data:
                        return
                    yield data
            finally:
                resp.close()
        return headers, body()


__all__ = ["DevicePlayback", "DeviceStream", "PlaybackClient", "PlaybackFailed", "sign", "verify"]
