"""ONVIF in the camera worker: stream URIs of ONVIF-only cameras, and PTZ commands.

One ``OnvifLink`` per worker process runs one asyncio loop in a thread for all of the
worker's ONVIF cameras (cameras.onvif is async; the worker's readers and MQTT are threads).

**Stream URIs.** A camera the site file gives only by its ONVIF address (no ``rtsp_url``)
gets an ``OnvifStreamSource``: it asks the camera (GetProfiles, GetStreamUri of the main or
sub profile as ``analytics.stream`` says, GetSnapshotUri) and hands the reader the URI with
the site's credentials put in; the URI the camera gave is credential-free (cameras.onvif
strips user-info and credential query keys), and only that form is ever logged or shown.
While the ONVIF service does not answer, the source retries with backoff (1, 5, 10, then
60 s forever) and the reader's opens fail at once with the reason ("stream URI not resolved:
unreachable …"), so health sees the camera offline. When ``refail_after`` connections in a
row deliver no media (no packet: the URI did not open, or opened and sent nothing), the URI
is asked for again (a camera that rebooted with another port or path, a DHCP move behind a
name), keeping the old one meanwhile.
``resolve_stream`` is that one round on its own: the API's live view (api/live/onvif.py)
asks the same way, on an ``OnvifLink`` of its own.

**PTZ.** ``OnvifLink.ptz`` runs one PTZ operation (move, stop, presets, goto) on a session
kept per camera (connect and PtzControl.open cost four round trips; an operator pressing
arrows must not pay them each time). The session is dropped when the camera is unreachable
or refuses our credentials, and opened again on the next command. Operations on one camera
run in the order they were submitted (a stop never overtakes the move it ends).

Nothing here logs or raises a credential: OnvifError messages are scrubbed by
cameras.onvif, URIs pass through config.urls.redact_url.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from bus.commands import PTZ_OPS
from cameras.config import with_credentials
from config.urls import redact_text, redact_url
from config.vocabulary import StreamProblem
from store.backoff import CAMERA, Schedule

log = logging.getLogger(__name__)

BACKOFF_S: tuple[float, ...] = CAMERA.steps


class StreamUnresolved(ConnectionError):
    """The reader asked for the URL of a camera whose stream URI ONVIF has not given (yet).
    An OSError, so the reader treats it as a failed open: reason logged, backoff, retry."""

    stream_problem = StreamProblem.no_address


@dataclass(frozen=True)
class OnvifEndpoint:
    host: str
    port: int = 80
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class OnvifLink:
    """The worker's ONVIF loop: ``start()``, ``submit(coro)``, ``ptz(...)``, ``stop()``."""

    def __init__(self, *, timeout_s: float = 5.0, name: str = "onvif") -> None:
        self.timeout_s = timeout_s
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._sessions: dict[str, Any] = {}          # camera id → PtzControl (its camera connected)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self.subscribers: dict[str, Any] = {}        # camera id → PullPointSubscriber (events)

    # -- loop ------------------------------------------------------------------------
    def start(self) -> OnvifLink:
        # Imported here: onvif-zeep-async is heavy, and only workers with ONVIF cameras need it.
        import cameras.onvif  # noqa: F401
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        return self

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine) -> None:
        """Run ``coro`` as a task of the loop until it ends or the link stops."""
        def create() -> None:
            task = self.loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.loop.call_soon_threadsafe(create)

    def forget(self, camera_id: str) -> None:
        """A camera stopped by a registry change (retired, changed): its event subscription
        ends (unsubscribed, best effort) and its PTZ session is closed. Does not wait. The
        subscriber is taken off in a loop callback, so a subscription made right after (the
        camera restarted) — scheduled later, run later — is not the one stopped."""
        if self._thread is None or not self.loop.is_running():
            return

        async def drop(subscriber) -> None:
            if subscriber is not None:
                await subscriber.stop()
                try:
                    await subscriber.camera.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            if camera_id in self._sessions:
                await self._drop(camera_id)

        def take() -> None:
            task = self.loop.create_task(drop(self.subscribers.pop(camera_id, None)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.loop.call_soon_threadsafe(take)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None or not self.loop.is_running():
            return

        async def shutdown() -> None:
            for subscriber in list(self.subscribers.values()):
                await subscriber.stop()             # unsubscribes (best effort)
                try:
                    await subscriber.camera.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for camera_id in list(self._sessions):
                await self._drop(camera_id)

        try:
            self.submit(shutdown()).result(timeout)
        except Exception as exc:  # noqa: BLE001 - stopping is best effort
            log.warning("%s: shutdown incomplete (%s)", self.name, type(exc).__name__)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    # -- events ----------------------------------------------------------------------
    def subscribe_events(self, camera_id: str, endpoint: OnvifEndpoint, on_event) -> None:
        """The camera's own events by PullPoint subscription (cameras/onvif/events.py: renewed
        before expiry, re-made after a camera reboot, backoff while it is away), each
        notification a parser knows handed to ``on_event`` (on this loop: keep it quick)."""
        from cameras.onvif import OnvifCamera, RetryPolicy
        from cameras.onvif.events import PullPointSubscriber

        def start() -> None:
            cam = OnvifCamera(endpoint.host, endpoint.port, endpoint.username, endpoint.password,
                              timeout=self.timeout_s, retry=RetryPolicy(attempts=2, waits=(0.5,)), camera_id=camera_id)
            subscriber = self.subscribers[camera_id] = PullPointSubscriber(cam, on_event, camera_id=camera_id)
            task = self.loop.create_task(subscriber.run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.loop.call_soon_threadsafe(start)

    def events_status(self) -> dict:
        return {cid: {"subscribed": s.stats.subscribed, "events": s.stats.events, "lost": s.stats.lost,
                      "last_error": s.stats.last_error} for cid, s in self.subscribers.items()}

    # -- PTZ -------------------------------------------------------------------------
    async def _control(self, camera_id: str, endpoint: OnvifEndpoint):
        from cameras.onvif import OnvifCamera, PtzControl, RetryPolicy

        ptz = self._sessions.get(camera_id)
        if ptz is not None:
            return ptz
        cam = OnvifCamera(endpoint.host, endpoint.port, endpoint.username, endpoint.password,
                          timeout=self.timeout_s, retry=RetryPolicy(attempts=2, waits=(0.5,)), camera_id=camera_id)
        await cam.connect()
        try:
            ptz = await PtzControl.open(cam)
        except BaseException:
            await cam.close()
            raise
        self._sessions[camera_id] = ptz
        return ptz

    async def _drop(self, camera_id: str) -> None:
        ptz = self._sessions.pop(camera_id, None)
        if ptz is not None:
            try:
                await ptz.camera.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    async def ptz(self, camera_id: str, endpoint: OnvifEndpoint, op: str, args: dict) -> dict:
        """One PTZ operation; returns what the reply carries. Raises OnvifError (reason:
        unreachable, auth, not supported, rejected, bad reply) or ValueError (bad argument)."""
        from cameras.onvif import AUTH, UNREACHABLE, OnvifError

        if op not in PTZ_OPS:
            raise ValueError(f"unknown PTZ operation {op!r} (one of {', '.join(PTZ_OPS)})")
        lock = self._locks.setdefault(camera_id, asyncio.Lock())
        async with lock:
            try:
                ptz = await self._control(camera_id, endpoint)
                if op == "move":
                    pan, tilt, zoom = await ptz.move(args.get("pan", 0.0), args.get("tilt", 0.0), args.get("zoom", 0.0),
                                                     timeout=args.get("timeout", 1.0))
                    return {"sent": {"pan": pan, "tilt": tilt, "zoom": zoom}, "profile": ptz.profile_token}
                if op == "stop":
                    await ptz.stop()
                    return {}
                if op == "presets":
                    return {"presets": [{"token": p.token, "name": p.name} for p in await ptz.presets()]}
                await ptz.goto_preset(args["token"])
                return {}
            except OnvifError as err:
                if err.reason in (UNREACHABLE, AUTH):
                    await self._drop(camera_id)      # the next command connects afresh
                raise


@dataclass(frozen=True)
class ResolvedStream:
    """What one GetStreamUri round gave: URIs as the camera gave them, without credentials."""
    uri: str
    profile_token: str
    stream: str                       # "sub" or "main": the profile given (main when there is no sub)
    snapshot_uri: str | None = None


async def resolve_stream(camera_id: str, endpoint: OnvifEndpoint, *, stream: str = "sub", timeout_s: float = 5.0,
                         snapshot: bool = False) -> ResolvedStream:
    """One round: connect, GetProfiles, GetStreamUri of the ``stream`` profile (and
    GetSnapshotUri with ``snapshot``), close. Raises OnvifError (no credential in it).
    Shared by the workers' OnvifStreamSource and the API's live view, so both pick the
    same profile of a camera the same way."""
    from cameras.onvif import NO_RETRY, OnvifCamera, OnvifError

    e = endpoint
    cam = OnvifCamera(e.host, e.port, e.username, e.password, timeout=timeout_s, retry=NO_RETRY, camera_id=camera_id)
    snapshot_uri = None
    try:
        await cam.connect()
        streams = await cam.stream_uris()
        chosen = streams.sub if (stream == "sub" and streams.sub is not None) else streams.main
        if snapshot:
            try:
                snapshot_uri = await cam.snapshot_uri(streams.main.profile_token)
            except OnvifError as err:
                if err.transient:
                    raise
                # not every camera has one; the stream is what matters
    finally:
        await cam.close()
    return ResolvedStream(uri=chosen.uri, profile_token=chosen.profile_token,
                          stream="sub" if chosen is streams.sub else "main", snapshot_uri=snapshot_uri)


class OnvifStreamSource:
    """The stream URI of a camera known only by its ONVIF address, for its reader."""

    def __init__(self, camera_id: str, endpoint: OnvifEndpoint, link: OnvifLink, *, stream: str = "sub",
                 backoff: tuple[float, ...] = BACKOFF_S, refail_after: int = 3, first_wait_s: float = 5.0,
                 timeout_s: float = 5.0) -> None:
        self.camera_id = camera_id
        self.endpoint = endpoint
        self.link = link
        self.stream = stream
        self.backoff = backoff
        self.refail_after = max(1, refail_after)
        self.first_wait_s = first_wait_s
        self.timeout_s = timeout_s
        self.uri: str | None = None              # credential-free, as the camera gave it
        self.profile_token: str | None = None
        self.snapshot_uri: str | None = None     # credential-free
        self.resolved_at: float | None = None
        self.resolutions = 0                     # successful GetStreamUri rounds
        self.attempts = 0
        self.last_error: str | None = None
        self.failures = 0                        # stream connections in a row without media
        self._have_uri = threading.Event()
        self._stale: asyncio.Event | None = None
        self._resolving = True

    # -- reader side (reader thread) -------------------------------------------------
    def url(self) -> str:
        """The URL for the demuxer (credentials in). Waits a little for the first answer
        from ONVIF; raises StreamUnresolved while there is none."""
        if self.uri is None and self.last_error is None:
            self._have_uri.wait(self.first_wait_s)      # the first answer is on its way
        uri = self.uri
        if uri is None:
            raise StreamUnresolved(f"stream URI not resolved over ONVIF {self.endpoint.address}"
                                   + (f": {self.last_error}" if self.last_error else " yet"))
        return with_credentials(uri, self.endpoint.username, self.endpoint.password)

    @property
    def shown_url(self) -> str:
        if self.uri:
            return redact_url(self.uri)
        return f"onvif://{self.endpoint.address} (stream URI not resolved yet)"

    def stream_closed(self, delivered: bool) -> None:
        """After each connection of the reader: ``refail_after`` in a row that delivered no
        media (a URI that did not open, or opened and sent nothing) → ask ONVIF again.
        Media means packets, not decoded frames: in keyframes-only mode a short connection
        can deliver a second of packets before any keyframe."""
        if delivered:
            self.failures = 0
            return
        if self.uri is None:
            return              # nothing was opened: the resolution loop is already retrying
        self.failures += 1
        if self.failures >= self.refail_after:
            self.failures = 0
            self.invalidate()

    def invalidate(self) -> None:
        """Ask the camera for the URI again (the old one stays in use meanwhile)."""
        def mark() -> None:
            if self._stale is not None and not self._resolving:
                log.info("camera %s: stream keeps failing; asking ONVIF %s for the stream URI again",
                         self.camera_id, self.endpoint.address)
                self._stale.set()
        self.link.loop.call_soon_threadsafe(mark)

    # -- resolution (the link's loop) --------------------------------------------------
    def start(self) -> OnvifStreamSource:
        self.link.spawn(self._run())
        return self

    async def _run(self) -> None:
        self._stale = asyncio.Event()
        failures = 0
        shown_error: str | None = None
        while True:
            self._resolving = True
            self.attempts += 1
            try:
                await self.resolve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                failures += 1
                self.last_error = _describe(exc)
                delay = Schedule(self.backoff).delay(failures)
                if self.last_error != shown_error:
                    log.warning("camera %s: no stream URI from ONVIF %s: %s; retrying in %.0f s (and on)",
                                self.camera_id, self.endpoint.address, self.last_error, delay)
                    shown_error = self.last_error
                else:
                    log.debug("camera %s: ONVIF still failing (%s); retry %d in %.0f s", self.camera_id,
                              self.last_error, failures, delay)
                await asyncio.sleep(delay)
                continue
            failures, shown_error = 0, None
            self._resolving = False
            self._stale.clear()
            await self._stale.wait()

    async def resolve(self) -> str:
        """One round: connect, GetProfiles, GetStreamUri (and GetSnapshotUri), close."""
        found = await resolve_stream(self.camera_id, self.endpoint, stream=self.stream, timeout_s=self.timeout_s,
                                     snapshot=True)
        changed = found.uri != self.uri
        self.uri, self.profile_token, self.snapshot_uri = found.uri, found.profile_token, found.snapshot_uri
        self.resolved_at = time.time()
        self.resolutions += 1
        self.last_error = None
        self.failures = 0
        self._have_uri.set()
        if changed:
            log.info("camera %s: stream URI from ONVIF %s (profile %s, %s): %s", self.camera_id,
                     self.endpoint.address, found.profile_token, found.stream, redact_url(found.uri))
        return found.uri

    # -- snapshot over HTTP (job threads) ----------------------------------------------
    def fetch_snapshot(self, timeout: float = 5.0) -> bytes:
        """A JPEG from the camera's snapshot URI (HTTP Basic or Digest with the site's
        credentials). Raises OSError with a redacted reason."""
        uri = self.snapshot_uri
        if not uri:
            raise OSError("the camera gave no snapshot URI")
        handlers: list = []
        if self.endpoint.username:
            passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            passwords.add_password(None, uri, self.endpoint.username, self.endpoint.password or "")
            handlers = [urllib.request.HTTPBasicAuthHandler(passwords), urllib.request.HTTPDigestAuthHandler(passwords)]
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(uri, timeout=timeout) as answer:
                data = answer.read(8 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            raise OSError(f"snapshot refused: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OSError(f"snapshot failed: {redact_text(str(reason))[:160]}") from None
        if data[:2] != b"\xff\xd8":
            raise OSError("snapshot is not a JPEG")
        return data


def _describe(exc: BaseException) -> str:
    from cameras.onvif import OnvifError

    if isinstance(exc, OnvifError):
        return str(exc)
    return f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"
