"""Cameras the hub was not tested with (issue 12, items 3 and 4), against GStreamer's own
RTSP server (tests/cameras/peers/gst_rtsp.py, not the hub's simulator) and plain sockets:

- a server that allows RTP over UDP only answers a TCP SETUP with ``461 Unsupported
  Transport``: ``transport: auto`` plays it (TCP, then UDP at once), ``udp`` plays it,
  ``tcp`` says 传输方式不支持 — where the hub used to say "Protocol not supported";
- each way a camera fails has a reason a person can act on: 认证失败, 地址错误, 无法连接,
  无响应, 非视频流服务, 编码不支持;
- the reason is kept current: a camera that was unreachable and now refuses the password
  says 认证失败, not "Connection refused" forever.
"""
from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.health import State
from cameras.reader import StreamReader
from cameras.rtsp import Transport
from cameras.sim.server import free_port
from cameras.pipeline import CameraPipeline
from config.vocabulary import StreamProblem
from tests.cameras.peers import GstPeer, SilentServer


class Sink:
    def __init__(self) -> None:
        self.packets = 0
        self.codec: str | None = None
        self.closes: list = []
        self.got = threading.Event()

    def on_open(self, segment, open_s):
        self.codec = segment.codec

    def on_packet(self, packet, wall, key, segment, mono):
        self.packets += 1
        if self.packets >= 20:
            self.got.set()

    def on_frame(self, frame, wall, key):
        pass

    def on_close(self, failure, frames):
        self.closes.append(failure)
        self.got.set()

    def on_retry(self, delay_s, failures):
        pass


def read_once(url: str, transport: Transport | str = "auto", read_timeout_s: float = 2.0) -> tuple[Sink, StreamReader]:
    """One connection, read until 20 packets or its end."""
    sink = Sink()
    reader = StreamReader("cam-peer", url, sink, open_timeout_s=3, read_timeout_s=read_timeout_s, transport=transport)
    thread = threading.Thread(target=reader.read_once, daemon=True)
    thread.start()
    sink.got.wait(15)
    reader.stop()
    thread.join(10)
    return sink, reader


@pytest.fixture(scope="module")
def udp_only():
    with GstPeer(protocols="udp") as peer:
        yield peer


@pytest.fixture(scope="module")
def locked():
    with GstPeer(user="admin", password="right-pw", codec="h265") as peer:
        yield peer


def test_a_udp_only_server_plays_with_auto_and_udp_and_tcp_says_why(udp_only):
    sink, _ = read_once(udp_only.url(), "tcp")
    assert sink.packets == 0
    (failure,) = sink.closes
    assert failure.problem is StreamProblem.transport_unsupported and failure.label == "传输方式不支持"
    assert "461" in failure.detail and "auto" in failure.detail, failure

    for setting in ("auto", "udp"):
        sink, reader = read_once(udp_only.url(), setting)
        assert sink.packets >= 20, (setting, sink.closes)
        assert reader.transport.working == "udp"
    auto = Transport("auto")
    read_once(udp_only.url(), auto)
    assert auto.order() == ("udp", "tcp"), "what worked is tried first on the next connection"


def test_tcp_stays_first_for_a_server_that_offers_both():
    with GstPeer(protocols="all") as both:
        sink, reader = read_once(both.url(), "auto")
    assert sink.packets >= 20 and reader.transport.working == "tcp"


def _audio_only(tmp_path) -> str:
    path = tmp_path / "audio-only.mka"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "pcm_s16le", str(path)], check=True)
    return str(path)


@pytest.mark.parametrize("case", ["auth_failed", "not_found", "unreachable", "no_response", "not_rtsp",
                                  "codec_unsupported"])
def test_each_way_a_camera_fails_has_its_own_reason(case, locked, tmp_path):
    silent = SilentServer() if case == "no_response" else None
    http = SilentServer(answer=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") if case == "not_rtsp" else None
    url = {
        "auth_failed": locked.url("admin", "wrong-pw"),
        "not_found": locked.url("admin", "right-pw", path="/no-such-stream"),
        "unreachable": f"rtsp://127.0.0.1:{free_port()}/stream",
        "no_response": f"rtsp://127.0.0.1:{silent.port if silent else 0}/stream",
        "not_rtsp": f"rtsp://127.0.0.1:{http.port if http else 0}/stream",
        "codec_unsupported": _audio_only(tmp_path) if case == "codec_unsupported" else "",
    }[case]
    try:
        started = time.monotonic()
        sink, _ = read_once(url, "tcp", read_timeout_s=2.0)
        took = time.monotonic() - started
    finally:
        for server in (silent, http):
            if server is not None:
                server.close()
    assert sink.packets == 0
    (failure,) = sink.closes
    assert failure.problem is StreamProblem(case), failure
    assert failure.label == {"auth_failed": "认证失败", "not_found": "地址错误", "unreachable": "无法连接",
                             "no_response": "无响应", "not_rtsp": "非视频流服务",
                             "codec_unsupported": "编码不支持"}[case]
    assert "wrong-pw" not in str(failure) and "right-pw" not in str(failure)
    assert took < 8, "every failure is known within the open and read timeouts"


def test_the_right_password_plays_h265(locked):
    sink, _ = read_once(locked.url("admin", "right-pw"))
    assert sink.packets >= 20 and sink.codec == "hevc"


def test_the_reason_follows_the_camera_as_its_problem_changes():
    """Nothing listens at first (无法连接); then a server there refuses the password
    (认证失败): the telemetry says the current reason, the offline event the one it had."""
    port = free_port()
    cfg = CameraAnalytics.model_validate({"health": {"stall_s": 1, "offline_s": 2, "recover_s": 1,
                                                     "open_timeout_s": 2, "read_timeout_s": 2},
                                          "tamper": {"enabled": False}})
    spec = CameraSpec(id="cam-changing", url=f"rtsp://127.0.0.1:{port}/stream", username="admin",
                      password="old-password", analytics=cfg)
    events: list = []
    jobs = ThreadPoolExecutor(1)
    p = CameraPipeline(spec, emit=events.append, store=None, jobs=jobs)
    p.start()
    peer = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.health.state != State.offline:
            p.health.tick()
            time.sleep(0.2)
        assert p.health.state == State.offline
        assert p.health.telemetry()["problem"] == "unreachable"
        peer = GstPeer(user="admin", password="new-password", port=port).start()
        deadline = time.monotonic() + 15          # the reader retries 1, 5, 10 s after its failures
        while time.monotonic() < deadline and (p.health.problem() or None) and \
                p.health.problem().problem is StreamProblem.unreachable:
            time.sleep(0.2)
        tele = p.health.telemetry()
        assert (tele["problem"], tele["state"]) == ("auth_failed", "offline"), tele
        assert "401" in tele["problem_detail"] and "password" not in tele["problem_detail"]
    finally:
        p.stop()
        p.reader.join(5)
        jobs.shutdown()
        if peer is not None:
            peer.stop()


def test_a_camera_back_from_a_reboot_is_not_left_waiting_out_a_long_backoff():
    """Item 8: the reader's 60 s step began after 16 s of outage, so a camera back from a
    30 s reboot stayed offline up to another minute. Now the port is knocked at every
    PROBE_S during a long step after 无法连接, and the reader connects when it opens."""
    from cameras.reader import PROBE_S

    port = free_port()
    sink = Sink()
    reader = StreamReader("cam-reboot", f"rtsp://127.0.0.1:{port}/stream", sink, open_timeout_s=2,
                          read_timeout_s=2, backoff=(0.5, 60.0)).start()
    peer = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(sink.closes) < 2:
            time.sleep(0.1)
        assert len(sink.closes) >= 2 and sink.closes[-1].problem is StreamProblem.unreachable
        time.sleep(1.0)                                  # well into the 60 s step
        assert reader.phase == "backoff"
        back = time.monotonic()
        peer = GstPeer(port=port).start()
        sink.got.clear()
        assert sink.got.wait(PROBE_S + 10), "the reader connects when the port opens, not after 60 s"
        assert sink.packets > 0 and time.monotonic() - back < PROBE_S + 10
    finally:
        reader.stop()
        reader.join(5)
        if peer is not None:
            peer.stop()
