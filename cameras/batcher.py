"""Analysis of every camera of a worker in one thread, in batches (分析批处理).

A reader thread that analyses the frame it has just decoded runs the analysis with cold
CPU caches: the decoder has just filled them with a picture and its reference frames,
and dozens of other readers ran since this camera's last analysis. Measured on the
camera benchmark (60 cameras, motion at 5 fps), the same motion analysis costs 80–106 µs
there and 20 µs back to back; the analysis was a quarter of the decode.

So a reader only hands its frame over (a reference: PyAV frames are reference-counted,
the decoder takes a fresh buffer for the next one), and one thread per worker wakes every
``period_s`` and analyses what came in, camera after camera, with warm caches. Frames of
one camera are analysed in the order they were decoded; an event leaves at most
``period_s`` later than it would have, and carries the frame's own time and picture.

Why 0.5 s: the longer the batch, the warmer the analysis (the benchmark, hub / bare decode
at 0.1 → 0.5 s: 20 keyframe-only cameras 1.26–1.37 → 1.09–1.16×, 200 of them 1.14 →
1.12×, 60 motion cameras 1.19 → 1.16×), while half a second is nothing next to the
second or so an RTSP stream is already behind the scene. The frames held meanwhile are
a few per camera (a motion camera at 5 analysed frames a second: 2–3).

The backlog is bounded (three periods of every camera's frames): when analysis falls behind
(a CPU-starved machine), new frames are dropped, counted per camera (``analysis_dropped``),
and a warning is logged once a minute, so memory stays bounded by ``max_pending`` frames.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Protocol

import av

log = logging.getLogger(__name__)

PERIOD_S = 0.5
BACKLOG_PERIODS = 3             # a camera's share of the backlog bound: three periods of its frames
WARN_EVERY_S = 60.0


class Analysed(Protocol):
    camera_id: str
    analysis_dropped: int

    def analyse(self, frame: av.VideoFrame, wall: float, key: bool) -> None: ...


class AnalysisBatcher:
    """One analysis thread for many cameras: ``submit`` from reader threads, ``analyse``
    called on the batcher's thread."""

    def __init__(self, name: str = "analysis", *, period_s: float = PERIOD_S, max_pending: int = 64) -> None:
        self.name = name
        self.period_s = period_s
        self.max_pending = max_pending
        self._queue: deque[tuple[Analysed, av.VideoFrame, float, bool]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.analysed = 0
        self.failures = 0
        self._targets: list[Analysed] = []
        self._share = 0
        self._failure_logged: dict[str, float] = {}
        self._dropped_warned = 0
        self._warned_at = float("-inf")

    def register(self, target: Analysed, frames_per_s: float) -> None:
        """A camera whose frames will come, at about ``frames_per_s``: the backlog bound
        grows by three periods of them (and at least two frames)."""
        self._targets.append(target)
        self._share += max(2, math.ceil(BACKLOG_PERIODS * frames_per_s * self.period_s))
        self.max_pending = max(self.max_pending, self._share)

    def unregister(self, target: Analysed) -> None:
        """A camera stopped (a registry change): its frames still queued are analysed, no more come."""
        if target in self._targets:
            self._targets.remove(target)

    @property
    def dropped(self) -> int:
        return sum(t.analysis_dropped for t in self._targets)

    def start(self) -> AnalysisBatcher:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Analyse what is queued, then end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, target: Analysed, frame: av.VideoFrame, wall: float, key: bool) -> bool:
        """From a reader thread: queue the frame (False: dropped, analysis is behind)."""
        if len(self._queue) >= self.max_pending:
            target.analysis_dropped += 1     # only this camera's reader thread writes it
            return False
        self._queue.append((target, frame, wall, key))
        return True

    def drain(self) -> int:
        """Analyse everything queued now; returns how many frames were analysed."""
        queue, n = self._queue, 0
        while queue:
            target, frame, wall, key = queue.popleft()
            try:
                target.analyse(frame, wall, key)
            except Exception:       # one camera's bad frame must not stop the others' analysis
                self.failures += 1
                now = time.monotonic()
                if now - self._failure_logged.get(target.camera_id, float("-inf")) >= WARN_EVERY_S:
                    self._failure_logged[target.camera_id] = now
                    log.exception("camera %s: analysis failed (logged once a minute)", target.camera_id)
            n += 1
        self.analysed += n
        return n

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.drain()
            self._warn_drops()
        self.drain()

    def _warn_drops(self) -> None:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            return
        dropped = self.dropped
        if dropped > self._dropped_warned:
            log.warning("%s: analysis is behind, %d frames not analysed in the last minute (the CPU is short)",
                        self.name, dropped - self._dropped_warned)
            self._dropped_warned = dropped
            self._warned_at = now
