"""Live view of cameras whose codec the browser cannot play (H.265, a common setting on
Chinese cameras): the feed's one pull is decoded and encoded once into H.264, and every
viewer of that feed gets the same H.264 — the cost is per watched camera, not per viewer.

    camera ──HEVC──▶ Feed demux thread ──decode──▶ scale to ≤ max_width ──libx264──▶ H.264
                                                        (constrained baseline, no B-frames,
                                                         SPS/PPS before every IDR)

The encoder is tuned for a wall tile, not an archive: ``ultrafast`` + ``zerolatency`` (one
packet out per frame in, nothing held back), a keyframe every ``gop_s`` so a new viewer
waits little, a bounded width (the substream-sized picture a tile shows). The camera's own
timestamps are kept (90 kHz), so the feed's rebasing and the snapshots work as for H.264.
Evidence and recording keep the camera's HEVC: this is for eyes only.
"""
from __future__ import annotations

import logging
from fractions import Fraction

import av

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
TIME_BASE_90K = Fraction(1, VIDEO_CLOCK)


def scaled(width: int, height: int, max_width: int) -> tuple[int, int]:
    """The picture's size once scaled to at most ``max_width`` (even, as yuv420p wants)."""
    if width <= max_width:
        return width - width % 2, height - height % 2
    h = round(height * max_width / width)
    return max_width - max_width % 2, h - h % 2


class Transcoder:
    """Decodes one camera's packets and encodes H.264 access units (Annex B)."""

    def __init__(self, decoder: av.CodecContext, *, fps: float | None, max_width: int = 640,
                 bitrate_kbps: int = 600, gop_s: float = 1.0) -> None:
        self.decoder = decoder
        self.decoder.thread_count = 1
        self.fps = fps or 25.0
        self.max_width = max_width
        self.bitrate_kbps = bitrate_kbps
        self.gop = max(1, round(self.fps * gop_s))
        self.encoder: av.CodecContext | None = None
        self.width = self.height = 0
        self.frames_in = 0
        self.packets_out = 0
        self._last_pts = -1

    @property
    def source_codec(self) -> str:
        return self.decoder.name

    def _open(self, frame: av.VideoFrame) -> None:
        self.width, self.height = scaled(frame.width, frame.height, self.max_width)
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = TIME_BASE_90K
        enc.framerate = Fraction(self.fps).limit_denominator(1001)
        enc.bit_rate = self.bitrate_kbps * 1000
        enc.gop_size = self.gop
        enc.max_b_frames = 0
        enc.thread_count = 1
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                       "x264-params": f"repeat-headers=1:scenecut=0:keyint={self.gop}:min-keyint={self.gop}"}
        enc.open()
        self.encoder = enc
        log.info("transcoding %s %dx%d to H.264 %dx%d for live view", self.source_codec, frame.width,
                 frame.height, self.width, self.height)

    def push(self, packet: av.Packet) -> list[av.Packet]:
        """The H.264 packets the camera's ``packet`` gives (none while the decoder waits
        for a keyframe, or for a frame the decoder cannot read)."""
        try:
            frames = self.decoder.decode(packet)
        except av.FFmpegError:
            return []           # a corrupt packet costs a frame, not the feed
        out: list[av.Packet] = []
        tb = packet.time_base
        for frame in frames:
            self.frames_in += 1
            if self.encoder is None:
                self._open(frame)
            pts = frame.pts if frame.pts is not None else packet.pts
            pts90 = int(pts * (frame.time_base or tb) * VIDEO_CLOCK) if pts is not None else self._last_pts + 1
            if pts90 <= self._last_pts:
                pts90 = self._last_pts + 1          # the encoder wants them increasing
            self._last_pts = pts90
            picture = frame.reformat(width=self.width, height=self.height, format="yuv420p")
            picture.pts, picture.time_base = pts90, TIME_BASE_90K
            for encoded in self.encoder.encode(picture):
                encoded.time_base = TIME_BASE_90K
                out.append(encoded)
        self.packets_out += len(out)
        return out
