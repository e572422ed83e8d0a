"""Live video's camera side: one feed per camera and stream, shared by all its viewers.

    camera worker's tap ─┐ (cameras/tap.py: the packets of the worker's own RTSP session)
    gb28181 media tap ───┤ (a gb28181:// channel no worker serves: cameras/gb28181/media)
    camera ──RTSP────────┴─▶ Feed (one thread: the tap's packets, or a PyAV demux; no decoding)
                           │  av.Packet, pts rebased to 90 kHz, SPS/PPS before every IDR
                           ├──▶ split into RTP payloads once (Packer, api/live/sender.py)
                           │      └─▶ for each viewer: Subscriber.push ──▶ its PassthroughSender
                           └──▶ last GOP kept ──▶ frame.jpg (decoded on request only)

The camera's H.264 is passed through: each access unit goes to the viewers in the event-loop
callback that delivers it, and nothing is decoded for them. The snapshot fallback decodes
the current GOP (at most one GOP, incrementally) only while someone asks for frames.

Where the packets come from: the camera worker that reads the same stream serves them on
its tap (found in its heartbeat through ``TapDirectory``, api/live/taps.py), so the camera
keeps one RTSP session however many watch it; a feed starts from the worker's current GOP.
A stream no worker reads (another stream than the analysed one), or whose worker is down or
unreachable, is pulled here; such a pull asks every ``TAP_RECHECK_S`` whether a worker reads
the stream again and gives way to it (``SWITCH``) without ending the viewers. While the
worker cannot read the camera, the feed shows the worker's reason and does not knock itself.
A GB/T 28181 channel (``gb28181://``, no stream address of its own) no worker serves is taken
from the gb28181 process's media tap (``pull`` "gb28181"); that process not running is said
(GB/T 28181 服务未运行), never "open failed".

A feed is one stream of one camera, ``main`` or ``sub`` (``CameraSource.stream``, chosen by
the API: the viewer's ``?stream=``, else ``XLHUB_LIVE_STREAM``; main for a camera without a
substream): viewers of a camera's two streams get two feeds, never one shared between them.
A feed starts with its first viewer (or snapshot request) and stops ``linger_s`` after the
last one leaves. Camera credentials are put into the RTSP URL here, server-side, and never
leave this module: states, errors and logs carry the redacted URL only.

A camera known only by its ONVIF address is asked for its stream URI (api/live/onvif.py)
before its first feed of a stream starts, and again only when a pull with that URI cannot
connect; the URI is kept, so later viewers and feeds of the camera cost no ONVIF round trip.
A camera with a single profile gives it for ``sub`` too: that feed is its ``main`` one.

``FeedRegistry`` keeps the feeds by (camera, stream) and serves snapshots; the viewer
sessions (``LiveRelay``, api/live/sessions.py) are built on it. A feed knows its viewers
only as ``Subscriber`` objects it pushes to, so nothing here imports the sessions.

Runs in the API process (one asyncio loop; one demux thread per watched camera). That is
cheap because of pass-through; decoding for analytics stays in the camera workers.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction

import av

from api.live.config import LiveSettings
from api.live.onvif import StreamUris, explain
from api.live.sender import Packer, Subscriber, Unit
from api.live.source import CameraSource, LiveError
from api.live.taps import TapDirectory
from api.live.transcode import Transcoder, scaled
from cameras.gb28181.media.hub import gb_url, parse_gb_url
from cameras.gb28181.media.source import is_gb28181
from cameras.rtsp import NO_VIDEO, STREAM_ENDED, Failure, StreamError, Transport, classify, open_stream
from cameras.tap import KEEPALIVE_S, TapHeader, TapPacket, TapRefused, TapStream
from config.vocabulary import StreamProblem
from config.urls import redact_text, redact_url
from store.backoff import LIVE_VIEW

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
TIME_BASE_90K = Fraction(1, VIDEO_CLOCK)
GOP_LIMIT = 600                     # packets kept for the snapshot; a longer GOP restarts the cache
TAP_RECHECK_S = 10.0                # an own pull asks this often whether a camera worker reads the stream again
SWITCH = object()                   # _pull_once: an own pull gave way to the camera worker's packets


# -------------------------------------------------------------------- the camera's stream


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


def no_picture(feed: Feed) -> str:
    """Why a snapshot cannot be given, Chinese first: the problem when the pull has one."""
    if feed.problem is not None:
        return f"{feed.problem.label}：摄像机无画面 (no picture: {feed.problem.detail})"
    return f"摄像机尚无画面 (no picture from the camera yet: {feed.current_state})"


# -------------------------------------------------------------------- one camera


class Feed:
    """One RTSP pull of one stream of a camera, shared by all the viewers of that stream."""

    def __init__(self, registry: FeedRegistry, source: CameraSource, uri: str | None = None):
        self.registry = registry
        self.settings = registry.settings
        self.loop = registry.loop
        self.source = source
        self.camera_id = source.camera_id
        self.stream = source.stream
        self.key = source.key
        self.label = f"{source.camera_id} ({source.stream})"     # in log lines
        # Where the pull connects, without credentials: the site's URL, or what ONVIF gave
        # (replaced on the loop when the camera gives another; the thread reads it per connection).
        self.stream_uri = uri or source.url
        self.asking_onvif = False
        self.onvif_error: str | None = None
        self.subscribers: set[Subscriber] = set()
        self.state = "starting"
        self.reason: str | None = None
        self.problem: Failure | None = None                  # why it is not playing, for people
        self._last_failure: tuple[str | None, Failure | None] = (None, None)   # the demux thread's
        self.transport = Transport(source.transport)          # outlives connections: what worked first
        self.codec: str | None = None
        self.transcoded_from: str | None = None              # the camera's codec, when transcoded
        self.width = self.height = None
        self.started_at = time.time()
        self.connected_at: float | None = None
        self.connections = 0
        self.packets = 0
        self.bytes_in = 0                                     # the camera's bitstream, whoever pulled it
        self.keyframes = 0
        self.last_packet_mono: float | None = None
        self.last_packet_wall: float | None = None
        self.lease_until = 0.0
        self.gop: list[tuple[int, av.Packet, float]] = []    # (seq, packet, hub wall time)
        self.seq = 0
        self.extradata = b""
        self.packer = Packer()
        self.packed = 0                                       # access units split into RTP payloads
        self.keyframe_ready = asyncio.Event()
        self._stop = threading.Event()
        self._container = None
        self.pull: str | None = None                          # whose pull the packets are: "worker", "gb28181" or "rtsp"
        self._tap_refused: str | None = None                  # a worker's tap that does not serve this stream
        self._closer: Callable[[], None] | None = None        # ends a blocked read of the worker's tap
        self._thread = threading.Thread(target=self._run, name=f"live-{self.camera_id}-{self.stream}", daemon=True)
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
        shown = redact_url(self.stream_uri)
        if self.source.onvif_only:
            shown += f" from {self.source.shown_url}"
        log.info("live %s: pull starts (%s)", self.label, shown)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it finishes its current read) and end every viewer."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.state = "stopped"
        closer = self._closer
        if closer is not None:
            closer()
        for sub in list(self.subscribers):
            sub.end()
        self.subscribers.clear()
        log.info("live %s: pull stops after %d packets", self.label, self.packets)

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
        return {"camera_id": self.camera_id, "stream": self.stream, "state": self.current_state,
                "reason": self.reason, "problem": self.problem.problem.value if self.problem else None,
                "problem_label": self.problem.label if self.problem else None, "codec": self.codec,
                "transcoded_from": self.transcoded_from, "width": self.width, "height": self.height,
                "pull": self.pull, "viewers": len(self.subscribers), "snapshot_lease": self.lease_until > time.monotonic(),
                "packets": self.packets, "keyframes": self.keyframes, "connections": self.connections,
                "started_at": self.started_at, "last_packet_at": self.last_packet_wall}

    # -- the demux thread -------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            opened = self._pull_once()
            if self._stop.is_set():
                break
            if opened is SWITCH:
                attempt = 0
                continue            # the camera worker reads this stream again: take its packets now
            if not opened and self.source.onvif_only and self.pull == "rtsp":
                # The URI ONVIF gave may be stale (camera rebooted onto another port or path):
                # ask again during the backoff; the next connection uses the answer.
                self.loop.call_soon_threadsafe(self.registry.ask_onvif_again, self)
            attempt = 0 if opened else attempt + 1
            delay = LIVE_VIEW.delay(attempt + 1)
            self._set_state("retrying", *self._last_failure)
            if self._stop.wait(delay):
                break

    def _pull_once(self) -> bool | object:
        """One connection: to the camera worker that reads this stream when there is one
        (cameras/tap.py: the camera keeps one RTSP session), else to the camera itself.
        True when packets came, or SWITCH when an own pull gives way to the worker's."""
        address = self.registry.taps.address(self.camera_id) if self.registry.taps else None
        if address is not None and address != self._tap_refused:
            got = self._pull_tap(address)
            if got is not None:
                return got
        if is_gb28181(self.source.url):
            return self._pull_gb28181()
        return self._pull_rtsp(watch_for_tap=self.registry.taps is not None and self._tap_refused is None)

    def _pull_gb28181(self) -> bool:
        """A GB/T 28181 channel no camera worker serves: the gb28181 process's media tap (its
        one media session of the channel), never the URL itself (it is no stream address)."""
        try:
            device_id, channel_id = parse_gb_url(self.source.url)
        except ValueError as exc:
            failure = Failure(StreamProblem.other, f"GB/T 28181 通道地址无效 (bad gb28181:// URL: {exc})")
            self._set_state("error", failure.detail, failure)
            return False
        taps = self.registry.taps
        if taps is None:
            failure = Failure(StreamProblem.other, "GB/T 28181 通道只能经 gb28181 服务观看，而实时视频读不到本 hub 的"
                                                   "媒体密钥 (live view cannot read the hub's tap key)")
            self._set_state("error", failure.detail, failure)
            return False
        hub = taps.gb28181_address()
        if hub is None:
            failure = Failure(StreamProblem.unreachable, "GB/T 28181 服务未运行，无法点播该通道 (the gb28181 process is "
                                                         "not running: no live heartbeat with a media tap)")
            self._set_state("error", failure.detail, failure)
            return False
        got = self._pull_tap(hub, camera=f"{device_id}/{channel_id}", stream="main",
                             url=gb_url(device_id, channel_id), whose="gb28181")
        if got is None:
            failure = Failure(StreamProblem.unreachable, f"GB/T 28181 服务的媒体端口连不上或拒绝了该通道 (the gb28181 "
                                                         f"process's media tap at {hub} does not serve it)")
            self._set_state("error", failure.detail, failure)
            return False
        return got

    def _pull_tap(self, address: str, *, camera: str | None = None, stream: str | None = None,
                  url: str | None = None, whose: str = "worker") -> bool | None:
        """The packets of the camera worker's own pull (or, ``whose`` "gb28181", of the
        gb28181 process's media session); None when it does not serve them (it reads another
        stream of the camera, it is gone): then the feed pulls itself."""
        if url is None:
            url = "" if self.source.onvif_only else self.source.url
        tap = TapStream(address, self.registry.taps.key, camera or self.camera_id, stream or self.stream, url,
                        timeout_s=max(self.settings.read_timeout_s, 2 * KEEPALIVE_S + 1), tls=self.registry.taps.tls)
        self._closer = tap.close
        who = "camera worker" if whose == "worker" else "gb28181 process"
        got_packet = False
        try:
            tap.open()
            play = None
            for event in tap.events():
                if self._stop.is_set():
                    break
                if isinstance(event, TapPacket):
                    if play is not None:
                        play(event.packet, event.wall)
                        got_packet = True
                elif isinstance(event, TapHeader):
                    if self.pull != whose:
                        log.info("live %s: taking the packets of the %s's pull (%s)", self.label, who, address)
                    self.pull = whose
                    play = self._player(event.decoder(), event.codec, event.extradata, event.fps,
                                        event.width, event.height)
                else:
                    self.pull = whose
                    play = None
                    failure = event.failure or Failure(StreamProblem.other, f"the {who} is connecting")
                    self._set_state("error", f"the {who} cannot read the camera: {failure}", failure)
            return got_packet
        except TapRefused as exc:
            log.info("live %s: the %s does not serve this stream (%s)", self.label, who, exc)
            if whose == "worker":
                self._tap_refused = address
            return None
        except (OSError, ValueError) as exc:
            if self._stop.is_set():
                return got_packet
            if self.pull != whose and not got_packet:
                log.warning("live %s: the %s's packets are not reachable at %s (%s)",
                            self.label, who, address, exc.__class__.__name__)
                return None
            self._set_state("error", f"the {who}'s packets stopped: {exc.__class__.__name__}",
                            Failure(StreamProblem.stream_ended, f"the {who}'s packets stopped"))
            return got_packet
        finally:
            self._closer = None
            tap.close()

    def _pull_rtsp(self, watch_for_tap: bool = False) -> bool | object:
        url = self.source.credentialed(self.stream_uri)
        started = time.monotonic()
        self.pull = "rtsp"
        try:
            container = open_stream(url, self.transport, self.settings.open_timeout_s, self.settings.read_timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure is a state with a reason
            failure = exc.failure if isinstance(exc, StreamError) else \
                classify(exc, time.monotonic() - started, self.settings.read_timeout_s, opened=False)
            self._set_state("error", f"open failed: {failure}", failure)
            return False
        self._container = container
        got_packet = False
        try:
            if not container.streams.video:
                self._set_state("error", "the stream has no video", NO_VIDEO)
                return True
            stream = container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate
            play = self._player(ctx, ctx.name, bytes(ctx.extradata) if ctx.extradata else None,
                                float(rate) if rate else None, ctx.width, ctx.height)
            next_check = time.monotonic() + TAP_RECHECK_S
            for camera_packet in container.demux(stream):
                if self._stop.is_set():
                    break
                if camera_packet.size == 0:
                    continue
                play(camera_packet, time.time())
                got_packet = True
                if watch_for_tap and time.monotonic() >= next_check:
                    next_check = time.monotonic() + TAP_RECHECK_S
                    if self.registry.taps.address(self.camera_id):
                        log.info("live %s: a camera worker reads this stream: its packets replace this pull",
                                 self.label)
                        return SWITCH
            if not self._stop.is_set():
                self._set_state("error", "the camera ended the stream", STREAM_ENDED)
        except Exception as exc:  # noqa: BLE001
            if not self._stop.is_set():
                failure = classify(exc, read_timeout_s=self.settings.read_timeout_s)
                self._set_state("error", f"read failed: {failure}", failure)
        finally:
            self._container = None
            try:
                container.close()
            except Exception:  # noqa: BLE001
                pass
        return got_packet

    def _player(self, decoder: av.CodecContext, codec: str, extradata: bytes | None, fps: float | None,
                width: int, height: int) -> Callable[[av.Packet, float], None]:
        """For a stream just opened (the camera's, or the worker's at its connection): say so
        on the loop, and return what plays each packet of it (the demux thread's)."""
        extradata = _annexb_extradata(extradata)
        step = int(VIDEO_CLOCK / fps) if fps else 3000
        transcoder = None
        if codec != "h264" and self.settings.transcode:
            transcoder = Transcoder(decoder, fps=fps, max_width=self.settings.transcode_max_width,
                                    bitrate_kbps=self.settings.transcode_kbps)
            extradata = b""                        # SPS/PPS come before every IDR
        if transcoder and width:
            width, height = scaled(width, height, self.settings.transcode_max_width)
        self.loop.call_soon_threadsafe(self._on_open, "h264" if transcoder else codec, width, height,
                                       extradata, step, codec if transcoder else None)
        if codec != "h264" and transcoder is None:
            self._set_state("error", f"camera sends {codec}: live view needs H.264 (snapshots only)",
                            Failure(StreamProblem.codec_unsupported, f"{codec}: live view plays H.264"))
        self._pts_offset = None

        def play(camera_packet: av.Packet, arrival: float) -> None:
            self.bytes_in += camera_packet.size
            if transcoder is not None:
                for packet in transcoder.push(camera_packet):
                    self._rebase(packet, arrival, step)
                    self.loop.call_soon_threadsafe(self._on_packet, packet, bool(packet.is_keyframe), arrival)
                return
            packet = camera_packet
            key = bool(packet.is_keyframe)
            if key and extradata and 7 not in _nal_types(bytes(packet)[:256]):
                fixed = av.Packet(extradata + bytes(packet))
                fixed.pts, fixed.dts, fixed.time_base = packet.pts, packet.dts, packet.time_base
                fixed.is_keyframe = True
                packet = fixed
            self._rebase(packet, arrival, step)
            self.loop.call_soon_threadsafe(self._on_packet, packet, key, arrival)
        return play

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

    def _set_state(self, state: str, reason: str | None, problem: Failure | None = None) -> None:
        # What the demux thread said last, for its own "retrying" (self.reason and self.problem
        # belong to the loop, which may not have applied it yet).
        self._last_failure = (reason, problem)

        def apply():
            if self._stop.is_set():
                return
            if state in ("error", "retrying") and reason:
                if self.reason != reason:
                    log.warning("live %s: %s", self.label, reason)
            self.state, self.reason, self.problem = state, reason, problem
        self.loop.call_soon_threadsafe(apply)

    # -- on the event loop --------------------------------------------------------------
    def _on_open(self, codec: str, width: int, height: int, extradata: bytes, step: int,
                 transcoded_from: str | None = None) -> None:
        self.codec, self.width, self.height = codec, width, height
        self.transcoded_from = transcoded_from
        self.extradata = extradata
        self._frame_step = step
        self.connections += 1
        self.connected_at = time.time()
        if codec == "h264":
            self.state, self.reason, self.problem = "connecting", None, None
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
            self.state, self.reason, self.problem = "live", None, None
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
        if self.subscribers:
            # split into RTP payloads once; each viewer gets them with headers of its own
            unit = self.packer.unit(packet, key)
            self.packed += 1
            for sub in self.subscribers:
                try:
                    sub.push(unit)
                except Exception:  # noqa: BLE001 - one viewer's failure is not the others'
                    log.exception("live %s: sending to a viewer failed; it is ended", self.label)
                    sub.end()

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self, self.settings.queue_packets)
        if self.settings.gop_cache and self.gop:
            sub.start_with(self.cached_units())
        self.subscribers.add(sub)
        self.cancel_linger()
        return sub

    def cached_units(self) -> list[Unit]:
        """The current GOP (the last keyframe and what followed it) as access units for a
        viewer that joins now. Their timestamps are squeezed to one 90 kHz tick apart just
        before the newest one, which keeps its own: a browser decodes them at once and shows
        the picture as it is now, instead of replaying the GOP in real time a GOP late."""
        units = [self.packer.unit(packet, i == 0) for i, (_, packet, _) in enumerate(self.gop)]
        if units:
            newest = units[-1].timestamp
            last = len(units) - 1
            for i, unit in enumerate(units[:-1]):
                unit.timestamp = newest - (last - i)
        return units

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.end()
        self.subscribers.discard(sub)
        self.registry.maybe_release(self)

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


# -------------------------------------------------------------------- every feed of the process


class FeedRegistry:
    """Every feed of this process, one per (camera, stream). Use from the event loop only."""

    def __init__(self, settings: LiveSettings, taps: TapDirectory | None = None):
        self.settings = settings
        self.taps = taps if settings.worker_tap else None     # the camera workers' packets (api/live/taps.py)
        self.loop = asyncio.get_running_loop()
        self.feeds: dict[tuple[str, str], Feed] = {}        # (camera id, stream) → its pull
        self.started_feeds = 0
        self.stopped_feeds = 0
        self.stream_uris = StreamUris(settings.open_timeout_s)
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._sweeper = self.loop.create_task(self._sweep())

    # -- feeds ---------------------------------------------------------------------------
    async def watch(self, source: CameraSource) -> Feed:
        """The feed of this stream of the camera (``feed_for``), having first asked an
        ONVIF-only camera for the stream's URI when no earlier answer gives it. Raises
        LiveError when the camera does not give one (Chinese and English, no credentials).
        An ONVIF camera that gives its main profile for ``sub`` (it has no other) plays its
        ``main`` feed: the two requests share it."""
        uri = None
        if source.onvif_only:
            resolved = self.stream_uris.cached(source)
            if resolved is None:
                try:
                    resolved = await self.stream_uris.resolve(source)
                except Exception as exc:  # noqa: BLE001 - every failure is an answer to the viewer
                    code, message = explain(exc)
                    log.warning("live %s: no %s stream URI from %s: %s", source.camera_id, source.stream,
                                source.shown_url, redact_text(str(exc))[:300])
                    raise LiveError(code, message) from None
                if self._closing:
                    raise LiveError(503, "shutting down")
            uri, given = resolved
            if given != source.stream:
                source = replace(source, stream=given)
        return self.feed_for(source, uri)

    def feed_for(self, source: CameraSource, uri: str | None = None) -> Feed:
        feed = self.feeds.get(source.key)
        if feed is not None and (feed.stopped or feed.source != source):
            # stopped, or the camera's address or credentials changed: a new pull
            self._stop_feed(feed)
            feed = None
        if feed is None:
            feed = Feed(self, source, uri)
            self.feeds[source.key] = feed
            self.started_feeds += 1
            feed.start()
        feed.cancel_linger()
        return feed

    def ask_onvif_again(self, feed: Feed) -> None:
        """A pull of an ONVIF-only camera did not connect: ask the camera for its stream URI
        again (one request at a time per feed; the old URI stays in use meanwhile)."""
        if feed.stopped or feed.asking_onvif or self._closing:
            return
        feed.asking_onvif = True
        task = self.loop.create_task(self._ask_onvif(feed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask_onvif(self, feed: Feed) -> None:
        try:
            uri, _ = await self.stream_uris.resolve(feed.source)
        except Exception as exc:  # noqa: BLE001 - the feed keeps retrying with the URI it has
            error = redact_text(str(exc))[:300]
            if error != feed.onvif_error:
                log.warning("live %s: asking %s for the stream URI again failed: %s", feed.label,
                            feed.source.shown_url, error)
            feed.onvif_error = error
        else:
            feed.onvif_error = None
            if uri != feed.stream_uri:
                log.info("live %s: the camera now gives %s; the next connection uses it", feed.label,
                         redact_url(uri))
                feed.stream_uri = uri
        finally:
            feed.asking_onvif = False

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
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        if not feed.stopped:
            feed.stop()
            self.stopped_feeds += 1
        feed.drop_decoder()

    async def _sweep(self) -> None:
        """Expire snapshot leases (and viewers that never connected: ``_sweep_once``)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._sweep_once()
            except Exception:  # noqa: BLE001 - the sweeper must survive
                log.exception("live sweeper")

    async def _sweep_once(self) -> None:
        """Release the feeds nobody wants any more; LiveRelay also drops viewers here."""
        for feed in list(self.feeds.values()):
            if not feed.wanted and feed._linger is None:
                self.maybe_release(feed)

    # -- snapshots ------------------------------------------------------------------------
    async def snapshot(self, source: CameraSource, wait_s: float = 8.0) -> tuple[bytes, float, str]:
        """The newest picture of a camera's stream as JPEG, the hub time it arrived, and the
        stream it is from (main when the camera has no sub)."""
        if self._closing:
            raise LiveError(503, "shutting down")
        feed = await self.watch(source)
        feed.lease_until = time.monotonic() + self.settings.snapshot_lease_s
        if not feed.keyframe_ready.is_set():
            try:
                await asyncio.wait_for(feed.keyframe_ready.wait(), wait_s)
            except asyncio.TimeoutError:
                raise LiveError(503, no_picture(feed)) from None
        gop = list(feed.gop)
        if not gop:
            raise LiveError(503, no_picture(feed))
        jpeg, wall = await self.loop.run_in_executor(None, feed.render_jpeg, gop, self.settings.jpeg_quality)
        return jpeg, wall, feed.stream

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        self._closing = True
        self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self._end_viewers()
        feeds = list(self.feeds.values())
        for feed in feeds:
            self._stop_feed(feed)
        await asyncio.gather(*(self.loop.run_in_executor(None, f.join, 6.0) for f in feeds),
                             self.loop.run_in_executor(None, self.stream_uris.close))

    async def _end_viewers(self) -> None:
        """At shutdown, before the feeds stop: LiveRelay closes its viewer sessions here."""


__all__ = ["Feed", "FeedRegistry"]
