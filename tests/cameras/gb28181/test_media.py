"""GB/T 28181 media (cameras/gb28181/media/) with real parts: FFmpeg's PS muxer and x264/x265
as the device, RTP over real UDP and TCP sockets in the three transports, aiortc's RTP parser
and ffprobe reading what our sender sends, the camera tap protocol between the MediaHub and
its consumers.

What is checked: the codec and keyframes that arrive (H.264, H.265); the frame shown at time t
is the frame the device captured at t (its clock burnt in); RTP from a stranger or with another
SSRC is dropped and counted while the session goes on; loss, duplicates, reordering counted;
two consumers make one INVITE and the last one gone a BYE after the linger; media that stops
is a state frame to consumers and a new INVITE; a refused INVITE says the device's reason."""
from __future__ import annotations

import socket
import subprocess
import threading
import time

import av
import pytest

from cameras.gb28181.media.hub import MediaHub, MediaSettings, gb_url, parse_gb_url
from cameras.gb28181.media.loopback import LoopbackInviter
from cameras.gb28181.media.ps import PsFramer
from cameras.gb28181.media.receiver import RtpReceiver
from cameras.gb28181.media.rtp import RtpPacket, SequenceTracker, StreamFramer, frame_tcp
from cameras.gb28181.media import sender as snd
from cameras.gb28181.media.sender import PsRtpSender
from cameras.gb28181.session import MediaAnswer, MediaOffer
from cameras.sim.scene import decode_timestamp_strip
from cameras.tap import TapHeader, TapPacket, TapSettings, TapState, TapStream
from config.vocabulary import StreamProblem
from tests.cameras.gb28181.peers import StripInviter

pytestmark = pytest.mark.timeout(120)

KEY = b"g" * 32
DEV, CH = "34020000001320000001", "34020000001310000001"
CAMERA = f"{DEV}/{CH}"


def hub_with(inviter, **settings) -> MediaHub:
    return MediaHub(inviter, KEY, settings=MediaSettings(**settings), tap_settings=TapSettings(),
                    domain_id="34020000002000000001").start()


def consumer(hub: MediaHub, camera: str = CAMERA) -> TapStream:
    return TapStream(hub.address, KEY, camera, "main", gb_url(*camera.split("/")), timeout_s=10).open()


def take(tap: TapStream, packets: int, timeout: float = 15.0) -> tuple[TapHeader | None, list[TapPacket], list]:
    """The header, ``packets`` packets and the states on the way (or what came by ``timeout``)."""
    header, got, states = None, [], []
    timer = threading.Timer(timeout, tap.close)       # keepalives are not events: a silent tap ends here
    timer.start()
    try:
        for event in tap.events():
            if isinstance(event, TapHeader):
                header = event
            elif isinstance(event, TapPacket):
                got.append(event)
                if len(got) >= packets:
                    break
            elif isinstance(event, TapState):
                states.append(event)
    except (OSError, ConnectionError):
        pass
    finally:
        timer.cancel()
    return header, got, states


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------- the sender, read by others


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_our_rtp_and_ps_are_what_aiortc_and_ffprobe_read(codec):
    """PsRtpSender over UDP: aiortc parses every packet (SSRC of the offer, PT 96, marker on
    the last packet of each frame, contiguous sequence numbers, one timestamp per frame), and
    the payloads put back together are a program stream ffprobe reads — the codec from our PSM,
    one packet per frame, keyframes flagged."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    sender = PsRtpSender(MediaOffer("127.0.0.1", rx.getsockname()[1], "udp", "0340200042"),
                         ffmpeg_args=snd.testsrc("h264" if codec == "h264" else "h265", fps=25, gop=10))
    sender.start()
    try:
        packets = [RtpPacket.parse(rx.recv(65536)) for _ in range(400)]
    finally:
        sender.stop()
        rx.close()
    assert {p.ssrc for p in packets} == {340200042} and {p.payload_type for p in packets} == {96}
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in zip(packets, packets[1:]))
    for a, b in zip(packets, packets[1:]):
        assert (a.timestamp != b.timestamp) == bool(a.marker), "the marker ends each frame, and only there"
    stamps = sorted({p.timestamp for p in packets})
    assert len(stamps) > 20 and all(b - a == 3600 for a, b in zip(stamps, stamps[1:])), "a frame per 1/25 s"
    ps = b"".join(p.payload for p in packets)
    probe = subprocess.run(["ffprobe", "-v", "error", "-f", "mpeg", "-show_entries", "packet=flags:stream=codec_name",
                            "-of", "csv=p=0", "-"], input=ps, capture_output=True, timeout=30)
    out = probe.stdout.decode().split()
    assert codec in out and sum(1 for line in out if line.startswith("K")) >= 2, probe.stderr.decode()[-500:]
    assert len(out) - 1 >= len(stamps) - 1, "one packet per frame"


def test_the_framer_cuts_ffmpegs_own_ps_into_frames_that_put_back_are_the_same_bytes(tmp_path):
    path = tmp_path / "h265.ps"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "2",
                    "-c:v", "libx265", "-x265-params", "log-level=none:bframes=0:keyint=25", "-f", "vob", str(path)],
                   check=True, timeout=60)
    data = path.read_bytes()
    framer = PsFramer()
    frames = []
    for i in range(0, len(data), 777):             # any chunking
        frames += framer.feed(data[i:i + 777])
    frames += framer.flush()
    assert b"".join(f for _, f in frames) == data
    assert len(frames) >= 15 and all(f.startswith(b"\x00\x00\x01\xba") for _, f in frames)
    assert [p for p, _ in frames] == sorted(p for p, _ in frames)


# ----------------------------------------------------------------- the hub: transports and codecs


@pytest.mark.parametrize("transport, codec, mux", [
    ("udp", "h264", "hub"), ("tcp-passive", "h264", "hub"), ("tcp-active", "h264", "hub"), ("udp", "h265", "hub"),
    ("tcp-active", "h265", "hub"),
    ("udp", "h264", "ffmpeg"), ("tcp-passive", "h265", "ffmpeg")])     # FFmpeg's own PS muxer as the device
def test_ps_over_rtp_arrives_as_packets_with_codec_and_keyframes(transport, codec, mux):
    inviter = LoopbackInviter({CAMERA: snd.testsrc(codec, fps=25, gop=10)}, mux=mux)
    hub = hub_with(inviter, transport=transport)
    try:
        tap = consumer(hub)
        header, packets, _ = take(tap, 40)
        tap.close()
        assert header is not None and header.codec == ("h264" if codec == "h264" else "hevc")
        assert (header.width, header.height) == (320, 240)
        assert len(packets) == 40 and packets[0].key, "a consumer starts at a keyframe"
        assert sum(p.key for p in packets) >= 3, "a keyframe every 10 frames"
        pts = [p.packet.pts for p in packets]
        assert all(0 < b - a <= 2 * 3600 for a, b in zip(pts, pts[1:])), f"25 fps at 90 kHz, none missing: {pts}"
        decoder = header.decoder()
        decoded = [f for p in packets for f in decoder.decode(p.packet)] + decoder.decode(None)
        assert len(decoded) >= 38 and decoded[0].width == 320
        (offer_dev, offer_ch, offer), = inviter.plays
        assert (offer_dev, offer_ch, offer.transport) == (DEV, CH, transport)
        assert offer.ssrc.startswith("0") and len(offer.ssrc) == 10 and offer.ssrc[1:6] == "20000"
        session = hub.status()["channels"][CAMERA]["session"]
        assert session["transport"] == transport and session["lost"] == 0 and session["dropped"] == {}
    finally:
        hub.stop()
        inviter.stop_all()


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_the_frame_shown_at_t_is_the_frame_captured_at_t(codec):
    """A device whose frames carry their capture time (PyAV's encoder, our PS packetizer of
    av.Packets): each frame decoded from the hub's packets shows the time its packet is stamped with."""
    inviter = StripInviter(codec)
    hub = hub_with(inviter, transport="udp")
    try:
        tap = consumer(hub)
        header, packets, _ = take(tap, 40)
        tap.close()
        assert header.codec == ("h264" if codec == "h264" else "hevc")
        decoder = header.decoder()
        errors = []
        for p in packets:
            for frame in decoder.decode(p.packet):
                shown = decode_timestamp_strip(frame.to_ndarray(format="gray"))
                assert shown is not None, "the strip survives PS/RTP unharmed"
                errors.append(abs(shown - p.wall * 1000))
        # The first frames come in a burst (the GOP a joining consumer is given, the demuxer's
        # first keyframe): their times settle within a second, then hold (one frame's latency).
        assert len(errors) >= 38 and max(errors) < 600, errors
        steady = errors[10:]
        assert max(steady) < 250, f"frame time off by up to {max(steady):.0f} ms"
    finally:
        hub.stop()
        inviter.stop_all()


# ----------------------------------------------------------------- strangers and loss


def test_rtp_from_a_stranger_or_another_ssrc_is_dropped_and_the_session_goes_on(caplog):
    inviter = LoopbackInviter({CAMERA: snd.testsrc("h264", fps=25, gop=10)})
    hub = hub_with(inviter, transport="udp")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tap = consumer(hub)
        take(tap, 5)
        (_, _, offer), = inviter.plays
        session = hub.status()["channels"][CAMERA]["session"]
        port = session["port"]
        ssrc = int(offer.ssrc)
        for seq in range(50):           # the right SSRC from the wrong address; a foreign SSRC; not RTP
            stranger.sendto(RtpPacket(payload_type=96, sequence_number=seq, ssrc=ssrc, payload=b"\x00" * 100)
                            .serialize(), ("127.0.0.1", port))
            stranger.sendto(RtpPacket(payload_type=96, sequence_number=seq, ssrc=1234, payload=b"\x01" * 100)
                            .serialize(), ("127.0.0.1", port))
            stranger.sendto(b"\x00junk", ("127.0.0.1", port))
        _, packets, states = take(tap, 50)
        tap.close()
        assert len(packets) == 50 and not states, "the real session keeps streaming"
        dropped = hub.status()["channels"][CAMERA]["session"]["dropped"]
        assert dropped == {"foreign_address": 50, "foreign_ssrc": 50, "not_rtp": 50}
        assert hub.status()["channels"][CAMERA]["session"]["lost"] == 0
        assert any("RTP dropped (foreign_ssrc)" in r.getMessage() and "SSRC 1234" in r.getMessage()
                   for r in caplog.records)
    finally:
        stranger.close()
        hub.stop()
        inviter.stop_all()


def test_loss_duplicates_and_reordering_are_counted_over_a_real_socket():
    taken = []
    rx = RtpReceiver("udp", 77, lambda payload, ts, marker: taken.append(payload[0]))
    rx.start(MediaAnswer("c", "127.0.0.1", 1, "77"))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    order = [0, 1, 2, 5, 6, 6, 4, 7, 8, 12, 13]     # 3 lost, 4 late (used no more), 6 twice, 9-11 lost
    try:
        for seq in order:
            tx.sendto(RtpPacket(payload_type=96, sequence_number=65530 + seq & 0xFFFF, ssrc=77,
                                payload=bytes([seq])).serialize(), ("127.0.0.1", rx.port))
            time.sleep(0.005)
        wait_for(lambda: rx.seq.received + rx.seq.duplicates + rx.seq.reordered >= len(order), 5, "packets")
    finally:
        tx.close()
        rx.stop()
    assert taken == [0, 1, 2, 5, 6, 7, 8, 12, 13], "the wrap past 65535 is no gap; late and twice-sent dropped"
    assert rx.seq.as_dict() == {"received": 9, "lost": 4, "duplicates": 1, "reordered": 1}


def test_rfc4571_framing_survives_any_split():
    packets = [RtpPacket(sequence_number=i, ssrc=5, payload=bytes([i]) * (i * 37 % 1500)).serialize()
               for i in range(30)]
    stream = b"".join(frame_tcp(p) for p in packets)
    framer, out = StreamFramer(), []
    for i in range(0, len(stream), 13):
        out += framer.feed(stream[i:i + 13])
    assert out == packets
    assert SequenceTracker().accept(0)


# ----------------------------------------------------------------- on demand, lost media


def test_two_consumers_one_invite_and_bye_after_the_linger():
    inviter = LoopbackInviter({CAMERA: snd.testsrc("h264", fps=25, gop=10)})
    hub = hub_with(inviter, linger_s=1.5)
    try:
        a = consumer(hub)
        take(a, 3)
        b = consumer(hub)
        _, got, _ = take(b, 10)
        assert got[0].key and len(got) == 10, "the second consumer starts at once from the current GOP"
        assert len(inviter.plays) == 1, "one media session however many consumers"
        a.close()
        time.sleep(1.0)
        assert not inviter.byes, "one consumer is still there"
        b.close()
        time.sleep(0.8)
        assert not inviter.byes, "the session lingers"
        wait_for(lambda: len(inviter.byes) == 1, 3, "BYE after the linger")
        assert not inviter.active() and hub.status()["media_sessions"] == 0
        c = consumer(hub)                 # someone again: a new session
        _, got, _ = take(c, 3)
        c.close()
        assert len(got) == 3 and len(inviter.plays) == 2
    finally:
        hub.stop()
        inviter.stop_all()


def test_media_that_stops_is_told_to_consumers_and_invited_again():
    inviter = LoopbackInviter({CAMERA: snd.testsrc("h264", fps=25, gop=10)})
    hub = hub_with(inviter, media_timeout_s=1.5)
    try:
        tap = consumer(hub)
        take(tap, 5)
        for sender in inviter.active():      # the device goes silent without a BYE
            sender.stop()
        header, states, packets = None, [], []
        for event in tap.events():
            if isinstance(event, TapState):
                states.append(event)
            elif isinstance(event, TapHeader) and states:
                header = event
            elif isinstance(event, TapPacket) and header is not None:
                packets.append(event)
                if len(packets) >= 5:
                    break
        tap.close()
        failure = states[0].failure
        assert failure.problem is StreamProblem.no_response and "no RTP" in failure.detail
        assert len(inviter.plays) == 2 and len(inviter.byes) >= 1, "BYE to the silent one, a new INVITE"
        assert header.codec == "h264" and packets[0].key
        assert hub.status()["channels"][CAMERA]["lost_media"] == 1
    finally:
        hub.stop()
        inviter.stop_all()


def test_a_refused_invite_is_a_state_with_the_devices_reason_and_is_retried():
    inviter = LoopbackInviter({CAMERA: snd.testsrc("h264")})
    inviter.refuse = "设备忙 (486 Busy Here)"
    hub = hub_with(inviter)
    try:
        tap = consumer(hub)
        _, _, states = take(tap, 1, timeout=2.5)
        tap.close()
        failures = [s.failure for s in states if s.failure]
        assert failures and failures[0].problem is StreamProblem.unreachable
        assert "设备忙" in failures[0].detail
        assert len(inviter.plays) >= 2, "INVITE again after the first backoff step (1 s)"
    finally:
        hub.stop()
        inviter.stop_all()


def test_gb_urls_are_checked():
    assert parse_gb_url("gb28181://34020000001320000001/34020000001310000001") == (DEV, CH)
    for bad in ("rtsp://x/y", "gb28181://onlydevice", "gb28181://a/b/c", "gb28181://a b/c"):
        with pytest.raises(ValueError, match="gb28181"):
            parse_gb_url(bad)


def test_the_receivers_header_reader_agrees_with_aiortc():
    """The hot path reads the fixed header itself; aiortc's parser is the reference."""
    from cameras.gb28181.media.rtp import parse_header
    cases = [RtpPacket(payload_type=96, marker=m, sequence_number=s, timestamp=t, ssrc=x, payload=bytes(i % 256 for i in range(n)))
             for m, s, t, x, n in [(0, 0, 0, 1, 0), (1, 65535, 2 ** 32 - 1, 2 ** 32 - 1, 1400), (1, 7, 90000, 123, 3)]]
    with_csrc = RtpPacket(payload_type=96, sequence_number=9, ssrc=5, payload=b"abc")
    with_csrc.csrc = [1, 2]
    with_ext = RtpPacket(payload_type=96, sequence_number=10, ssrc=5, payload=b"xyz")
    with_ext.extensions.abs_send_time = 123
    from aiortc.rtp import HeaderExtensionsMap
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(
        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    wires = [p.serialize() for p in cases + [with_csrc]] + [with_ext.serialize(ext_map)]
    padded = bytearray(RtpPacket(payload_type=96, ssrc=6, sequence_number=3, payload=b"data").serialize() + b"\x00\x00\x03")
    padded[0] |= 0x20
    wires.append(bytes(padded))
    for wire in wires:
        ref = RtpPacket.parse(wire, ext_map)
        ssrc, seq, ts, marker, start, end = parse_header(wire)
        assert (ssrc, seq, ts, marker, wire[start:end]) == (ref.ssrc, ref.sequence_number, ref.timestamp,
                                                           bool(ref.marker), ref.payload)
    assert parse_header(b"\x00" * 12) is None and parse_header(b"\x80\x60") is None


@pytest.mark.parametrize("audio, name", [("pcm_alaw", "pcm_alaw")])
def test_our_ps_with_g711_audio_is_demuxed_with_its_audio_named(tmp_path, audio, name):
    """Video and G.711 A-law audio in our PS (PSM stream types 0x1B, 0x90): FFmpeg's demuxer
    reads both; the video packets come through whole and the audio is named. (µ-law, 0x91, FFmpeg
    5.1 takes for MPEG audio: see the README.)"""
    import numpy as np

    from cameras.gb28181.media.ps import PsDemuxer, PsMuxer, PsPipe
    src = tmp_path / "v.nut"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "2",
                    "-c:v", "libx264", "-g", "10", "-bf", "0", "-f", "nut", str(src)], check=True, timeout=60)
    enc = av.CodecContext.create(audio, "w")
    enc.sample_rate, enc.layout, enc.format = 8000, "mono", "s16"
    mux, ps = PsMuxer("h264", audio), bytearray()
    with av.open(str(src)) as c:
        params = bytes(c.streams.video[0].codec_context.extradata)       # NUT: SPS/PPS out of band
        video = [p for p in c.demux(c.streams.video[0]) if p.size]
    tb = float(video[0].time_base)
    frames = [(params if p.is_keyframe else b"") + bytes(p) for p in video]
    for p, data in zip(video, frames):
        pts90 = round(p.pts * tb * 90000)
        ps += mux.frame(data, pts90, key=p.is_keyframe)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 320), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        for a in enc.encode(samples):
            ps += mux.frame(bytes(a), pts90, audio=True)
    pipe = PsPipe()
    pipe.write(bytes(ps))
    pipe.close()
    demuxer = PsDemuxer(pipe)
    info = demuxer.open()
    got = list(demuxer.packets())
    assert info.codec == "h264" and (info.width, info.height) == (320, 240) and info.fps == 25
    vids = [p for p in got if p.stream.type == "video"]
    assert [bytes(p) for p in vids] == frames, "every video frame, byte for byte"
    assert demuxer.audio is not None and demuxer.audio.codec_context.name == name
    assert sum(1 for p in got if p.stream.type == "audio") >= 40
