"""Forgetting the tamper baseline (leaving maintenance, or the ``rebaseline`` command) ends
the conditions that were raised: each gets its ``camera.tamper.cleared``, so the alarms and
the video wall's 遮挡/移位 badges do not stay up for a condition nobody will ever clear."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cameras.config import CameraSpec
from cameras.pipeline import CameraPipeline


def pipeline(events: list) -> tuple[CameraPipeline, ThreadPoolExecutor]:
    jobs = ThreadPoolExecutor(1)
    return CameraPipeline(CameraSpec(id="cam-rb", url="rtsp://127.0.0.1:9/none"), emit=events.append, store=None,
                          jobs=jobs), jobs


def wait_for(events: list, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(events) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_leaving_maintenance_clears_the_raised_conditions():
    events: list = []
    p, jobs = pipeline(events)
    p.tamper._tracks["covered"].active = True       # raised before maintenance began
    p.set_maintenance(True)
    p.set_maintenance(False)
    wait_for(events, 1)
    jobs.shutdown()
    assert [(e.type, e.detail) for e in events] == [
        ("camera.tamper.cleared", {"condition": "covered", "rebaseline": "maintenance ended"})]
    assert not p.tamper.active


def test_rebaseline_in_maintenance_still_says_cleared():
    events: list = []
    p, jobs = pipeline(events)
    p.tamper._tracks["moved"].active = True
    p.set_maintenance(True)
    p.rebaseline("requested")
    wait_for(events, 1)
    jobs.shutdown()
    assert [e.type for e in events] == ["camera.tamper.cleared"] and events[0].detail["condition"] == "moved"
