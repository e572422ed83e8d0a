"""Idempotency keys (``Idempotency-Key`` header, draft-ietf-httpapi-idempotency-key-header)
for the POSTs a phone may send twice: a case report, a lifecycle action with photos, a
photo upload. The grid worker's phone queues what is entered offline and sends it when the
network returns; when an answer is lost on the way back, the phone sends the same request
again with the same key, and gets the first result instead of a duplicate.

How: ``claim`` takes a transaction-scoped advisory lock on (caller, key) — a second
request with the same key waits until the first has committed or rolled back — and answers
what the key already made, if anything; ``remember`` records the result in the request's
transaction, so the key and what it made commit together (or neither does). Keys belong to
their caller: another person's key is simply another key."""
from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from store.identity import Principal

HEADER = "Idempotency-Key"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,100}$")


@dataclass(frozen=True)
class Earlier:
    kind: str
    ref: str


def key_of(request: Request) -> str | None:
    """The request's key, or None; a malformed key is refused with the reason."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    raw = raw.strip().strip('"')          # the draft sends it as a quoted string
    if not _VALID.fullmatch(raw):
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            f"{HEADER} 格式错误：须为 8–100 个字母、数字或 ._:- 字符 "
                            "(8 to 100 letters, digits or ._:-)")
    return raw


def claim(conn, principal: Principal, key: str, route: str) -> Earlier | None:
    """Lock the key for this transaction; what it made before, if anything."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (f"{principal.name}\n{key}",))
    row = conn.execute("SELECT route, result_kind, result_ref FROM idempotency_keys WHERE principal = %s AND key = %s",
                       (principal.name, key)).fetchone()
    if row is None:
        return None
    if row["route"] != route:
        raise HTTPException(422,
                            f"{HEADER} 已用于另一请求（{row['route']}），请为每个操作生成新的键 "
                            "(the key was already used for another request)")
    return Earlier(row["result_kind"], row["result_ref"])


def remember(conn, principal: Principal, key: str, route: str, kind: str, ref: str) -> None:
    conn.execute("""INSERT INTO idempotency_keys (principal, key, route, result_kind, result_ref)
                    VALUES (%s, %s, %s, %s, %s)""", (principal.name, key, route, kind, ref))


def mark_replayed(request: Request) -> None:
    """A replay: the view returns the first result; the audit record says so."""
    request.state.idempotent_replay = True
