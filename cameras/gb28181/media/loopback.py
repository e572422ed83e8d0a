"""``LoopbackInviter``: an ``Inviter`` that answers an INVITE by starting a ``PsRtpSender``
itself, with no SIP in between — the seam the media side is tested and benchmarked through
(the SIP server's Inviter, which sends real INVITEs to real devices, takes its place in the
gb28181 process). Each channel is an FFmpeg source (``sender.testsrc``, ``sender.copy_of``).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

from cameras.gb28181.media.sender import PsRtpSender
from cameras.gb28181.session import InviteFailed, MediaAnswer, MediaOffer

log = logging.getLogger(__name__)


class LoopbackInviter:
    def __init__(self, sources: dict[str, list[str]], *, bind: str = "127.0.0.1", mux: str = "hub",
                 process: bool = False) -> None:
        self.sources = sources              # "<device>/<channel>" → FFmpeg input arguments
        self.bind = bind
        self.mux = mux                      # whose PS muxer: ours ("hub") or FFmpeg's ("ffmpeg")
        self.process = process              # each sender in a process of its own (benchmarks: the device's CPU apart)
        self.senders: dict[str, PsRtpSender] = {}
        self.plays: list[tuple[str, str, MediaOffer]] = []
        self.byes: list[MediaAnswer] = []
        self.refuse: str | None = None      # a reason: every INVITE is refused with it
        self._lock = threading.Lock()

    def play(self, device_id: str, channel_id: str, offer: MediaOffer, *, timeout_s: float = 5.0) -> MediaAnswer:
        key = f"{device_id}/{channel_id}"
        with self._lock:
            self.plays.append((device_id, channel_id, offer))
        if self.refuse:
            raise InviteFailed(self.refuse, status=486)
        args = self.sources.get(key)
        if args is None:
            raise InviteFailed(f"通道 {channel_id} 不存在", status=404)
        if self.process:
            sender, answer = _SenderProcess.start(offer, args, self.bind, self.mux)
        else:
            sender = PsRtpSender(offer, ffmpeg_args=args, bind=self.bind, mux=self.mux, name=f"sender {key}")
            answer = sender.start()
        with self._lock:
            self.senders[answer.call_id] = sender
        return answer

    def bye(self, answer: MediaAnswer) -> None:
        with self._lock:
            self.byes.append(answer)
            sender = self.senders.pop(answer.call_id, None)
        if sender is not None:
            sender.stop()

    def stop_all(self) -> None:
        with self._lock:
            senders, self.senders = list(self.senders.values()), {}
        for s in senders:
            s.stop()

    def active(self) -> list[PsRtpSender]:
        with self._lock:
            return list(self.senders.values())


class _SenderProcess:
    """``python -m cameras.gb28181.media.sender`` as a child: stop() ends it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    @classmethod
    def start(cls, offer: MediaOffer, args: list[str], bind: str, mux: str) -> tuple[_SenderProcess, MediaAnswer]:
        proc = subprocess.Popen([sys.executable, "-m", "cameras.gb28181.media.sender", "--host", offer.host,
                                 "--port", str(offer.port), "--transport", offer.transport, "--ssrc", offer.ssrc,
                                 "--mux", mux, "--bind", bind, "--", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise InviteFailed("模拟设备未能启动 (the sender process did not start)")
        a = json.loads(line)
        return cls(proc), MediaAnswer(a["call_id"], a["host"], a["port"], a["ssrc"], codec="ps")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


__all__ = ["LoopbackInviter"]
