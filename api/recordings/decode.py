"""Decoding the exact frame at a moment (回放取帧) off the API's request threads.

``GET /api/recordings/{camera}/frame`` and a flag from playback decode one frame of the
recording (from the keyframe before it: a GOP at most) and encode it as JPEG. That is the
only decoding the API does, and it must not hold the request threads (or, with a thread,
the interpreter) while the wall and the health checks wait: ``FramePool`` runs it in a
bounded pool — ``XLHUB_RECORDING_DECODE_POOL`` = ``thread`` (default), ``process`` or
``inline`` (the request's own thread, as before) — with ``DECODE_WORKERS`` decoders and
``DECODE_QUEUE`` waiting at most. Beyond that the request is refused at once, 503 with
Retry-After (解码繁忙，请稍后再试), and a decode that takes longer than ``DECODE_TIMEOUT_S``
answers 503 too (the decode runs on and frees its slot when it ends).

Why threads by default (bench/recording_frame, 1280x720 H.264, 2 s GOP, 8 clients asking
for frames at once, 2 decoders, on 2 cores shared with other work, load average ~10): /healthz
p95 under that load against the decode in the request threads, three runs — thread pool
0.43×, 0.84×, 0.37×; process pool 0.79×, 0.24×, 0.31×. Both bounded pools keep the API
answering; neither wins steadily on this machine (PyAV decodes with the GIL released, and two
more processes compete for the same two cores). Threads cost no extra processes or start-up;
``process`` is there for a hub with cores to spare."""
from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from pathlib import Path

from cameras.evidence import jpeg
from cameras.recording.playback import NoFootage, frame_at
from cameras.recording.settings import RecordingSettings

RETRY_AFTER_S = 2


class DecodeBusy(Exception):
    """No decoder free and the queue full (``timeout`` False), or the decode took too long."""

    def __init__(self, text: str, timeout: bool = False) -> None:
        super().__init__(text)
        self.text, self.timeout = text, timeout


def decode_jpeg(root: Path, rows: list[dict], at: datetime, quality: int) -> tuple:
    """The frame on screen at ``at`` as JPEG: ("ok", jpeg, frame time) | ("no_footage", at,
    after) | ("gone", text). Plain values only: it runs in another process."""
    try:
        picture, shown = frame_at(root, rows, at)
    except NoFootage as exc:
        return "no_footage", exc.at, exc.after
    except FileNotFoundError as exc:
        return "gone", str(exc)
    return "ok", jpeg(picture, quality), shown


def _warm() -> None:
    """Run once in a new worker process: import PyAV and OpenCV before the first request."""


class FramePool:
    def __init__(self, kind: str = "process", workers: int = 2, queue: int = 4, timeout_s: float = 10.0) -> None:
        self.kind, self.timeout_s = kind, timeout_s
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._executor: Executor | None = None
        if kind == "process":
            # spawn: the API's threads and locks are not copied into the decoders
            self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_warm)
        elif kind == "thread":
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="xlhub-frame")

    @classmethod
    def from_settings(cls, s: RecordingSettings | None = None) -> FramePool:
        s = s or RecordingSettings()
        return cls(s.decode_pool, s.decode_workers, s.decode_queue, s.decode_timeout_s)

    def decode(self, root: Path, rows: list[dict], at: datetime, quality: int) -> tuple:
        if self._executor is None:
            return decode_jpeg(root, rows, at, quality)
        if not self._slots.acquire(blocking=False):
            raise DecodeBusy("解码繁忙，请稍后再试 (every frame decoder is busy and the queue is full: try again "
                             f"in {RETRY_AFTER_S} s)")
        try:
            future = self._executor.submit(decode_jpeg, root, rows, at, quality)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        try:
            return future.result(self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise DecodeBusy(f"解码超时，请稍后再试 (the frame was not decoded within {self.timeout_s:g} s)",
                             timeout=True) from None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
