"""The append-only, hash-chained audit log (全过程记录).

Rows are chained by a trigger in the database (see migration 0001), so every writer —
API, CLI, workers — extends the same chain.  `verify` recomputes the chain; any edited,
inserted or deleted row breaks it from that row on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

INSERT = """
INSERT INTO audit_log (actor, actor_kind, role, node_code, action, target, source_ip, outcome, detail)
VALUES (%(actor)s, %(actor_kind)s, %(role)s, %(node_code)s, %(action)s, %(target)s, %(source_ip)s, %(outcome)s, %(detail)s)
RETURNING id
"""


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    actor_kind: str
    action: str
    outcome: str = "ok"
    role: str | None = None
    node_code: str | None = None
    target: str | None = None
    source_ip: str | None = None
    detail: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {**self.__dict__, "detail": Jsonb(self.detail or {})}


def record(conn: psycopg.Connection, entry: AuditEntry) -> int:
    """Append one record in the caller's transaction (commit it with the change it audits)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(INSERT, entry.params()).fetchone()[0]


async def record_async(conn: psycopg.AsyncConnection, entry: AuditEntry) -> int:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(INSERT, entry.params())
        return (await cur.fetchone())[0]


VERIFY = """
SELECT id, hash, prev_hash, audit_digest(a) AS expected, lag(hash) OVER (ORDER BY id) AS previous
FROM audit_log a ORDER BY id
"""


@dataclass(frozen=True)
class ChainReport:
    records: int
    broken_at: int | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify(conn: psycopg.Connection) -> ChainReport:
    """Walk the whole chain; report the first record that does not verify."""
    count = 0
    genesis = "0" * 64
    with conn.cursor(name="audit_verify", row_factory=tuple_row) as cur:
        cur.itersize = 5000
        cur.execute(VERIFY)
        for rid, stored, prev_hash, expected, previous in cur:
            count += 1
            if prev_hash != (previous if previous is not None else genesis):
                return ChainReport(count, rid, "prev_hash does not match the previous record (a record was removed or inserted)")
            if stored != expected:
                return ChainReport(count, rid, "content does not match its hash (the record was modified)")
    return ChainReport(count, None, None)
