"""ONVIF-only cameras (a site entry with ``onvif:`` and no ``rtsp_url``) stream through the
worker's pipeline, with real peers: ipycam (ONVIF in a child process on 127.0.0.1) gives
the stream and snapshot URIs, and the simulated GStreamer RTSP server serves those paths on
the port ipycam names, behind the same user and password (so frames only arrive if the
hub put the credentials in). Also: the ONVIF service unreachable at start (backoff until it
answers), and a camera that comes back on another RTSP port (the stream fails repeatedly,
the URI is asked for again)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cameras.config import CameraAnalytics, CameraSpec, camera_specs
from cameras.health import State
from cameras.onvif_link import OnvifEndpoint, OnvifLink, OnvifStreamSource
from cameras.sim.server import SimRtspServer
from cameras.pipeline import CameraPipeline
from config.site import Camera, Onvif
from config.vocabulary import StreamProblem
from tests.cameras.onvif_fake import IpycamProcess, free_port

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "admin", "Xl-onvif-only-5"
HEALTH = {"health": {"stall_s": 1, "offline_s": 2, "recover_s": 1, "telemetry_s": 2, "open_timeout_s": 3,
                     "read_timeout_s": 2}}


def rtsp_behind(ipy: IpycamProcess) -> SimRtspServer:
    """The RTSP side of the camera: the paths ipycam's GetStreamUri names, on its RTSP port."""
    mounts = [{"path": "/video_main", "width": 640, "height": 360, "fps": 10, "gop": 10, "seed": 3},
              {"path": "/video_sub", "width": 320, "height": 180, "fps": 10, "gop": 10, "seed": 4}]
    for m in mounts:
        m.update(username=ipy.username, password=ipy.password, bitrate=200)
    return SimRtspServer(mounts, port=ipy.rtsp_port).start()


def ipycam_at(tmp_path, port: int | None = None) -> IpycamProcess:
    ipy = IpycamProcess(tmp_path, username=USER, password=PASSWORD)
    if port is not None:
        ipy.port = port
    return ipy


@pytest.fixture
def link():
    l = OnvifLink(timeout_s=3, name="test-onvif").start()
    yield l
    l.stop()


class Running:
    """A pipeline ticked like the worker does, with its reader's backoff shortened."""

    def __init__(self, spec: CameraSpec, source: OnvifStreamSource, reader_backoff=(0.3, 0.6)) -> None:
        self.jobs = ThreadPoolExecutor(2)
        self.events: list = []
        self.p = CameraPipeline(spec, emit=self.events.append, store=None, jobs=self.jobs, source=source,
                                onvif=source.endpoint)
        self.p.reader.backoff = reader_backoff
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self.p.tick()

    def __enter__(self) -> Running:
        self.p.start()
        self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.p.stop()
        self.p.reader.join(5)
        self.jobs.shutdown()

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s; state {self.p.health.state}, "
                                     f"last error {self.p.health.last_error!r}, source error {self.p.source.last_error!r}")
            time.sleep(0.1)


def spec_of(site_camera: Camera, monkeypatch) -> CameraSpec:
    """The worker's CameraSpec of a site entry, through camera_specs (credentials by reference)."""
    from types import SimpleNamespace

    from config.site import Credential

    monkeypatch.setenv("XLHUB_TEST_ONVIF_PASSWORD", PASSWORD)
    site = SimpleNamespace(cameras=[site_camera], timezone="Asia/Shanghai",
                           credentials={"onvif-cams": Credential(username=USER, password_env="XLHUB_TEST_ONVIF_PASSWORD")})
    specs, problems = camera_specs(site)
    assert not problems, problems
    return specs[0]


def test_onvif_only_camera_gets_its_sub_stream_from_get_stream_uri(tmp_path, link, logs, monkeypatch):
    with ipycam_at(tmp_path) as ipy, rtsp_behind(ipy) as rtsp:
        entry = Camera(id="cam-onvif-01", name="村口 ONVIF", grid="510199101201001",
                       onvif=Onvif(host="127.0.0.1", port=ipy.port), credentials="onvif-cams",
                       analytics=CameraAnalytics.model_validate({**HEALTH, "stream": "sub"}))
        spec = spec_of(entry, monkeypatch)
        assert spec.onvif_only and spec.url == "" and (spec.onvif_host, spec.onvif_port) == ("127.0.0.1", ipy.port)
        source = OnvifStreamSource(spec.id, OnvifEndpoint(spec.onvif_host, spec.onvif_port, spec.username, spec.password),
                                   link, stream=spec.analytics.stream).start()
        with Running(spec, source) as run:
            run.wait(lambda: run.p.health.state == State.online, 20, "online")
            # The sub profile (320x180), at the URI the camera gave, without credentials.
            assert source.uri == f"rtsp://127.0.0.1:{ipy.rtsp_port}/video_sub"
            assert source.profile_token == "Profile_Sub"
            assert source.snapshot_uri == f"http://127.0.0.1:{ipy.port}/snapshot.jpg"
            records = run.p.ring.records()
            assert records and records[-1].segment.width == 320
            # The RTSP mount demands the password: frames prove it was put into the demuxer's URL.
            assert rtsp.status()["/video_sub"]["clients"] >= 1
            # The camera's own snapshot (HTTP, the same credentials) for when the stream has no picture.
            assert source.fetch_snapshot()[:2] == b"\xff\xd8"
            assert PASSWORD not in run.p.shown_url and "@" not in run.p.shown_url
    text = "\n".join(logs)
    assert f"rtsp://127.0.0.1:{ipy.rtsp_port}/video_sub" in text          # the URI is logged, clean
    assert PASSWORD not in text


def test_main_stream_when_asked(tmp_path, link):
    with ipycam_at(tmp_path) as ipy:
        source = OnvifStreamSource("cam-onvif-main", OnvifEndpoint("127.0.0.1", ipy.port, USER, PASSWORD), link,
                                   stream="main")
        uri = link.submit(source.resolve()).result(15)
    assert uri == f"rtsp://127.0.0.1:{ipy.rtsp_port}/video_main" and source.profile_token == "Profile_Main"
    # The demuxer's URL, and only it, carries the credentials.
    assert source.url() == f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{ipy.rtsp_port}/video_main"


def test_unreachable_onvif_backs_off_then_streams_and_follows_a_moved_stream(tmp_path, link, logs):
    onvif_port = free_port()
    source = OnvifStreamSource("cam-onvif-02", OnvifEndpoint("127.0.0.1", onvif_port, USER, PASSWORD), link,
                               backoff=(0.3, 0.6, 1.0), first_wait_s=1.0, timeout_s=2.0).start()
    spec = CameraSpec(id="cam-onvif-02", username=USER, password=PASSWORD, onvif_host="127.0.0.1",
                      onvif_port=onvif_port, analytics=CameraAnalytics.model_validate(HEALTH))
    with Running(spec, source) as run:
        # Nobody answers ONVIF: the reader fails at once with the reason; the camera goes offline.
        run.wait(lambda: run.p.health.state == State.offline, 15, "offline while ONVIF is unreachable")
        failure = run.p.health.failure
        assert failure.problem is StreamProblem.no_address and failure.label == "未获取到视频流地址"
        assert "stream URI not resolved" in failure.detail
        assert "unreachable" in (source.last_error or "")
        tries_before = source.attempts
        time.sleep(1.5)
        assert source.attempts > tries_before, "the resolution is retried while the camera is away"

        # The camera comes up: resolved on the next retry, frames flow.
        (tmp_path / "a").mkdir()
        first = ipycam_at(tmp_path / "a", onvif_port)
        with first, rtsp_behind(first):
            run.wait(lambda: run.p.health.state == State.online, 30, "online once ONVIF answers")
            assert source.uri == f"rtsp://127.0.0.1:{first.rtsp_port}/video_sub" and source.resolutions == 1
        # Gone (ONVIF and RTSP)…
        run.wait(lambda: run.p.health.state == State.offline, 15, "offline when the camera is gone")

        # …and back after a "reboot" with another RTSP port: the old URI keeps failing, so the
        # worker asks ONVIF again and follows it.
        (tmp_path / "b").mkdir()
        second = ipycam_at(tmp_path / "b", onvif_port)
        assert second.rtsp_port != first.rtsp_port
        with second, rtsp_behind(second):
            run.wait(lambda: run.p.health.state == State.online, 40, "online on the moved stream")
            assert source.uri == f"rtsp://127.0.0.1:{second.rtsp_port}/video_sub"
            assert source.resolutions == 2
    text = "\n".join(logs)
    assert "asking ONVIF" in text and PASSWORD not in text
    assert all(PASSWORD not in str(ev.detail) for ev in run.events)


def test_unresolved_source_refuses_the_reader_with_a_reason(link):
    source = OnvifStreamSource("cam-x", OnvifEndpoint("127.0.0.1", free_port(), USER, PASSWORD), link,
                               backoff=(5.0,), first_wait_s=0.1, timeout_s=1.0).start()
    deadline = time.monotonic() + 10
    while source.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ConnectionError) as caught:
        source.url()
    assert "not resolved" in str(caught.value) and PASSWORD not in str(caught.value)
    assert source.shown_url.startswith("onvif://127.0.0.1:")


def test_connections_that_open_but_deliver_no_media_ask_onvif_again(link):
    """Counted per connection by what arrived: packets, not decoded frames (in keyframes-only
    mode a short connection can bring a second of packets and no keyframe), and a
    connection that opens but sends nothing counts as failed — as one that does not open."""
    import av

    source = OnvifStreamSource("cam-silent", OnvifEndpoint("127.0.0.1", free_port(), USER, PASSWORD), link,
                               refail_after=3)
    source.uri = "rtsp://127.0.0.1:9/video_sub"
    asked: list[str] = []
    source.invalidate = lambda: asked.append("again")
    with ThreadPoolExecutor(1) as jobs:
        p = CameraPipeline(CameraSpec(id="cam-silent", onvif_host="127.0.0.1", onvif_port=1,
                                      analytics=CameraAnalytics.model_validate(HEALTH)),
                           emit=lambda ev: None, store=None, jobs=jobs, source=source)
        segment = type("Segment", (), {"codec": "h264", "width": 320, "height": 180})()

        def connection(packets: int) -> None:
            p.on_open(segment, 0.05)
            for i in range(packets):
                p.on_packet(av.Packet(b"\0" * 64), time.time(), False, segment, time.monotonic())
            p.on_close("stream ended", 0)       # no frame decoded either way

        connection(0)
        connection(0)
        connection(5)                           # media arrived: the count starts over
        assert source.failures == 0 and not asked
        connection(0)
        p.on_close("connection refused", 0)     # an open that failed (no on_open) counts too
        assert not asked
        connection(0)
        assert asked == ["again"] and source.failures == 0      # the third in a row; counting starts over
