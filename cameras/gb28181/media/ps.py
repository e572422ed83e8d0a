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
from collections.abc import Iterator

import av

log = logging.getLogger(__name__)

PACK = 0xBA
END = 0xB9
_PS_OPTIONS = {"probesize": "32768", "analyzeduration": "0"}


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


class PsDemuxer:
    """av.Packets (video, and audio when present) from a PS byte stream written to ``pipe``.
    ``open`` blocks until FFmpeg has seen the video stream (its SPS/PPS/VPS and a frame)."""

    def __init__(self, pipe: PsPipe) -> None:
        self.pipe = pipe
        self.container = None
        self.video = None
        self.audio = None

    def open(self) -> PsDemuxer:
        self.container = av.open(self.pipe, mode="r", format="mpeg", options=dict(_PS_OPTIONS))
        if not self.container.streams.video:
            raise PsError("the program stream holds no video")
        self.video = self.container.streams.video[0]
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        return self

    def packets(self) -> Iterator[av.Packet]:
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        for packet in self.container.demux(streams):
            if packet.size == 0 or packet.pts is None and packet.dts is None:
                continue
            yield packet

    def close(self) -> None:
        self.pipe.close()
        if self.container is not None:
            try:
                self.container.close()
            except Exception:       # noqa: BLE001 - closing a broken stream
                pass
