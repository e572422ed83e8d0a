"""``PsVideoDemuxer``: a GB/T 28181 session's PS turned into video av.Packets in the thread that
receives the RTP — no second thread, no pipe, no FFmpeg demuxer.

    RTP payloads ──feed──▶ PS units (pack, system header, PSM, PES) ──video PES payloads──▶
        elementary stream ──NAL scan──▶ access units ──▶ av.Packet (pts, key) ──▶ on_packet

The PS is walked structurally (lengths, as ``PsFramer``); the PSM names the codec (0x1B H.264,
0x24 H.265), a PS without one (FFmpeg's own) is probed from its first parameter set. The video
PES payloads are one byte stream; access units are cut where the codec's NAL types say one
begins (H.264 7.4.1.2.3, H.265 7.4.2.4.4: an AUD, parameter set or SEI after a slice, or a
slice that is a picture's first), so several frames packed into one PES (FFmpeg's PS muxer)
come out one per packet. An access unit takes the PTS of the PES it begins in (the MPEG rule:
the first access unit starting in a PES has its PTS); one that began inside another frame's PES
has none (the consumer places it). The key flag comes from the NAL types (H.264 IDR, H.265 IRAP).

When is an access unit complete? A GB device (and ``PsMuxer``) puts each frame in its own
pack, the frame's PES beginning with it: the end of the RTP frame (the marker) ends it, and it
goes out at once. FFmpeg's muxer cuts PES anywhere: there the next access unit's start ends
one (a frame later). Which kind a stream is, the first access units say (do they begin where a
PES begins?); until then units wait for the next one's start.

A lost RTP packet (``lost()``) costs what was being assembled: the bytes are dropped up to the
next pack header. Bytes that are not a program stream are skipped to the next pack header,
and counted: 4 MB of them without one, or no video keyframe in ``KEYFRAME_WITHIN`` access
units, is a ``PsError`` (the session ends with it, as a stream that cannot be read).
"""
from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import av

from cameras.gb28181.media.ps import KEYFRAME_WITHIN, PsError, PsVideo

PACK_START = b"\x00\x00\x01\xba"
START = b"\x00\x00\x01"
TIME_BASE = Fraction(1, 90000)
JUNK_LIMIT = 4 * 1024 * 1024
AU_LIMIT = 8 * 1024 * 1024       # an access unit bigger than this is dropped (no picture is)
ALIGNED_AFTER = 2               # access units beginning where PES begin, before trusting the marker
VIDEO_TYPES = {0x1B: "h264", 0x24: "hevc"}
AUDIO_TYPES = {0x90: "pcm_alaw", 0x91: "pcm_mulaw", 0x0F: "aac", 0x03: "mp2", 0x04: "mp2", 0x80: "pcm_s16be"}
UNSUPPORTED_VIDEO = {0x10: "MPEG-4 video", 0x80: "SVAC video", 0x02: "MPEG-2 video", 0x01: "MPEG-1 video"}

# H.264 nal_unit_type: slices; what begins an access unit when it follows a slice
_H264_VCL = frozenset((1, 2, 5))
_H264_AU = frozenset((6, 7, 8, 9, 13, 14, 15, 16, 17, 18))
_H264_PARAMS = frozenset((7, 8))
# H.265: slices are 0-31; VPS SPS PPS AUD, prefix SEI, reserved 41-44, unspecified 48-55
_H265_AU = frozenset((32, 33, 34, 35, 39, 41, 42, 43, 44, 48, 49, 50, 51, 52, 53, 54, 55))
_H265_PARAMS = frozenset((32, 33, 34))


def _pts(b, i: int) -> int:
    return (((b[i] >> 1) & 0x07) << 30) | (b[i + 1] << 22) | ((b[i + 2] >> 1) << 15) | (b[i + 3] << 7) | (b[i + 4] >> 1)


class PsVideoDemuxer:
    """``feed`` RTP payloads, ``end_frame`` at each RTP frame's end (marker, or a new
    timestamp), ``lost`` when a packet went missing. ``on_open(PsVideo)`` once the first
    keyframe is whole and the next frame's PES has come (codec, size from decoding the keyframe,
    rate from the two timestamps), then ``on_packet(av.Packet)`` for each video access unit
    from that keyframe on. Audio is not kept; which there is, the PSM says (``PsVideo.audio``)."""

    def __init__(self, on_open: Callable[[PsVideo], None], on_packet: Callable[[av.Packet], None]) -> None:
        self.on_open, self.on_packet = on_open, on_packet
        self.codec: str | None = None
        self.audio: str | None = None
        self.opened = False
        self.packets = 0
        self.junk = 0                   # bytes skipped looking for a pack header
        self.resyncs = 0
        self.dropped_units = 0
        self._ps = bytearray()          # PS bytes not parsed yet
        self._resync = False
        self._junk_run = 0
        self._types: dict[int, int] = {}    # PSM: stream id → stream type
        self._es = bytearray()          # video elementary stream from the current access unit on
        self._base = 0                  # absolute ES offset of _es[0]
        self._pes: list[list] = []      # video PES in _es: [start, end, pts, dts] (absolute)
        self._scan = 0                  # where the NAL scan goes on in _es
        self._vcl = False               # the current access unit has a slice
        self._key = False
        self._aligned: bool | None = None
        self._aligned_seen = 0
        self._held: list[av.Packet] = []
        self._pes_pts: int | None = None     # the last video PES's PTS (the rate, at the start)
        self._skipped = 0
        self._frames_without_video = 0
        self._saw_video = False

    # -- input ----------------------------------------------------------------------------
    def feed(self, data) -> None:
        self._ps += data

    def lost(self) -> None:
        """A packet went missing: what is being assembled is dropped, up to the next pack."""
        self._ps.clear()
        self._drop_es()
        self._resync = True
        self.resyncs += 1

    def end_frame(self) -> None:
        self._parse()
        if self._aligned and self._vcl and not self._ps:
            self._emit(len(self._es))
        if not self._saw_video:
            self._frames_without_video += 1
            if self._frames_without_video > KEYFRAME_WITHIN:
                raise PsError(f"no video in {KEYFRAME_WITHIN} RTP frames (or what the device sends is not PS)")

    # -- the program stream -----------------------------------------------------------------
    def _parse(self) -> None:
        b = self._ps
        if self._resync and not self._find_pack():
            return
        n = len(b)
        i = 0
        while n - i >= 4:
            if b[i] or b[i + 1] or b[i + 2] != 1 or b[i + 3] < 0xB9:
                del b[:i]
                self._resync = True
                self.resyncs += 1
                self._drop_es()
                if not self._find_pack():
                    return
                n, i = len(b), 0
                continue
            code = b[i + 3]
            if code == 0xBA:                # pack header
                if n - i < 14:
                    break
                end = i + 14 + (b[i + 13] & 0x07) if b[i + 4] >> 6 == 1 else i + 12
                if end > n:
                    break
                i = end
                continue
            if code == 0xB9:                # program end
                i += 4
                continue
            if n - i < 6:
                break
            end = i + 6 + ((b[i + 4] << 8) | b[i + 5])
            if end > n:
                break
            if 0xE0 <= code <= 0xEF:
                self._video_pes(b, i, end)
            elif code == 0xBC:
                self._psm(b, i, end)
            elif self.audio is None and 0xC0 <= code <= 0xDF:
                self.audio = AUDIO_TYPES.get(self._types.get(code, 0x03), "audio")
            i = end
        if i:
            del b[:i]
        self._junk_run = 0

    def _find_pack(self) -> bool:
        b = self._ps
        at = b.find(PACK_START)
        if at < 0:
            cut = max(0, len(b) - 3)
            self._skip(cut)
            return False
        self._skip(at)
        self._resync = False
        return True

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        del self._ps[:n]
        self.junk += n
        self._junk_run += n
        if self._junk_run > JUNK_LIMIT:
            raise PsError(f"{self._junk_run // 1024} KB without an MPEG program stream pack header: what the "
                          "device sends is not PS")

    def _psm(self, b, i: int, end: int) -> None:
        if end - i < 16:
            return
        info = (b[i + 8] << 8) | b[i + 9]
        j = i + 10 + info
        if j + 2 > end:
            return
        stop = min(j + 2 + ((b[j] << 8) | b[j + 1]), end - 4)
        j += 2
        while j + 4 <= stop:
            stream_type, stream_id = b[j], b[j + 1]
            self._types[stream_id] = stream_type
            j += 4 + ((b[j + 2] << 8) | b[j + 3])
            if 0xE0 <= stream_id <= 0xEF and self.codec is None:
                if stream_type in VIDEO_TYPES:
                    self.codec = VIDEO_TYPES[stream_type]
                elif stream_type in UNSUPPORTED_VIDEO:
                    raise PsError(f"the device sends {UNSUPPORTED_VIDEO[stream_type]} (PSM stream type "
                                  f"0x{stream_type:02x}): only H.264 and H.265 are read")
            elif 0xC0 <= stream_id <= 0xDF and self.audio is None:
                self.audio = AUDIO_TYPES.get(stream_type, f"audio 0x{stream_type:02x}")

    def _video_pes(self, b, i: int, end: int) -> None:
        self._saw_video = True
        if end - i < 9:
            return                          # no header, no payload
        pts = dts = None
        if b[i + 6] >> 6 == 2:              # MPEG-2 PES header
            flags = b[i + 7] >> 6
            start = i + 9 + b[i + 8]
            if flags & 2 and end - i >= 14:
                pts = dts = _pts(b, i + 9)
                if flags == 3 and end - i >= 19:
                    dts = _pts(b, i + 14)
        else:                               # MPEG-1: stuffing, STD buffer, then the stamps
            j = i + 6
            while j < end and b[j] == 0xFF:
                j += 1
            if j < end and b[j] >> 6 == 1:
                j += 2
            if j < end and b[j] >> 4 in (2, 3):
                pts = dts = _pts(b, j)
                if b[j] >> 4 == 3:
                    dts = _pts(b, j + 5)
                    j += 10
                else:
                    j += 5
            else:
                j += 1
            start = j
        if start >= end:
            return
        es = self._es
        at = self._base + len(es)
        self._pes.append([at, at + end - start, pts, dts])
        if pts is not None and not self.opened:
            self._next_pts(pts)
        if self._aligned and not es and b[start:start + 3] != START and b[start:start + 4] != b"\x00\x00\x00\x01":
            self._aligned = False       # the frame ended at the marker had more to come: wait for the next start
        es += memoryview(b)[start:end]
        self._nals()

    # -- access units -----------------------------------------------------------------------
    def _nals(self) -> None:
        if self.codec is None and not self._probe():
            return
        es = self._es
        n = len(es)
        p = self._scan
        find = es.find
        h264 = self.codec == "h264"
        while True:
            p = find(START, p)
            if p < 0 or p + 6 > n:         # the NAL header and the byte after it (first slice or not)
                self._scan = max(0, n - 3) if p < 0 else p
                if n > AU_LIMIT:            # no access unit is that big: a broken stream
                    self.dropped_units += 1
                    self._drop_es()
                return
            h = es[p + 3]
            if h264:
                t = h & 0x1F
                vcl = t in _H264_VCL
                starts = (es[p + 4] & 0x80) if vcl else t in _H264_AU
                key = t == 5
            else:
                t = (h >> 1) & 0x3F
                vcl = t < 32
                starts = (es[p + 5] & 0x80) if vcl else t in _H265_AU
                key = 16 <= t <= 23
            if starts and self._vcl:
                cut = p - 1 if es[p - 1] == 0 else p
                self._note_alignment(cut, p)
                self._emit(cut)
                es, n = self._es, len(self._es)
                p -= cut
            if vcl:
                self._vcl = True
                if key:
                    self._key = True
            p += 3

    def _note_alignment(self, cut: int, p: int) -> None:
        if self._aligned is False:
            return
        lo, hi = self._base + cut, self._base + p
        if any(lo <= s <= hi for s, *_ in self._pes):
            if self._aligned is None:
                self._aligned_seen += 1
                if self._aligned_seen >= ALIGNED_AFTER:
                    self._aligned = True
        else:
            self._aligned = False       # FFmpeg's muxer: PES cut anywhere; an access unit waits for the next

    def _probe(self) -> bool:
        """A PS without a PSM: the codec from the first parameter set in the video."""
        es = self._es
        p = 0
        while True:
            p = es.find(START, p)
            if p < 0 or p + 5 > len(es):
                break
            h, h2 = es[p + 3], es[p + 4]
            if h in (0x40, 0x42, 0x44) and h2 == 0x01:
                self.codec = "hevc"
            elif h & 0x9F == 0x07 or h & 0x9F == 0x05 and h & 0x60:
                self.codec = "h264"
            if self.codec is not None:
                cut = p - 1 if p and es[p - 1] == 0 else p
                self._drop_front(cut)
                return True
            p += 3
        if len(es) > JUNK_LIMIT:
            raise PsError("no H.264 or H.265 parameter set in the first 4 MB of video (and no PSM naming the codec)")
        return False

    def _drop_front(self, cut: int) -> None:
        del self._es[:cut]
        self._base += cut
        self._scan = 0
        self._pes = [e for e in self._pes if e[1] > self._base]

    def _drop_es(self) -> None:
        self._base += len(self._es)
        self._es.clear()
        self._pes.clear()
        self._scan = 0
        self._vcl = self._key = False

    def _emit(self, cut: int) -> None:
        """The access unit _es[:cut] is complete."""
        es, start = self._es, self._base
        pes = self._pes
        pts = dts = None
        while pes and pes[0][1] <= start:
            pes.pop(0)
        if pes and pes[0][0] <= start and pes[0][2] is not None:
            pts, dts = pes[0][2], pes[0][3]
            pes[0][2] = None            # the PES's stamp is its first access unit's
        key = self._key
        packet = av.Packet(es[:cut])
        del es[:cut]
        self._base += cut
        self._scan = 0
        self._vcl = self._key = False
        packet.pts, packet.dts = pts, dts
        packet.time_base = TIME_BASE
        packet.is_keyframe = key
        if self.opened:
            self.packets += 1
            self.on_packet(packet)
        else:
            self._opening(packet)

    def _opening(self, packet: av.Packet) -> None:
        held = self._held
        if not held:
            if not packet.is_keyframe or packet.pts is None:
                self._skipped += 1
                if self._skipped > KEYFRAME_WITHIN:
                    raise PsError(f"no {self.codec} keyframe in the first {KEYFRAME_WITHIN} video access units")
                return
            held.append(packet)
            if self._pes_pts is not None and self._pes_pts > packet.pts:
                self._open(self._pes_pts)       # the next frame's PES is here already: its time gives the rate
            return
        held.append(packet)

    def _next_pts(self, pts: int) -> None:
        """A video PES with a time: once the first keyframe is held, the rate is known."""
        self._pes_pts = pts
        if not self.opened and self._held and pts > self._held[0].pts:
            self._open(pts)

    def _open(self, next_pts: int) -> None:
        held = self._held
        first = held[0]
        decoder = av.CodecContext.create(self.codec, "r")
        decoder.thread_count = 1
        width = height = 0
        for p in (first, None):
            try:
                for frame in decoder.decode(p):
                    width, height = frame.width, frame.height
            except av.FFmpegError:
                pass
            if width:
                break
        if not width:
            raise PsError(f"the first {self.codec} keyframe could not be decoded")
        rate = 90000 / (next_pts - first.pts)
        fps = round(rate, 3) if 1 <= rate <= 120 else None
        self.opened = True
        self._held = []
        self.on_open(PsVideo(self.codec, width, height, fps, self._parameter_sets(bytes(first)), self.audio))
        for p in held:
            self.packets += 1
            self.on_packet(p)

    def _parameter_sets(self, au: bytes) -> bytes | None:
        """The keyframe's VPS/SPS/PPS in Annex B (a Segment's extradata, as FFmpeg's RTSP demuxer gives it)."""
        out = []
        p = au.find(START)
        while p >= 0:
            q = au.find(START, p + 3)
            end = len(au) if q < 0 else (q - 1 if au[q - 1] == 0 else q)
            h = au[p + 3] if p + 3 < len(au) else 0
            t = h & 0x1F if self.codec == "h264" else (h >> 1) & 0x3F
            if t in (_H264_PARAMS if self.codec == "h264" else _H265_PARAMS):
                out.append(b"\x00\x00\x00\x01" + au[p + 3:end])
            p = q
        return b"".join(out) or None


__all__ = ["PsVideoDemuxer"]
