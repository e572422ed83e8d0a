"""Login throttling that cannot be turned against the owner (issue 18).

An account used to lock after five wrong passwords — for everyone, the owner with the right
password included — and a locked name answered at once while an unknown one took an argon2
verification: anyone could keep a dispatcher out and learn which names exist. Now:

- Failures are counted by the *name typed*, known or not, and by the client class they came
  from: a browser that has logged in to that account before (its ``xlhub_device`` cookie) is
  its own class; every other client shares one. Past ``FREE_ATTEMPTS`` failures in a class
  within ``WINDOW``, the class waits 1 s, 2 s, 4 s … at most ``MAX_WAIT`` after its last
  failure. Guessing from elsewhere slows the guesser; the owner at their own browser logs
  in as usual (with ``KNOWN_FREE_ATTEMPTS`` for their own typos).
- A throttled attempt is refused before any password check, for a known name exactly as for
  an unknown one; an attempt that is checked always costs one argon2 verification (the
  unknown name's against a dummy hash, store/identity.py). Same answers, same timing.
- At the next login the owner is told how many attempts failed since their last one, when
  and from where (``FailedSince``).

The API also slows a single *address* that fails across many names (password spraying):
api/auth/throttle.py, in memory.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from store.identity import token_digest

DEVICE_COOKIE = "xlhub_device"
DEVICE_COOKIE_DAYS = 365
FREE_ATTEMPTS = 5             # from clients the account does not know
KNOWN_FREE_ATTEMPTS = 10      # from one of the account's own browsers
WINDOW = timedelta(hours=24)  # failures older than this no longer count
MAX_WAIT = timedelta(minutes=15)
KEEP_FAILURES = timedelta(days=30)
FORGET_DEVICES = timedelta(days=180)
PRUNE_EVERY_S = 3600.0


def normalise(username: str) -> str:
    return username.strip().lower()


@dataclass(frozen=True)
class Gate:
    """Whether a login attempt for a name, from a client, may be checked now."""
    username: str
    device_hash: bytes | None      # the client's known-browser cookie, when it is one of this account's
    failures: int                  # recent failures of this client class
    wait_s: float                  # > 0: refuse without checking the password

    @property
    def known_browser(self) -> bool:
        return self.device_hash is not None


def gate(conn: psycopg.Connection, username: str, device_token: str | None) -> Gate:
    name = normalise(username)
    device_hash = None
    if device_token:
        digest = token_digest(device_token)
        if conn.execute("""SELECT 1 FROM known_devices k JOIN users u ON u.id = k.user_id
                           WHERE k.token_hash = %s AND u.username = %s""", (digest, name)).fetchone():
            device_hash = digest
    row = conn.execute(
        """SELECT count(*) AS n, max(at) AS last, now() AS now FROM login_failures
           WHERE username = %s AND device_hash IS NOT DISTINCT FROM %s AND at > now() - %s""",
        (name, device_hash, WINDOW)).fetchone()
    free = KNOWN_FREE_ATTEMPTS if device_hash else FREE_ATTEMPTS
    wait = 0.0
    if row["n"] >= free:
        pause = min(timedelta(seconds=2 ** min(row["n"] - free, 20)), MAX_WAIT)
        wait = max(0.0, (row["last"] + pause - row["now"]).total_seconds())
    return Gate(name, device_hash, row["n"], wait)


def failed(conn: psycopg.Connection, g: Gate, source_ip: str | None) -> int:
    """Record a failed attempt; the class's failures now (this one included)."""
    conn.execute("INSERT INTO login_failures (username, device_hash, source_ip) VALUES (%s, %s, %s)",
                 (g.username, g.device_hash, source_ip))
    _prune_now_and_then(conn)
    return g.failures + 1


@dataclass(frozen=True)
class FailedSince:
    """What the owner is shown at login: failed attempts on their name since their last login."""
    count: int
    last_at: datetime | None
    last_address: str | None


def succeeded(conn: psycopg.Connection, g: Gate, user_id: int, device_token: str | None) -> tuple[FailedSince, str]:
    """After a good password: what failed since the last login, and the browser's cookie
    value (the one it sent, now known for this user, or a new one)."""
    row = conn.execute(
        """SELECT count(*) AS n, max(f.at) AS last_at,
                  (array_agg(f.source_ip ORDER BY f.at DESC))[1] AS last_address
           FROM login_failures f JOIN users u ON u.id = %s
           WHERE f.username = %s AND f.at > coalesce(u.last_login_at, '-infinity')""",
        (user_id, g.username)).fetchone()
    since = FailedSince(row["n"], row["last_at"], row["last_address"])
    # This client class starts again; the others (a guesser elsewhere) stay throttled.
    conn.execute("DELETE FROM login_failures WHERE username = %s AND device_hash IS NOT DISTINCT FROM %s",
                 (g.username, g.device_hash))
    conn.execute("UPDATE users SET last_login_at = now() WHERE id = %s", (user_id,))
    token = device_token if device_token and 40 <= len(device_token) <= 100 else secrets.token_urlsafe(32)
    conn.execute(
        """INSERT INTO known_devices (token_hash, user_id) VALUES (%s, %s)
           ON CONFLICT (token_hash, user_id) DO UPDATE SET last_seen_at = now()""",
        (token_digest(token), user_id))
    return since, token


def forget_failures(conn: psycopg.Connection, username: str) -> None:
    """An administrator reset the password: the account starts again for every client."""
    conn.execute("DELETE FROM login_failures WHERE username = %s", (normalise(username),))


_next_prune = 0.0
_prune_lock = threading.Lock()


def _prune_now_and_then(conn: psycopg.Connection) -> None:
    global _next_prune
    with _prune_lock:
        if time.monotonic() < _next_prune:
            return
        _next_prune = time.monotonic() + PRUNE_EVERY_S
    conn.execute("DELETE FROM login_failures WHERE at < now() - %s", (KEEP_FAILURES,))
    conn.execute("DELETE FROM known_devices WHERE last_seen_at < now() - %s", (FORGET_DEVICES,))
