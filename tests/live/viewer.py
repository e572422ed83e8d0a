"""A WebRTC viewer written with aiortc: what a browser tile does, from Python."""
from __future__ import annotations

import asyncio
import time

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from cameras.sim.server import decode_timestamp_strip


class Viewer:
    def __init__(self, base_url: str, token: str, camera_id: str, stream: str | None = None):
        self.base_url, self.token, self.camera_id = base_url, token, camera_id
        self.stream = stream                      # ?stream= of the offer (None: the hub's default)
        self.answer: dict | None = None
        self.size: tuple[int, int] | None = None  # (width, height) of the last frame decoded here
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track_ready = asyncio.get_running_loop().create_future()
        self.session_id: str | None = None
        self.answer_sdp: str | None = None
        self.frames = 0
        self.latencies_ms: list[float] = []

        @self.pc.on("track")
        def on_track(track):
            if not self.track_ready.done():
                self.track_ready.set_result(track)

    async def start(self) -> httpx.Response:
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.base_url, timeout=20,
                                     headers={"Authorization": f"Bearer {self.token}"}) as c:
            r = await c.post(f"/api/live/{self.camera_id}/offer",
                             params={"stream": self.stream} if self.stream is not None else None,
                             json={"sdp": self.pc.localDescription.sdp, "type": "offer"})
        if r.status_code == 200:
            body = self.answer = r.json()
            self.session_id, self.answer_sdp = body["session_id"], body["sdp"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        return r

    async def receive(self, frames: int, timeout: float = 20.0, read_strip: bool = False) -> int:
        """Decode ``frames`` frames (aiortc decodes on the client); with read_strip, note each
        frame's glass-to-glass latency from the timestamp strip."""
        track = await asyncio.wait_for(self.track_ready, timeout)
        deadline = time.monotonic() + timeout
        got = 0
        while got < frames:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            frame = await asyncio.wait_for(track.recv(), left)
            got += 1
            self.frames += 1
            self.size = (frame.width, frame.height)
            if read_strip:
                now = time.time() * 1000
                ms = decode_timestamp_strip(frame.to_ndarray(format="gray"))
                if ms is not None:
                    self.latencies_ms.append(now - ms)
        return got

    async def close(self) -> None:
        await self.pc.close()
