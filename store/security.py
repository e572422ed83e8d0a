"""Security events: what an administrator must hear about (a burst of failed logins on one
account, an address guessing across accounts, refused broker or device credentials).

Each single refusal is an audit record (store/audit.py) of the grid node it concerns, so the
administrators of that subtree read it in ``GET /api/audit``; a *burst* of them is also an
event in the events table — source kind ``hub`` — which the alerts engine treats like any
other: a site rule on ``security.*`` raises an alarm and notifies (config/demo/site.yaml).
``BurstCounter`` decides when refusals have become a burst: once per window and key, so an
attack that goes on counts repeats on the open alarm instead of raising a new one per guess.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

SOURCE_KIND = "hub"

LOGIN_BURST = "security.login.burst"            # failed logins on one account name
ADDRESS_BLOCKED = "security.address.blocked"    # one address failing across accounts (spraying)
MQTT_REFUSED = "security.mqtt.refused"          # the broker refused credentials, repeatedly
DEVICE_REFUSED = "security.device.refused"      # a device's HTTP credentials refused, repeatedly
EMITS = (LOGIN_BURST, ADDRESS_BLOCKED, MQTT_REFUSED, DEVICE_REFUSED)   # labels: config/vocabulary.py

# A burst: this many refusals of one key within the window.
BURST_COUNT = 10
BURST_WINDOW_S = 300.0


class BurstCounter:
    """Refusals per key within a sliding window; ``hit`` is True exactly when a key's count
    reaches ``count`` (again only after the window has emptied below it). In memory, bounded."""

    def __init__(self, count: int = BURST_COUNT, window_s: float = BURST_WINDOW_S, max_keys: int = 50_000) -> None:
        self.count, self.window_s, self.max_keys = count, window_s, max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> int | None:
        """Count one refusal; the number in the window when it just became a burst, else None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits.get(key)
            if q is None:
                if len(self._hits) >= self.max_keys:
                    self._forget(now)
                q = self._hits[key] = deque()
            while q and q[0] <= now - self.window_s:
                q.popleft()
            q.append(now)
            return len(q) if len(q) == self.count else None

    def _forget(self, now: float) -> None:
        for key in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window_s]:
            del self._hits[key]


def raise_event(conn: psycopg.Connection, type_: str, *, subject: str, node_code: str | None, payload: dict,
                severity: str = "major", at: datetime | None = None, source_id: str | None = None) -> str:
    """A security event about ``subject`` (an account name, an address) in the grid node it
    concerns (None: the root — the county's administrators). Returns the event id; the
    caller commits. The source id names the node, so bursts in two townships are two
    alarms, each seen by its own administrators. The hub's other conditions of its own
    (the recordings' disk, cameras/recording/quota.py) pass their ``source_id``: one open
    alarm per source and type."""
    at = at or datetime.now(UTC)
    event_id = str(ULID())
    conn.execute(
        """INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity,
                               msg_id, payload)
           SELECT %(at)s, %(id)s, %(at)s, %(kind)s, coalesce(%(source)s, 'security@' || g.code), %(type)s, g.code, g.path, %(sev)s,
                  %(msg)s, %(payload)s
           FROM grid_nodes g
           WHERE g.code = coalesce(%(node)s, (SELECT code FROM grid_nodes WHERE parent_code IS NULL
                                               AND retired_at IS NULL ORDER BY code LIMIT 1))""",
        {"at": at, "id": event_id, "kind": SOURCE_KIND, "type": type_, "sev": severity, "node": node_code,
         "source": source_id,
         "msg": f"hub-{event_id}", "payload": Jsonb({**payload, "subject": subject, "raised_by": "hub"})})
    conn.execute("SELECT pg_notify('xlhub_events', %s)", (json.dumps({"count": 1, "ids": [event_id]}),))
    return event_id
