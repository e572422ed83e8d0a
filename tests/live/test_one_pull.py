"""One RTSP session per camera stream (issue 12, item 5): live view takes the packets of the
camera worker that already reads the stream (cameras/tap.py) instead of pulling the camera
again. Sessions are counted where the camera is: GStreamer's own RTSP server
(tests/cameras/peers/gst_rtsp.py) reports its connections.

- the wall (two WebRTC viewers), frame.jpg and the worker's analysis together: one session;
- the worker down: live view pulls the camera itself and keeps playing; the worker back:
  its packets replace that pull, and the camera is back to one session;
- a viewer of the main stream of a camera the worker reads on its substream: live view pulls
  main itself (another stream), and the substream stays the worker's one session."""
from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.worker import CameraWorker
from config.settings import Settings
from store.db import connect
from tests.cameras.peers import GstPeer
from tests.live.conftest import live_api_server, relay_of
from tests.live.test_live import login, wait_for
from tests.live.test_live_transport import GRID, add_camera
from tests.live.viewer import Viewer

pytestmark = pytest.mark.timeout(180)

CAM = "cam-one-pull"
TWO = "cam-two-streams"
HEVC = "cam-one-pull-hevc"


@pytest.fixture(scope="module")
def hub_var(tmp_path_factory):
    """One var/ for the API and the workers: they share the hub's tap key."""
    return tmp_path_factory.mktemp("one-pull-var")


@pytest.fixture(scope="module")
def cameras(live_db):
    with GstPeer(fps=10, gop_s=1.0) as one, GstPeer(fps=10, gop_s=1.0, path="/main") as main, \
            GstPeer(fps=10, gop_s=1.0, path="/sub") as sub, GstPeer(codec="h265", fps=10, gop_s=1.0) as hevc:
        add_camera(live_db, CAM, one.url())
        add_camera(live_db, HEVC, hevc.url())
        add_camera(live_db, TWO, main.url())
        with connect(live_db) as conn:
            conn.execute("UPDATE cameras SET substream_url = %s WHERE id = %s", (sub.url(), TWO))
        yield {"one": one, "main": main, "sub": sub, "hevc": hevc}


@pytest.fixture(scope="module")
def api(live_db, mqtt, hub_var, cameras):
    with live_api_server(live_db, mqtt.url, var_dir=hub_var) as server:
        yield server


class Worker:
    """A camera worker in a thread of this process, started and stopped at will."""

    def __init__(self, db: str, hub_var, specs: list[CameraSpec], evidence) -> None:
        self.db, self.hub_var, self.specs, self.evidence = db, hub_var, specs, evidence
        self.worker: CameraWorker | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CameraWorker:
        self._stop = threading.Event()
        self.worker = CameraWorker(Settings(var_dir=self.hub_var), cameras=self.specs, db_url=self.db,
                                   evidence_root=self.evidence, heartbeat_s=1)
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), daemon=True)
        self._thread.start()
        assert self.worker.ready.wait(15)
        return self.worker

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)


@pytest.fixture(scope="module")
def worker(live_db, hub_var, cameras, tmp_path_factory):
    specs = [CameraSpec(id=CAM, url=cameras["one"].url(), grid=GRID, analytics=CameraAnalytics()),
             CameraSpec(id=TWO, url=cameras["sub"].url(), grid=GRID, analytics=CameraAnalytics(stream="sub")),
             CameraSpec(id=HEVC, url=cameras["hevc"].url(), grid=GRID, analytics=CameraAnalytics())]
    w = Worker(live_db, hub_var, specs, tmp_path_factory.mktemp("one-pull-evidence"))
    w.start()
    yield w
    w.stop()


def feed_of(api, camera: str, stream: str = "main"):
    return relay_of(api).feeds.get((camera, stream))


async def until_reading(worker: Worker, camera: str) -> None:
    await wait_for(lambda: worker.worker.pipelines[camera].health.packets > 20, 20, f"the worker reading {camera}")


async def test_the_wall_frame_jpg_and_analysis_share_the_workers_one_session(cameras, api, worker):
    peer = cameras["one"]
    await until_reading(worker, CAM)
    assert peer.clients == 1
    peer.reset_most()
    analysed = worker.worker.pipelines[CAM].health.packets
    frames = worker.worker.pipelines[CAM].analysed_frames
    token = login(api, "ds-supervisor")
    viewers = [Viewer(api.base_url, token, CAM) for _ in range(2)]
    try:
        for v in viewers:
            r = await v.start()
            assert r.status_code == 200, r.text
            assert await v.receive(10, timeout=30) == 10
            assert v.size == (320, 240)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=20,
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            jpg = await c.get(f"/api/live/{CAM}/frame.jpg")
            status = (await c.get("/api/live/status")).json()
        assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg", jpg.text
        (feed,) = [f for f in status["feeds"] if f["camera_id"] == CAM]
        assert feed["pull"] == "worker" and feed["state"] == "live" and feed["viewers"] == 2
        assert worker.worker.tap.consumers == 1, "one tap connection for both viewers and the snapshot"
        assert worker.worker.recorder.cameras[CAM].stats.recording, "and the worker records the same packets"
        pipeline = worker.worker.pipelines[CAM]
        await wait_for(lambda: pipeline.health.packets > analysed + 30 and pipeline.analysed_frames > frames + 1,
                       20, "the worker's reading and analysis to go on")
        for v in viewers:
            assert await v.receive(10, timeout=20) == 10, "the viewers keep playing"
        assert (peer.clients, peer.most_clients) == (1, 1), "the camera served one RTSP session throughout"
    finally:
        for v in viewers:
            await v.close()


async def test_live_view_pulls_itself_while_the_worker_is_down_and_gives_way_when_it_is_back(cameras, api, worker):
    peer = cameras["one"]
    await until_reading(worker, CAM)
    viewer = Viewer(api.base_url, login(api, "ds-supervisor"), CAM)
    try:
        assert (await viewer.start()).status_code == 200
        assert await viewer.receive(5, timeout=30) == 5
        feed = feed_of(api, CAM)
        assert feed.pull == "worker"
        worker.stop()
        await wait_for(lambda: feed.pull == "rtsp" and feed.state == "live", 20, "live view's own pull")
        assert await viewer.receive(10, timeout=20) == 10, "the viewer keeps its picture"
        await wait_for(lambda: peer.clients == 1, 10, "the worker's session to end")
        switches = feed.connections
        worker.start()
        await wait_for(lambda: feed.pull == "worker" and feed.connections > switches, 30,
                       "the worker's packets to replace live view's pull")
        await wait_for(lambda: peer.clients == 1, 10, "live view's own session to end")
        assert await viewer.receive(10, timeout=20) == 10, "the viewer keeps its picture"
        assert feed_of(api, CAM) is feed, "one feed throughout: the viewer was never cut off"
    finally:
        await viewer.close()


async def test_a_stream_the_worker_does_not_read_is_pulled_by_live_view(cameras, api, worker):
    await until_reading(worker, TWO)
    token = login(api, "ds-supervisor")
    main, sub = Viewer(api.base_url, token, TWO, stream="main"), Viewer(api.base_url, token, TWO, stream="sub")
    try:
        for v in (main, sub):
            assert (await v.start()).status_code == 200
            assert await v.receive(5, timeout=30) == 5
        assert feed_of(api, TWO, "main").pull == "rtsp"
        assert feed_of(api, TWO, "sub").pull == "worker"
        await asyncio.sleep(0.5)
        assert cameras["main"].clients == 1, "main: live view's own pull"
        assert cameras["sub"].clients == 1, "sub: the worker's session only"
    finally:
        for v in (main, sub):
            await v.close()


async def test_an_h265_camera_is_transcoded_from_the_workers_packets(cameras, api, worker):
    await until_reading(worker, HEVC)
    viewer = Viewer(api.base_url, login(api, "ds-supervisor"), HEVC)
    try:
        assert (await viewer.start()).status_code == 200
        assert await viewer.receive(10, timeout=30) == 10
        assert viewer.size == (320, 240)
        feed = feed_of(api, HEVC)
        assert (feed.pull, feed.codec, feed.transcoded_from) == ("worker", "h264", "hevc")
        assert cameras["hevc"].clients == 1
    finally:
        await viewer.close()
