"""The transactional outbox: a message to a case system is a row written in the same
transaction as the case change it reports, so either both happen or neither does.

Each case numbers its messages (``seq``); the sender delivers a case's messages to a
target strictly in that order, and the receiver deduplicates by ``Idempotency-Key``
(``<case id>:<seq>``, the same on every retry and replay) — together: exactly once, in
order per case.  A message that keeps failing past its ``give_up_at`` is dead-lettered
(status ``dead``); later messages of the same case wait behind it until it is replayed."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts.config import AlertsConfig
from store.where import Where


def enqueue(conn: psycopg.Connection, cfg: AlertsConfig, case: dict, event: str, body: dict[str, Any],
            now: datetime | None = None, exclude: frozenset[str] | set[str] = frozenset()) -> list[int]:
    """Queue ``body`` (the case's snapshot and what happened) for every case system that
    takes ``event`` for this case (but ``exclude``: a system is not told back what it
    reported itself).  Call inside the transaction of the change."""
    targets = [t for t in cfg.targets_for(case, event) if t not in exclude]
    if not targets:
        return []
    now = now or datetime.now(UTC)
    seq = conn.execute("UPDATE cases SET outbox_seq = outbox_seq + 1 WHERE id = %s RETURNING outbox_seq",
                       (case["id"],)).fetchone()["outbox_seq"]
    key = f"{case['id']}:{seq}"
    payload = {"event": event, "sequence": seq, "idempotency_key": key, "occurred_at": now.isoformat(), **body}
    # Round-trip through JSON now: a value JSON cannot carry fails here, in the transaction.
    payload = json.loads(json.dumps(payload, ensure_ascii=False, default=_json_default))
    ids = []
    systems = cfg.case_systems
    for target in targets:
        give_up = now + systems[target].retry.give_up_after
        ids.append(conn.execute(
            """INSERT INTO outbox (target, case_id, seq, event, idempotency_key, payload, give_up_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (target, case["id"], seq, event, key, Jsonb(payload), give_up),
        ).fetchone()["id"])
    return ids


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


LIST_COLUMNS = """o.id, o.target, o.case_id, c.number AS case_number, o.seq, o.event, o.idempotency_key, o.status,
                  o.attempts, o.created_at, o.next_attempt_at, o.give_up_at, o.last_status, o.last_error,
                  o.delivered_at, o.dead_at, o.replays"""


def list_messages(conn: psycopg.Connection, *, status: str | None = "dead", target: str | None = None,
                  scope_code: str | None = None, limit: int = 100) -> list[dict]:
    """Messages, newest first: the dead-letter list by default.  ``scope_code`` keeps those
    of cases inside that node's subtree."""
    w = Where(limit=limit)
    w.add("o.status = %(status)s", status=status)
    w.add("o.target = %(target)s", target=target)
    w.add("c.grid_path @> ARRAY[%(scope)s]", scope=scope_code)
    return conn.execute(
        f"""SELECT {LIST_COLUMNS},
                   (SELECT count(*) FROM outbox b WHERE b.target = o.target AND b.case_id = o.case_id
                      AND b.id > o.id AND b.status = 'pending') AS waiting_behind
            FROM outbox o JOIN cases c ON c.id = o.case_id
            WHERE {w} ORDER BY o.id DESC LIMIT %(limit)s""", w.params).fetchall()


def replay(conn: psycopg.Connection, cfg: AlertsConfig | None, *, ids: list[int] | None = None,
           all_dead: bool = False, target: str | None = None, scope_code: str | None = None) -> list[int]:
    """Put dead messages back in the queue (same idempotency key: a receiver that did get
    one before still sees it once).  Returns the ids replayed."""
    if not ids and not all_dead:
        return []
    w = Where("o.status = 'dead'")
    w.add("o.id = ANY(%(ids)s)", ids=ids)
    w.add("o.target = %(target)s", target=target)
    w.add("EXISTS (SELECT 1 FROM cases c WHERE c.id = o.case_id AND c.grid_path @> ARRAY[%(scope)s])",
          scope=scope_code)
    rows = conn.execute(f"SELECT o.id, o.target FROM outbox o WHERE {w} ORDER BY o.id FOR UPDATE",
                        w.params).fetchall()
    replayed = []
    systems = cfg.case_systems if cfg is not None else {}
    for r in rows:
        system = systems.get(r["target"])
        give_up_s = system.retry.give_up_after.total_seconds() if system else 86400.0
        conn.execute(
            """UPDATE outbox SET status = 'pending', next_attempt_at = clock_timestamp(), dead_at = NULL,
                   lease_until = NULL, replays = replays + 1,
                   give_up_at = clock_timestamp() + make_interval(secs => %s)
               WHERE id = %s""", (give_up_s, r["id"]))
        replayed.append(r["id"])
    return replayed


def counts(conn: psycopg.Connection) -> dict[str, int]:
    return {r["status"]: r["n"] for r in conn.execute("SELECT status, count(*) AS n FROM outbox GROUP BY status")}
