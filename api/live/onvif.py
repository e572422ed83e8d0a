"""Stream URIs of ONVIF-only cameras (``onvif:`` and no ``rtsp_url`` in the site file) for live view.

The feed registry (api/live/feed.py) asks the camera itself, as the camera worker does
(cameras.onvif_link.resolve_stream: GetProfiles, then GetStreamUri of the profile the viewer asked for, ``sub`` unless
``XLHUB_LIVE_STREAM`` or the older ``XLHUB_LIVE_ONVIF_STREAM`` say otherwise), and keeps the
answer per camera and stream for the life of the process: a viewer of a camera whose URI is known costs no ONVIF
round trip. The camera is asked again only when a pull with the known URI cannot connect
(the registry calls ``resolve`` again: a camera back from a reboot on another port or path).

Why the API asks and not the worker publishing what it found: the worker pulls the profile
its analytics want (often another one), a camera without a running worker would have no
live view, and a published URI would need a new path from the workers to the API. The
credentials stay where they already are for RTSP cameras: resolved from the site file per
request, put into the ONVIF request and the demuxer's URL only. The URI the camera gives is
credential-free (cameras.onvif strips user-info and credential query keys).

ONVIF runs on an ``OnvifLink`` of its own (an asyncio loop in a thread), started with the
first ONVIF-only camera watched: zeep parses WSDLs and builds its clients synchronously, which
must not stall the API's loop and with it every viewer's packets.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from api.live.source import CameraSource
from config.urls import redact_text, redact_url

if TYPE_CHECKING:
    from cameras.onvif_link import OnvifLink

log = logging.getLogger(__name__)

# ONVIF failure reason → (HTTP status, 中文, English) for the viewer; the worker's PTZ answers
# map the same reasons the same way (api/cameras/views.py).
FAILURES = {
    "unreachable": (503, "无法连接摄像机的 ONVIF 服务，取不到视频流地址",
                    "the camera's ONVIF service does not answer: no stream address"),
    "auth": (502, "摄像机拒绝了平台的 ONVIF 凭据，取不到视频流地址",
             "the camera refused the hub's credentials: no stream address"),
}
OTHER_FAILURE = (502, "摄像机未通过 ONVIF 给出视频流地址", "the camera gave no stream address over ONVIF")


def explain(exc: BaseException) -> tuple[int, str]:
    """HTTP status and a message for a failed resolution, Chinese then English, with the
    ONVIF reason (names the camera's address and operation, never a credential)."""
    from cameras.onvif import OnvifError

    if isinstance(exc, OnvifError):
        code, zh, en = FAILURES.get(exc.reason, OTHER_FAILURE)
        why = str(exc)
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        code, zh, en = FAILURES["unreachable"]
        why = "timed out"
    else:
        code, zh, en = OTHER_FAILURE
        why = type(exc).__name__
    return code, f"{zh} ({en}; {redact_text(why)[:240]})"


class StreamUris:
    """Credential-free stream URIs of ONVIF-only cameras, asked of the cameras on demand, per
    camera and stream (``source.stream``: the profile asked for). Each answer is the URI and
    the stream the camera gave: ``main`` for ``sub`` when the camera has a single profile.
    Use from the API's event loop."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.asked = 0                                  # GetStreamUri rounds (status, tests)
        # (camera id, stream asked) → (ONVIF address, URI, stream given)
        self._uris: dict[tuple[str, str], tuple[tuple, str, str]] = {}
        self._pending: dict[tuple, asyncio.Future] = {}
        self._link: OnvifLink | None = None
        self._starting: asyncio.Lock | None = None

    @staticmethod
    def _key(source: CameraSource) -> tuple:
        return source.camera_id, source.stream, source.onvif_host, source.onvif_port

    def cached(self, source: CameraSource) -> tuple[str, str] | None:
        """(URI, stream) the camera gave last time for this stream, if asked at this ONVIF address."""
        entry = self._uris.get((source.camera_id, source.stream))
        return entry[1:] if entry is not None and entry[0] == self._key(source) else None

    async def resolve(self, source: CameraSource) -> tuple[str, str]:
        """Ask the camera now. Callers at the same time share one round; a caller that gives
        up (the viewer went away) does not cancel it for the others. Raises OnvifError."""
        key = self._key(source)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(source, key))
            self._pending[key] = pending
            pending.add_done_callback(lambda f: self._settled(key, f))
        return await asyncio.shield(pending)

    def _settled(self, key: tuple, future: asyncio.Future) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
        if not future.cancelled():
            future.exception()        # retrieved: every caller may have given up

    async def _ask(self, source: CameraSource, key: tuple) -> tuple[str, str]:
        from cameras.onvif_link import OnvifEndpoint, resolve_stream

        link = await self._started()
        endpoint = OnvifEndpoint(source.onvif_host, source.onvif_port, source.username, source.password)
        self.asked += 1
        found = await asyncio.wrap_future(link.submit(
            resolve_stream(source.camera_id, endpoint, stream=source.stream, timeout_s=self.timeout_s)))
        previous = self._uris.get((source.camera_id, source.stream))
        self._uris[(source.camera_id, source.stream)] = (key, found.uri, found.stream)
        if previous is None or previous[1] != found.uri:
            log.info("live %s: %s stream URI from ONVIF %s (profile %s, %s): %s", source.camera_id, source.stream,
                     endpoint.address, found.profile_token, found.stream, redact_url(found.uri))
        return found.uri, found.stream

    async def _started(self) -> OnvifLink:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._link is None:
                from cameras.onvif_link import OnvifLink
                link = OnvifLink(timeout_s=self.timeout_s, name="live-onvif")
                # start() imports cameras.onvif (zeep and the rest, ~0.5 s): off the loop that sends packets
                await asyncio.get_running_loop().run_in_executor(None, link.start)
                self._link = link
        return self._link

    def close(self) -> None:
        """Stop the ONVIF loop (blocks up to a few seconds: call from a worker thread)."""
        link, self._link = self._link, None
        if link is not None:
            link.stop()
