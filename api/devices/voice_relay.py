"""Live voice (实时喊话) in the API process: the operator's microphone in over WebRTC, out
to the speakers as one MP3 stream per live broadcast.

``VoiceRelay`` (``app.state.voice``) holds one ``VoiceSession`` per live broadcast: an aiortc
RTCPeerConnection receiving the browser's audio track (Opus, decoded by aiortc), each frame
down-mixed to mono (PyAV's resampler) and encoded to MP3 (libmp3lame, 48 kHz mono, no bit
reservoir so that every frame decodes on its own and a speaker can join mid-sentence); each
encoded frame goes at once to every listener's queue. A listener is one speaker's (or a
person's monitoring) HTTP response: it starts at the live edge, never at a backlog. A
listener that falls ``LISTENER_QUEUE`` frames behind (a stalled network) is cut off rather
than made to lag: live voice that arrives seconds late is worse than a gap.

A session ends when the operator ends it, when their connection fails or closes, when it
has not connected ``connect_timeout_s`` after the offer, or after ``max_s``. Then the encoder
is flushed and every listener's stream ends (a clean end of the chunked response: the
speakers report ``finished``); a session that never carried a frame of audio ends its
listeners' streams with an error instead (they report ``failed``), so a receipt never says
a village heard a shout that never came.

No STUN: ICE host candidates are the API's addresses (api/live/sessions.use_host_addresses,
the same process-wide setting live video uses).
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import time
from dataclasses import dataclass, field

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from api.live.config import LiveSettings
from api.live.sessions import use_host_addresses

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
LISTENER_QUEUE = 200          # MP3 frames (24 ms each): ~5 s behind, and the listener is cut off
_END, _BROKEN = object(), object()


class VoiceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(eq=False)
class Listener:
    who: str
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(LISTENER_QUEUE))
    joined: float = field(default_factory=time.time)
    sent_bytes: int = 0


@dataclass
class VoiceSession:
    broadcast_id: str
    user: str
    pc: RTCPeerConnection
    max_s: float
    bitrate: int
    created: float = field(default_factory=time.time)
    connected: bool = False
    ended: bool = False
    end_reason: str | None = None
    frames_in: int = 0
    frames_out: int = 0
    listeners: set = field(default_factory=set)
    task: asyncio.Task | None = None

    def info(self) -> dict:
        return {"broadcast_id": self.broadcast_id, "user": self.user, "connection": self.pc.connectionState,
                "created": self.created, "frames_in": self.frames_in, "mp3_frames": self.frames_out,
                "listeners": len(self.listeners), "ended": self.ended, "end_reason": self.end_reason}

    # -- fan-out ------------------------------------------------------------------------
    def publish(self, chunk) -> None:
        for lst in list(self.listeners):
            try:
                lst.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                log.warning("live voice %s: listener %s fell %d frames behind; cut off", self.broadcast_id, lst.who,
                            LISTENER_QUEUE)
                self.listeners.discard(lst)
                _force(lst.queue, _BROKEN)


def _force(queue: asyncio.Queue, item) -> None:
    """Put ``item`` even into a full queue (its oldest entry gives way)."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


class Mp3Encoder:
    """Audio frames of any layout and rate → MP3 frames (48 kHz mono), each decodable alone."""

    def __init__(self, bitrate: int):
        self.resampler = av.AudioResampler(format="s16p", layout="mono", rate=SAMPLE_RATE)
        self.codec = av.CodecContext.create("libmp3lame", "w")
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.layout = "mono"
        self.codec.format = "s16p"
        self.codec.bit_rate = bitrate
        self.codec.options = {"reservoir": "0"}
        self.samples = 0

    def encode(self, frame: av.AudioFrame | None) -> list[bytes]:
        out = []
        frames = self.resampler.resample(frame) if frame is not None else self.resampler.resample(None)
        for f in frames:
            f.pts = self.samples
            f.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self.samples += f.samples
            out.extend(bytes(p) for p in self.codec.encode(f))
        if frame is None:
            out.extend(bytes(p) for p in self.codec.encode(None))
        return out


class VoiceRelay:
    """Every live voice session of this process. Use from the event loop only."""

    def __init__(self, http_host: str = "127.0.0.1", live: LiveSettings | None = None):
        self.settings = live or LiveSettings()
        self.sessions: dict[str, VoiceSession] = {}
        self._closing = False
        use_host_addresses(self.settings.host_addresses(http_host))

    async def open(self, broadcast_id: str, user: str, offer_sdp: str, *, max_s: float, bitrate: int) -> VoiceSession:
        """Answer the browser's offer (its microphone) for this live broadcast."""
        if self._closing:
            raise VoiceError(503, "shutting down")
        if "m=audio" not in offer_sdp:
            raise VoiceError(422, "offer 中没有音频 (the offer has no audio section: the microphone is not attached)")
        if len(self.sessions) >= self.settings.max_sessions:
            raise VoiceError(503, "实时喊话会话已满，请稍后再试 (too many live voice sessions on this hub)")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = VoiceSession(broadcast_id=broadcast_id, user=user, pc=pc, max_s=max_s, bitrate=bitrate)
        self.sessions[broadcast_id] = session

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio" and session.task is None:
                session.task = asyncio.ensure_future(self._pump(session, track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                session.connected = True
            elif state in ("failed", "closed"):
                await self.end(session.broadcast_id, f"connection {state}")

        try:
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's problem
            await self.end(broadcast_id, "offer refused")
            raise VoiceError(422, f"无法应答该 offer (cannot answer this offer: {type(exc).__name__}: {exc})"[:300]) \
                from None
        asyncio.get_running_loop().call_later(self.settings.connect_timeout_s, self._check_connected, session)
        asyncio.get_running_loop().call_later(max_s, lambda: asyncio.ensure_future(
            self.end(session.broadcast_id, f"longest live voice ({max_s:g} s) reached")))
        log.info("live voice %s: %s talks", broadcast_id, user)
        return session

    def rename(self, key: str, broadcast_id: str) -> None:
        """The session opened before its broadcast existed takes the broadcast's id."""
        session = self.sessions.pop(key)
        session.broadcast_id = broadcast_id
        self.sessions[broadcast_id] = session

    def _check_connected(self, session: VoiceSession) -> None:
        if not session.connected and not session.ended:
            log.info("live voice %s: the microphone never connected; ended", session.broadcast_id)
            asyncio.ensure_future(self.end(session.broadcast_id, "never connected"))

    async def _pump(self, session: VoiceSession, track) -> None:
        enc = Mp3Encoder(session.bitrate)
        try:
            while not session.ended:
                frame = await track.recv()
                session.frames_in += 1
                for chunk in enc.encode(frame):
                    session.frames_out += 1
                    session.publish(chunk)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001
            log.exception("live voice %s: encoding failed", session.broadcast_id)
        finally:
            try:
                for chunk in enc.encode(None):
                    session.publish(chunk)
            except Exception:  # noqa: BLE001
                log.debug("flushing the encoder", exc_info=True)

    # -- listeners ------------------------------------------------------------------------
    def listen(self, broadcast_id: str, who: str) -> tuple[VoiceSession, Listener]:
        session = self.sessions.get(broadcast_id)
        if session is None or session.ended:
            raise VoiceError(410, "实时喊话已结束 (this live voice broadcast has ended)")
        lst = Listener(who=who)
        session.listeners.add(lst)
        log.info("live voice %s: %s listens; %d listener(s)", broadcast_id, who, len(session.listeners))
        return session, lst

    async def stream(self, session: VoiceSession, lst: Listener):
        """The MP3 bytes for one listener until the session ends (an error when it carried no audio)."""
        try:
            while True:
                chunk = await lst.queue.get()
                if chunk is _END:
                    return
                if chunk is _BROKEN:
                    raise ConnectionAbortedError(f"live voice {session.broadcast_id}: stream broken for {lst.who}")
                lst.sent_bytes += len(chunk)
                yield chunk
        finally:
            session.listeners.discard(lst)

    # -- ending -----------------------------------------------------------------------------
    async def end(self, broadcast_id: str, reason: str) -> VoiceSession | None:
        session = self.sessions.get(broadcast_id)
        if session is None or session.ended:
            return None
        session.ended, session.end_reason = True, reason
        if session.task is not None:
            session.task.cancel()
            try:
                await session.task
            except BaseException:  # noqa: BLE001
                pass
        # A session that carried no audio does not end "cleanly": nobody heard anything.
        last = _END if session.frames_out else _BROKEN
        for lst in list(session.listeners):
            _force(lst.queue, last)
        try:
            await session.pc.close()
        except Exception:  # noqa: BLE001
            log.debug("closing peer connection", exc_info=True)
        log.info("live voice %s: ended (%s) after %.1f s, %d frames in", broadcast_id, reason,
                 time.time() - session.created, session.frames_in)
        # Kept a minute so that a late speaker is told 410 (ended), not 404.
        asyncio.get_running_loop().call_later(60, self.sessions.pop, broadcast_id, None)
        return session

    async def close(self) -> None:
        self._closing = True
        for bid in list(self.sessions):
            await self.end(bid, "hub shutting down")


__all__ = ["Mp3Encoder", "VoiceError", "VoiceRelay", "VoiceSession"]
