"""A simulated speaker playing a live stream (实时喊话) as an IP speaker does: one HTTP GET
of the ``audio_url`` with its own credentials, the MP3 decoded frame by frame as the bytes
arrive (PyAV), until the hub ends the stream.

What it "played" is kept (``pcm``: float samples, ``arrivals``: for each decoded block the
wall-clock time its bytes arrived and the sample index it starts at), so tests check the
tone a browser's microphone sent and the benchmark measures microphone-to-speaker latency.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class LiveListener:
    def __init__(self, url: str, auth: tuple[str, str] | None, on_end: Callable[[str | None], None],
                 read_timeout_s: float = 30.0, headers: dict | None = None):
        self.url, self.auth, self.on_end, self.headers = url, auth, on_end, headers
        self.read_timeout_s = read_timeout_s
        self.sample_rate: int | None = None
        self.blocks: list[np.ndarray] = []
        self.arrivals: list[tuple[float, int]] = []     # (wall time the bytes arrived, first sample index)
        self.samples = 0
        self.bytes = 0
        self.connected_at: float | None = None
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-live-listener", daemon=True)

    def start(self) -> "LiveListener":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop playing (preempted): the connection is dropped at the next bytes."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def pcm(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=np.float32)

    def _decode(self, codec, data: bytes | None, at: float) -> None:
        for packet in codec.parse(data):
            for frame in codec.decode(packet):
                arr = frame.to_ndarray()
                if arr.dtype.kind == "i":
                    arr = arr.astype(np.float32) / np.iinfo(arr.dtype).max
                mono = arr.reshape(len(frame.layout.channels), -1).mean(axis=0) if frame.format.is_planar \
                    else arr.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                self.sample_rate = frame.sample_rate
                self.arrivals.append((at, self.samples))
                self.blocks.append(mono.astype(np.float32))
                self.samples += mono.size

    def _run(self) -> None:
        import av
        import httpx
        problem: str | None = None
        try:
            with httpx.stream("GET", self.url, auth=self.auth, headers=self.headers,
                              timeout=httpx.Timeout(10.0, read=self.read_timeout_s)) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    r.read()
                    problem = f"live stream refused: HTTP {r.status_code}"
                else:
                    self.connected_at = time.time()
                    codec = av.CodecContext.create("mp3", "r")
                    for chunk in r.iter_raw():
                        if self._stop.is_set():
                            return                 # preempted: the speaker reported it already
                        self.bytes += len(chunk)
                        self._decode(codec, chunk, time.time())
                    self._decode(codec, None, time.time())
        except httpx.HTTPError as exc:
            problem = f"live stream broken: {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001 - a speaker reports what went wrong, it does not crash
            problem = f"live stream undecodable: {type(exc).__name__}: {exc}"[:200]
        if not self._stop.is_set():
            self.on_end(problem)
