"""Live video relay: one RTSP pull per camera, its H.264 passed through to every WebRTC viewer.

    camera ──RTSP/TCP──▶ Feed (one thread: PyAV demux, no decoding)
                           │  av.Packet, pts rebased to 90 kHz, SPS/PPS before every IDR
                           ├──▶ Subscriber queue ──▶ PassthroughTrack ──▶ RTCPeerConnection (viewer 1)
                           ├──▶ …                                                         (viewer n)
                           └──▶ last GOP kept ──▶ frame.jpg (decoded on request only)

aiortc's RTCRtpSender packs an ``av.Packet`` returned by a track (``H264Encoder.pack``)
instead of decoding and encoding it, so a viewer costs RTP packetisation and SRTP, not an
x264 encoder: nothing in this module decodes or encodes video for WebRTC. The snapshot
fallback decodes the current GOP (at most one GOP, incrementally) only while someone asks
for frames.

A feed starts with its first viewer (or snapshot request) and stops ``linger_s`` after the
last one leaves. Camera credentials are put into the RTSP URL here, server-side, and never
leave this module: states, errors and logs carry the redacted URL only.

Runs in the API process (one asyncio loop; one demux thread per watched camera). That is
cheap because of pass-through; decoding for analytics stays in the camera workers.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import quote, urlsplit, urlunsplit

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from api.live.config import LiveSettings
from config.urls import redact_text, redact_url

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
TIME_BASE_90K = Fraction(1, VIDEO_CLOCK)
BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
GOP_LIMIT = 600                     # packets kept for the snapshot; a longer GOP restarts the cache


class LiveError(Exception):
    """A viewer cannot be served (reason is safe to show: no credentials)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -------------------------------------------------------------------- ICE host addresses

_host_addresses: list[str] | None = None
_patched = False


def use_host_addresses(addresses: list[str] | None) -> None:
    """Offer only these local addresses as ICE host candidates (None: every interface).

    aioice gathers on every interface except 127.0.0.1; a hub bound to loopback must offer
    127.0.0.1 and nothing else. aioice has no option for that, so its address lookup is
    replaced (process-wide: this process only serves live video from one address set)."""
    global _host_addresses, _patched
    resolved = None
    if addresses is not None:
        resolved = []
        for a in addresses:
            try:
                resolved.append(socket.gethostbyname(a) if not _is_ip(a) else a)
            except OSError:
                log.warning("ICE host address %r does not resolve; skipped", a)
    _host_addresses = resolved
    if not _patched:
        import aioice.ice as ice
        original = ice.get_host_addresses

        def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            if _host_addresses is None:
                return original(use_ipv4, use_ipv6)
            return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        ice.get_host_addresses = host_addresses
        _patched = True


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False


# -------------------------------------------------------------------- sources


@dataclass(frozen=True)
class CameraSource:
    """Where a camera's stream is and how to log in; ``repr`` never shows the password."""
    camera_id: str
    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def pull_url(self) -> str:
        if not self.username:
            return self.url
        parts = urlsplit(self.url)
        userinfo = quote(self.username, safe="")
        if self.password:
            userinfo += ":" + quote(self.password, safe="")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


def _open_options(url: str, read_timeout_s: float) -> dict[str, str]:
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        return {}
    return {"rtsp_transport": "tcp", "timeout": str(int(read_timeout_s * 1_000_000)),
            "analyzeduration": "500000", "probesize": "131072", "fflags": "nobuffer"}


def _nal_types(data: bytes, limit: int = 8) -> list[int]:
    """Types of the first NAL units of an Annex-B access unit."""
    out, i, n = [], 0, len(data)
    while len(out) < limit:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0 or j + 3 >= n:
            break
        out.append(data[j + 3] & 0x1F)
        i = j + 3
    return out


def _annexb_extradata(extradata: bytes | None) -> bytes:
    """SPS/PPS as Annex-B from codec extradata (Annex-B already, or avcC)."""
    if not extradata:
        return b""
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return extradata
    if extradata[0] != 1 or len(extradata) < 7:
        return b""
    out, pos = bytearray(), 5
    try:
        for count_mask in (0x1F, 0xFF):
            count = extradata[pos] & count_mask
            pos += 1
            for _ in range(count):
                size = int.from_bytes(extradata[pos:pos + 2], "big")
                pos += 2
                out += b"\x00\x00\x00\x01" + extradata[pos:pos + size]
                pos += size
    except IndexError:
        return b""
    return bytes(out)


# -------------------------------------------------------------------- viewers


class Subscriber:
    """One viewer's queue of packets; starts at a keyframe, skips to the next one when late."""

    def __init__(self, feed: "Feed", maxsize: int):
        self.feed = feed
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.need_key = True
        self.sent = 0
        self.skipped = 0
        self.closed = False

    def push(self, packet: av.Packet, key: bool) -> None:  # loop thread
        if self.closed:
            return
        if self.need_key:
            if not key:
                return
            self.need_key = False
        if self.queue.full():
            # A slow viewer: drop what it has not sent and resume at the next keyframe
            # (a late picture is worse than a skipped one in a control room).
            self.skipped += self.queue.qsize()
            while not self.queue.empty():
                self.queue.get_nowait()
            self.need_key = True
            return
        self.queue.put_nowait(packet)

    def end(self) -> None:
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class PackCache:
    """RTP payloads of a feed's recent packets, computed once for all its viewers."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[int, tuple[av.Packet, tuple[list[bytes], int]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, packet: av.Packet, compute) -> tuple[list[bytes], int]:
        key = id(packet)  # the cache holds the packet, so its id cannot be reused meanwhile
        item = self._items.get(key)
        if item is not None and item[0] is packet:
            self.hits += 1
            return item[1]
        self.misses += 1
        result = compute(packet)
        self._items[key] = (packet, result)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return result


class SharedPacker(H264Encoder):
    """aiortc's H.264 packetiser for pass-through: an access unit is split into RTP payloads
    once per feed (not once per viewer), and encoding is refused outright."""

    def __init__(self, cache: PackCache):
        super().__init__()
        self._cache = cache

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        return self._cache.get(packet, super().pack)

    def encode(self, frame, force_keyframe: bool = False):  # pragma: no cover - must never happen
        raise RuntimeError("live view passes the camera's H.264 through; it never encodes")


def _install_packer(sender: RTCRtpSender, cache: PackCache) -> None:
    # RTCRtpSender creates its encoder lazily when the first frame is sent and only if it
    # has none yet: giving it ours first keeps the pack shared (aiortc 1.16 attribute).
    sender._RTCRtpSender__encoder = SharedPacker(cache)


class PassthroughTrack(MediaStreamTrack):
    """A video track whose ``recv`` returns encoded packets: aiortc packs them as they are."""

    kind = "video"

    def __init__(self, subscriber: Subscriber):
        super().__init__()
        self.subscriber = subscriber

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self.subscriber.queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        self.subscriber.sent += 1
        return packet


# -------------------------------------------------------------------- one camera


class Feed:
    """One camera's RTSP pull, shared by all its viewers."""

    def __init__(self, relay: "LiveRelay", source: CameraSource):
        self.relay = relay
        self.settings = relay.settings
        self.loop = relay.loop
        self.source = source
        self.camera_id = source.camera_id
        self.subscribers: set[Subscriber] = set()
        self.state = "starting"
        self.reason: str | None = None
        self.codec: str | None = None
        self.width = self.height = None
        self.started_at = time.time()
        self.connected_at: float | None = None
        self.connections = 0
        self.packets = 0
        self.keyframes = 0
        self.last_packet_mono: float | None = None
        self.last_packet_wall: float | None = None
        self.lease_until = 0.0
        self.gop: list[tuple[int, av.Packet, float]] = []    # (seq, packet, hub wall time)
        self.seq = 0
        self.extradata = b""
        self.pack_cache = PackCache()
        self.keyframe_ready = asyncio.Event()
        self._stop = threading.Event()
        self._container = None
        self._thread = threading.Thread(target=self._run, name=f"live-{self.camera_id}", daemon=True)
        self._linger: asyncio.TimerHandle | None = None
        self._decoder = None
        self._decoded_seq = -1
        self._last_jpeg: tuple[int, bytes, float] | None = None
        self._decode_lock = threading.Lock()
        # pts rebasing (demux thread only)
        self._pts_offset: int | None = None
        self._last_out_pts = -3000
        self._frame_step = 3000

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        log.info("live %s: pull starts (%s)", self.camera_id, self.source.shown_url)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it finishes its current read) and end every viewer."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.state = "stopped"
        for sub in list(self.subscribers):
            sub.end()
        self.subscribers.clear()
        log.info("live %s: pull stops after %d packets", self.camera_id, self.packets)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def current_state(self) -> str:
        if self.state == "live" and self.last_packet_mono is not None \
                and time.monotonic() - self.last_packet_mono > self.settings.stall_s:
            return "stalled"
        return self.state

    def info(self) -> dict:
        return {"camera_id": self.camera_id, "state": self.current_state, "reason": self.reason,
                "codec": self.codec, "width": self.width, "height": self.height,
                "viewers": len(self.subscribers), "snapshot_lease": self.lease_until > time.monotonic(),
                "packets": self.packets, "keyframes": self.keyframes, "connections": self.connections,
                "started_at": self.started_at, "last_packet_at": self.last_packet_wall}

    # -- the demux thread -------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            opened = self._pull_once()
            if self._stop.is_set():
                break
            attempt = 0 if opened else attempt + 1
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            self._set_state("retrying", self.reason)
            if self._stop.wait(delay):
                break

    def _pull_once(self) -> bool:
        url = self.source.pull_url
        try:
            container = av.open(url, options=_open_options(url, self.settings.read_timeout_s),
                                timeout=(self.settings.open_timeout_s, self.settings.read_timeout_s))
        except Exception as exc:  # noqa: BLE001 - every failure is a state with a reason
            self._set_state("error", f"open failed: {_describe(exc)}")
            return False
        self._container = container
        got_packet = False
        try:
            if not container.streams.video:
                self._set_state("error", "the stream has no video")
                return True
            stream = container.streams.video[0]
            ctx = stream.codec_context
            codec = ctx.name
            extradata = _annexb_extradata(bytes(ctx.extradata) if ctx.extradata else None)
            rate = stream.average_rate or stream.guessed_rate
            step = int(VIDEO_CLOCK / float(rate)) if rate else 3000
            self.loop.call_soon_threadsafe(self._on_open, codec, ctx.width, ctx.height, extradata, step)
            if codec != "h264":
                self._set_state("error", f"camera sends {codec}: live view needs H.264 (snapshots only)")
            self._pts_offset = None
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                if packet.size == 0:
                    continue
                arrival = time.time()
                key = bool(packet.is_keyframe)
                if key and extradata and 7 not in _nal_types(bytes(packet)[:256]):
                    fixed = av.Packet(extradata + bytes(packet))
                    fixed.pts, fixed.dts, fixed.time_base = packet.pts, packet.dts, packet.time_base
                    fixed.is_keyframe = True
                    packet = fixed
                self._rebase(packet, arrival, step)
                got_packet = True
                self.loop.call_soon_threadsafe(self._on_packet, packet, key, arrival)
            if not self._stop.is_set():
                self._set_state("error", "the camera ended the stream")
        except Exception as exc:  # noqa: BLE001
            if not self._stop.is_set():
                self._set_state("error", f"read failed: {_describe(exc)}")
        finally:
            self._container = None
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
        return got_packet

    def _rebase(self, packet: av.Packet, arrival: float, step: int) -> None:
        """Continuous 90 kHz timestamps across reconnects (RTP wants them monotonic)."""
        if packet.pts is not None and packet.time_base is not None:
            pts = int(packet.pts * packet.time_base * VIDEO_CLOCK)
        else:
            pts = int(arrival * VIDEO_CLOCK)
        if self._pts_offset is None:
            self._pts_offset = self._last_out_pts + step - pts
        out = pts + self._pts_offset
        if out <= self._last_out_pts:  # camera clock jumped back: keep going forward
            self._pts_offset += self._last_out_pts + step - out
            out = self._last_out_pts + step
        self._last_out_pts = out
        packet.pts = out
        packet.dts = out
        packet.time_base = TIME_BASE_90K

    def _set_state(self, state: str, reason: str | None) -> None:
        def apply():
            if self._stop.is_set():
                return
            if state in ("error", "retrying") and reason:
                if self.reason != reason:
                    log.warning("live %s: %s", self.camera_id, reason)
            self.state, self.reason = state, reason
        self.loop.call_soon_threadsafe(apply)

    # -- on the event loop --------------------------------------------------------------
    def _on_open(self, codec: str, width: int, height: int, extradata: bytes, step: int) -> None:
        self.codec, self.width, self.height = codec, width, height
        self.extradata = extradata
        self._frame_step = step
        self.connections += 1
        self.connected_at = time.time()
        if codec == "h264":
            self.state, self.reason = "connecting", None
        # After a reconnect every viewer restarts at a keyframe.
        for sub in self.subscribers:
            sub.need_key = True

    def _on_packet(self, packet: av.Packet, key: bool, arrival: float) -> None:
        if self._stop.is_set():
            return
        self.packets += 1
        self.seq += 1
        self.last_packet_mono = time.monotonic()
        self.last_packet_wall = arrival
        if self.codec == "h264" and self.state != "live":
            self.state, self.reason = "live", None
        if key:
            self.keyframes += 1
            self.gop = []
        if self.gop or key:
            if len(self.gop) < GOP_LIMIT:
                self.gop.append((self.seq, packet, arrival))
            else:
                self.gop = []
        if key and not self.keyframe_ready.is_set():
            self.keyframe_ready.set()
        for sub in self.subscribers:
            sub.push(packet, key)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self, self.settings.queue_packets)
        self.subscribers.add(sub)
        self.cancel_linger()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.end()
        self.subscribers.discard(sub)
        self.relay.maybe_release(self)

    def cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    @property
    def wanted(self) -> bool:
        return bool(self.subscribers) or self.lease_until > time.monotonic()

    # -- snapshot (decoded on request) ----------------------------------------------------
    def render_jpeg(self, gop: list[tuple[int, av.Packet, float]], quality: int) -> tuple[bytes, float]:
        """Decode up to the newest packet of ``gop`` (incrementally) and return (JPEG, frame time).
        Runs in a worker thread; ``gop`` is a copy taken on the loop."""
        import cv2
        with self._decode_lock:
            last_seq, _, last_wall = gop[-1]
            if self._last_jpeg and self._last_jpeg[0] == last_seq:
                return self._last_jpeg[1], self._last_jpeg[2]
            first_seq = gop[0][0]
            if self._decoder is None or self._decoded_seq < first_seq - 1 or self._decoded_seq >= last_seq:
                self._decoder = av.CodecContext.create("h264", "r")
                self._decoder.thread_count = 1
                if self.extradata:
                    self._decoder.extradata = self.extradata
                self._decoded_seq = first_seq - 1
            frame, frame_wall = None, last_wall
            for seq, packet, wall in gop:
                if seq <= self._decoded_seq:
                    continue
                try:
                    frames = self._decoder.decode(packet)
                except av.error.FFmpegError:
                    frames = []
                self._decoded_seq = seq
                if frames:
                    frame, frame_wall = frames[-1], wall
            if frame is None:
                if self._last_jpeg:
                    return self._last_jpeg[1], self._last_jpeg[2]
                raise LiveError(503, "no decodable frame yet")
            ok, jpeg = cv2.imencode(".jpg", frame.to_ndarray(format="bgr24"),
                                    [int(cv2.IMWRITE_JPEG_QUALITY), quality])
            if not ok:
                raise LiveError(500, "JPEG encoding failed")
            self._last_jpeg = (last_seq, jpeg.tobytes(), frame_wall)
            return self._last_jpeg[1], frame_wall

    def drop_decoder(self) -> None:
        with self._decode_lock:
            self._decoder = None
            self._decoded_seq = -1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.error.ExitError):
        return "timed out (no data)"
    text = redact_text(str(exc)).strip()
    if ": '" in text:
        text = text.split(": '", 1)[0]
    return f"{type(exc).__name__}: {text}"[:300]


# -------------------------------------------------------------------- sessions and the relay


@dataclass
class ViewerSession:
    id: str
    camera_id: str
    user: str
    pc: RTCPeerConnection
    feed: Feed
    subscriber: Subscriber
    created: float = field(default_factory=time.time)
    connected: bool = False
    closed: bool = False

    def info(self) -> dict:
        return {"session_id": self.id, "camera_id": self.camera_id, "user": self.user,
                "connection": self.pc.connectionState, "created": self.created,
                "packets_sent": self.subscriber.sent, "packets_skipped": self.subscriber.skipped}


class LiveRelay:
    """Every feed and viewer session of this process. Use from the event loop only."""

    def __init__(self, settings: LiveSettings, http_host: str = "127.0.0.1"):
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.feeds: dict[str, Feed] = {}
        self.sessions: dict[str, ViewerSession] = {}
        self.started_feeds = 0
        self.stopped_feeds = 0
        self._closing = False
        self._sweeper = self.loop.create_task(self._sweep())
        use_host_addresses(settings.host_addresses(http_host))

    # -- feeds ---------------------------------------------------------------------------
    def feed_for(self, source: CameraSource) -> Feed:
        feed = self.feeds.get(source.camera_id)
        if feed is not None and (feed.stopped or feed.source != source):
            # stopped, or the camera's address or credentials changed: a new pull
            self._stop_feed(feed)
            feed = None
        if feed is None:
            feed = Feed(self, source)
            self.feeds[source.camera_id] = feed
            self.started_feeds += 1
            feed.start()
        feed.cancel_linger()
        return feed

    def maybe_release(self, feed: Feed) -> None:
        """Schedule the stop of a feed nobody wants any more."""
        if feed.wanted or feed.stopped or self._closing:
            return
        feed.cancel_linger()
        if self.settings.linger_s <= 0:
            self._stop_feed(feed)
        else:
            feed._linger = self.loop.call_later(self.settings.linger_s, self._linger_done, feed)

    def _linger_done(self, feed: Feed) -> None:
        feed._linger = None
        if not feed.wanted:
            self._stop_feed(feed)

    def _stop_feed(self, feed: Feed) -> None:
        feed.cancel_linger()
        if self.feeds.get(feed.camera_id) is feed:
            del self.feeds[feed.camera_id]
        if not feed.stopped:
            feed.stop()
            self.stopped_feeds += 1
        feed.drop_decoder()

    async def _sweep(self) -> None:
        """Expire snapshot leases and viewers that never connected."""
        while True:
            await asyncio.sleep(1.0)
            try:
                now = time.time()
                for feed in list(self.feeds.values()):
                    if not feed.wanted and feed._linger is None:
                        self.maybe_release(feed)
                for s in list(self.sessions.values()):
                    if not s.connected and now - s.created > self.settings.connect_timeout_s:
                        log.info("live %s: viewer %s never connected; dropped", s.camera_id, s.id)
                        await self.close_session(s.id)
            except Exception:  # noqa: BLE001 - the sweeper must survive
                log.exception("live sweeper")

    # -- WebRTC viewers -----------------------------------------------------------------
    async def open_session(self, source: CameraSource, offer_sdp: str, offer_type: str, user: str) -> ViewerSession:
        if self._closing:
            raise LiveError(503, "shutting down")
        if offer_type != "offer":
            raise LiveError(422, "expected an SDP offer")
        if "m=video" not in offer_sdp:
            raise LiveError(422, "the offer has no video section")
        if "h264" not in offer_sdp.lower():
            raise LiveError(422, "this browser offers no H.264: live view passes the camera's H.264 through; "
                                 "use the snapshot view")
        if len(self.sessions) >= self.settings.max_sessions:
            raise LiveError(503, "too many live viewers on this hub; try again later or use snapshots")
        if sum(1 for s in self.sessions.values() if s.user == user) >= self.settings.max_sessions_per_user:
            raise LiveError(429, "too many live views open for this user")
        existing = self.feeds.get(source.camera_id)
        if existing is not None and existing.codec not in (None, "h264"):
            raise LiveError(409, f"camera sends {existing.codec}: live view needs H.264; use snapshots")

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        feed = self.feed_for(source)
        sub = feed.subscribe()
        session = ViewerSession(id=secrets.token_urlsafe(12), camera_id=source.camera_id, user=user,
                                pc=pc, feed=feed, subscriber=sub)
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                session.connected = True
            elif state in ("failed", "closed"):
                await self.close_session(session.id)

        try:
            # The transceiver exists before the offer is applied so that only H.264 is
            # negotiated (aiortc would otherwise pick VP8 and re-encode every frame).
            transceiver = pc.addTransceiver(PassthroughTrack(sub), direction="sendonly")
            caps = RTCRtpSender.getCapabilities("video").codecs
            h264 = [c for c in caps if c.mimeType.lower() == "video/h264"]
            rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
            transceiver.setCodecPreferences(h264 + rtx)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            _install_packer(transceiver.sender, feed.pack_cache)
        except LiveError:
            await self.close_session(session.id)
            raise
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's problem
            await self.close_session(session.id)
            log.info("live %s: offer refused: %s", source.camera_id, exc)
            raise LiveError(422, f"cannot answer this offer: {type(exc).__name__}: {exc}"[:300]) from None
        if "h264" not in (pc.localDescription.sdp or "").lower():
            await self.close_session(session.id)
            raise LiveError(422, "no H.264 in common with this browser")
        log.info("live %s: viewer %s (%s) joins; %d viewer(s)", source.camera_id, session.id, user,
                 len(feed.subscribers))
        return session

    async def close_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        session.feed.unsubscribe(session.subscriber)
        log.info("live %s: viewer %s leaves; %d viewer(s)", session.camera_id, session.id,
                 len(session.feed.subscribers))
        try:
            await session.pc.close()
        except Exception:  # noqa: BLE001
            log.debug("closing peer connection", exc_info=True)
        return True

    # -- snapshots ------------------------------------------------------------------------
    async def snapshot(self, source: CameraSource, wait_s: float = 8.0) -> tuple[bytes, float]:
        """The newest picture of a camera as JPEG (and the hub time it arrived)."""
        if self._closing:
            raise LiveError(503, "shutting down")
        feed = self.feed_for(source)
        feed.lease_until = time.monotonic() + self.settings.snapshot_lease_s
        if not feed.keyframe_ready.is_set():
            try:
                await asyncio.wait_for(feed.keyframe_ready.wait(), wait_s)
            except asyncio.TimeoutError:
                raise LiveError(503, f"no picture from the camera yet ({feed.current_state}"
                                     + (f": {feed.reason}" if feed.reason else "") + ")") from None
        gop = list(feed.gop)
        if not gop:
            raise LiveError(503, "no picture from the camera yet")
        return await self.loop.run_in_executor(None, feed.render_jpeg, gop, self.settings.jpeg_quality)

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        self._closing = True
        self._sweeper.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        feeds = list(self.feeds.values())
        for feed in feeds:
            self._stop_feed(feed)
        await asyncio.gather(*(self.loop.run_in_executor(None, f.join, 6.0) for f in feeds))

    def status(self) -> dict:
        return {"feeds": {cid: f.info() for cid, f in self.feeds.items()},
                "sessions": len(self.sessions), "started_feeds": self.started_feeds,
                "stopped_feeds": self.stopped_feeds}


__all__ = ["CameraSource", "Feed", "LiveError", "LiveRelay", "PackCache", "PassthroughTrack", "SharedPacker", "Subscriber",
           "ViewerSession", "use_host_addresses"]
