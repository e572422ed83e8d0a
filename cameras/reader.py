"""Stream reading that never hangs.

One ``StreamReader`` thread per camera opens the stream with PyAV (FFmpeg), with a
timeout on the open and on every read: FFmpeg's interrupt callback aborts a socket that
is open but silent (a hung camera, a SIGSTOPped server) after ``read_timeout`` seconds,
where cv2.VideoCapture would sit for 30. Health does not even wait for that: it is judged
by the clock from the last packet (cameras.health), so a reader stuck anywhere — even in
a DNS lookup no timeout covers — is seen as a stall and, past ``stuck_after``, replaced
by a fresh thread.

Reconnects back off 1, 5, 10, then 60 s forever, also when the camera is unreachable at
start (``Backoff``). A connection that delivered media — one packet is enough: a keyframe
may be a whole GOP away, and a camera that streams is there — restarts the sequence at its
first step. A camera that dropped a streaming connection twice within ``FLAP_WINDOW_S`` is
flapping (a loose cable, a PoE budget, a rebooting switch): it stops at the 10 s step, since
its retries can land in its down moments by chance, and the 60 s step would then keep it
away — and offline — up to a minute after it has settled. A long step after a camera could
not be reached (refused, or no answer) is cut short: its port is knocked at every
``PROBE_S`` (a TCP connect, nothing sent) and the reader connects as soon as the port opens
— a camera back from a 30 s reboot plays within seconds, not after the rest of a 60 s step;
a port that stays open (a hung camera, a refused password) waits the step out. At most one
connect attempt a second either way, so a flapping camera cannot spin the CPU; alerts are
the health state machine's (debounced by time), not the reader's.

Two cost modes:
- keyframes only (``decode_all=False``): every packet is demuxed and kept in the evidence
  ring, but only keyframes reach the decoder (and the decoder skips non-key frames
  anyway): health and tamper for hundreds of cameras;
- full decoding (``decode_all=True``): every frame is decoded (H.264 needs them all) and
  handed to analysis at the configured rate: motion.

The stream is opened by cameras/rtsp.py (the camera's transport: auto, tcp or udp) and a
connection that fails or ends is reported to the sink as a ``Failure``: the problem a
person can act on (认证失败, 无法连接 …) and a short English detail.

Credentials are put into the URL only for the demuxer; every message this module logs or
raises goes through config.urls.redact_text.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol
from urllib.parse import urlsplit

import av

from cameras.evidence import AudioTrack, Segment
from cameras.rtsp import NO_VIDEO, STREAM_ENDED, Failure, StreamError, Transport, classify, is_rtsp, open_stream
from config.urls import redact_text
from config.vocabulary import StreamProblem
from store.backoff import CAMERA, Schedule

log = logging.getLogger(__name__)

BACKOFF_S: tuple[float, ...] = CAMERA.steps
# Two drops of a streaming connection this close together make a flapping camera. Long
# enough to span a few cycles of a camera that reboots or loses power; a single outage
# (one drop) keeps the whole schedule.
FLAP_WINDOW_S = 300.0


def backoff_delay(failures: int, backoff: tuple[float, ...] = BACKOFF_S) -> float:
    """Seconds to wait after the ``failures``-th failed (or ended) connection in a row."""
    return Schedule(backoff).delay(failures)


class Backoff:
    """The reconnect policy of one camera: ``after(delivered)`` once each connection has
    ended gives the wait before the next one (see the module docstring)."""

    def __init__(self, steps: tuple[float, ...] = BACKOFF_S, flap_window_s: float = FLAP_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.steps = steps
        self.flap_window_s = flap_window_s
        self._clock = clock
        self.failures = 0           # connections since the last one that delivered media, that one included
        self._drops: deque[float] = deque(maxlen=2)    # when the last streaming connections ended

    @property
    def flapping(self) -> bool:
        return len(self._drops) == 2 and self._clock() - self._drops[0] <= self.flap_window_s

    def after(self, delivered: bool) -> float:
        if delivered:
            self.failures = 1
            self._drops.append(self._clock())
        else:
            self.failures += 1
        failures = self.failures
        if self.flapping:
            # The last step is for a camera that has gone away, not one that keeps coming back.
            failures = min(failures, max(1, len(self.steps) - 1))
        return backoff_delay(failures, self.steps)


# A long backoff step after a camera could not be reached is cut short when its port opens:
# checked this often, with a TCP connect of at most PROBE_TIMEOUT_S (nothing is sent).
PROBE_S = 5.0
PROBE_TIMEOUT_S = 1.0
PROBED = frozenset({StreamProblem.unreachable, StreamProblem.no_response})


def probe_target(url: str | None) -> tuple[str, int] | None:
    if not url or not is_rtsp(url):
        return None
    parts = urlsplit(url)
    try:
        return (parts.hostname, parts.port or (322 if parts.scheme.lower() == "rtsps" else 554)) \
            if parts.hostname else None
    except ValueError:
        return None


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def is_live(url: str) -> bool:
    return url.lower().startswith(("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://"))


class WallClock:
    """Maps a stream's timestamps to wall-clock time (epoch seconds).

    The camera's own clock, from RTCP sender reports (FFmpeg's ``start_time_realtime``),
    is used when it agrees with the arrival times within ``max_skew_s``: it is the time
    the frame was captured, as the camera's OSD shows it. Otherwise (no RTCP yet, a file,
    a camera whose clock is wrong) the stream is anchored on arrival: wall = pts + the
    smallest (arrival − pts) seen recently, i.e. the least-delayed packet defines the
    offset, and network jitter does not move it. ``skew_s`` reports a lying camera clock.
    """

    def __init__(self, max_skew_s: float = 2.0, window_s: float = 30.0, stream_time: bool = False) -> None:
        self.max_skew_s = max_skew_s
        self.window_s = window_s
        # A recording (file) read at any speed: its own timeline, started at the first packet.
        self.stream_time = stream_time
        self.reset()

    def reset(self) -> None:
        self._rtcp_start: float | None = None
        self._prev_min = float("inf")
        self._cur_min = float("inf")
        self._window_started: float | None = None
        self.skew_s: float | None = None
        self._last_pts: float | None = None
        self._stream_origin: float | None = None

    def set_rtcp_start(self, start_s: float) -> None:
        self._rtcp_start = start_s

    @property
    def has_rtcp(self) -> bool:
        return self._rtcp_start is not None

    def observe(self, pts_s: float, arrival: float) -> float:
        """Feed one packet; returns its wall time."""
        if self.stream_time:
            if self._stream_origin is None:
                self._stream_origin = arrival - pts_s
            return pts_s + self._stream_origin
        if self._last_pts is not None and not (-5.0 < pts_s - self._last_pts < 30.0):
            # Timestamp discontinuity (camera restarted its clock): forget the anchor.
            self._prev_min = self._cur_min = float("inf")
        self._last_pts = pts_s
        if self._window_started is None or arrival - self._window_started > self.window_s:
            self._prev_min, self._cur_min = self._cur_min, float("inf")
            self._window_started = arrival
        offset = arrival - pts_s
        if offset < self._cur_min:
            self._cur_min = offset
        return self.map(pts_s)

    def map(self, pts_s: float) -> float:
        if self.stream_time and self._stream_origin is not None:
            return pts_s + self._stream_origin
        arrival_offset = min(self._prev_min, self._cur_min)
        if self._rtcp_start is not None:
            camera_wall = self._rtcp_start + pts_s
            if arrival_offset != float("inf"):
                self.skew_s = camera_wall - (pts_s + arrival_offset)
                if abs(self.skew_s) > self.max_skew_s:
                    return pts_s + arrival_offset
            return camera_wall
        return pts_s + arrival_offset


def _audio_codec(container) -> str | None:
    """The codec of the stream's audio track, if it has one (evidence clips say it was not
    kept in them)."""
    for stream in container.streams.audio:
        try:
            return stream.codec_context.name or "audio"
        except Exception:       # a codec FFmpeg does not know: there is audio all the same
            return "audio"
    return None


def _audio_track(stream) -> AudioTrack | None:
    """What the recorder needs to keep the camera's first audio stream (None: FFmpeg cannot
    say what it is)."""
    try:
        ctx = stream.codec_context
        rate = ctx.sample_rate or 0
        return AudioTrack(ctx.name, rate, ctx.channels or 1, stream.time_base or Fraction(1, rate or 8000),
                          bytes(ctx.extradata) if ctx.extradata else None)
    except Exception:       # noqa: BLE001 - an audio stream FFmpeg cannot describe: video as ever
        return None


def _split_audio(packets, index: int, tb: float, on_audio, clock: WallClock, segment: Segment):
    """The demuxed packets with the audio ones handed to ``on_audio`` (at their wall time, the
    video's mapping) and the video ones passed on: only cameras with audio go through here,
    so a video-only camera's loop is the one it always was."""
    for packet in packets:
        if packet.stream_index != index:
            yield packet
            continue
        pts = packet.pts
        if pts is None or packet.size == 0:
            continue
        wall = clock.map(pts * tb)
        if wall != float("inf"):        # before the first video packet there is no mapping yet
            on_audio(packet, wall, segment)


def _rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


class ReaderSink(Protocol):
    """What a reader feeds, all on the reader thread (keep it quick)."""

    def on_open(self, segment: Segment, open_s: float) -> None: ...
    def on_packet(self, packet: av.Packet, wall: float, key: bool, segment: Segment, mono: float) -> None: ...
    def on_frame(self, frame: av.VideoFrame, wall: float, key: bool) -> None: ...
    def on_close(self, failure: Failure | None, frames: int) -> None: ...
    def on_retry(self, delay_s: float, failures: int) -> None: ...
    # Optional: a sink with ``on_audio(packet, wall, segment)`` also gets the camera's first
    # audio stream's packets (never decoded here), unless its ``wants_audio()`` says no at a
    # connection's start; otherwise the camera's audio is not even set up (RTSP: FFmpeg's
    # ``allowed_media_types=video``), and ``Segment.audio`` is None.


class QuietSink:
    """A ReaderSink that does nothing: subclass it and override what a sink needs (tests, benches)."""

    def on_open(self, segment: Segment, open_s: float) -> None:
        pass

    def on_packet(self, packet: av.Packet, wall: float, key: bool, segment: Segment, mono: float) -> None:
        pass

    def on_frame(self, frame: av.VideoFrame, wall: float, key: bool) -> None:
        pass

    def on_close(self, failure: Failure | None, frames: int) -> None:
        pass

    def on_retry(self, delay_s: float, failures: int) -> None:
        pass


@dataclass
class ReaderStats:
    opens: int = 0
    failures: int = 0
    packets: int = 0


def next_segment_id() -> int:
    """A new connection's ``Segment`` id (unique in the process, whichever reader opened it)."""
    with ReaderLoop._segments_lock:
        ReaderLoop._segments += 1
        return ReaderLoop._segments


class PacketFeed:
    """One connection's packets into the sink, the same for every reader (RTSP here, the
    gb28181 tap in cameras/gb28181/media/source.py): each packet to ``on_packet``; keyframes
    (or, ``decode_all``, every packet) decoded; frames to ``on_frame`` at the analysis cadence.
    ``to_wall`` maps a decoded frame's stream time to wall time (None: the packet's wall time
    plus the frame's distance from the packet)."""

    __slots__ = ("sink", "ctx", "decode_all", "period", "tb", "to_wall", "frames", "next_analysis")

    def __init__(self, sink: ReaderSink, ctx, decode_all: bool, period: float, time_base: Fraction,
                 to_wall: Callable[[float], float] | None = None) -> None:
        self.sink = sink
        self.ctx = ctx
        self.decode_all = decode_all
        self.period = period
        self.tb = float(time_base)
        self.to_wall = to_wall
        self.frames = 0
        self.next_analysis = float("-inf")     # in stream seconds

    def packet(self, packet: av.Packet, wall: float, key: bool, segment: Segment, mono: float) -> None:
        self.sink.on_packet(packet, wall, key, segment, mono)
        decode_all = self.decode_all
        if not (decode_all or key):
            return
        try:
            decoded = self.ctx.decode(packet)
        except av.FFmpegError:
            return          # a corrupt packet costs one frame, not the connection
        tb = self.tb
        for frame in decoded:
            self.frames += 1
            if decode_all:
                pts_s = packet.pts * tb
                fts = frame.pts * tb if frame.pts is not None else pts_s
                if fts < self.next_analysis:
                    continue
                # A steady cadence; after a gap, restart it from this frame.
                period = self.period
                self.next_analysis = self.next_analysis + period if fts - self.next_analysis < period else fts + period
                self.sink.on_frame(frame, self.to_wall(fts) if self.to_wall is not None else wall + (fts - pts_s),
                                   frame.key_frame)
            else:
                self.sink.on_frame(frame, wall, True)


class ReaderLoop:
    """What every camera reader is around its connections: a thread that connects
    (``read_once``), backs off (``Backoff``) and connects again until ``stop``; ``abandon`` for
    a thread stuck where no timeout reaches; ``stuck_for`` for the health check. StreamReader
    (RTSP and files) and GbTapReader (cameras/gb28181/media/source.py) are its two readers."""

    _segments = 0
    _segments_lock = threading.Lock()
    QUIET_PHASES = ("idle", "backoff", "stopped")       # phases that are not a stall

    def __init__(self, camera_id: str, sink: ReaderSink, *, decode_all: bool, analysis_fps: float | None,
                 backoff: tuple[float, ...]) -> None:
        self.camera_id = camera_id
        self.sink = sink
        self.decode_all = decode_all
        self.analysis_period = 1.0 / analysis_fps if analysis_fps else 0.0
        self.backoff = backoff
        self.last_failure: Failure | None = None
        self.stats = ReaderStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.abandoned = False
        # Monotonic time of the last sign of life of the reader thread (packet, open, retry).
        self.progress_at = time.monotonic()
        self.phase = "idle"

    def read_once(self) -> int:
        raise NotImplementedError

    # -- thread --------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.camera_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def abandon(self) -> None:
        """Give up on a thread stuck where no timeout reaches (it is a daemon; when it
        wakes up it finds itself abandoned and exits without touching anything)."""
        self.abandoned = True
        self.stop()

    def stuck_for(self, now: float | None = None) -> float:
        """Seconds since the reader thread last showed life (0 when waiting to retry)."""
        if self.phase in self.QUIET_PHASES:
            return 0.0
        return (now or time.monotonic()) - self.progress_at

    def _run(self) -> None:
        policy = Backoff(self.backoff)
        while not self._stop.is_set():
            packets = self.stats.packets
            self.read_once()
            if self._stop.is_set() or self.abandoned:
                break
            delay = policy.after(delivered=self.stats.packets > packets)
            self.phase = "backoff"
            self.sink.on_retry(delay, policy.failures)
            self._wait(delay)
        self.phase = "stopped"

    def _wait(self, delay: float) -> None:
        self._stop.wait(delay)


class StreamReader(ReaderLoop):
    """Reads one camera forever (``start``), or one connection (``read_once``)."""

    def __init__(self, camera_id: str, url: Callable[[], str] | str, sink: ReaderSink, *,
                 decode_all: bool = False, analysis_fps: float | None = None,
                 open_timeout_s: float = 5.0, read_timeout_s: float = 3.0,
                 backoff: tuple[float, ...] = BACKOFF_S, clock: WallClock | None = None,
                 pace: bool = False, transport: Transport | str = "auto") -> None:
        super().__init__(camera_id, sink, decode_all=decode_all, analysis_fps=analysis_fps, backoff=backoff)
        self._url = url if callable(url) else (lambda u=url: u)
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.clock = clock or WallClock()
        self.pace = pace
        self.transport = transport if isinstance(transport, Transport) else Transport(transport)
        self._probe: tuple[str, int] | None = None

    def _wait(self, delay: float) -> None:
        """Wait ``delay`` before the next connection; on a long wait after a camera could not
        be reached, knock at its port every PROBE_S and come back as soon as it opens (a
        camera back from a 30 s reboot is not left offline for the rest of a 60 s step).
        A port that was already open (a hung camera, a refused password) waits it out."""
        failure = self.last_failure
        target = self._probe if delay > PROBE_S and failure is not None and failure.problem in PROBED else None
        if target is None:
            self._stop.wait(delay)
            return
        end = time.monotonic() + delay
        was_open = failure.problem is not StreamProblem.unreachable and port_open(*target)
        while not self._stop.wait(min(PROBE_S, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end:
                return
            if port_open(*target):
                if not was_open:
                    log.info("camera %s: its port answers again, connecting now", self.camera_id)
                    return
            else:
                was_open = False

    def _wants_audio(self) -> bool:
        """Set up the camera's audio for this connection? Only for a sink that takes it
        (``on_audio``) and, if it says (``wants_audio()``), wants it now: audio nobody keeps
        is not even received."""
        if getattr(self.sink, "on_audio", None) is None:
            return False
        wants = getattr(self.sink, "wants_audio", None)
        return bool(wants()) if wants is not None else True

    # -- one connection ------------------------------------------------------------
    def read_once(self) -> int:
        """Open, read until the stream ends, fails or ``stop``; returns frames decoded."""
        self.phase = "opening"
        self.progress_at = time.monotonic()
        started = time.monotonic()
        container = None
        frames = 0
        failure: Failure | None = None
        try:
            url = self._url()
            self.clock.stream_time = not is_live(url)
            self._probe = probe_target(url)     # where to knock during a long backoff (no credentials)
            container = open_stream(url, self.transport, self.open_timeout_s, self.read_timeout_s,
                                    audio=self._wants_audio())
            del url
            if self.abandoned:
                return 0
            frames = self._read(container, started)
        except StreamError as exc:
            failure = exc.failure
            self.stats.failures += 1
        except IndexError:          # no video stream
            failure = NO_VIDEO
            self.stats.failures += 1
        except (av.FFmpegError, OSError) as exc:
            failure = classify(exc, time.monotonic() - started, self.read_timeout_s)
            self.stats.failures += 1
        except Exception as exc:     # a bug in analysis must not end the camera's reading
            failure = classify(exc)
            self.stats.failures += 1
            log.error("camera %s: reader failed: %s\n%s", self.camera_id, failure,
                      redact_text("".join(traceback.format_exception(exc))))
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception:
                    pass
            self.phase = "closed"
        if not self.abandoned:
            if failure is None and not self._stop.is_set():
                failure = STREAM_ENDED
            self.last_failure = failure
            self.sink.on_close(failure, frames)
        return frames

    def _read(self, container, started: float) -> int:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1            # hundreds of cameras per process: no per-camera thread pools
        if not self.decode_all:
            ctx.skip_frame = "NONKEY"
        tb = stream.time_base or Fraction(1, 90000)
        on_audio = getattr(self.sink, "on_audio", None)
        astream = container.streams.audio[0] if on_audio is not None and container.streams.audio else None
        track = _audio_track(astream) if astream is not None else None
        segment = Segment(next_segment_id(), ctx.name, ctx.width, ctx.height, tb, bytes(ctx.extradata) if ctx.extradata else None,
                          audio=_audio_codec(container), fps=_rate(stream), audio_track=track)
        tb_f = float(tb)
        self.stats.opens += 1
        self.clock.reset()
        self.phase = "reading"
        self.progress_at = time.monotonic()
        self.sink.on_open(segment, time.monotonic() - started)

        clock, stop, stats = self.clock, self._stop, self.stats
        feed = PacketFeed(self.sink, ctx, self.decode_all, self.analysis_period, tb, clock.map)
        rtcp_checks = 0 if not clock.stream_time else 2000     # live streams: look for RTCP a while
        pace_origin: tuple[float, float] | None = None
        wall_clock, mono_clock = time.time, time.monotonic
        if track is None:
            packets = container.demux(stream)
        else:
            packets = _split_audio(container.demux(stream, astream), astream.index, float(track.time_base), on_audio,
                                   clock, segment)
        for packet in packets:
            if stop.is_set():
                break
            pts = packet.pts
            if pts is None or packet.size == 0:
                continue
            now = wall_clock()
            self.progress_at = mono = mono_clock()
            stats.packets += 1
            if rtcp_checks < 2000:
                rtcp_checks += 1
                rt = container.start_time_realtime
                if rt:
                    clock.set_rtcp_start(rt / 1_000_000)
                    rtcp_checks = 2000
            pts_s = pts * tb_f
            if self.pace:       # a file read as if live (tests, demos)
                if pace_origin is None:
                    pace_origin = (now, pts_s)
                ahead = (pts_s - pace_origin[1]) - (now - pace_origin[0])
                if ahead > 0 and stop.wait(ahead):
                    break
                now = time.time()
            feed.packet(packet, clock.observe(pts_s, now), packet.is_keyframe, segment, mono)
        return feed.frames
