"""The camera worker's packet tap (cameras/tap.py) over real sockets: who is served, what a
consumer that joins late gets, what a slow one loses, and what it is told while the camera
is away. Live view through it, against GStreamer's RTSP server: tests/live/test_one_pull.py."""
from __future__ import annotations

import socket
from fractions import Fraction

import av
import pydantic
import pytest

from cameras.evidence import PacketRing, Record, Segment
from cameras.rtsp import Failure
from cameras.tap import (Consumer, Fanout, TapHeader, TapPacket, TapRefused, TapServer, TapSettings, TapState,
                         TapStream)
from config.vocabulary import StreamProblem

KEY = b"k" * 32
URL = "rtsp://127.0.0.1:8554/cam"
SEGMENT = Segment(1, "h264", 320, 240, Fraction(1, 90000), b"\x00\x00\x00\x01\x67sps", fps=10.0)


def record(n: int, key: bool, segment: Segment = SEGMENT) -> Record:
    p = av.Packet(bytes([n]) * (100 + n))
    p.pts = p.dts = n * 9000
    return Record(p, 1_000_000.0 + n / 10, key, segment)


@pytest.fixture
def tap():
    fanout = Fanout("cam-1", PacketRing(20), url=URL)
    server = TapServer(TapSettings(queue_packets=16), KEY, {"cam-1": fanout}.get).start()
    yield server, fanout
    server.stop()


def connect(server: TapServer, key: bytes = KEY, camera: str = "cam-1", url: str = URL) -> TapStream:
    return TapStream(server.address, key, camera, "main", url, timeout_s=5).open()


def test_a_late_consumer_starts_with_the_header_and_the_current_gop_then_follows_live(tap):
    server, fanout = tap
    fanout.opened(SEGMENT)
    for n, key in ((1, True), (2, False), (3, True), (4, False), (5, False)):
        fanout.append(record(n, key))
    stream = connect(server)
    events = stream.events()
    header = next(events)
    assert isinstance(header, TapHeader)
    assert (header.codec, header.width, header.height, header.fps) == ("h264", 320, 240, 10.0)
    assert header.extradata == SEGMENT.extradata and header.time_base == Fraction(1, 90000)
    gop = [next(events) for _ in range(3)]
    assert [(e.packet.pts, e.key) for e in gop] == [(27000, True), (36000, False), (45000, False)]
    assert bytes(gop[0].packet) == bytes([3]) * 103 and gop[0].wall == pytest.approx(1_000_000.3)
    fanout.append(record(6, False))
    live = next(events)
    assert isinstance(live, TapPacket) and live.packet.pts == 54000 and not live.key
    fanout.closed(Failure(StreamProblem.auth_failed, "401 Unauthorized"))
    state = next(events)
    assert isinstance(state, TapState) and state.failure.problem is StreamProblem.auth_failed
    assert state.failure.detail == "401 Unauthorized"
    stream.close()


def test_a_consumer_joining_while_the_camera_is_away_is_told_why(tap):
    server, fanout = tap
    fanout.closed(Failure(StreamProblem.unreachable, "Connection refused"))
    stream = connect(server)
    (state,) = [next(stream.events())]
    assert isinstance(state, TapState) and state.failure.problem is StreamProblem.unreachable
    stream.close()


@pytest.mark.parametrize("key, camera, url, reason", [
    (b"x" * 32, "cam-1", URL, "bad key"),
    (KEY, "cam-9", URL, "does not read the camera"),
    (KEY, "cam-1", "rtsp://127.0.0.1:8554/other", "another stream"),
])
def test_refused_requests_say_why(tap, key, camera, url, reason):
    server, fanout = tap
    fanout.opened(SEGMENT)
    stream = connect(server, key, camera, url)
    with pytest.raises(TapRefused, match=reason):
        next(stream.events())
    assert server.refused == 1 and server.consumers == 0


def test_a_consumer_that_falls_behind_resumes_at_the_next_keyframe():
    a, b = socket.socketpair()
    try:
        consumer = Consumer(a, "cam-1 (main)", limit=4)
        consumer.offer(b"p0", key=False)
        assert not consumer.frames, "a consumer starts at a keyframe"
        for i, key in enumerate((True, False, False, False)):
            consumer.offer(f"p{i + 1}".encode(), key)
        consumer.offer(b"p5", key=False)              # the queue was full: dropped, with it
        assert not consumer.frames and consumer.need_key
        consumer.offer(b"p6", key=False)
        consumer.offer(b"p7", key=True)
        consumer.offer(b"p8", key=False)
        assert list(consumer.frames) == [b"p7", b"p8"]
        assert consumer.dropped == 1 + 4 + 1 + 1
    finally:
        a.close()
        b.close()


def test_the_tap_stays_on_loopback_unless_told_otherwise():
    with pytest.raises(pydantic.ValidationError, match="XLHUB_CAMERA_TAP_ALLOW_REMOTE"):
        TapSettings(host="0.0.0.0")
    assert TapSettings(host="0.0.0.0", allow_remote=True, advertise="10.0.0.5").address(9000) == "10.0.0.5:9000"


def self_signed(tmp_path) -> tuple:
    """A certificate for 127.0.0.1 (the CA consumers trust, here the certificate itself)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xlhub camera tap")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tap.pem", tmp_path / "tap.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_tap_with_a_certificate_serves_tls_and_consumers_verify_it(tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    settings = TapSettings(tls_cert=cert, tls_key=key, tls_ca=cert)
    fanout = Fanout("cam-1", PacketRing(20), url=URL)
    server = TapServer(settings, KEY, {"cam-1": fanout}.get).start()
    try:
        assert server.address.startswith("tls:127.0.0.1:")
        fanout.opened(SEGMENT)
        fanout.append(record(1, True))
        stream = TapStream(server.address, KEY, "cam-1", "main", URL, timeout_s=5, tls=settings.client_context()).open()
        events = stream.events()
        assert isinstance(next(events), TapHeader)
        assert bytes(next(events).packet) == bytes([1]) * 101
        assert stream.sock.version() in ("TLSv1.2", "TLSv1.3")
        stream.close()
        stranger = TapStream(server.address, KEY, "cam-1", "main", URL, timeout_s=5)     # the system's CAs only
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.open()
    finally:
        server.stop()
    # A listener beyond loopback without TLS needs to be allowed in so many words.
    assert TapSettings(host="0.0.0.0", tls_cert=cert, tls_key=key).tls
    with pytest.raises(pydantic.ValidationError, match="go together"):
        TapSettings(tls_cert=cert)
