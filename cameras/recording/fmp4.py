"""Fragmented MP4 written from the camera's packets without a muxer per packet (issue 13: the
recorder's cost; bench/recording).

The file is laid out as FFmpeg's MP4 muxer lays it out with
``movflags=frag_keyframe+empty_moov+default_base_moof`` (what cameras/recording/writer.py used
before, and what playback and export read back):

    ftyp moov | moof mdat (one fragment per GOP, from a keyframe) | ... | mfra (at the close)

- ``ftyp`` + ``moov`` (the init segment: the decoder configuration, avcC/hvcC, the track's
  timescale) still come from FFmpeg, once per camera connection (``init_segment``): the mux of
  the connection's first keyframe into memory, cut before its first ``moof``.
- Each fragment's ``moof`` is built here (``mfhd``, ``tfhd`` with default-base-is-moof and
  defaults, ``tfdt``, ``trun``), with FFmpeg's choice of defaults and per-sample fields, and its
  ``mdat`` holds the samples: Annex B start codes replaced by 4-byte lengths (what the muxer's
  ``ff_nal_parse_units`` does), length-prefixed packets as they come.
- The file is written by one ``write`` per fragment and hashed from the same buffer as it is
  written (no read-back); fsync only at the close.

Only H.264 and H.265 are written this way (``DIRECT_CODECS``); any other codec goes through
PyAV's muxer as before.

Playback streams (``Fmp4Writer``): one fragmented MP4 stream written from packets, chunk by
chunk -- the one mux loop of both playbacks, the hub's own recordings
(cameras/recording/playback.py, packets remuxed from the segment files) and footage played from
a device (cameras/gb28181/playback.py, packets demuxed from the device's RTP/PS):

    w = Fmp4Writer()
    w.add_video_from_template(stream)  |  w.add_video("h264", width, height, time_base, extradata)
    w.add_audio_from_template(astream)          (optional: the recording's AAC track)
    for packet: chunk = w.write(packet, dts, pts)  -> bytes ready to send (b"" while a fragment fills)
                chunk = w.write_audio(packet, dts)
    tail = w.close()

Its decode times are kept strictly increasing (a repeated or backward one becomes last + 1: a
muxer refuses it otherwise); a presentation time is never before its decode time. It goes
through PyAV's muxer (a playback is one stream per viewer, not the recorder's hot path).
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from fractions import Fraction

import av
import numpy as np

FMP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
DIRECT_CODECS = frozenset({"h264", "hevc"})

# sample flags as FFmpeg's movenc writes them (MOV_FRAG_SAMPLE_FLAG_*)
SYNC = 0x02000000                    # depends on no other sample
NON_SYNC = 0x01010000                # depends on others, not a sync sample

_START3 = b"\x00\x00\x01"
_BE32 = struct.Struct(">I")


class InitError(Exception):
    """FFmpeg could not write the init segment for these parameters."""


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, offset, size) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, off)
        hdr = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, off + 8)[0]
            hdr = 16
        elif size == 0:
            size = end - off
        if size < hdr:
            raise InitError(f"a box of {size} bytes at {off}")
        yield kind, off, size
        off += size


def _find(data: bytes, path: tuple[bytes, ...], start: int = 0, end: int | None = None) -> tuple[int, int]:
    for kind, off, size in _boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return off, size
            return _find(data, path[1:], off + 8, off + size)
    raise InitError(f"no {b'/'.join(path).decode()} box")


def init_segment(codec: str, width: int, height: int, time_base: Fraction, extradata: bytes | None,
                 first: bytes, comment: str | None = None, audio=None) -> tuple[bytes, int, int]:
    """FFmpeg's ``ftyp`` + ``moov`` for this stream, its track's timescale and track id. ``first``
    is the connection's first keyframe (with its parameter sets): the muxer takes the decoder
    configuration from it when the camera gave no extradata. ``audio`` (an AudioPath that keeps
    the audio, cameras/recording/audio.py): a second track, AAC, after the video's (``audio_track``
    reads its id and timescale)."""
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format="mp4", options=dict(FMP4)) as out:
            kwargs = {"width": width, "height": height}
            if extradata:
                kwargs["extradata"] = extradata
            stream = out.add_mux_stream(codec, **kwargs)
            stream.time_base = time_base
            if audio is not None:
                # an encoder stream only to describe the track: its own AudioSpecificConfig is
                # replaced by the camera's (or the transcoder's) before the header is written
                astream = out.add_stream("aac", rate=audio.sample_rate, layout="mono" if audio.channels <= 1 else "stereo")
                astream.codec_context.open()
                astream.codec_context.extradata = audio.extradata
                astream.time_base = Fraction(1, audio.sample_rate)
            if comment:
                out.metadata["comment"] = comment
            pkt = av.Packet(first)
            pkt.pts = pkt.dts = 0
            pkt.time_base = time_base
            pkt.is_keyframe = True
            pkt.stream = stream
            out.mux(pkt)
    except av.FFmpegError as exc:
        raise InitError(f"{type(exc).__name__}: {exc}") from None
    data = buf.getvalue()
    moof, _ = _find(data, (b"moof",))
    init = data[:moof]
    mdhd, _ = _find(init, (b"moov", b"trak", b"mdia", b"mdhd"))
    version = init[mdhd + 8]
    timescale = _BE32.unpack_from(init, mdhd + 12 + (16 if version == 1 else 8))[0]
    tkhd, _ = _find(init, (b"moov", b"trak", b"tkhd"))
    track_id = _BE32.unpack_from(init, tkhd + 12 + (16 if init[tkhd + 8] == 1 else 8))[0]
    return init, timescale, track_id


def audio_track(init: bytes) -> tuple[int, int]:
    """The track id and timescale of an init segment's second track (the audio)."""
    moov, size = _find(init, (b"moov",))
    traks = [off for kind, off, _ in _boxes(init, moov + 8, moov + size) if kind == b"trak"]
    if len(traks) < 2:
        raise InitError("no second track")
    trak = traks[1]
    end = trak + _BE32.unpack_from(init, trak)[0]
    tkhd, _ = _find(init, (b"tkhd",), trak + 8, end)
    track_id = _BE32.unpack_from(init, tkhd + 12 + (16 if init[tkhd + 8] == 1 else 8))[0]
    mdhd, _ = _find(init, (b"mdia", b"mdhd"), trak + 8, end)
    timescale = _BE32.unpack_from(init, mdhd + 12 + (16 if init[mdhd + 8] == 1 else 8))[0]
    return track_id, timescale


def start_codes(a: np.ndarray) -> list[int]:
    """Where ``00 00 01`` begins in an Annex B buffer (as uint8), in order. The scan runs in
    numpy, two bytes at a time (a search loop in Python, bytes.find, costs as much as the
    SHA-256 of the same bytes): the zero pairs at even and at odd offsets, then the ``01``
    after each (zero pairs are few in compressed video: emulation prevention)."""
    n = len(a)
    if n < 3:
        return []
    even = np.flatnonzero(a[:n & ~1].view("<u2") == 0) * 2
    odd = np.flatnonzero(a[1:1 + ((n - 1) & ~1)].view("<u2") == 0) * 2 + 1
    c = np.concatenate((even, odd))
    c = c[c < n - 2]
    c = c[a[c + 2] == 1]
    c.sort()
    return c.tolist()


def annexb_to_lengths(data, out: list) -> int:
    """Append the NAL units of an Annex B access unit (bytes, or any buffer: an av.Packet is
    not copied) to ``out`` as (4-byte length, payload) pieces, as FFmpeg's ff_nal_parse_units
    writes them (a NAL unit ends one zero before a 4-byte start code); returns the sample's
    size."""
    a = np.frombuffer(data, np.uint8)
    end = len(a)
    codes = start_codes(a)
    if not codes:                           # not Annex B after all: as it is
        out.append(data)
        return end
    view = memoryview(a)
    size = 0
    last = len(codes) - 1
    for k, code in enumerate(codes):
        nal = code + 3
        if k < last:
            stop = codes[k + 1]
            if view[stop - 1] == 0:
                stop -= 1
        else:
            stop = end
        if stop > nal:
            out.append(_BE32.pack(stop - nal))
            out.append(view[nal:stop])
            size += 4 + stop - nal
    return size


def in_place(buf: bytearray, sizes: list[int]) -> bool:
    """Annex B access units laid end to end in ``buf`` (``sizes`` bytes each) made length-
    prefixed where they are: when every NAL unit starts with a 4-byte start code (as RTSP
    depacketizers write them) the 4-byte lengths take the start codes' places and the sizes do
    not change. The bytes are FFmpeg's (ff_nal_parse_units). False, with ``buf`` partly
    rewritten, when some unit does not fit (a 3-byte start code, leading bytes, an empty unit):
    the caller converts the original buffers instead."""
    codes = start_codes(np.frombuffer(buf, np.uint8))
    nc = len(codes)
    pos = 0
    o = 0
    pack = _BE32.pack
    for size in sizes:
        e = o + size
        if pos >= nc or codes[pos] != o + 1 or buf[o] != 0:
            return False
        while True:
            c = codes[pos]
            pos += 1
            nxt = codes[pos] if pos < nc else e
            if nxt + 3 <= e:                        # the next unit is in this access unit
                stop = nxt - 1
                if buf[stop] != 0 or stop <= c + 3:
                    return False
            elif nxt < e:                           # a start code across two access units
                return False
            else:
                stop = e
                if stop <= c + 3:
                    return False
            buf[c - 1:c + 3] = pack(stop - c - 3)
            if stop == e:
                break
        o = e
    return pos == nc


class FragmentedFile:
    """One segment file: the init segment, then a fragment per GOP, hashed as written."""

    def __init__(self, fd: int, init: bytes, timescale: int, track_id: int, time_base: Fraction, annexb: bool) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0
        self.track_id = track_id
        self.annexb = annexb
        scale = Fraction(time_base) * timescale
        self.scale = None if scale == 1 else scale
        self.seq = 0
        self.cts = False                # any sample with pts ≠ dts (then every trun carries offsets)
        # the open fragment: per sample (dts, cts offset, size, key) and the mdat's pieces
        self.samples: list[tuple[int, int, int, bool]] = []
        self.pieces: list = []
        self.fragments: list[tuple[int, int]] = []          # (time, moof offset) for the mfra
        self.last_duration = 0
        # the audio track (``with_audio``): its samples (dts, duration, size) since the last fragment
        self.audio_id: int | None = None
        self.asamples: list[tuple[int, int, int]] = []
        self.apieces: list = []
        self._write(init)

    def with_audio(self, track_id: int, timescale: int) -> None:
        self.audio_id = track_id
        self.audio_scale = timescale

    def add_audio(self, data: bytes, dts: int, duration: int) -> None:
        """An audio access unit (AAC), in the audio track's timescale on the segment's timeline
        (dts increasing); written as its own fragment after the GOP it arrived during."""
        self.asamples.append((dts, duration, len(data)))
        self.apieces.append(data)

    def _flush_audio(self) -> None:
        """The audio since the last fragment as one ``moof`` (one ``traf``: tfhd with
        default-base-is-moof, tfdt, a trun with each sample's duration and size) + ``mdat``."""
        samples = self.asamples
        if not samples:
            return
        n = len(samples)
        durations = [samples[i + 1][0] - samples[i][0] for i in range(n - 1)] + [samples[-1][1]]
        tfhd_size, tfdt_size, mfhd_size = 20, 20, 16
        trun_size = 8 + 4 + 4 + 4 + 8 * n
        traf_size = 8 + tfhd_size + tfdt_size + trun_size
        moof_size = 8 + mfhd_size + traf_size
        self.seq += 1
        fields = []
        for (_dts, _dur, size), dur in zip(samples, durations):
            fields.append(dur)
            fields.append(size)
        head = b"".join((struct.pack(">I4s", moof_size, b"moof"),
                         struct.pack(">I4sII", mfhd_size, b"mfhd", 0, self.seq),
                         struct.pack(">I4s", traf_size, b"traf"),
                         struct.pack(">I4sIII", tfhd_size, b"tfhd", 0x020020, self.audio_id, SYNC),
                         struct.pack(">I4sIQ", tfdt_size, b"tfdt", 0x01000000, samples[0][0]),
                         struct.pack(">I4sIII", trun_size, b"trun", 0x000301, n, moof_size + 8),
                         struct.pack(f">{len(fields)}I", *fields),
                         struct.pack(">I4s", 8 + sum(s[2] for s in samples), b"mdat")))
        self._write(head, *self.apieces)
        self.asamples = []
        self.apieces = []

    def _write(self, *parts) -> None:
        """The parts to the file in one system call, and into the SHA-256."""
        update = self.hash.update
        total = 0
        for part in parts:
            update(part)
            total += memoryview(part).nbytes
        n = os.writev(self.fd, parts) if len(parts) > 1 else os.write(self.fd, parts[0])
        if n < total:                               # a short write: the rest, in order
            rest = memoryview(b"".join(parts))[n:]
            while rest:
                rest = rest[os.write(self.fd, rest):]
        self.size += total

    def add(self, data, pts: int, dts: int, key: bool) -> None:
        """A sample (bytes or a buffer, kept until its fragment is written) in the stream's time
        base (dts increasing, pts ≥ dts)."""
        if self.scale is not None:
            pts, dts = round(pts * self.scale), round(dts * self.scale)
        if key and self.samples:
            self.flush(dts)
        view = memoryview(data)
        self.pieces.append(view)
        cto = pts - dts
        if cto:
            self.cts = True
        self.samples.append((dts, cto, view.nbytes, key))

    def _mdat(self) -> tuple[list[int], list]:
        """The open fragment's sample sizes and the mdat's payload (buffers)."""
        sizes = [s[2] for s in self.samples]
        if not self.annexb:
            return sizes, self.pieces
        buf = bytearray().join(self.pieces)         # the one copy of the camera's bytes
        if in_place(buf, sizes):
            return sizes, [buf]
        out: list = []                              # 3-byte start codes and the like: NAL unit by NAL unit
        return [annexb_to_lengths(p, out) for p in self.pieces], out

    def flush(self, next_dts: int | None = None) -> None:
        """Write the open fragment (its last sample lasts until ``next_dts``, else as long as
        the sample before it)."""
        if not self.samples:
            self._flush_audio()
            return
        sizes, payload = self._mdat()
        samples = [(d, c, size, k) for (d, c, _, k), size in zip(self.samples, sizes)]
        n = len(samples)
        durations = [samples[i + 1][0] - samples[i][0] for i in range(n - 1)]
        if next_dts is not None and next_dts > samples[-1][0]:
            last = next_dts - samples[-1][0]
        else:
            last = durations[-1] if durations else self.last_duration
        durations.append(last)
        self.last_duration = last
        flags = [SYNC if s[3] else NON_SYNC for s in samples]
        # FFmpeg's defaults (movenc mov_write_tfhd_tag / mov_write_trun_tag)
        d_duration, d_size = durations[0], samples[0][2]
        d_flags = flags[1] if n > 1 else NON_SYNC
        tr = 0x000001                                       # data offset
        if any(d != d_duration for d in durations):
            tr |= 0x000100
        if any(s[2] != d_size for s in samples):
            tr |= 0x000200
        if any(f != d_flags for f in flags[1:]):
            tr |= 0x000400
        if not tr & 0x000400 and flags[0] != d_flags:
            tr |= 0x000004                                  # first sample flags
        if self.cts:
            tr |= 0x000800
        per = 4 * bool(tr & 0x100) + 4 * bool(tr & 0x200) + 4 * bool(tr & 0x400) + 4 * bool(tr & 0x800)
        trun_size = 8 + 4 + 4 + 4 + (4 if tr & 0x4 else 0) + per * n
        tfhd_size, tfdt_size, mfhd_size = 28, 20, 16
        traf_size = 8 + tfhd_size + tfdt_size + trun_size
        moof_size = 8 + mfhd_size + traf_size
        self.seq += 1
        head = [struct.pack(">I4s", moof_size, b"moof"),
                struct.pack(">I4sII", mfhd_size, b"mfhd", 0, self.seq),
                struct.pack(">I4s", traf_size, b"traf"),
                struct.pack(">I4sIIIII", tfhd_size, b"tfhd", 0x020038, self.track_id, d_duration, d_size, d_flags),
                struct.pack(">I4sIQ", tfdt_size, b"tfdt", 0x01000000, samples[0][0]),
                struct.pack(">I4sIII", trun_size, b"trun", tr, n, moof_size + 8)]
        if tr & 0x4:
            head.append(_BE32.pack(flags[0]))
        fields = []
        for (dts, cto, size, _key), dur, fl in zip(samples, durations, flags):
            if tr & 0x100:
                fields.append(dur)
            if tr & 0x200:
                fields.append(size)
            if tr & 0x400:
                fields.append(fl)
            if tr & 0x800:
                fields.append(cto & 0xFFFFFFFF)
        head.append(struct.pack(f">{len(fields)}I", *fields))
        mdat_size = 8 + sum(s[2] for s in samples)
        head.append(struct.pack(">I4s", mdat_size, b"mdat"))
        self.fragments.append((samples[0][0] + samples[0][1], self.size))
        self._write(b"".join(head), *payload)
        self.samples = []
        self.pieces = []
        if self.asamples:
            self._flush_audio()

    def finish(self) -> None:
        """The last fragment and the ``mfra`` (fragment random access, as FFmpeg writes it)."""
        self.flush()
        if not self.fragments:
            return
        tfra = struct.pack(">I4sIII", 12 + 12 + 19 * len(self.fragments), b"tfra", 0x01000000, self.track_id, 0) \
            + _BE32.pack(len(self.fragments)) \
            + b"".join(struct.pack(">QQBBB", t, off, 1, 1, 1) for t, off in self.fragments)
        mfra_size = 8 + len(tfra) + 16
        self._write(struct.pack(">I4s", mfra_size, b"mfra") + tfra + struct.pack(">I4sII", 16, b"mfro", 0, mfra_size))


def is_annexb(extradata: bytes | None, first: bytes) -> bool:
    """Whether the muxer would convert the packets from Annex B (movenc: its decoder
    configuration, the extradata or else the first packet, starts with a start code)."""
    vos = extradata or first
    return vos[:3] == _START3 or vos[:4] == b"\x00\x00\x00\x01"


# ------------------------------------------------------------------ playback streams
class _Sink:
    """Where the muxer writes (not seekable: a fragmented MP4 needs no seeking back)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class Fmp4Writer:
    def __init__(self) -> None:
        self.sink = _Sink()
        self.out = av.open(self.sink, "w", format="mp4", options=dict(FMP4))
        self.stream = None
        self.astream = None             # the audio track, when there is one (add_audio_from_template)
        self.time_base: Fraction | None = None
        self.last_dts: int | None = None
        self.packets = 0
        self._closed = False

    def add_video_from_template(self, template) -> None:
        """The video stream copied from a demuxed stream (codec, size, parameter sets), its time base kept."""
        self.stream = self.out.add_stream_from_template(template)
        self.stream.time_base = self.time_base = template.time_base

    def add_video(self, codec: str, width: int, height: int, time_base: Fraction, extradata: bytes | None, *,
                  rate: int = 25) -> None:
        """A video stream from what a live demuxer knows (no container stream to copy from)."""
        self.stream = self.out.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.time_base = self.time_base = time_base
        if extradata:
            self.stream.codec_context.extradata = extradata

    def add_audio_from_template(self, template) -> None:
        """The recording's audio track (AAC) copied from a demuxed stream, its time base kept."""
        self.astream = self.out.add_stream_from_template(template)
        self.astream.time_base = self.atime_base = template.time_base
        self.alast_dts: int | None = None

    def write_audio(self, packet: av.Packet, dts: int) -> bytes:
        """Mux an audio packet at ``dts`` (the audio's time base); one at or before the last is
        left out (segments meet with a few ms of the same sound in both)."""
        if self.alast_dts is not None and dts <= self.alast_dts:
            return b""
        packet.dts = packet.pts = dts
        packet.time_base = self.atime_base
        packet.stream = self.astream
        self.out.mux(packet)
        self.alast_dts = dts
        return self.sink.take() if self.sink.parts else b""

    def write(self, packet: av.Packet, dts: int, pts: int) -> bytes:
        """Mux ``packet`` at ``dts``/``pts`` (in the stream's time base); the bytes completed so far."""
        if self.last_dts is not None and dts <= self.last_dts:
            dts = self.last_dts + 1
        packet.dts, packet.pts = dts, max(pts, dts)
        packet.time_base = self.time_base
        packet.stream = self.stream
        self.out.mux(packet)
        self.last_dts = dts
        self.packets += 1
        return self.sink.take() if self.sink.parts else b""

    def close(self) -> bytes:
        """End the stream (the muxer's last fragment); what is left to send."""
        if not self._closed:
            self._closed = True
            try:
                self.out.close()
            except av.FFmpegError:      # nothing muxed (no stream, no header): nothing to end
                pass
        return self.sink.take() if self.sink.parts else b""


__all__ = ["DIRECT_CODECS", "FMP4", "FragmentedFile", "Fmp4Writer", "InitError", "annexb_to_lengths", "audio_track",
           "init_segment", "is_annexb"]
