"""The exact frame at a moment is decoded off the API's request threads (api/recordings/decode.py):
in a bounded pool of decoder threads by default (or processes), the frame still the camera's frame at t; when
every decoder is busy and nothing more may wait, or a decode takes too long, the caller is told
at once — 503 with Retry-After and the reason in Chinese — and the pool serves again after.
The footage is test_recording_playback's (a real camera worker recording the simulator)."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta

import httpx
import pytest

from api.recordings.decode import FramePool
from tests.api.test_recording_playback import (  # noqa: F401  (the shared fixtures)
    CAM, iso, ms, recorder, recording_env, strip_ms, wait_segments)
from tests.live.conftest import camera_password, live_api, live_db, sim_cameras  # noqa: F401

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def pool_of(live_api):  # noqa: F811
    """Swap the API's frame pool for one made from the given settings; put the old one back."""
    app = live_api.server.config.app
    old = app.state.frame_pool
    made = []

    def make(**env) -> FramePool:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(f"XLHUB_RECORDING_{k.upper()}", str(v))
            pool = FramePool.from_settings()
        made.append(pool)
        app.state.frame_pool = pool
        return pool

    yield make
    app.state.frame_pool = old
    for pool in made:
        pool.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_frames_are_decoded_in_the_bounded_pool(recorder, live_api, live_db, pool_of, kind):  # noqa: F811
    rows = wait_segments(live_db, 4)
    assert live_api.server.config.app.state.frame_pool.kind == "thread", "threads by default (the bench's figures)"
    pool = pool_of(decode_pool=kind, decode_workers=2, decode_queue=2)
    with live_api.client("ds-supervisor") as c:
        for row, frac in ((rows[1], 0.63), (rows[2], 0.97), (rows[3], 0.02)):
            t = row["start_at"] + (row["end_at"] - row["start_at"]) * frac
            r = c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(t)})
            assert r.status_code == 200, r.text
            assert ms(t) - 140 <= strip_ms(r.content) <= ms(t) + 40, "the camera's frame at t"
    if kind == "process":
        decoders = {p.pid for p in pool._executor._processes.values()}
        assert decoders and os.getpid() not in decoders and len(decoders) <= 2, "decoded in the pool's processes"
    else:
        names = [t.name for t in pool._executor._threads]
        assert names and len(names) <= 2 and all(n.startswith("xlhub-frame") for n in names), names


def test_every_decoder_busy_is_a_503_with_retry_after_and_the_reason(recorder, live_api, live_db, pool_of):  # noqa: F811
    rows = wait_segments(live_db, 4)
    pool_of(decode_pool="process", decode_workers=1, decode_queue=0)
    moments = [r["start_at"] + timedelta(seconds=0.95 + 0.1 * i) for i, r in enumerate(rows[:4])]
    with live_api.client("ds-supervisor") as c:
        c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(moments[0])}).raise_for_status()   # decoder up
        token = c.headers["Authorization"]
    got: list[httpx.Response] = []
    lock = threading.Lock()

    def ask(t) -> None:
        r = httpx.get(f"{live_api.base_url}/api/recordings/{CAM}/frame", params={"t": iso(t)},
                      headers={"Authorization": token}, timeout=30)
        with lock:
            got.append((t, r))

    for _ in range(10):         # bursts of requests at once until one finds the decoder busy
        got.clear()
        threads = [threading.Thread(target=ask, args=(moments[i % len(moments)],)) for i in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if any(r.status_code == 503 for _, r in got):
            break
    busy = [r for _, r in got if r.status_code == 503]
    assert busy, [r.status_code for _, r in got]
    assert busy[0].headers["Retry-After"] == "2" and busy[0].json()["detail"].startswith("解码繁忙，请稍后再试")
    served = [(t, r) for t, r in got if r.status_code != 503]
    assert served and all(r.status_code == 200 for _, r in served), [r.text[:100] for _, r in served]
    for t, r in served:         # each a frame of its moment (the exact frame: test_recording_playback, unloaded)
        frame_ms = ms(datetime.fromisoformat(r.headers["X-Frame-Time"]))
        assert frame_ms <= ms(t) + 1 and abs(strip_ms(r.content) - ms(t)) <= 250
    with live_api.client("ds-supervisor") as c:      # the burst over, the decoder serves again
        assert c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(moments[1])}).status_code == 200


def test_a_decode_past_its_time_is_a_503_and_a_flag_is_refused_the_same_way(recorder, live_api, live_db,  # noqa: F811
                                                                             pool_of):
    rows = wait_segments(live_db, 4)
    pool_of(decode_pool="thread", decode_workers=1, decode_queue=0, decode_timeout_s=0.001)
    t = rows[2]["start_at"] + timedelta(seconds=1.5)
    with live_api.client("ds-dispatcher") as c:
        r = c.get(f"/api/recordings/{CAM}/frame", params={"t": iso(t)})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2", r.text
        assert r.json()["detail"].startswith("解码超时，请稍后再试")
        flag = c.post(f"/api/recordings/{CAM}/flags", json={"at": iso(t), "category": "治安防控"})
        assert flag.status_code == 503 and "解码" in flag.json()["detail"], flag.text
