"""LISTEN loops, once: a thread that holds one connection LISTENing on some channels and
calls back for every notification, reconnecting with backoff (store.backoff.LISTEN).

A notification only says "look now": one sent while the connection was away is lost, so
``on_connect`` runs after every (re)connect and the caller looks at its tables then —
nothing is missed, only noticed later.

    listener = Listener(db_url, ["xlhub_devices"], lambda channel, payload: wake.set(),
                        name="xlhub-devices-listen", on_connect=wake.set)
    listener.start(stop_event)        # or listener.run(stop_event) on the caller's thread
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
from psycopg import sql

from store.backoff import LISTEN, Backoff

log = logging.getLogger(__name__)

# How often a quiet connection looks at the stop event (and ``keep_going``).
POLL_S = 1.0


class Listener:
    """``on_notify(channel, payload)`` for each notification, on the listener's thread (keep
    it short: set an event, queue the payload). ``keep_going()`` False ends the loop as a
    stop would (a feed with nobody subscribed lets its connection go)."""

    def __init__(self, db_url: str, channels: Iterable[str], on_notify: Callable[[str, str], None], *,
                 name: str, on_connect: Callable[[], None] | None = None,
                 on_lost: Callable[[BaseException], None] | None = None,
                 keep_going: Callable[[], bool] | None = None, poll_s: float = POLL_S) -> None:
        self.db_url = db_url
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.name = name
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.keep_going = keep_going or (lambda: True)
        self.poll_s = poll_s
        self.listening = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, args=(stop,), name=self.name, daemon=True)
        self.thread.start()
        return self.thread

    def _running(self, stop: threading.Event) -> bool:
        return not stop.is_set() and self.keep_going()

    def run(self, stop: threading.Event) -> None:
        backoff = Backoff(LISTEN)
        while self._running(stop):
            try:
                with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5,
                                     application_name=self.name) as conn:
                    for channel in self.channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.listening.set()
                    backoff.reset()
                    if self.on_connect is not None:
                        self.on_connect()
                    while self._running(stop):
                        for n in conn.notifies(timeout=self.poll_s):
                            self.on_notify(n.channel, n.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                if self.on_lost is not None:
                    self.on_lost(exc)
                delay = backoff.next()
                log.warning("%s lost the database (%s); listening again in %.0f s", self.name,
                            type(exc).__name__, delay)
                stop.wait(delay)
        self.listening.clear()
