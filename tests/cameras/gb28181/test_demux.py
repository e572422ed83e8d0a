"""``PsVideoDemuxer`` (the receive thread's PS demuxer) against streams others wrote: FFmpeg's
libx264/libx265 (through our ``PsMuxer``, a GB device's layout, and a vendor's with every NAL
unit in a PES of its own) and FFmpeg's own PS muxer (several frames in one PES, PES cut
anywhere); FFmpeg's decoders read every packet. Also: when a frame goes out (at its RTP
marker, not a frame later), what a lost packet costs, and bytes that are not PS."""
from __future__ import annotations

import subprocess

import av
import pytest

from cameras.gb28181.media.demux import PsVideoDemuxer
from cameras.gb28181.media.ps import PsError, PsFramer, PsMuxer

SECONDS, FPS, GOP = 2, 25, 10


def encoded(codec: str) -> tuple[list[av.Packet], bytes]:
    """FFmpeg's encoding of a test pattern (NUT: parameter sets out of band) and its extradata."""
    encoder = ["-c:v", "libx264", "-bf", "0"] if codec == "h264" else \
        ["-c:v", "libx265", "-x265-params", "log-level=none:bframes=0"]
    nut = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
                          "-t", str(SECONDS), *encoder, "-g", str(GOP), "-f", "nut", "-"],
                         capture_output=True, check=True, timeout=60).stdout
    import io
    with av.open(io.BytesIO(nut), format="nut") as c:
        stream = c.streams.video[0]
        return [p for p in c.demux(stream) if p.size], bytes(stream.codec_context.extradata or b"")


def rtp_frames(ps_frames: list[bytes], size: int = 1400) -> list[list[bytes]]:
    return [[f[i:i + size] for i in range(0, len(f), size)] for f in ps_frames]


def our_ps(codec: str, *, nal_per_pes: bool = False) -> tuple[list[list[bytes]], list[bytes]]:
    """(RTP payloads per frame, the access units put in) the way a GB device sends them."""
    packets, extradata = encoded(codec)
    mux = PsMuxer(codec)
    frames, units = [], []
    for p in packets:
        au = (extradata if p.is_keyframe else b"") + bytes(p)
        pts = round(p.pts * float(p.time_base) * 90000)
        if nal_per_pes:     # a vendor's layout: every NAL unit its own PES, each with the frame's PTS
            nals = [b"\x00\x00\x00\x01" + n for n in au.split(b"\x00\x00\x00\x01") if n]
            ps = mux.frame(nals[0], pts, key=p.is_keyframe) + b"".join(
                mux.frame(n, pts)[14:] for n in nals[1:])       # without their pack headers
            units.append(b"".join(nals))
        else:
            ps = mux.frame(au, pts, key=p.is_keyframe)
            units.append(au)
        frames.append(ps)
    return rtp_frames(frames), units


class Taken:
    def __init__(self) -> None:
        self.video = None
        self.packets: list[av.Packet] = []

    def demuxer(self) -> PsVideoDemuxer:
        return PsVideoDemuxer(self.opened, self.packets.append)

    def opened(self, video) -> None:
        self.video = video


def decoded(codec: str, packets: list[av.Packet]) -> int:
    decoder = av.CodecContext.create(codec, "r")
    return sum(len(decoder.decode(p)) for p in packets) + len(decoder.decode(None))


@pytest.mark.parametrize("codec, nal_per_pes", [("h264", False), ("hevc", False), ("h264", True), ("hevc", True)])
def test_a_devices_frames_come_out_whole_at_their_marker(codec, nal_per_pes):
    frames, units = our_ps(codec, nal_per_pes=nal_per_pes)
    taken = Taken()
    demuxer = taken.demuxer()
    out_after = []
    for payloads in frames:
        for payload in payloads:
            demuxer.feed(payload)
        demuxer.end_frame()
        out_after.append(len(taken.packets))
    v = taken.video
    assert (v.codec, v.width, v.height, v.fps) == (codec, 320, 240, FPS)
    assert v.extradata and v.extradata.startswith(b"\x00\x00\x00\x01")
    # from the third frame (two access units that began where their PES began: a device's
    # layout, not FFmpeg's), every frame is out at its own marker, not when the next begins
    # (the keyframe is out, and the session open, as soon as the next frame's PES is there)
    assert out_after[:2] == [0, 1] and all(n == i + 1 for i, n in enumerate(out_after) if i >= 2), out_after[:6]
    assert [bytes(p) for p in taken.packets] == units, "every access unit, byte for byte"
    assert [p.pts for p in taken.packets] == [i * 3600 for i in range(len(units))]
    assert [i for i, p in enumerate(taken.packets) if p.is_keyframe] == list(range(0, len(units), GOP))
    assert decoded(codec, taken.packets) == len(units)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_ffmpegs_own_ps_is_cut_into_one_packet_per_frame(codec):
    """FFmpeg's PS muxer: no PSM (the codec is probed), PES of 2 KB cut anywhere, a frame's PTS
    on the PES it begins in: the access units are found by their NAL units."""
    encoder = ["-c:v", "libx264", "-bf", "0"] if codec == "h264" else \
        ["-c:v", "libx265", "-x265-params", "log-level=none:bframes=0"]
    ps = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
                         "-t", str(SECONDS), *encoder, "-g", str(GOP), "-f", "vob", "-"],
                        capture_output=True, check=True, timeout=60).stdout
    framer = PsFramer()
    frames = [f for _, f in framer.feed(ps) + framer.flush()]
    taken = Taken()
    demuxer = taken.demuxer()
    for payloads in rtp_frames(frames):
        for payload in payloads:
            demuxer.feed(payload)
        demuxer.end_frame()
    total = SECONDS * FPS
    assert taken.video.codec == codec and (taken.video.width, taken.video.height) == (320, 240)
    assert len(taken.packets) == total - 1, "all but the last (its end is the next one's start)"
    assert sum(p.is_keyframe for p in taken.packets) == total // GOP
    stamped = [p.pts for p in taken.packets if p.pts is not None]
    assert stamped == sorted(stamped) and len(stamped) >= total // 2
    assert decoded(codec, taken.packets) == total - 1


def test_a_lost_packet_costs_its_frame_and_the_stream_goes_on():
    frames, units = our_ps("h264")
    frames = rtp_frames([b"".join(f) for f in frames], 300)
    taken = Taken()
    demuxer = taken.demuxer()
    hit = 14                            # a P frame of several packets: lose its second
    assert len(frames[hit]) >= 2
    for n, payloads in enumerate(frames):
        for i, payload in enumerate(payloads):
            if n == hit and i == 1:
                demuxer.lost()
                continue
            demuxer.feed(payload)
        demuxer.end_frame()
    got = [bytes(p) for p in taken.packets]
    assert units[hit] not in got and len(got) == len(units) - 1
    assert got == units[:hit] + units[hit + 1:], "the frames after it whole"
    assert demuxer.resyncs == 1


def test_bytes_that_are_not_ps_end_the_session_with_a_reason():
    packets, extradata = encoded("h264")
    raw = extradata + b"".join(bytes(p) for p in packets)      # H.264 as it is, no PS around it
    demuxer = Taken().demuxer()
    with pytest.raises(PsError, match="not PS"):
        for _ in range(400):
            for payloads in rtp_frames([raw], 1400):
                for payload in payloads:
                    demuxer.feed(payload)
                demuxer.end_frame()
    assert demuxer.junk > 4 * 1024 * 1024 - 1400
