"""A hub with live video: the demo site's cameras served by the simulated RTSP server
(real GStreamer, H.264, timestamp strip), behind a real API server."""
from __future__ import annotations

import contextlib

import os
import secrets

import pytest

from cameras.sim.server import SimRtspServer
from store.db import connect
from tests.api.conftest import PASSWORD, ApiServer, seeded_db  # noqa: F401  (fixture re-exported)

CAMERA_USER = "admin"
LIVE_ENV = {"XLHUB_LIVE_LINGER_S": "1", "XLHUB_LIVE_SNAPSHOT_LEASE_S": "3", "XLHUB_LIVE_ICE_HOSTS": "127.0.0.1"}


@pytest.fixture(scope="module")
def camera_password():
    """The demo site's camera credentials come from this variable (never inline)."""
    old = os.environ.get("XLHUB_DEMO_CAMERA_PASSWORD")
    pw = "Cam-" + secrets.token_urlsafe(8)
    os.environ["XLHUB_DEMO_CAMERA_PASSWORD"] = pw
    yield pw
    if old is None:
        os.environ.pop("XLHUB_DEMO_CAMERA_PASSWORD", None)
    else:
        os.environ["XLHUB_DEMO_CAMERA_PASSWORD"] = old


@pytest.fixture(scope="module")
def sim_cameras(demo_site, camera_password):
    """Every demo camera as a mount of one simulated RTSP server that requires the password.
    Small pictures and a 1 s GOP keep the tests light (2 cores shared)."""
    mounts = [{"path": f"/{cam.id}", "width": 320, "height": 180, "fps": 10, "gop": 10,
               "seed": i + 1, "username": CAMERA_USER, "password": camera_password, "bitrate": 300}
              for i, cam in enumerate(demo_site.cameras)]
    with SimRtspServer(mounts) as sim:
        yield sim


@pytest.fixture(scope="module")
def live_db(seeded_db, sim_cameras):  # noqa: F811
    """The seeded database with the cameras' addresses moved to the simulator's port."""
    with connect(seeded_db) as conn:
        for cam in conn.execute("SELECT id FROM cameras").fetchall():
            conn.execute("UPDATE cameras SET rtsp_url = %s WHERE id = %s",
                         (sim_cameras.url(f"/{cam['id']}"), cam["id"]))
    return seeded_db


@contextlib.contextmanager
def live_api_server(db_url: str, mqtt_url: str, **settings):
    """The API with the live settings of these tests (short linger and lease, loopback ICE)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in LIVE_ENV.items():
            mp.setenv(k, v)
        with ApiServer(db_url, mqtt_url, **settings) as server:
            yield server


@pytest.fixture(scope="module")
def live_api(live_db, mqtt):
    with live_api_server(live_db, mqtt.url) as server:
        yield server


def relay_of(server: ApiServer):
    """The API's LiveRelay (the server runs in this process, in its own thread and loop)."""
    return server.server.config.app.state.live


def rtsp_clients(sim, path: str) -> int:
    """How many RTSP clients the simulated server has on ``path`` now (the hub's feeds)."""
    return sim.status()[path]["clients"]


def refreshed_frames(client, camera_id: str, shape: tuple[int, int] = (180, 320)) -> None:
    """Three ``frame.jpg`` of a camera, 0.4 s apart: each a JPEG of ``shape`` whose burnt-in
    time matches ``X-Frame-Time``, and the picture moves on (the simulated cameras' strip)."""
    import time

    import cv2
    import numpy as np

    from cameras.sim.server import decode_timestamp_strip

    stamps = []
    for _ in range(3):
        r = client.get(f"/api/live/{camera_id}/frame.jpg")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/jpeg" and r.headers["cache-control"] == "no-store"
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert img.shape == shape
        ms = decode_timestamp_strip(img)
        assert ms is not None and abs(ms - int(r.headers["x-frame-time"])) < 2000
        stamps.append(ms)
        time.sleep(0.4)
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0], "the picture is refreshed"
