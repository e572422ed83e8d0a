"""What a simulated NVR sends for ``s=Playback``: its "recording" of the requested range —
frames whose burnt-in clock (cameras/sim/scene.py's timestamp strip, ms since epoch) is the
REQUESTED time, starting at the ``t=`` start and advancing one frame interval per frame,
encoded with PyAV's x264 and sent by a ``PsRtpSender`` (``send_packet``: our PS muxer) to the
hub's offer (UDP, or TCP either way: the sender follows the offer's a=setup), paced at
``speed`` × real time. At the ``t=`` end the stream stops and ``on_done`` is called (the device
then sends MediaStatus NotifyType 121, as NVRs do at the end of a file, and the hub says BYE).

The strip is machine-readable, so tests check that what the hub plays back is the footage
of the time asked for, not merely some video."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np

from cameras.evidence import Segment
from cameras.gb28181 import mansrtsp
from cameras.gb28181.media.sender import PsRtpSender
from cameras.gb28181.session import MediaOffer
from cameras.sim.scene import draw_timestamp_strip

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 320, 240, 10


def offer_of(fields: dict) -> MediaOffer:
    """The hub's SDP offer (sdp.parse fields) as the MediaOffer a sender sends to."""
    if (fields.get("proto") or "RTP/AVP").upper().startswith("TCP"):
        transport = "tcp-active" if fields.get("setup") == "active" else "tcp-passive"
    else:
        transport = "udp"
    return MediaOffer(fields["host"], int(fields["port"]), transport, fields.get("ssrc") or "0000000000")


def playback_range(fields: dict) -> tuple[float, float] | None:
    """(start, end) seconds since the epoch of ``t=<start> <end>``; None for a live ``t=0 0``."""
    parts = (fields.get("t") or "0 0").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] == "0":
        return None
    start, end = int(parts[0]), int(parts[1])
    return float(start), float(end if end > start else start + 3600)


class PlaybackSource:
    """One playback session of the simulated NVR. MANSRTSP from the hub (``control``): PAUSE
    stops the frames (the session stays), PLAY resumes, ``Scale`` changes the pace, ``Range:
    npt=<s>-`` jumps to that second of the range (the burnt-in clock jumps with it)."""

    def __init__(self, offer: MediaOffer, start: float, end: float, *, speed: float = 1.0, bind: str = "127.0.0.1",
                 on_done: Callable[[], None] | None = None, name: str = "sim-playback") -> None:
        self.sender = PsRtpSender(offer, bind=bind, name=name)
        self.start_s, self.end_s, self.speed = start, end, speed
        self.on_done = on_done
        self.sent: list[int] = []           # the burnt-in ms of each frame sent
        self.paused = False
        self.commands: list[mansrtsp.Command] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._seek: int | None = None       # frame number to go on from

    def start(self):
        answer = self.sender.start()
        threading.Thread(target=self._run, name="sim-playback", daemon=True).start()
        return answer

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self.sender.stop()

    def control(self, command: mansrtsp.Command) -> None:
        with self._changed:
            self.commands.append(command)
            if command.method == "PAUSE":
                self.paused = True
            elif command.method == "PLAY":
                self.paused = False
                if command.scale is not None:
                    self.speed = command.scale
                if command.npt is not None:
                    self._seek = int(command.npt * FPS)
            self._changed.notify_all()

    def _run(self) -> None:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        ctx.time_base = Fraction(1, 90000)
        ctx.framerate = FPS
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": str(FPS)}
        segment = Segment(1, "h264", WIDTH, HEIGHT, Fraction(1, 90000), None, fps=float(FPS))
        total = int((self.end_s - self.start_s) * FPS)
        ended = False
        n = 0
        due = time.monotonic()
        try:
            while n < total:
                with self._changed:
                    while self.paused and not self._stop.is_set():
                        self._changed.wait()
                        due = time.monotonic()
                    if self._seek is not None:
                        n, self._seek = min(self._seek, total - 1), None
                        due = time.monotonic()
                    speed = self.speed
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                due += 1 / FPS / speed
                img = np.full((HEIGHT, WIDTH, 3), 70, dtype=np.uint8)
                img[HEIGHT // 2:, (n * 7) % WIDTH:] = 190
                ms = int(self.start_s * 1000) + n * 1000 // FPS
                draw_timestamp_strip(img, ms)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                frame.pts = n * 90000 // FPS
                frame.time_base = ctx.time_base
                for packet in ctx.encode(frame):
                    packet.time_base = ctx.time_base
                    self.sender.send_packet(packet, segment)
                self.sent.append(ms)
                n += 1
            for packet in ctx.encode(None):
                packet.time_base = ctx.time_base
                self.sender.send_packet(packet, segment)
            ended = True
        except (OSError, av.FFmpegError) as exc:
            log.info("simulated playback stopped: %s", exc)
        finally:
            if ended and not self._stop.is_set() and self.on_done is not None:
                time.sleep(0.2)             # the last frames are on their way before the end is said
                self.on_done()


__all__ = ["PlaybackSource", "offer_of", "playback_range"]
