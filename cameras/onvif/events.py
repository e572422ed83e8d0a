"""ONVIF events by PullPoint subscription, kept alive for as long as the worker runs.

    subscriber = PullPointSubscriber(camera, on_event, camera_id="cam-dsz-01")
    task = asyncio.create_task(subscriber.run())     # runs until subscriber.stop()
    ...
    await subscriber.stop()                          # unsubscribes (best effort) and returns

One loop per camera: CreatePullPointSubscription, then PullMessages (a long poll the camera
holds open until something happens), with Renew at ``renew_fraction`` (80 %) of the
termination time the camera granted — timed from the camera's own CurrentTime and
TerminationTime, so a camera with a wrong clock is renewed on time. Every notification goes
through :mod:`cameras.onvif.parsers` and, if a parser knows its topic, reaches ``on_event``
as a :class:`~cameras.onvif.parsers.HubEvent`.

Failures:
- the camera answers a pull or renew with a fault (the subscription expired, or the camera
  rebooted and forgot it): subscribe again at once;
- the camera does not answer, or subscribing fails: wait 1, 5, 10, then 60 s between tries,
  forever, and start again from a fresh subscription once the old one has run out.

We do our own loop instead of onvif-zeep-async's PullPointManager: that one renews on a timer
beside the pulls (so a pull and a renew race), waits a fixed 40 s after any error and will not
renew sooner than 48 s, which is neither the backoff we want nor testable.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from onvif.util import normalize_url

from cameras.onvif import parsers
from cameras.onvif.client import NO_RETRY, OnvifCamera, OnvifError
from cameras.onvif.parsers import HubEvent
from store.backoff import CAMERA, Schedule

logger = logging.getLogger(__name__)

BACKOFF = CAMERA.steps
PULLPOINT = "PullPointSubscription"
_PULLPOINT_XADDR = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"
# How much longer than the long poll we wait for the HTTP answer before calling the camera mute.
_PULL_GRACE = 5.0
_MIN_RENEW_DELAY = 1.0
_MIN_POLL = 1

EventCallback = Callable[[HubEvent], "Awaitable[None] | None"]


@dataclass
class SubscriberStats:
    """What the loop has done; read by the worker for health telemetry."""

    subscriptions: int = 0          # subscriptions created (the first one and every re-subscribe)
    renewals: int = 0
    pulls: int = 0
    notifications: int = 0          # notification messages received
    events: int = 0                 # HubEvents handed to the callback
    unparsed: int = 0               # notifications no parser turned into an event (unknown or odd)
    lost: int = 0                   # subscriptions the camera no longer knew (expired, rebooted)
    failures: int = 0               # failed exchanges (then the loop backs off)
    callback_errors: int = 0
    subscribed: bool = False
    last_error: str | None = None
    backoff_waits: deque[float] = field(default_factory=lambda: deque(maxlen=32))


class _Stopped(Exception):
    pass


class PullPointSubscriber:
    """The PullPoint loop of one :class:`OnvifCamera` (connected by the loop itself if it is not
    yet). One subscriber per camera object (the subscription's address is kept on the camera's
    service table)."""

    def __init__(self, camera: OnvifCamera, on_event: EventCallback, *, camera_id: str | None = None,
                 subscription_seconds: float = 60.0, pull_seconds: float = 10.0, message_limit: int = 64,
                 renew_fraction: float = 0.8, backoff: Sequence[float] = BACKOFF) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        if not backoff:
            raise ValueError("backoff needs at least one wait")
        self.camera = camera
        self.camera_id = camera_id or camera.camera_id
        self.on_event = on_event
        self.subscription_seconds = subscription_seconds
        self.pull_seconds = pull_seconds
        self.message_limit = message_limit
        self.renew_fraction = renew_fraction
        self.backoff = tuple(backoff)
        self.stats = SubscriberStats()
        self._subscribed = False
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._stop = asyncio.Event()
        self._running = False

    # ------------------------------------------------------------------ public
    async def run(self) -> None:
        """Subscribe and pull until :meth:`stop`. Never raises for camera trouble: that is
        counted in :attr:`stats` and retried with backoff."""
        self._running = True
        failures = 0                    # consecutive failed rounds: picks the backoff wait
        resubscribed_at_once = False    # a lost subscription is replaced at once, but only once in a row
        try:
            while not self._stop.is_set():
                try:
                    if not self.camera.connected:
                        # Also when the camera was unreachable when the worker started.
                        await self._interruptible(self.camera.connect())
                    if self._subscribed and self._now() >= self._expires_at:
                        logger.info("onvif %s: subscription ran out while the camera was away", self.camera_id)
                        self._forget_subscription()
                    if not self._subscribed:
                        await self._interruptible(self._subscribe())
                    # Renew now if the shortest long poll (1 s) would end past the renewal time.
                    if self._renew_at - self._now() < _MIN_POLL:
                        await self._interruptible(self._renew())
                    await self._interruptible(self._pull())
                    failures = 0
                    resubscribed_at_once = False
                except _Stopped:
                    break
                except OnvifError as err:
                    self.stats.failures += 1
                    self.stats.last_error = str(err)
                    if self._subscribed and not err.transient:
                        # The camera answered, and said no: it does not know this subscription
                        # any more (expired, or rebooted). A fresh one is the cure, at once the
                        # first time; if that keeps failing, the backoff below applies.
                        self.stats.lost += 1
                        self._forget_subscription()
                        logger.info("onvif %s: subscription lost (%s), subscribing again", self.camera_id,
                                    err.reason)
                        if not resubscribed_at_once:
                            resubscribed_at_once = True
                            continue
                    wait = Schedule(self.backoff).delay(failures + 1)
                    failures += 1
                    self.stats.backoff_waits.append(wait)
                    logger.warning("onvif %s: %s; next try in %.1f s", self.camera_id, err, wait)
                    try:
                        await asyncio.wait_for(self._stop.wait(), wait)
                        break
                    except TimeoutError:
                        pass
        finally:
            self._running = False
            if self._stop.is_set():
                await self._unsubscribe()

    async def stop(self) -> None:
        """Stop the loop (an in-flight long poll is cut short) and unsubscribe."""
        self._stop.set()
        while self._running:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def _interruptible(self, step: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(step)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, OnvifError):
            pass
        raise _Stopped

    def _schedule(self, reply: Any) -> None:
        """Set the renewal and expiry times from the camera's answer (CurrentTime and
        TerminationTime, both by the camera's clock, so skew does not matter)."""
        granted = _seconds_between(getattr(reply, "CurrentTime", None), getattr(reply, "TerminationTime", None))
        if granted is None or granted <= 0:
            granted = self.subscription_seconds
        now = self._now()
        self._renew_at = now + max(_MIN_RENEW_DELAY, granted * self.renew_fraction)
        self._expires_at = now + granted

    async def _subscribe(self) -> None:
        device = self.camera.device
        interval = timedelta(seconds=self.subscription_seconds)
        reply = await self.camera.call("events", "CreatePullPointSubscription",
                                       {"InitialTerminationTime": device.get_next_termination_time(interval)},
                                       retry=NO_RETRY)
        with self.camera.reading("CreatePullPointSubscription"):
            address = normalize_url(reply.SubscriptionReference.Address._value_1)
            if not address:
                raise ValueError("no subscription address")
        device.xaddrs[_PULLPOINT_XADDR] = device.rewrite_url(address)
        self._subscribed = True
        self.stats.subscriptions += 1
        self.stats.subscribed = True
        self._schedule(reply)
        if device.has_broken_relative_time(interval, getattr(reply, "CurrentTime", None),
                                           getattr(reply, "TerminationTime", None)):
            # The camera ignored our relative time (PT60S); from now on it gets absolute ones.
            self._renew_at = 0.0
        logger.info("onvif %s: subscribed to events (renew in %.0f s)", self.camera_id,
                    self._renew_at - self._now() if self._renew_at else 0)

    async def _renew(self) -> None:
        device = self.camera.device
        termination = device.get_next_termination_time(timedelta(seconds=self.subscription_seconds))
        reply = await self.camera.call("subscription", "Renew", {"TerminationTime": termination},
                                       port_type=PULLPOINT, retry=NO_RETRY)
        self.stats.renewals += 1
        self._schedule(reply)

    async def _pull(self) -> None:
        # Whole seconds (some firmwares reject fractional durations), never past the renewal time.
        wait = max(_MIN_POLL, math.floor(min(self.pull_seconds, self._renew_at - self._now())))
        reply = await self.camera.call("pullpoint", "PullMessages",
                                       {"Timeout": timedelta(seconds=wait), "MessageLimit": self.message_limit},
                                       port_type=PULLPOINT, timeout=wait + _PULL_GRACE, retry=NO_RETRY)
        self.stats.pulls += 1
        messages = getattr(reply, "NotificationMessage", None) or []
        # Some cameras move the termination time forward on every pull; trust what they say.
        granted = _seconds_between(getattr(reply, "CurrentTime", None), getattr(reply, "TerminationTime", None))
        if granted is not None and granted > 0:
            self._expires_at = max(self._expires_at, self._now() + granted)
        for message in messages:
            self.stats.notifications += 1
            event = parsers.parse(self.camera_id, message)
            if event is None:
                self.stats.unparsed += 1
                continue
            await self._deliver(event)

    async def _deliver(self, event: HubEvent) -> None:
        try:
            result = self.on_event(event)
            if inspect.isawaitable(result):
                await result
            self.stats.events += 1
        except Exception:  # noqa: BLE001 - a consumer bug must not end the camera's event stream
            self.stats.callback_errors += 1
            logger.exception("onvif %s: event callback failed for %s", self.camera_id, event.type)

    def _forget_subscription(self) -> None:
        self._subscribed = False
        self.stats.subscribed = False
        self._renew_at = 0.0
        self._expires_at = 0.0

    async def _unsubscribe(self) -> None:
        if not self._subscribed or not self.camera.connected:
            return
        self._forget_subscription()
        try:
            await self.camera.call("subscription", "Unsubscribe", port_type=PULLPOINT, timeout=2.0, retry=NO_RETRY)
        except OnvifError as err:
            # Only a courtesy: the camera drops the subscription at its termination time anyway.
            logger.debug("onvif %s: unsubscribe failed: %s", self.camera_id, err)


def _seconds_between(start: Any, end: Any) -> float | None:
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return (end - start).total_seconds()
