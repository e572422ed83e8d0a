"""Device playback (录像回放 from an NVR's own storage): the gb28181 process's loopback service
the API asks for a device's record list (RecordInfo) and for a range of its footage
(INVITE s=Playback), served as fragmented MP4 — the same form as the hub's own recordings
(cameras/recording/playback.py), so the playback page plays both alike.

    API ──HTTP (loopback, HMAC with the camera tap key)──▶ DevicePlayback (gb28181 process)
        GET /records?device=&channel=&start=&end=   → JSON (RecordInfo, all packets)
        GET /play?device=&channel=&start=&end=      → video/mp4 (fMP4), X-Start-Time
                                                       ▲ MediaSession ◀─RTP/PS── device (s=Playback)

Each ``/play`` is one INVITE of its own (playback sessions are never shared: each viewer asks
for another range); it ends at the range's end, when the device says BYE (end of its file),
when its media stops for ``idle_s``, or when the API closes the connection — then BYE.
Requests are signed ``X-Xlhub-Auth: <unix time>:<HMAC-SHA256(key, "<time>|<path?query>")>``
with the hub's tap key (cameras/tap.py), valid for a minute; the service listens on loopback
only. The address is in the gb28181 process's heartbeat (``detail.playback``)."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av

from cameras.gb28181.media.receiver import MediaSession
from cameras.gb28181.session import InviteFailed
from cameras.recording.playback import FMP4

log = logging.getLogger(__name__)

MAX_RANGE = timedelta(hours=2)
AUTH_HEADER = "X-Xlhub-Auth"
AUTH_AGE_S = 60


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


def codec_string_of(extradata: bytes | None) -> str:
    if extradata and extradata[:1] == b"\x01" and len(extradata) >= 4:
        return "avc1." + extradata[1:4].hex().upper()
    for nal in (extradata or b"").split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if len(nal) >= 4 and nal[0] & 0x1F == 7:
            return "avc1." + nal[1:4].hex().upper()
    return "avc1.42E01E"


class DeviceStream:
    """One s=Playback session of (device, channel, start, end), as fMP4 chunks."""

    def __init__(self, server, device_id: str, channel_id: str, start: datetime, end: datetime, *,
                 host: str = "127.0.0.1", advertise: str | None = None, idle_s: float = 3.0,
                 first_media_s: float = 10.0) -> None:
        self.server, self.device_id, self.channel_id = server, device_id, channel_id
        # SDP t= is whole seconds: the device starts at the second, and so does the stream's clock
        start = start.replace(microsecond=0)
        self.start, self.end, self.idle_s, self.first_media_s = start, end, idle_s, first_media_s
        self.host, self.advertise = host, advertise
        self.codec = "h264"
        self.codec_string = "avc1.42E01E"
        self.width = self.height = 0
        self.packets = 0
        self.last: datetime | None = None
        self.ended_by: str | None = None
        self._q: queue.Queue = queue.Queue(maxsize=2000)
        self._session: MediaSession | None = None
        self._answer = None
        self._first: list[av.Packet] = []

    def open(self) -> DeviceStream:
        ssrc = self.server.next_ssrc(True)
        label = f"gb playback {self.device_id}/{self.channel_id}"
        session = MediaSession.open("udp", ssrc, host=self.host, advertise=self.advertise, label=label,
                                    on_open=lambda video, demuxer: self._q.put(("open", video)),
                                    on_packet=lambda packet, arrival: self._q.put(("packet", packet)),
                                    on_end=lambda reason: self._q.put(("end", reason)))
        self._session = session
        offer = dataclasses.replace(session.receiver.offer(ssrc), start=self.start, end=self.end)
        try:
            self._answer = self.server.play(self.device_id, self.channel_id, offer, timeout_s=5.0)
        except InviteFailed as exc:
            session.stop()
            raise PlaybackFailed(f"设备拒绝录像回放：{exc.reason}") from None
        except Exception as exc:       # noqa: BLE001 - the SIP loop's own trouble, said
            session.stop()
            raise PlaybackFailed(f"录像回放请求失败 ({type(exc).__name__})") from None
        session.start(self._answer)
        try:
            kind, value = self._q.get(timeout=self.first_media_s)
        except queue.Empty:
            self.close()
            raise PlaybackFailed(f"设备在 {self.first_media_s:g} 秒内未发送录像数据") from None
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
        self.codec_string = codec_string_of(self.extradata)
        return self

    def close(self) -> None:
        if self._session is not None:
            self._session.stop()
        if self._answer is not None:
            self.server.bye(self._answer)
            self._answer = None

    def _device_gone(self) -> bool:
        return self._answer is not None and self._answer.call_id not in self.server.dialogs

    def _packets(self) -> Iterator[av.Packet]:
        yield from self._first
        self._first = []
        while True:
            try:
                kind, value = self._q.get(timeout=0.5 if self._device_gone() else self.idle_s)
            except queue.Empty:
                self.ended_by = "bye" if self._device_gone() else "idle"
                return
            if kind != "packet":
                self.ended_by = "stream"
                return
            yield value

    def chunks(self) -> Iterator[bytes]:
        from cameras.recording.playback import _Sink

        sink = _Sink()
        out = av.open(sink, "w", format="mp4", options=dict(FMP4))
        tb = Fraction(1, 90000)
        stream = out.add_stream("h264", rate=25)
        stream.width, stream.height = self.width, self.height
        stream.time_base = tb
        if self.extradata:
            stream.codec_context.extradata = self.extradata
        origin = last_dts = None
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
                dts, pts = dts_in - origin, ts - origin
                if last_dts is not None and dts <= last_dts:
                    dts = last_dts + 1
                pkt.dts, pkt.pts = dts, max(pts, dts)
                pkt.time_base = tb
                pkt.stream = stream
                out.mux(pkt)
                last_dts = dts
                self.packets += 1
                self.last = wall
                if sink.parts:
                    yield sink.take()
        finally:
            try:
                out.close()
            except av.FFmpegError:
                pass
            self.close()
        if sink.parts:
            yield sink.take()


# --------------------------------------------------------------------------- the service
class DevicePlayback:
    """The loopback HTTP service (ThreadingHTTPServer: one thread per request)."""

    def __init__(self, server, key: bytes, *, host: str = "127.0.0.1", port: int = 0,
                 media_host: str = "127.0.0.1", media_advertise: str | None = None) -> None:
        self.server, self.key = server, key
        self.media_host, self.media_advertise = media_host, media_advertise
        self.active = 0
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
        self.httpd.shutdown()
        self.httpd.server_close()

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
                self._play(h, device, channel, start, end)
            else:
                self._json(h, 404, {"reason": f"no such path {url.path!r}"})
        except InviteFailed as exc:
            self._json(h, 502, {"reason": exc.reason})
        except PlaybackFailed as exc:
            self._json(h, exc.status, {"reason": exc.reason})

    def _play(self, h: BaseHTTPRequestHandler, device: str, channel: str, start: datetime, end: datetime) -> None:
        stream = DeviceStream(self.server, device, channel, start, end, host=self.media_host,
                              advertise=self.media_advertise).open()
        self.active += 1
        try:
            h.send_response(200)
            h.send_header("Content-Type", f'video/mp4; codecs="{stream.codec_string}"')
            h.send_header("X-Start-Time", _iso(stream.start))
            h.send_header("X-Codec", stream.codec)
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
            log.info("device playback %s/%s %s–%s: %d packets, ended by %s", device, channel, _iso(start), _iso(end),
                     stream.packets, stream.ended_by or "viewer")
        finally:
            self.active -= 1


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
            raise PlaybackFailed(reason, resp.status if resp.status in (400, 415) else 502)
        return resp

    @staticmethod
    def _params(device: str, channel: str, start: datetime, end: datetime) -> dict:
        return {"device": device, "channel": channel, "start": start.isoformat(), "end": end.isoformat()}

    def records(self, device: str, channel: str, start: datetime, end: datetime) -> list[dict]:
        resp = self._get("/records", self._params(device, channel, start, end))
        try:
            return json.loads(resp.read())["records"]
        finally:
            resp.close()

    def play(self, device: str, channel: str, start: datetime, end: datetime) -> tuple[dict, Iterator[bytes]]:
        resp = self._get("/play", self._params(device, channel, start, end))
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
