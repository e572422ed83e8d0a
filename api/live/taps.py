"""Where live view finds the packets a camera worker already reads (cameras/tap.py), so a
watched camera keeps one RTSP session: the camera workers say in their heartbeats where
they serve (api/health/workers.camera_tap); a lookup is kept ``ttl_s`` per camera, and is
made from the feeds' own threads, never on the event loop.

A GB/T 28181 channel (``gb28181://``) nobody's camera worker serves is taken from the gb28181
process's media tap (cameras/gb28181/media: the same protocol and key, camera
``<device>/<channel>``), found by its heartbeat (``HubLocator``): ``gb28181_address``."""
from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class TapDirectory:
    """The tap key of this hub, and per camera the address of the worker that serves it."""

    def __init__(self, key: bytes, lookup: Callable[[str], str | None], ttl_s: float = 3.0,
                 tls: ssl.SSLContext | None = None, gb28181: Callable[[], str | None] | None = None) -> None:
        self.key = key
        self.gb28181 = gb28181      # where the gb28181 process serves its channels (None: not looked for)
        self.tls = tls              # verifies a worker's tap that serves TLS (tls:host:port)
        self.lookup = lookup
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def address(self, camera_id: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(camera_id)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            found = self.lookup(camera_id)
        except Exception as exc:  # noqa: BLE001 - no answer: the feed pulls the camera itself
            log.warning("live %s: where its camera worker serves packets is unknown (%s)", camera_id,
                        exc.__class__.__name__)
            found = None
        with self._lock:
            self._cache[camera_id] = (now, found)
        return found

    def gb28181_address(self) -> str | None:
        """The gb28181 process's media tap, or None when it is not running (no live heartbeat)."""
        if self.gb28181 is None:
            return None
        try:
            return self.gb28181()
        except Exception as exc:  # noqa: BLE001 - no answer: said as "not running"
            log.warning("live: where the gb28181 process serves its channels is unknown (%s)", exc.__class__.__name__)
            return None


def from_app(app) -> TapDirectory | None:
    """The API's directory: the hub's key, heartbeats read through the API's pool. None when
    the key cannot be read (live view then pulls every camera itself, and says so)."""
    from api.health.workers import camera_tap
    from cameras.tap import TapSettings, tap_key

    settings = getattr(app.state, "settings", None)
    if settings is None:
        return None
    try:
        key = tap_key(settings)
    except Exception as exc:  # noqa: BLE001
        log.error("live view cannot take the camera workers' packets (it pulls every camera itself): %s", exc)
        return None

    def lookup(camera_id: str) -> str | None:
        pool = getattr(app.state, "pool", None)
        if pool is None:
            return None
        with pool.connection(timeout=3) as conn:
            return camera_tap(conn, camera_id)

    locator = None

    def gb28181() -> str | None:
        nonlocal locator
        pool = getattr(app.state, "pool", None)
        if pool is None:
            return None
        if locator is None:
            from cameras.gb28181.media.source import HubLocator
            locator = HubLocator(pool, key)
        return locator.address()

    try:
        tls = TapSettings().client_context()
    except Exception as exc:  # noqa: BLE001 - the worker's settings, not ours: verify against the system's CAs
        log.warning("live view: XLHUB_CAMERA_TAP_* settings unusable here (%s); TLS taps are verified against "
                    "the system's CAs", exc)
        tls = None
    return TapDirectory(key, lookup, tls=tls, gb28181=gb28181)
