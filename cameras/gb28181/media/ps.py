"""MPEG-PS (ISO/IEC 13818-1 program stream) as GB/T 28181 carries it over RTP.

- ``PsFramer`` cuts a PS byte stream (FFmpeg's ``-f mpeg`` output, PyAV's mpeg muxer) into the
  frames RTP sends one per timestamp: it walks the packs structurally (pack header, system
  header, PSM, PES lengths — never a search for start codes, which audio may contain) and
  starts a frame at every PES carrying a PTS; the frame's RTP timestamp is that PTS (90 kHz).
- ``PsDemuxer`` turns the PS byte stream a receiver reassembles from RTP payloads back into
  av.Packets with PyAV (FFmpeg's ``mpeg`` demuxer reading a pipe object): H.264 and H.265
  video (from the PSM's stream type when the device sends one, else probed), and the audio
  FFmpeg's PS demuxer knows (MPEG audio, AC-3, LPCM, AAC in ADTS, G.711 A-law (PSM type 0x90)).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from collections.abc import Iterator

import av

log = logging.getLogger(__name__)

PACK = 0xBA
END = 0xB9
# FFmpeg's stream analysis would hold the first frames for up to probesize bytes or 5 s (an
# analyzeduration of 0 means the default): a live channel starts at once instead, the codec
# from the PSM, the picture size from the first keyframe (PsDemuxer.open). 4 KB is what a PS
# without a PSM (FFmpeg's own) needs for its video to be probed as such (with less, FFmpeg
# takes H.265 for MP3).
_PS_OPTIONS = {"probesize": "4096", "analyzeduration": "1", "fpsprobesize": "0"}
KEYFRAME_WITHIN = 600           # video packets: a stream without a keyframe by then is not one we can read


class PsError(ValueError):
    """Bytes that are not an MPEG program stream where one was expected."""


def _pts(b: bytes | bytearray, i: int) -> int:
    return (((b[i] >> 1) & 0x07) << 30) | (b[i + 1] << 22) | ((b[i + 2] >> 1) << 15) | (b[i + 3] << 7) | (b[i + 4] >> 1)


class PsFramer:
    """``feed`` PS bytes, get ``(pts_90k, frame_bytes)`` for every frame that is complete (the
    next one has begun); ``flush`` gives the last. A frame is every pack from one carrying a
    PES with a PTS up to the next such pack (a pack is its header and the units up to the
    next pack header)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pack = bytearray()
        self._pack_pts: int | None = None
        self._frame = bytearray()
        self._pts: int | None = None
        self._last_pts = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while True:
            end, code, pts = self._unit(buf, pos)
            if end is None:
                break
            if code == PACK:
                self._end_pack(out)
            if pts is not None and self._pack_pts is None:
                self._pack_pts = pts
            self._pack += buf[pos:end]
            pos = end
            if code == END:
                self._end_pack(out)
        del buf[:pos]
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        self._end_pack(out)
        if self._frame:
            out.append((self._frame_pts(), bytes(self._frame)))
        self._frame.clear()
        self._pts = None
        return out

    def _end_pack(self, out: list) -> None:
        if not self._pack:
            return
        if self._pack_pts is not None:
            if self._frame:
                out.append((self._frame_pts(), bytes(self._frame)))
                self._frame.clear()
            self._pts = self._pack_pts
        self._frame += self._pack
        self._pack.clear()
        self._pack_pts = None

    def _frame_pts(self) -> int:
        if self._pts is not None:
            self._last_pts = self._pts
        return self._last_pts

    @staticmethod
    def _unit(b: bytearray, i: int) -> tuple[int | None, int, int | None]:
        """The end of the syntactic unit at ``i`` (a pack header, or one start-code unit), its
        start code, and the PTS of a PES it holds; end None while incomplete."""
        if len(b) - i < 4:
            return None, 0, None
        if b[i] or b[i + 1] or b[i + 2] != 1:
            raise PsError(f"no start code where a PS unit should begin (bytes {bytes(b[i:i + 4]).hex()})")
        code = b[i + 3]
        if code == PACK:
            if len(b) - i < 14:
                return None, code, None
            end = i + 14 + (b[i + 13] & 0x07) if b[i + 4] >> 6 == 1 else i + 12     # MPEG-2, or MPEG-1
            return (end if len(b) >= end else None), code, None
        if code == END:
            return i + 4, code, None
        if code < 0xBB:
            raise PsError(f"start code 0x{code:02x} inside a program stream")
        if len(b) - i < 6:
            return None, code, None
        end = i + 6 + ((b[i + 4] << 8) | b[i + 5])
        if len(b) < end:
            return None, code, None
        pts = None
        if (0xC0 <= code <= 0xEF or code == 0xBD) and end - i >= 14 and b[i + 6] >> 6 == 2 and b[i + 7] & 0x80:
            pts = _pts(b, i + 9)
        return end, code, pts


class PsPipe:
    """The PS byte stream as a file object for PyAV: ``write`` (receiver thread) appends,
    ``read`` (demux thread) blocks until there are bytes, and returns b"" once closed."""

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False
        self.limit = limit
        self.overflows = 0

    def write(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                return
            if self._size + len(data) > self.limit:         # the demuxer is stuck: keep the newest
                self.overflows += 1
                self._chunks.clear()
                self._size = 0
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._closed:
                self._cond.wait()
            if not self._chunks:
                return b""
            out = []
            size = 0
            while self._chunks and (n < 0 or size < n):
                chunk = self._chunks.popleft()
                if n >= 0 and size + len(chunk) > n:
                    cut = n - size
                    self._chunks.appendleft(chunk[cut:])
                    chunk = chunk[:cut]
                out.append(chunk)
                size += len(chunk)
            self._size -= size
            return b"".join(out)


@dataclass(frozen=True)
class PsVideo:
    """What the first keyframe of a PS stream says about its video."""
    codec: str
    width: int
    height: int
    fps: float | None
    extradata: bytes | None
    audio: str | None


class PsDemuxer:
    """av.Packets (video, and audio when present) from a PS byte stream written to ``pipe``.
    ``open`` blocks until the first video keyframe and the packet after it are there, and says
    what the video is (codec, size from decoding that keyframe, rate from the two timestamps);
    ``packets`` then yields from that keyframe on."""

    def __init__(self, pipe: PsPipe) -> None:
        self.pipe = pipe
        self.container = None
        self.video = None
        self.audio = None
        self._held: list[av.Packet] = []
        self._demux = None

    def open(self) -> PsVideo:
        self.container = av.open(self.pipe, mode="r", format="mpeg", options=dict(_PS_OPTIONS))
        # Without a PSM the demuxer meets the streams as their first PES comes: all are read.
        self._demux = self.container.demux()
        held = self._held
        skipped = 0
        for packet in self._demux:
            if packet.size == 0 or packet.stream.type != "video":
                continue
            if self.video is None:
                self.video = packet.stream
            elif packet.stream is not self.video:
                continue
            if not held and not packet.is_keyframe:
                skipped += 1
                if skipped > KEYFRAME_WITHIN:
                    raise PsError(f"no {packet.stream.codec_context.name} keyframe in the first {KEYFRAME_WITHIN} "
                                  "video packets")
                continue                # start at a keyframe
            held.append(packet)
            if len(held) >= 2:
                break
        if self.video is None:
            raise PsError("the program stream holds no video (or what the device sent was not PS)")
        if self.container.streams.audio:
            self.audio = self.container.streams.audio[0]
        if not held:
            raise PsError("the PS stream ended before its first keyframe")
        ctx = self.video.codec_context
        decoder = av.CodecContext.create(ctx.name, "r")
        decoder.thread_count = 1
        width = height = 0
        for packet in held[:1] + [None]:
            try:
                for frame in decoder.decode(packet):
                    width, height = frame.width, frame.height
            except av.FFmpegError:
                pass
            if width:
                break
        if not width:
            raise PsError(f"the first {ctx.name} keyframe could not be decoded")
        fps = None
        if len(held) == 2 and held[0].pts is not None and held[1].pts is not None and held[1].pts > held[0].pts:
            rate = 1 / float((held[1].pts - held[0].pts) * self.video.time_base)
            fps = round(rate, 3) if 1 <= rate <= 120 else None
        audio = (self.audio.codec_context.name or "audio") if self.audio is not None else None
        return PsVideo(ctx.name, width, height, fps, bytes(ctx.extradata) if ctx.extradata else None, audio)

    def packets(self) -> Iterator[av.Packet]:
        held, self._held = self._held, []
        yield from held
        video = self.video
        for packet in self._demux:
            if packet.size == 0:        # a flush; a packet without time is the consumer's to stamp
                continue
            if packet.stream is not video and packet.stream.type == "video":
                continue                # a second video stream: one is the channel's
            if self.audio is None and packet.stream.type == "audio":
                self.audio = packet.stream
            yield packet

    def close(self) -> None:
        self.pipe.close()
        if self.container is not None:
            try:
                self.container.close()
            except Exception:       # noqa: BLE001 - closing a broken stream
                pass


# ---------------------------------------------------------------------------- muxing

STREAM_TYPES = {"h264": 0x1B, "hevc": 0x24, "h265": 0x24, "aac": 0x0F, "pcm_alaw": 0x90, "pcm_mulaw": 0x91}
VIDEO_ID, AUDIO_ID = 0xE0, 0xC0
PES_MAX = 65000
MUX_RATE = 6106            # 50-byte units: ~2.4 Mbit/s, informative only


def _crc32_mpeg2_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return table


_CRC = _crc32_mpeg2_table()


def crc32_mpeg2(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ byte]
    return crc


def _ts(prefix: int, ts: int) -> bytes:
    ts &= (1 << 33) - 1
    return bytes(((prefix << 4) | (((ts >> 30) & 7) << 1) | 1, (ts >> 22) & 0xFF, (((ts >> 15) & 0x7F) << 1) | 1,
                  (ts >> 7) & 0xFF, ((ts & 0x7F) << 1) | 1))


def pack_header(scr: int) -> bytes:
    scr &= (1 << 33) - 1
    return bytes((0, 0, 1, PACK,
                  0x44 | ((scr >> 27) & 0x38) | ((scr >> 28) & 0x03), (scr >> 20) & 0xFF,
                  0x04 | ((scr >> 12) & 0xF8) | ((scr >> 13) & 0x03), (scr >> 5) & 0xFF,
                  0x04 | ((scr << 3) & 0xF8), 0x01,
                  (MUX_RATE >> 14) & 0xFF, (MUX_RATE >> 6) & 0xFF, ((MUX_RATE << 2) & 0xFC) | 0x03, 0xF8))


class PsMuxer:
    """An MPEG-2 program stream the way GB/T 28181 devices write it: every frame its own pack
    (pack header; on keyframes the system header and a PSM naming the codecs by stream type —
    0x1B H.264, 0x24 H.265, 0x90 G.711A, 0x0F AAC); the frame in PES packets of at most
    ``PES_MAX`` bytes, the first with its PTS (and DTS). What upper platforms (WVP/ZLMediaKit,
    vendors' NVRs) expect, and what FFmpeg's PS muxer does not write (no PSM, several frames
    per PES)."""

    def __init__(self, video: str, audio: str | None = None) -> None:
        if video not in STREAM_TYPES or video in ("aac", "pcm_alaw", "pcm_mulaw"):
            raise ValueError(f"GB/T 28181 PS carries H.264 or H.265 video, not {video!r}")
        if audio is not None and audio not in STREAM_TYPES:
            raise ValueError(f"no PS stream type for audio codec {audio!r}")
        self.video, self.audio = video, audio

    def _system_header(self) -> bytes:
        streams = bytes((VIDEO_ID, 0xE0 | 0x02, 0x00))
        if self.audio:
            streams += bytes((AUDIO_ID, 0xC0, 0x20))
        rate = MUX_RATE
        body = bytes((0x80 | ((rate >> 15) & 0x7F), (rate >> 7) & 0xFF, ((rate << 1) & 0xFE) | 0x01,
                      (1 if self.audio else 0) << 2, 0xE1, 0xFF)) + streams
        return bytes((0, 0, 1, 0xBB)) + len(body).to_bytes(2, "big") + body

    def _psm(self) -> bytes:
        entries = bytes((STREAM_TYPES[self.video], VIDEO_ID, 0, 0))
        if self.audio:
            entries += bytes((STREAM_TYPES[self.audio], AUDIO_ID, 0, 0))
        body = bytes((0xE0, 0xFF, 0, 0)) + len(entries).to_bytes(2, "big") + entries
        head = bytes((0, 0, 1, 0xBC)) + (len(body) + 4).to_bytes(2, "big") + body
        return head + crc32_mpeg2(head).to_bytes(4, "big")

    def frame(self, data: bytes, pts: int, dts: int | None = None, *, key: bool = False,
              audio: bool = False) -> bytes:
        """One frame (90 kHz times) as a pack."""
        dts = pts if dts is None else dts
        out = [pack_header(dts)]
        if key and not audio:
            out += [self._system_header(), self._psm()]
        stream_id = AUDIO_ID if audio else VIDEO_ID
        for n, i in enumerate(range(0, max(len(data), 1), PES_MAX)):
            chunk = data[i:i + PES_MAX]
            if n == 0:
                stamps = _ts(3, pts) + _ts(1, dts) if dts != pts else _ts(2, pts)
                head = bytes((0x80, 0xC0 if dts != pts else 0x80, len(stamps))) + stamps
            else:
                head = bytes((0x80, 0x00, 0x00))
            out.append(bytes((0, 0, 1, stream_id)) + (len(head) + len(chunk)).to_bytes(2, "big") + head + chunk)
        return b"".join(out)
