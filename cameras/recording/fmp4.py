"""One fragmented MP4 stream written from packets, chunk by chunk: the one mux loop of both
playbacks — the hub's own recordings (cameras/recording/playback.py, packets remuxed from the
segment files) and footage played from a device (cameras/gb28181/playback.py, packets demuxed
from the device's RTP/PS).

    w = Fmp4Writer()
    w.add_video_from_template(stream)  |  w.add_video("h264", width, height, time_base, extradata)
    for packet: chunk = w.write(packet, dts, pts)  → bytes ready to send (b"" while a fragment fills)
    tail = w.close()

Decode times are kept strictly increasing (a repeated or backward one becomes last + 1 — a
muxer refuses it otherwise); a presentation time is never before its decode time. The MP4 is
``frag_keyframe+empty_moov+default_base_moof``: a fragment per keyframe, nothing to seek back
to, so it can be sent as it is made (Media Source in the page, a file for an export)."""
from __future__ import annotations

from fractions import Fraction

import av

FMP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


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


__all__ = ["FMP4", "Fmp4Writer"]
