"""The change feed of alarms, cases, notifications and broadcasts: a row per change in the
changing transaction (clients resume from its id) and a NOTIFY delivered at commit, so a
listener (the API's SSE feed) never announces a change that was rolled back."""
from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

CHANNEL = "xlhub_alert_feed"
_NOTIFY_LIMIT = 7800            # PostgreSQL refuses payloads of 8000 bytes and more


def publish(conn: psycopg.Connection, kind: str, ref: str, action: str, grid_path, summary: dict[str, Any],
            role: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO alert_feed (kind, ref, action, grid_path, role, summary) VALUES (%s, %s, %s, %s, %s, %s) "
        "RETURNING id, at",
        (kind, ref, action, list(grid_path or ()), role, Jsonb(summary)),
    ).fetchone()
    feed_id, at = (row["id"], row["at"]) if isinstance(row, dict) else row
    message = {"id": feed_id, "at": at.isoformat(), "kind": kind, "ref": ref, "action": action,
               "grid_path": list(grid_path or ()), "role": role, "summary": summary}
    text = json.dumps(message, ensure_ascii=False, default=str)
    if len(text.encode()) > _NOTIFY_LIMIT:
        message["summary"] = {"truncated": True}
        text = json.dumps(message, ensure_ascii=False, default=str)
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))
    return feed_id


def prune(conn: psycopg.Connection, keep_days: int = 7) -> int:
    return conn.execute("DELETE FROM alert_feed WHERE at < now() - make_interval(days => %s)", (keep_days,)).rowcount
