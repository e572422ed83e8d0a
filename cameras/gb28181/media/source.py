"""A camera worker reading a GB/T 28181 channel (``gb28181://<device_id>/<channel_id>``): not
``av.open`` on a URL, but a ``TapStream`` consumer of the gb28181 process's ``MediaHub`` — the
hub holds the one media session of the channel, this worker is one of its consumers. The
pipeline behind it (ring, health, tamper, motion, recorder, the worker's own tap to live view)
is the one every RTSP camera has: ``GbTapReader`` feeds the same ``ReaderSink`` the way
``StreamReader`` does, with the same backoff, and keyframes-only or full decoding alike.

The gb28181 process is found by its heartbeat (``worker_heartbeats``, kind ``gb28181``,
``detail.tap``), as the API finds camera workers' taps. A state frame from the hub (the
device refused the INVITE, its media stopped) closes the connection for the pipeline with the
hub's reason; the hub itself INVITEs again — this reader only reconnects to the hub.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cameras.evidence import Segment
from cameras.gb28181.media.hub import parse_gb_url
from cameras.reader import BACKOFF_S, PacketFeed, ReaderLoop, ReaderSink, next_segment_id
from cameras.rtsp import Failure
from cameras.tap import KEEPALIVE_S, TapHeader, TapPacket, TapRefused, TapState, TapStream
from config.vocabulary import StreamProblem

log = logging.getLogger(__name__)

KIND = "gb28181"                 # the gb28181 process's heartbeat kind
HEARTBEAT_STALE_S = 15.0
NO_HUB = Failure(StreamProblem.unreachable, "the gb28181 process is not running (no live heartbeat with a media tap)")


def is_gb28181(url: str | None) -> bool:
    return bool(url) and url.lower().startswith("gb28181://")


class HubLocator:
    """Where the gb28181 process serves its channels (looked up at most every ``ttl_s``)."""

    def __init__(self, pool, key: bytes, ttl_s: float = 3.0) -> None:
        self.pool = pool
        self.key = key
        self.ttl_s = ttl_s
        self._cached: tuple[float, str | None] = (float("-inf"), None)
        self._lock = threading.Lock()

    def address(self) -> str | None:
        with self._lock:
            at, address = self._cached
            if time.monotonic() - at < self.ttl_s:
                return address
        from store.workers import heartbeats
        address = None
        try:
            with self.pool.connection(timeout=3) as conn:
                for beat in heartbeats(conn, KIND):
                    detail = beat["detail"] or {}
                    if beat["age_s"] is not None and beat["age_s"] < HEARTBEAT_STALE_S \
                            and detail.get("ready", True) and detail.get("tap"):
                        address = detail["tap"]
                        break
        except Exception as exc:        # noqa: BLE001 - the database away: no hub known, said
            log.warning("gb28181 tap lookup failed: %s", exc.__class__.__name__)
        with self._lock:
            self._cached = (time.monotonic(), address)
        return address


class GbTapReader(ReaderLoop):
    """A camera reader (cameras/reader.py ``ReaderLoop``: the thread, the backoff, stop and
    abandon; ``PacketFeed``: the packets into the pipeline) whose connection is the channel's
    stream from the gb28181 process."""

    QUIET_PHASES = ("idle", "backoff", "stopped", "waiting")     # waiting: the hub may be INVITing

    def __init__(self, camera_id: str, url: str, sink: ReaderSink, locate: Callable[[], tuple[str | None, bytes]],
                 *, decode_all: bool = False, analysis_fps: float | None = None, read_timeout_s: float = 3.0,
                 backoff: tuple[float, ...] = BACKOFF_S, tls=None) -> None:
        super().__init__(camera_id, sink, decode_all=decode_all, analysis_fps=analysis_fps, backoff=backoff)
        self.url = url
        self.device_id, self.channel_id = parse_gb_url(url)
        self.locate = locate
        self.read_timeout_s = max(read_timeout_s, 2 * KEEPALIVE_S + 1)
        self.tls = tls
        self._tap: TapStream | None = None

    def stop(self) -> None:
        super().stop()
        tap = self._tap
        if tap is not None:
            tap.close()

    # -- one connection to the hub -----------------------------------------------------------
    def read_once(self) -> int:
        self.phase = "opening"
        self.progress_at = time.monotonic()
        started = time.monotonic()
        address, key = self.locate()
        if address is None:
            self._closed(NO_HUB, 0, opened=False)
            return 0
        tap = self._tap = TapStream(address, key, f"{self.device_id}/{self.channel_id}", "main", self.url,
                                    timeout_s=self.read_timeout_s, tls=self.tls)
        frames = 0
        failure: Failure | None = None
        opened = False
        try:
            tap.open()
            frames, failure, opened = self._read(tap, started)
        except TapRefused as exc:
            failure = Failure(StreamProblem.other, f"the gb28181 process refused the channel: {exc}")
        except (OSError, ValueError) as exc:
            if not self._stop.is_set():
                failure = Failure(StreamProblem.unreachable if not opened else StreamProblem.stream_ended,
                                  f"the gb28181 process's media tap: {exc.__class__.__name__}")
        finally:
            tap.close()
            self._tap = None
        if self.abandoned:
            return frames
        if failure is None and not self._stop.is_set():
            failure = Failure(StreamProblem.stream_ended, "the gb28181 process closed the channel")
        self._closed(failure, frames, opened)
        return frames

    def _closed(self, failure: Failure | None, frames: int, opened: bool) -> None:
        self.phase = "closed"
        if failure is not None:
            self.stats.failures += 1
        self.last_failure = failure
        self.sink.on_close(failure, frames)

    def _read(self, tap: TapStream, started: float) -> tuple[int, Failure | None, bool]:
        """Until the connection to the hub ends. Returns (frames decoded, a failure, whether a
        stream opened)."""
        segment: Segment | None = None
        feed: PacketFeed | None = None
        frames = 0                  # of the connections before ``feed``'s
        opened_any = False
        sink, stop = self.sink, self._stop
        self.phase = "waiting"          # the hub may be INVITing: not stuck
        for event in tap.events():
            if stop.is_set():
                break
            if isinstance(event, TapPacket):
                if segment is None or event.packet.pts is None:
                    continue
                self.progress_at = mono = time.monotonic()
                self.stats.packets += 1
                event.packet.time_base = segment.time_base
                feed.packet(event.packet, event.wall, event.key, segment, mono)
            elif isinstance(event, TapHeader):
                if segment is not None:
                    sink.on_close(Failure(StreamProblem.stream_ended, "the channel's stream restarted"),
                                  frames + feed.frames)
                segment = Segment(next_segment_id(), event.codec, event.width, event.height, event.time_base,
                                  event.extradata, audio=event.audio, fps=event.fps)
                ctx = event.decoder()
                ctx.thread_count = 1
                if not self.decode_all:
                    ctx.skip_frame = "NONKEY"
                if feed is not None:
                    frames += feed.frames
                feed = PacketFeed(sink, ctx, self.decode_all, self.analysis_period, segment.time_base)
                self.stats.opens += 1
                self.phase = "reading"
                self.progress_at = time.monotonic()
                sink.on_open(segment, time.monotonic() - started)
            elif isinstance(event, TapState):
                failure = event.failure or Failure(StreamProblem.no_response, "the gb28181 process is inviting the channel")
                if segment is not None:
                    # the hub lost the media (it INVITEs again itself): closed for the pipeline, the
                    # connection kept, so the channel keeps its consumer and the next header reopens
                    segment = None
                    opened_any = True
                    self.phase = "waiting"
                    self.last_failure = failure
                    sink.on_close(failure, frames + feed.frames)
                elif event.failure is not None and event.failure != self.last_failure:
                    self.last_failure = event.failure
                    sink.on_close(event.failure, 0)
        return frames + (feed.frames if feed is not None else 0), None, opened_any or segment is not None


__all__ = ["GbTapReader", "HubLocator", "is_gb28181"]
