"""A simulated operator's microphone for live voice (实时喊话): an aiortc peer that sends a
test tone — steady, or in bursts whose start times it records — to the hub's
``POST /api/broadcasts/live`` the way the broadcast console does (offer with every ICE
candidate, no trickle). Tests and bench/voice use it beside the real browser.

    mic = ToneTrack(frequency=1000, burst_s=0.3, period_s=1.0)
    session = await talk(base_url, token, ["510199101201"], mic)      # → {"broadcast_id", ...}
    ...; await session.stop()                                         # DELETE, then hang up
"""
from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame

RATE = 48_000
FRAME = 960                      # 20 ms, what a browser's Opus sends


class ToneTrack(MediaStreamTrack):
    """A sine at ``frequency`` Hz, paced in real time; with ``burst_s`` only the first
    ``burst_s`` of every ``period_s`` sounds and each burst's start (wall clock, when its
    first frame was handed to the encoder) is kept in ``onsets``."""

    kind = "audio"

    def __init__(self, frequency: float = 1000.0, amplitude: float = 0.5, burst_s: float | None = None,
                 period_s: float = 1.0):
        super().__init__()
        self.frequency, self.amplitude, self.burst_s, self.period_s = frequency, amplitude, burst_s, period_s
        self.onsets: list[float] = []
        self._sample = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sample / RATE
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        n = np.arange(self._sample, self._sample + FRAME)
        wave = self.amplitude * np.sin(2 * np.pi * self.frequency * n / RATE)
        if self.burst_s is not None:
            phase = (n / RATE) % self.period_s
            wave = np.where(phase < self.burst_s, wave, 0.0)
            period = int(round(self.period_s * RATE))
            if self._sample % period < FRAME:
                self.onsets.append(time.time())
        frame = AudioFrame.from_ndarray((wave * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, RATE)
        self._sample += FRAME
        return frame


@dataclass
class MicSession:
    base_url: str
    token: str
    pc: RTCPeerConnection
    answer: dict

    @property
    def broadcast_id(self) -> str:
        return self.answer["broadcast_id"]

    async def connected(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.pc.connectionState == "connected"

    async def stop(self, end: bool = True) -> int | None:
        """End the broadcast (DELETE, as the console's 结束喊话 does), then hang up."""
        import httpx
        status = None
        if end:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as c:
                r = await c.delete(f"/api/broadcasts/live/{self.broadcast_id}",
                                   headers={"Authorization": f"Bearer {self.token}"})
                status = r.status_code
        await self.pc.close()
        return status


async def talk(base_url: str, token: str, targets: list[str], track: MediaStreamTrack, **fields) -> MicSession:
    """Offer ``track`` as the microphone of a live broadcast to ``targets``; raises
    httpx.HTTPStatusError when the hub refuses (its reason in the response)."""
    import httpx
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())     # aiortc gathers every candidate first
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as c:
        r = await c.post("/api/broadcasts/live", headers={"Authorization": f"Bearer {token}"},
                         json={"sdp": pc.localDescription.sdp, "type": "offer", "targets": targets, **fields})
    if r.status_code != 201:
        await pc.close()
        r.raise_for_status()
    answer = r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return MicSession(base_url, token, pc, answer)
