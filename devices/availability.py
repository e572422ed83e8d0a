"""Online/offline of every device, decided by the hub.

Two sources, because some brokers (and some device firmwares) have no Last Will:

- ``avail`` messages (the device's own, or its LWT published by the broker): the status
  they say. Ingest already stores these as ``{kind}.online`` / ``{kind}.offline``
  events, so a change learnt this way raises no second event here.
- the heartbeat: every message a device sends proves it alive.  A device silent for
  ``heartbeat_factor`` × its expected interval is offline (one ``{kind}.offline`` event,
  reason ``heartbeat_timeout``), and online again with its next message (one
  ``{kind}.online`` event, reason ``message``).

Retained messages never count: they are a cache for newcomers, possibly days old.
After a hub restart every device gets a full silence limit before it can be declared
offline (the hub was not listening meanwhile, the device may well have been talking).

The transitions are this module's to store too (``store_transition``, ``store_liveness``,
in ``device_availability``): the devices worker calls them in its transactions, and
after a stored transition asks devices/doors.py whether a door's outage ended."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta

from devices import registry
from devices.settings import DevicesSettings
from devices.undo import UndoLog


@dataclass
class DeviceLiveness:
    # Immutable values only: the undo log keeps a shallow copy of an entry a batch changes.
    kind: str
    limit_s: float
    status: str | None = None           # online | offline | None (not known yet)
    reason: str | None = None
    changed_at: datetime | None = None
    last_seen: datetime | None = None
    last_seq: int | None = None
    dirty: bool = False                 # last_seen/last_seq not yet written to the database


@dataclass(frozen=True)
class Transition:
    device_id: str
    kind: str
    status: str                         # online | offline
    reason: str
    at: datetime
    raise_event: bool                   # False when ingest already stored the avail event
    previous: str | None
    silent_s: float | None = None
    seq_before: int | None = None       # the device's last seq before this change


class AvailabilityTracker:
    def __init__(self, settings: DevicesSettings, started_at: datetime, undo: UndoLog | None = None) -> None:
        self.settings = settings
        self.started_at = started_at
        self.devices: dict[str, DeviceLiveness] = {}
        # Every change of a device's entry is told to the undo log first: it stands only
        # if the transaction storing it commits (devices/undo.py).
        self.undo = undo or UndoLog()

    # -- registry ----------------------------------------------------------------------
    def sync(self, devices: list[tuple[str, str, float | None]], stored: dict[str, dict]) -> None:
        """Track exactly these (id, kind, heartbeat override) devices; ``stored`` are their
        device_availability rows (status, reason, changed_at, last_seen_at, last_seq)."""
        keep = set()
        for dev_id, kind, override in devices:
            keep.add(dev_id)
            limit = self.settings.silence_limit_s(kind, override)
            d = self.devices.get(dev_id)
            if d is None:
                row = stored.get(dev_id) or {}
                d = self.devices[dev_id] = DeviceLiveness(kind, limit, row.get("status"), row.get("reason"),
                                                          row.get("changed_at"), row.get("last_seen_at"),
                                                          row.get("last_seq"))
            d.kind, d.limit_s = kind, limit
        for dev_id in list(self.devices):
            if dev_id not in keep:
                del self.devices[dev_id]

    # -- messages ----------------------------------------------------------------------
    def _touch(self, d: DeviceLiveness, at: datetime, seq: int | None) -> None:
        if d.last_seen is None or at > d.last_seen:
            d.last_seen = at
        if seq is not None and (d.last_seq is None or seq > d.last_seq):
            d.last_seq = seq
        d.dirty = True

    def seen(self, device_id: str, at: datetime, seq: int | None = None) -> Transition | None:
        """Any live (not retained) message other than ``avail``."""
        d = self.devices.get(device_id)
        if d is None:
            return None
        self.undo.keep(self.devices, device_id, copy.copy)
        before = d.last_seq
        self._touch(d, at, seq)
        if d.status == "online":
            return None
        previous = d.status
        d.status, d.reason, d.changed_at = "online", "message", at
        # Unknown → online is simply learning the state; offline → online is news.
        return Transition(device_id, d.kind, "online", "message", at, previous == "offline", previous,
                          seq_before=before)

    def avail(self, device_id: str, status: str, at: datetime, seq: int | None = None) -> Transition | None:
        """A live ``avail`` message (the device's, or its LWT from the broker)."""
        d = self.devices.get(device_id)
        if d is None or status not in ("online", "offline"):
            return None
        self.undo.keep(self.devices, device_id, copy.copy)
        before = d.last_seq
        if status == "online":
            self._touch(d, at, seq)
        previous = d.status
        reason = "avail" if status == "online" else "lwt"
        changed = previous != status
        if changed:
            d.status, d.reason, d.changed_at = status, reason, at
            d.dirty = True
        # Even an online → online (reconnected before anyone noticed) is returned: a door
        # that reconnected may have buffered events to replay.
        return Transition(device_id, d.kind, status, reason, at, False, previous, seq_before=before)

    # -- silence -----------------------------------------------------------------------
    def sweep(self, now: datetime) -> list[Transition]:
        """Devices silent past their limit: offline (once)."""
        out = []
        grace_from = self.started_at
        for dev_id, d in self.devices.items():
            if d.status == "offline":
                continue
            reference = max(d.last_seen or grace_from, grace_from)
            silent = (now - reference).total_seconds()
            if silent < d.limit_s:
                continue
            self.undo.keep(self.devices, dev_id, copy.copy)
            previous = d.status
            reason = "heartbeat_timeout" if d.last_seen is not None else "never_seen"
            d.status, d.reason, d.changed_at, d.dirty = "offline", reason, now, True
            real_silence = (now - d.last_seen).total_seconds() if d.last_seen else None
            out.append(Transition(dev_id, d.kind, "offline", reason, now, True, previous,
                                  silent_s=round(real_silence, 1) if real_silence is not None else None,
                                  seq_before=d.last_seq))
        return out

    def online(self) -> dict[str, bool]:
        return {dev_id: d.status == "online" for dev_id, d in self.devices.items()}

    def dirty_rows(self) -> list[tuple]:
        rows = []
        for dev_id, d in self.devices.items():
            if d.dirty and d.status is not None:
                self.undo.keep(self.devices, dev_id, copy.copy)
                rows.append((dev_id, d.status, d.reason or "message", d.changed_at or d.last_seen, d.last_seen,
                             d.last_seq))
                d.dirty = False
        return rows

    def limit(self, device_id: str) -> timedelta | None:
        d = self.devices.get(device_id)
        return timedelta(seconds=d.limit_s) if d else None


# -- storing -----------------------------------------------------------------------------
# The devices worker stores what the tracker decided in the transaction of the batch (or
# sweep) that decided it, the one its UndoLog wraps: a change stands in memory only if it
# is stored.

def store_transition(conn, tracker: AvailabilityTracker, t: Transition, stats: dict) -> None:
    """A change the tracker decided: ``device_availability``, and once as a
    ``{kind}.online``/``{kind}.offline`` event when the hub decided it (``stats``: the
    worker's counters, ``events_raised``)."""
    if t.raise_event:
        payload = {"status": t.status, "reason": t.reason}
        if t.silent_s is not None:
            payload["silent_s"] = t.silent_s
        registry.store_event(conn, device_id=t.device_id, kind=t.kind, type=f"{t.kind}.{t.status}",
                             severity="info" if t.status == "online" else "minor", payload=payload, at=t.at)
        stats["events_raised"] += 1
    conn.execute(
        """INSERT INTO device_availability (device_id, status, reason, changed_at, last_seen_at, last_seq)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (device_id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
               changed_at = CASE WHEN device_availability.status = EXCLUDED.status
                                 THEN device_availability.changed_at ELSE EXCLUDED.changed_at END,
               last_seen_at = greatest(device_availability.last_seen_at, EXCLUDED.last_seen_at),
               last_seq = greatest(device_availability.last_seq, EXCLUDED.last_seq)""",
        (t.device_id, t.status, t.reason, t.at, tracker.devices[t.device_id].last_seen,
         tracker.devices[t.device_id].last_seq))


def store_liveness(conn, tracker: AvailabilityTracker) -> None:
    """``last_seen_at``/``last_seq`` of the devices heard since the last time."""
    rows = tracker.dirty_rows()
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO device_availability (device_id, status, reason, changed_at, last_seen_at, last_seq)
                   VALUES (%s, %s, %s, %s, %s, %s)
                   ON CONFLICT (device_id) DO UPDATE SET
                       last_seen_at = greatest(device_availability.last_seen_at, EXCLUDED.last_seen_at),
                       last_seq = greatest(device_availability.last_seq, EXCLUDED.last_seq)""", rows)
