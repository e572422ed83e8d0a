"""Camera health: the state machine on a controlled clock (debounce, maintenance, frozen),
then against a real RTSP server that is killed (SIGKILL) and frozen (SIGSTOP): offline
within the configured time, back online by itself when the server returns."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest

from cameras.config import CameraAnalytics, CameraSpec, HealthConfig
from cameras.health import HealthMonitor, State
from cameras.rtsp import Failure, classify
from config.vocabulary import StreamProblem
from cameras.sim.server import SimRtspServer
from cameras.pipeline import CameraPipeline


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


CFG = HealthConfig(stall_s=3, offline_s=10, recover_s=5, frozen_s=12)


def monitor(**kw) -> tuple[HealthMonitor, Clock]:
    clock = Clock()
    h = HealthMonitor("cam", CFG, mono=clock, wall=lambda: 1_800_000_000 + clock.t, **kw)
    return h, clock


def stream(h: HealthMonitor, clock: Clock, seconds: float, fps: float = 10, tick_every: float = 0.5,
           picture=None) -> list:
    """Packets at ``fps`` (and pictures each second) for ``seconds``, ticking as the worker does."""
    events, next_tick, next_pic = [], clock.t, clock.t
    end = clock.t + seconds
    while clock.t < end:
        h.packet(1000, False, 1_800_000_000 + clock.t)
        if picture is not None and clock.t >= next_pic:
            h.picture(picture(), uniform=False)
            next_pic += 1.0
        if clock.t >= next_tick:
            events += h.tick()
            next_tick += tick_every
        clock.t += 1.0 / fps
    return events


def silence(h: HealthMonitor, clock: Clock, seconds: float, tick_every: float = 0.5) -> list:
    events = []
    end = clock.t + seconds
    while clock.t < end:
        clock.t += tick_every
        events += h.tick()
    return events


def types(events) -> list[str]:
    return [e.type for e in events]


def test_short_stall_is_a_suspect_blip_without_alert():
    h, clock = monitor()
    h.opened(0.3)
    assert stream(h, clock, 5) == [] and h.state == State.online
    assert silence(h, clock, 5) == [] and h.state == State.suspect
    assert stream(h, clock, 2) == [] and h.state == State.online


def test_outage_goes_offline_once_and_recovers_after_debounce():
    h, clock = monitor()
    h.opened(0.3)
    stream(h, clock, 5)
    last_frame = h.last_packet_wall
    events = silence(h, clock, 9.4)
    assert events == [] and h.state == State.suspect
    events = silence(h, clock, 1.0)
    assert types(events) == ["camera.offline"] and h.state == State.offline
    assert events[0].at == last_frame and events[0].snapshot == "latest"
    assert silence(h, clock, 60) == [], "one alert per outage"
    h.closed(Failure(StreamProblem.no_response, "no data for 3 s"))
    h.opened(1.2)
    events = stream(h, clock, 2)                 # flapping: back briefly …
    assert events == [] and h.state == State.recovering
    assert silence(h, clock, 4) == [] and h.state == State.offline      # … and gone again: no new alert
    events = stream(h, clock, 6)
    assert types(events) == ["camera.online"] and h.state == State.online
    assert events[0].detail["down_s"] >= 70 and events[0].detail["reconnects"] == 1


def test_camera_unreachable_from_start_goes_offline():
    h, clock = monitor()
    assert silence(h, clock, 9.5) == []
    assert h.problem() is None, "still connecting: no problem to tell yet"
    h.closed(classify(av.error.ConnectionRefusedError(111, "Connection refused", "rtsp://u:p@10.0.0.5/x")))
    assert h.problem().problem is StreamProblem.unreachable
    events = silence(h, clock, 1)
    assert types(events) == ["camera.offline"]
    detail = events[0].detail
    assert detail["never_connected"] and "refused" in detail["reason"] and "u:p" not in detail["reason"]
    assert (detail["problem"], detail["problem_label"]) == ("unreachable", "无法连接")
    assert h.telemetry()["problem"] == "unreachable"
    # the camera's problem changes (now something answers, and refuses the password): so does the reason
    h.closed(classify(av.error.HTTPUnauthorizedError(0, "Server returned 401 Unauthorized", "rtsp://x/y")))
    assert h.telemetry()["problem"] == "auth_failed" and silence(h, clock, 5) == []
    assert events[0].snapshot == "none"


def test_maintenance_suppresses_alerts_and_reraises_an_ongoing_outage():
    h, clock = monitor(maintenance=True)
    h.opened(0.3)
    stream(h, clock, 3)
    assert silence(h, clock, 20) == [] and h.shown_state == "maintenance"
    assert types(h.set_maintenance(False)) == ["camera.offline"]
    assert silence(h, clock, 5) == []


def test_frozen_picture_while_frames_flow():
    h, clock = monitor()
    h.opened(0.3)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (45, 80)).astype(np.uint8)
    live = lambda: np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)  # noqa: E731
    assert stream(h, clock, 20, picture=live) == []
    frozen = live()
    events = stream(h, clock, 11, picture=lambda: frozen)
    assert events == []
    events = stream(h, clock, 3, picture=lambda: frozen)
    assert types(events) == ["camera.frozen"] and h.shown_state == "frozen"
    events = stream(h, clock, 3, picture=live)
    assert types(events) == ["camera.frozen.cleared"] and h.shown_state == "online"


def test_uniform_picture_is_not_frozen():
    h, clock = monitor()
    h.opened(0.3)
    flat = np.full((45, 80), 16, np.uint8)
    for _ in range(30):
        h.packet(1000, True, 1_800_000_000 + clock.t)
        h.picture(flat, uniform=True)
        clock.t += 1
        assert [e for e in h.tick() if e.type == "camera.frozen"] == []


def test_telemetry_figures():
    h, clock = monitor()
    h.opened(0.25)
    h.telemetry()
    for i in range(100):          # 10 s at 10 fps, 4 kB per frame, a keyframe every 2 s
        h.packet(4000, i % 20 == 0, 1_800_000_000 + clock.t)
        clock.t += 0.1
    t = h.telemetry()
    assert t["state"] in ("starting", "online")
    assert t["fps"] == pytest.approx(10, rel=0.05)
    assert t["bitrate_kbps"] == pytest.approx(320, rel=0.05)
    assert t["keyframe_interval"] == pytest.approx(2.0, rel=0.05)
    assert t["ttff_ms"] == pytest.approx(250, abs=1)
    assert t["reconnects"] == 0 and t["last_frame_age_ms"] == pytest.approx(100, abs=1)


# --------------------------------------------------------------------------- real server
@pytest.fixture()
def sim_camera():
    sim = SimRtspServer([{"path": "/h1", "width": 320, "height": 180, "fps": 10, "gop": 10}])
    sim.start()
    yield sim
    sim.close()


def run_pipeline(spec: CameraSpec):
    events: list = []
    seen = threading.Condition()

    def emit(ev):
        with seen:
            events.append((time.monotonic(), ev))
            seen.notify_all()

    jobs = ThreadPoolExecutor(2)
    p = CameraPipeline(spec, emit=emit, store=None, jobs=jobs)
    stop = threading.Event()

    def ticker():
        while not stop.wait(0.25):
            p.tick()

    t = threading.Thread(target=ticker, daemon=True)
    p.start()
    t.start()

    def wait_for(type_: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with seen:
            while True:
                hit = next((at for at, ev in events if ev.type == type_), None)
                if hit is not None or time.monotonic() > deadline:
                    return hit
                seen.wait(0.2)

    def close():
        stop.set()
        p.stop()
        p.reader.join(5)
        jobs.shutdown()

    return p, events, wait_for, close


def wait_state(p: CameraPipeline, state: State, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.health.state == state:
            return True
        time.sleep(0.1)
    return False


def test_killed_and_frozen_server_go_offline_in_time_and_recover_alone(sim_camera):
    sim = sim_camera
    cfg = CameraAnalytics.model_validate({"health": {"stall_s": 2, "offline_s": 5, "recover_s": 2,
                                                     "open_timeout_s": 3, "read_timeout_s": 2},
                                          "tamper": {"enabled": False}})
    p, events, wait_for, close = run_pipeline(CameraSpec(id="cam-h1", url=sim.url("/h1"), analytics=cfg))
    try:
        assert wait_state(p, State.online, 10), p.health.failure

        # SIGKILL: connection reset; offline after offline_s without frames.
        killed = time.monotonic()
        sim.kill()
        offline = wait_for("camera.offline", 10)
        assert offline is not None and offline - killed <= 5 + 1.5, offline and offline - killed
        sim.restart()
        online = wait_for("camera.online", 25)     # retries at +1, +6, +16 s after the outage
        assert online is not None, p.health.failure
        assert p.health.state == State.online

        # SIGSTOP: the socket stays open and silent; the read times out in seconds.
        events.clear()
        reads_failed = p.reader.stats.failures
        stopped = time.monotonic()
        sim.pause()
        offline = wait_for("camera.offline", 10)
        assert offline is not None and offline - stopped <= 5 + 1.5
        assert p.reader.stats.failures > reads_failed, "the hung read was abandoned, not waited for 30 s"
        assert p.health.failure.problem is StreamProblem.no_response, p.health.failure
        sim.resume()
        online = wait_for("camera.online", 25)
        assert online is not None and p.health.state == State.online
        assert [ev.type for _, ev in events] == ["camera.offline", "camera.online"]
    finally:
        close()
