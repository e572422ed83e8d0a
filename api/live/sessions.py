"""Live video's viewer sessions: a WebRTC offer in, an answer out, one peer connection per viewer.

``LiveRelay`` is the live view of the API process (``app.state.live``, api/live/views.py):
the feeds (``FeedRegistry``, api/live/feed.py) and, on them, the viewer sessions. A viewer's
offer is answered with H.264 only; its aiortc RTCPeerConnection (ICE, DTLS, RTCP are
aiortc's) sends a ``PassthroughTrack`` through a ``PassthroughSender`` (api/live/sender.py),
which the viewer's ``Subscriber`` of the feed hands each access unit. A session ends when the
viewer closes its tile, when its connection fails or closes, or when it has not connected
``connect_timeout_s`` after the offer (the registry's sweeper); its subscriber leaves the
feed, which stops ``linger_s`` after its last viewer.

No STUN: the host candidates are the addresses ``XLHUB_LIVE_ICE_HOSTS`` gives
(``use_host_addresses``, which replaces aioice's address lookup for the process).

Talks to: views.py (``open_session``, ``close_session``, and the registry's ``snapshot``),
feed.py (``watch``, ``Feed.subscribe``), sender.py (the track and the sender installed on
each viewer's transceiver), aiortc's public API and aioice's ``get_host_addresses``.
"""
from __future__ import annotations

import logging
import secrets
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from api.live.config import LiveSettings
from api.live.feed import Feed, FeedRegistry
from api.live.taps import TapDirectory
from api.live.sender import PassthroughTrack, Subscriber, install_sender, without_bandwidth_feedback
from api.live.source import CameraSource, LiveError

ENDED_KEPT = 4096          # ended sessions remembered (ids only), for a late "end" from their viewer

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- ICE host addresses

_host_addresses: list[str] | None = None
_patched = False


def use_host_addresses(addresses: list[str] | None) -> None:
    """Offer only these local addresses as ICE host candidates (None: every interface).

    aioice gathers on every interface except 127.0.0.1; a hub bound to loopback must offer
    127.0.0.1 and nothing else. aioice has no option for that, so its address lookup is
    replaced (process-wide: this process only serves live video from one address set)."""
    global _host_addresses, _patched
    resolved = None
    if addresses is not None:
        resolved = []
        for a in addresses:
            try:
                resolved.append(socket.gethostbyname(a) if not _is_ip(a) else a)
            except OSError:
                log.warning("ICE host address %r does not resolve; skipped", a)
    _host_addresses = resolved
    if not _patched:
        import aioice.ice as ice
        original = ice.get_host_addresses

        def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            if _host_addresses is None:
                return original(use_ipv4, use_ipv6)
            return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        ice.get_host_addresses = host_addresses
        _patched = True


def _is_ip(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False


# -------------------------------------------------------------------- viewer sessions


@dataclass
class ViewerSession:
    id: str
    camera_id: str
    user: str
    pc: RTCPeerConnection
    feed: Feed
    subscriber: Subscriber
    created: float = field(default_factory=time.time)
    connected: bool = False
    closed: bool = False

    @property
    def stream(self) -> str:
        """The stream this viewer plays (main when a sub was asked of a camera without one)."""
        return self.feed.stream

    def info(self) -> dict:
        return {"session_id": self.id, "camera_id": self.camera_id, "stream": self.stream, "user": self.user,
                "connection": self.pc.connectionState, "created": self.created,
                "packets_sent": self.subscriber.sent, "packets_skipped": self.subscriber.skipped}


class LiveRelay(FeedRegistry):
    """Every feed and viewer session of this process. Use from the event loop only."""

    def __init__(self, settings: LiveSettings, http_host: str = "127.0.0.1", taps: TapDirectory | None = None):
        self.sessions: dict[str, ViewerSession] = {}
        # Sessions that ended (id → viewer), the latest few thousand: a viewer's own "end this
        # session" arriving after the hub already ended it (its peer connection closed first,
        # or it never connected) is a success, not a 404 in the browser's console.
        self.ended: OrderedDict[str, str] = OrderedDict()
        super().__init__(settings, taps)
        use_host_addresses(settings.host_addresses(http_host))

    async def _sweep_once(self) -> None:
        """Expire snapshot leases and viewers that never connected."""
        now = time.time()
        await super()._sweep_once()
        for s in list(self.sessions.values()):
            if not s.connected and now - s.created > self.settings.connect_timeout_s:
                log.info("live %s: viewer %s never connected; dropped", s.camera_id, s.id)
                await self.close_session(s.id)

    # -- WebRTC viewers -----------------------------------------------------------------
    async def open_session(self, source: CameraSource, offer_sdp: str, offer_type: str, user: str) -> ViewerSession:
        if self._closing:
            raise LiveError(503, "shutting down")
        if offer_type != "offer":
            raise LiveError(422, "expected an SDP offer")
        if "m=video" not in offer_sdp:
            raise LiveError(422, "the offer has no video section")
        if "h264" not in offer_sdp.lower():
            raise LiveError(422, "this browser offers no H.264: live view passes the camera's H.264 through; "
                                 "use the snapshot view")
        if len(self.sessions) >= self.settings.max_sessions:
            raise LiveError(503, "too many live viewers on this hub; try again later or use snapshots")
        if sum(1 for s in self.sessions.values() if s.user == user) >= self.settings.max_sessions_per_user:
            raise LiveError(429, "too many live views open for this user")
        existing = self.feeds.get(source.key)
        if existing is not None and existing.codec not in (None, "h264"):
            raise LiveError(409, f"编码不支持：摄像机发送 {existing.codec}，实时视频需要 H.264，请使用快照 "
                                 f"(camera sends {existing.codec}: live view needs H.264 and transcoding is off; "
                                 f"use snapshots)")

        feed = await self.watch(source)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sub = feed.subscribe()
        session = ViewerSession(id=secrets.token_urlsafe(12), camera_id=source.camera_id, user=user,
                                pc=pc, feed=feed, subscriber=sub)
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                session.connected = True
            elif state in ("failed", "closed"):
                await self.close_session(session.id)

        try:
            # The transceiver exists before the offer is applied so that only H.264 is
            # negotiated (aiortc would otherwise pick VP8 and re-encode every frame).
            transceiver = pc.addTransceiver(PassthroughTrack(sub), direction="sendonly")
            install_sender(transceiver.sender)
            caps = RTCRtpSender.getCapabilities("video").codecs
            h264 = [c for c in caps if c.mimeType.lower() == "video/h264"]
            rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
            transceiver.setCodecPreferences(h264 + rtx)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            without_bandwidth_feedback(transceiver)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except LiveError:
            await self.close_session(session.id)
            raise
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's problem
            await self.close_session(session.id)
            log.info("live %s: offer refused: %s", source.camera_id, exc)
            raise LiveError(422, f"cannot answer this offer: {type(exc).__name__}: {exc}"[:300]) from None
        if "h264" not in (pc.localDescription.sdp or "").lower():
            await self.close_session(session.id)
            raise LiveError(422, "no H.264 in common with this browser")
        log.info("live %s: viewer %s (%s) joins; %d viewer(s)", feed.label, session.id, user,
                 len(feed.subscribers))
        return session

    async def close_session(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self.ended[session_id] = session.user
        while len(self.ended) > ENDED_KEPT:
            self.ended.popitem(last=False)
        session.closed = True
        session.feed.unsubscribe(session.subscriber)
        log.info("live %s: viewer %s leaves; %d viewer(s)", session.feed.label, session.id,
                 len(session.feed.subscribers))
        try:
            await session.pc.close()
        except Exception:  # noqa: BLE001
            log.debug("closing peer connection", exc_info=True)
        return True

    # -- shutdown -------------------------------------------------------------------------
    async def _end_viewers(self) -> None:
        for sid in list(self.sessions):
            await self.close_session(sid)

    def status(self) -> dict:
        return {"feeds": {f"{cid}/{stream}": f.info() for (cid, stream), f in self.feeds.items()},
                "sessions": len(self.sessions), "started_feeds": self.started_feeds,
                "stopped_feeds": self.stopped_feeds}


__all__ = ["LiveRelay", "ViewerSession", "use_host_addresses"]
