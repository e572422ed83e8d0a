"""The camera's audio in its recording (issue 13: "audio kept when the camera sends it").

One ``AudioPath`` per camera connection (``Segment``), on the recorder thread, decides what the
segment files carry of the audio the reader hands on (``ReaderSink.on_audio``):

- **AAC** (what most IP cameras send over RTSP, RFC 3640): remuxed as it is — the camera's
  AudioSpecificConfig goes into the init segment, its access units into the fragments.
- **G.711** (``pcm_alaw``/``pcm_mulaw``: the audio of most Chinese cameras and of GB/T 28181):
  MP4 cannot hold it (FFmpeg's muxer: "codec not currently supported in container"), and
  neither can a browser's Media Source. It is transcoded to AAC-LC at the camera's own rate
  (8 or 16 kHz, mono, 32 kbit/s): decoding G.711 is a table lookup and FFmpeg's AAC encoder at
  8 kHz mono costs ~2.4 ms of CPU per second of sound (bench/recording --audio alaw,
  docs/recording-bench.md); the alternatives were worse — a second file (MKA/WAV) beside each
  segment doubles the index, the chain and the playback path; MPEG-TS would hold neither G.711
  for browsers nor our fragment writer's byte-identity; dropping the audio loses evidence.
  The transcode runs here, on the recorder thread, never on the reader thread.
- **anything else** (G.726, ADPCM, Opus over RTSP, ...): the video is kept and the audio is
  not; ``dropped`` says why and the segment's MP4 ``comment`` carries it (no silent loss).

``packets(record)`` gives the AAC access units of one audio packet as ``(bytes, pts_s, dur_s)``
on the connection's stream clock (seconds, the same clock as the video's timestamps), which the
segment writer places on its own timeline (cameras/recording/fmp4.py).
"""
from __future__ import annotations

import logging
from fractions import Fraction

import av

from cameras.evidence import AudioTrack

log = logging.getLogger(__name__)

G711 = frozenset({"pcm_alaw", "pcm_mulaw"})
AAC_BITRATE = 32000
RESYNC_S = 0.5          # input time this far from where the encoder's output has got to: start again there


class AudioPath:
    """What a connection's audio becomes in its segments: ``codec`` "aac" with ``sample_rate``,
    ``channels``, ``extradata`` for the init segment, or ``dropped`` (the reason, English)."""

    def __init__(self, track: AudioTrack) -> None:
        self.track = track
        self.dropped: str | None = None
        self.transcoded = False
        self.sample_rate = track.sample_rate
        self.channels = track.channels
        self.extradata: bytes | None = track.extradata
        self._tb = float(track.time_base)
        self._dec = self._enc = self._resampler = None
        self._next: int | None = None       # the encoder's input clock (samples at sample_rate)
        self.cpu_packets = 0
        if track.codec == "aac":
            if not track.extradata or not self.sample_rate:
                self.dropped = "AAC without its AudioSpecificConfig: cannot be put in MP4"
        elif track.codec in G711:
            try:
                self._open_transcoder()
                self.transcoded = True
            except (av.FFmpegError, ValueError) as exc:
                self.dropped = f"{track.codec} could not be transcoded to AAC ({exc})"
        else:
            self.dropped = f"{track.codec} cannot be stored in MP4"

    @property
    def kept(self) -> bool:
        return self.dropped is None

    def _open_transcoder(self) -> None:
        t = self.track
        rate = t.sample_rate or 8000
        self.sample_rate, self.channels = rate, 1
        dec = av.CodecContext.create(t.codec, "r")
        dec.sample_rate = rate
        dec.layout = "mono" if t.channels <= 1 else "stereo"
        dec.thread_count = 1
        enc = av.CodecContext.create("aac", "w")
        enc.sample_rate = rate
        enc.layout = "mono"
        enc.format = "fltp"
        enc.bit_rate = AAC_BITRATE
        enc.time_base = Fraction(1, rate)
        enc.flags |= av.codec.context.Flags.global_header       # the AudioSpecificConfig as extradata
        enc.thread_count = 1
        enc.open()
        self.extradata = bytes(enc.extradata)
        self._dec, self._enc = dec, enc
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate, frame_size=enc.frame_size or 1024)

    def packets(self, packet: av.Packet) -> list[tuple[bytes, float, float]]:
        """The AAC access units for one of the camera's audio packets (none while the encoder
        fills a frame)."""
        if self.dropped is not None or packet.pts is None:
            return []
        if not self.transcoded:
            dur = packet.duration * self._tb if packet.duration else 1024 / self.sample_rate
            return [(bytes(packet), packet.pts * self._tb, dur)]
        rate = self.sample_rate
        start = round(packet.pts * self._tb * rate)
        if self._next is None or abs(start - self._next) > RESYNC_S * rate:
            # the first packet, or the camera's audio jumped (loss, a restarted clock): the
            # encoder's output clock starts again from this packet
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate,
                                                frame_size=self._enc.frame_size or 1024)
            self._next = start
        out: list[tuple[bytes, float, float]] = []
        try:
            frames = self._dec.decode(packet)
            for frame in frames:
                frame.pts = None
                for f in self._resampler.resample(frame):
                    f.pts = self._next
                    f.time_base = Fraction(1, rate)
                    self._next += f.samples
                    for p in self._enc.encode(f):
                        out.append((bytes(p), p.pts / rate, (p.duration or 1024) / rate))
        except av.FFmpegError as exc:        # one bad packet costs its few milliseconds of sound
            log.debug("audio transcode: %s", exc)
        return out


def comment(path: AudioPath | None, audio_codec: str | None) -> str | None:
    """The MP4 comment of a segment about its audio: None when it is kept or there is none."""
    if path is not None and path.dropped:
        return f"audio not kept ({path.dropped}): video only"
    if path is None and audio_codec:
        return f"audio not kept ({audio_codec}): the reader did not hand it on; video only"
    return None


__all__ = ["AudioPath", "G711", "comment"]
