"""The analysis batcher: frames handed over by reader threads, analysed on one thread, per
camera in decode order, with a bounded backlog and failures kept to their camera."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import pytest

from cameras.batcher import AnalysisBatcher
from cameras.config import CameraAnalytics, CameraSpec
from cameras.sim.server import MOTION_BAND, encode_scene_file
from cameras.pipeline import CameraPipeline


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    return encode_scene_file(tmp_path_factory.mktemp("batcher") / "street.mp4", 6, width=320, height=180,
                             fps=10, gop=20, scene="motion", seed=5)


@pytest.fixture(scope="module")
def frames(street):
    with av.open(str(street)) as c:
        return [f for _, f in zip(range(12), c.decode(video=0))]


class Camera:
    def __init__(self, camera_id: str, fail_on: set[int] = frozenset()) -> None:
        self.camera_id = camera_id
        self.analysis_dropped = 0
        self.seen: list[tuple[int, float, str]] = []
        self.fail_on = fail_on

    def analyse(self, frame, wall, key) -> None:
        if frame.pts in self.fail_on:
            raise ValueError(f"bad picture {frame.pts}")
        self.seen.append((frame.pts, wall, threading.current_thread().name))


def test_frames_are_analysed_on_the_batch_thread_in_decode_order_per_camera(frames):
    batcher = AnalysisBatcher("t-analysis", period_s=0.05).start()
    cams = [Camera(f"cam-{i}") for i in range(3)]
    for c in cams:
        batcher.register(c, 5.0)

    def reader(cam: Camera) -> None:
        for i, f in enumerate(frames):
            assert batcher.submit(cam, f, 1000.0 + i, f.key_frame)

    threads = [threading.Thread(target=reader, args=(c,)) for c in cams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while batcher.analysed < 3 * len(frames) and time.monotonic() < deadline:
        time.sleep(0.02)
    batcher.stop()
    for c in cams:
        assert [pts for pts, _, _ in c.seen] == [f.pts for f in frames]
        assert [w for _, w, _ in c.seen] == [1000.0 + i for i in range(len(frames))]
        assert {name for _, _, name in c.seen} == {"t-analysis"}
    assert batcher.dropped == 0 and batcher.pending == 0


def test_a_failing_frame_is_logged_and_the_other_cameras_go_on(frames, caplog):
    batcher = AnalysisBatcher("t-analysis")
    bad, good = Camera("cam-bad", fail_on={frames[2].pts, frames[3].pts}), Camera("cam-good")
    for c in (bad, good):
        batcher.register(c, 5.0)
    for f in frames[:6]:
        batcher.submit(bad, f, 0.0, False)
        batcher.submit(good, f, 0.0, False)
    with caplog.at_level(logging.ERROR, logger="cameras.batcher"):
        assert batcher.drain() == 12
    assert len(good.seen) == 6
    assert [pts for pts, _, _ in bad.seen] == [f.pts for i, f in enumerate(frames[:6]) if i not in (2, 3)]
    assert batcher.failures == 2
    # logged with the camera and the reason, once a minute per camera (not once per frame)
    failures = [r for r in caplog.records if "cam-bad" in r.getMessage()]
    assert len(failures) == 1 and "bad picture" in failures[0].exc_text


def test_the_backlog_is_bounded_and_drops_are_counted_per_camera(frames):
    batcher = AnalysisBatcher("t-analysis", period_s=0.5, max_pending=4)
    cams = [Camera(f"cam-{i}") for i in range(3)]
    batcher.register(cams[0], 5.0)          # three periods of 2.5 frames: 8
    assert batcher.max_pending == 8
    batcher.register(cams[1], 30.0)         # a 30 fps motion camera: 45 more
    batcher.register(cams[2], 0.5)          # keyframes every 2 s: at least 2
    assert batcher.max_pending == 8 + 45 + 2
    n = batcher.max_pending + 5
    accepted = [batcher.submit(cams[0], frames[i % len(frames)], float(i), False) for i in range(n)]
    assert accepted.count(False) == 5 and not any(accepted[batcher.max_pending:])
    assert cams[0].analysis_dropped == 5 and cams[1].analysis_dropped == 0 and batcher.dropped == 5
    assert not batcher.submit(cams[1], frames[0], 0.0, False) and cams[1].analysis_dropped == 1
    assert batcher.drain() == batcher.max_pending and batcher.pending == 0
    assert batcher.submit(cams[1], frames[0], 0.0, False)        # caught up: accepted again


def test_stop_analyses_what_was_handed_over(frames):
    batcher = AnalysisBatcher("t-analysis", period_s=60).start()     # would not wake on its own
    cam = Camera("cam-0")
    batcher.register(cam, 5.0)
    for f in frames[:5]:
        batcher.submit(cam, f, 0.0, False)
    batcher.stop()
    assert len(cam.seen) == 5


def test_a_camera_pipeline_hands_its_frames_to_the_batcher_and_motion_is_raised_from_there(street):
    """The worker's arrangement, on a file paced as a live camera: motion in the road band
    is found on the batcher's thread, and the event carries the analysed frame's time."""
    road = [[0.0, MOTION_BAND[0]], [1.0, MOTION_BAND[0]], [1.0, MOTION_BAND[1]], [0.0, MOTION_BAND[1]]]
    analytics = CameraAnalytics.model_validate({"motion": {"enabled": True, "fps": 5, "cooldown_s": 0,
                                                           "zones": [{"name": "road", "polygon": road}]}})
    events = []
    raised_on = []
    batcher = AnalysisBatcher("t-analysis", period_s=0.1).start()
    with ThreadPoolExecutor(2) as jobs:
        p = CameraPipeline(CameraSpec(id="cam-batched", url=str(street), analytics=analytics),
                           emit=events.append, store=None, jobs=jobs, batcher=batcher)
        raise_event = p.raise_event

        def spy(type_, at, *a, **kw):
            raised_on.append((type_, threading.current_thread().name))
            return raise_event(type_, at, *a, **kw)

        p.raise_event = spy
        p.reader.read_once()
        batcher.stop()
    assert p.analysed_frames >= 20          # 6 s at 5 analysed frames/s, less the first
    assert ("camera.motion", "t-analysis") in raised_on
    assert all(name == "t-analysis" for _, name in raised_on)
    motion = [e for e in events if e.type == "camera.motion"]
    assert motion and all(e.detail["zone"] == "road" for e in motion)
