"""Stream reading against a real RTSP server: the two cost modes, frame times that match
the camera's own timestamps, reconnecting with backoff to a camera that is not there at
start, and credentials that never reach a log line or an error."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.reader import BACKOFF_S, FLAP_WINDOW_S, Backoff, StreamReader, WallClock, backoff_delay
from cameras.rtsp import classify
from cameras.sim.server import SimRtspServer, decode_timestamp_strip, free_port
from cameras.pipeline import CameraPipeline
from config.vocabulary import StreamProblem

PASSWORD = "Cam-pass-7Q!x/@:"      # characters that need quoting in a URL


@pytest.fixture(scope="module")
def sim():
    server = SimRtspServer([
        {"path": "/plain", "width": 320, "height": 180, "fps": 10, "gop": 10},
        {"path": "/locked", "width": 320, "height": 180, "fps": 10, "gop": 10,
         "username": "admin", "password": PASSWORD},
    ])
    server.start()
    yield server
    server.close()


class Sink:
    def __init__(self) -> None:
        self.packets = 0
        self.keys = 0
        self.frames: list[tuple[float, bool, int | None]] = []
        self.opened = threading.Event()
        self.closes: list[str | None] = []
        self.retries: list[float] = []

    def on_open(self, segment, open_s):
        self.segment = segment
        self.opened.set()

    def on_packet(self, packet, wall, key, segment, mono):
        self.packets += 1
        self.keys += key

    def on_frame(self, frame, wall, key):
        ms = decode_timestamp_strip(frame.to_ndarray(format="gray"))
        self.frames.append((wall, key, ms))

    def on_close(self, reason, frames):
        self.closes.append(reason)

    def on_retry(self, delay_s, failures):
        self.retries.append(delay_s)


def read_for(url: str, seconds: float, **kw) -> Sink:
    sink = Sink()
    reader = StreamReader("cam", url, sink, **kw).start()
    time.sleep(seconds)
    reader.stop()
    reader.join(5)
    return sink


def test_keyframe_only_mode_decodes_keyframes_but_keeps_every_packet(sim):
    sink = read_for(sim.url("/plain"), 4.5)
    assert sink.packets >= 30
    assert 3 <= len(sink.frames) <= sink.keys + 1, "only keyframes reach analysis"
    assert all(key for _, key, _ in sink.frames)


def test_full_decode_mode_analyses_at_the_set_rate(sim):
    sink = read_for(sim.url("/plain"), 4.5, decode_all=True, analysis_fps=4)
    span = sink.frames[-1][0] - sink.frames[0][0]
    rate = (len(sink.frames) - 1) / span
    assert 3.3 <= rate <= 4.7, rate
    assert any(not key for _, key, _ in sink.frames)


def test_frame_times_match_the_camera_timestamps(sim):
    sink = read_for(sim.url("/plain"), 8, decode_all=True, analysis_fps=10)
    errors = [wall - ms / 1000 for wall, _, ms in sink.frames if ms is not None]
    assert len(errors) >= 50
    late = errors[-len(errors) // 4:]          # after the first RTCP sender report (3–4 s in)
    assert max(abs(e) for e in late) < 0.1, late
    assert max(abs(e) for e in errors) < 0.3, "before RTCP: anchored on arrival, within the pipeline latency"


def test_wall_clock_ignores_a_lying_camera_clock_and_network_jitter():
    clock = WallClock(max_skew_s=2.0)
    clock.set_rtcp_start(1_000_000.0 - 3600)   # camera clock an hour behind
    rng = np.random.default_rng(3)
    walls = [clock.observe(i * 0.1, 1_000_000.0 + i * 0.1 + 0.05 + rng.exponential(0.05)) for i in range(200)]
    assert clock.skew_s == pytest.approx(-3600, abs=1)
    assert walls[-1] == pytest.approx(1_000_000.0 + 199 * 0.1 + 0.05, abs=0.02), "anchored on the least-delayed packet"


def test_backoff_is_1_5_10_then_60_forever():
    assert BACKOFF_S == (1.0, 5.0, 10.0, 60.0)
    assert [backoff_delay(n) for n in range(1, 8)] == [1, 5, 10, 60, 60, 60, 60]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_camera_that_streamed_then_went_away_follows_the_whole_schedule():
    clock = FakeClock()
    policy = Backoff(clock=clock)
    waits = [policy.after(delivered=True)]
    for _ in range(5):
        clock.now += waits[-1]
        waits.append(policy.after(delivered=False))
    assert waits == [1, 5, 10, 60, 60, 60]


def test_media_restarts_the_schedule_and_a_flapping_camera_never_reaches_the_60s_step():
    clock = FakeClock()
    policy = Backoff(clock=clock)
    # Unreachable at start: the whole schedule.
    assert [policy.after(delivered=False) for _ in range(5)] == [1, 5, 10, 60, 60]
    # It streamed a while (one packet is enough, no keyframe needed) and dropped: back to 1 s.
    clock.now += 60
    assert policy.after(delivered=True) == 1
    # Then it drops again and again; its retries happen to land in its down moments.
    clock.now += 40
    waits = [policy.after(delivered=True)]
    for _ in range(6):
        clock.now += waits[-1]
        waits.append(policy.after(delivered=False))
    assert waits == [1, 5, 10, 10, 10, 10, 10]
    # Gone for good: once its last drops are older than the flap window, the 60 s step.
    clock.now += FLAP_WINDOW_S
    assert policy.after(delivered=False) == 60


def test_unreachable_at_start_keeps_retrying_and_connects_when_the_camera_appears():
    port = free_port()
    sink = Sink()
    late = SimRtspServer([{"path": "/late", "width": 320, "height": 180, "fps": 10, "gop": 10}], port=port)
    reader = StreamReader("cam", late.url("/late"), sink, open_timeout_s=3, read_timeout_s=2).start()
    try:
        time.sleep(2.0)                          # refused at 0 s and 1 s
        assert sink.retries[:2] == [1.0, 5.0] and not sink.opened.is_set()
        assert all(r.problem is StreamProblem.unreachable and "refused" in r.detail for r in sink.closes)
        late.start()                             # next try at 6 s
        assert sink.opened.wait(8), sink.closes
        deadline = time.monotonic() + 5
        while sink.packets == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.packets > 0, sink.closes
    finally:
        reader.stop()
        reader.join(5)
        late.close()


def test_credentials_never_appear_in_logs_or_errors(sim, caplog):
    caplog.set_level(logging.DEBUG)
    av.logging.set_level(av.logging.VERBOSE)     # FFmpeg's own messages too, through Python logging
    try:
        for password in ("wrong-" + PASSWORD, PASSWORD):
            spec = CameraSpec(id="cam-locked", url=sim.url("/locked"), username="admin", password=password,
                              analytics=CameraAnalytics.model_validate({"tamper": {"enabled": False}}))
            assert PASSWORD not in repr(spec) and PASSWORD not in spec.shown_url
            jobs = ThreadPoolExecutor(1)
            p = CameraPipeline(spec, emit=lambda ev: None, store=None, jobs=jobs)
            p.start()
            time.sleep(2.5)
            p.stop()
            p.reader.join(5)
            jobs.shutdown()
            if password == PASSWORD:
                assert p.health.packets > 0, p.health.failure
            else:
                failure = p.health.failure
                assert p.health.packets == 0
                assert failure.problem is StreamProblem.auth_failed, failure
                assert "Unauthorized" in failure.detail and "wrong-" not in str(failure), failure
    finally:
        av.logging.set_level(None)
    text = caplog.text
    for secret in (PASSWORD, "wrong-", "Cam-pass", "Cam%2Dpass"):
        assert secret not in text
    assert "cam-locked" in text, "the camera is named in the logs"


def test_error_descriptions_are_redacted():
    exc = av.error.HTTPUnauthorizedError(0, "Server returned 401 Unauthorized",
                                          "rtsp://admin:s3cret@10.0.0.5/stream")
    failure = classify(exc)
    assert failure.problem is StreamProblem.auth_failed and failure.label == "认证失败"
    assert "s3cret" not in str(failure) and "401" in failure.detail
