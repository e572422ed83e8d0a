"""Test peers for GB/T 28181 media: a camera that encodes frames carrying their capture time
(cameras/sim/scene.py's strip) with PyAV's x264/x265 and hands the packets to a PsRtpSender
(the packetize-what-we-have path), and an Inviter that starts one on INVITE."""
from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import numpy as np

from cameras.evidence import Segment
from cameras.gb28181.media.sender import PsRtpSender
from cameras.gb28181.session import InviteFailed, MediaAnswer, MediaOffer
from cameras.sim.scene import draw_timestamp_strip

WIDTH, HEIGHT, FPS = 320, 240, 10


class StripCamera:
    """Encodes a frame every 1/FPS s, its wall clock (ms) burnt in, and sends it."""

    def __init__(self, sender: PsRtpSender, codec: str = "h264") -> None:
        self.sender = sender
        self.codec = codec
        self._stop = threading.Event()
        self.sent: list[int] = []

    def start(self) -> StripCamera:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        name = "libx264" if self.codec == "h264" else "libx265"
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        ctx.time_base = Fraction(1, 90000)
        ctx.framerate = FPS
        ctx.options = ({"preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": str(FPS)} if self.codec == "h264"
                       else {"preset": "ultrafast", "tune": "zerolatency",
                             "x265-params": f"bframes=0:keyint={FPS}:log-level=none"})
        segment = Segment(1, "h264" if self.codec == "h264" else "hevc", WIDTH, HEIGHT, Fraction(1, 90000),
                          None, fps=float(FPS))
        start = time.time()
        n = 0
        while not self._stop.is_set():
            due = start + n / FPS
            if self._stop.wait(max(0.0, due - time.time())):
                break
            img = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
            img[HEIGHT // 2:, (n * 7) % WIDTH:] = 200
            ms = int(time.time() * 1000)
            draw_timestamp_strip(img, ms)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = (ms - int(start * 1000)) * 90           # the capture time, late or not
            frame.time_base = ctx.time_base
            for packet in ctx.encode(frame):
                packet.time_base = ctx.time_base
                self.sender.send_packet(packet, segment)
            self.sent.append(ms)
            n += 1


class StripInviter:
    """On INVITE: a PsRtpSender to the offer, fed by a StripCamera."""

    def __init__(self, codec: str = "h264") -> None:
        self.codec = codec
        self.plays: list[MediaOffer] = []
        self.byes: list[MediaAnswer] = []
        self.cameras: dict[str, tuple[PsRtpSender, StripCamera]] = {}

    def play(self, device_id: str, channel_id: str, offer: MediaOffer, *, timeout_s: float = 5.0) -> MediaAnswer:
        self.plays.append(offer)
        if not device_id.isdigit():
            raise InviteFailed("设备未注册", status=404)
        sender = PsRtpSender(offer)
        answer = sender.start()
        self.cameras[answer.call_id] = (sender, StripCamera(sender, self.codec).start())
        return answer

    def bye(self, answer: MediaAnswer) -> None:
        self.byes.append(answer)
        sender, camera = self.cameras.pop(answer.call_id, (None, None))
        if camera is not None:
            camera.stop()
            sender.stop()

    def stop_all(self) -> None:
        for sender, camera in self.cameras.values():
            camera.stop()
            sender.stop()
