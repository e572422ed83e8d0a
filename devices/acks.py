"""Acknowledging QoS 1 messages only after the transaction that handled them committed,
and only on the connection they came in on: for the hub's subscribers with a persistent
session (the devices worker; ingest does the same with its own batched PUBACK writer).

Why the connection matters: a packet id (mid) names a message only within one network
connection. When a session is resumed the broker sends every unacknowledged message
again, with the same or other packet ids, and from then on the ids of the old
connection mean nothing — a PUBACK for one of them could acknowledge a different
message, one not yet stored. So each message is tagged with the generation of the
connection it arrived on (``generation`` when it is received), and ``ack`` sends only
the current generation's; the others are already on their way again.

Lives in devices/ because it is below ingest in the layering (ingest imports devices,
never the reverse) and is about the bus the devices contract defines."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class AckGate:
    """Connection generations and the acknowledgements allowed on the current one.

    ``connected``/``disconnected`` are called from paho's on_connect/on_disconnect (its
    network thread); ``ack`` from the thread that committed. ``ack`` sends while holding
    the gate's lock, and paho calls on_disconnect before it resets its outgoing queue and
    reconnects: so an acknowledgement let through is either written on the connection it
    belongs to or thrown away with that connection's queue, never sent on the next one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gen = 0
        self._connected = False
        self._session_gen = 0           # the connection that began the broker session we have
        self.stale_skipped = 0          # acknowledgements withheld: their connection was gone

    @property
    def generation(self) -> int:
        """The current connection's generation (tag a message with it as it arrives)."""
        return self._gen

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connected(self, session_present: bool) -> int:
        """A connection was accepted (CONNACK); returns its generation."""
        with self._lock:
            self._gen += 1
            if not session_present:
                self._session_gen = self._gen
            self._connected = True
            return self._gen

    def disconnected(self) -> None:
        with self._lock:
            self._connected = False

    def comes_again(self, gen: int) -> bool:
        """Whether an unacknowledged QoS 1 message received on connection ``gen`` is (being)
        delivered again: a later connection resumed the session it belonged to. Such a
        copy in memory can be dropped unhandled; a message of a session the broker lost
        (``session_present`` false since) comes no more and must be handled."""
        return self._session_gen <= gen < self._gen

    def ack(self, messages: Iterable[tuple[int, int, int]], send: Callable[[list[int]], object]) -> int:
        """``messages``: (mid, qos, generation) of messages whose handling has committed.
        Calls ``send(mids)`` with the QoS 1 ones of the current, connected generation (in
        the order given) and returns how many QoS 1 acknowledgements were withheld."""
        with self._lock:
            ok = self._connected
            gen = self._gen
            mids, stale = [], 0
            for mid, qos, g in messages:
                if qos != 1:
                    continue
                if ok and g == gen:
                    mids.append(mid)
                else:
                    stale += 1
            if mids:
                send(mids)
            self.stale_skipped += stale
            return stale
