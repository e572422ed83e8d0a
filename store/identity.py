"""Identity: users (一人一密码), login sessions and API tokens for machine clients.

Passwords are argon2id hashes; session and API tokens are random and stored only as
SHA-256, so a database dump opens no door.  Every account is scoped to one node of the
grid tree (一级一权限): what it may see is that node's subtree.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# A hash of a random password: verifying against it when the user does not exist keeps
# the answer time the same, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD_LENGTH = 10


class IdentityError(ValueError):
    """A request about identity that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person (user) or a machine client (token)."""

    kind: str            # "user" | "token"
    name: str            # username or token name
    role: str
    node_code: str
    node_path: tuple[str, ...]   # codes root → node: the subtree key
    user_id: int | None = None
    department_code: str | None = None
    display_name: str | None = None
    must_change_password: bool = False


def hash_password(password: str) -> str:
    check_password_policy(password)
    return _hasher.hash(password)


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise IdentityError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if password.isdigit() or password.isalpha():
        raise IdentityError("password must mix letters with digits or symbols")


def generate_password() -> str:
    # Random letters, then digits: always passes the policy, still easy to read out.
    return f"{secrets.token_urlsafe(9)}-{secrets.randbelow(9000) + 1000}"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _principal(row: dict, kind: str) -> Principal:
    return Principal(
        kind=kind, name=row["name"], role=row["role"], node_code=row["node_code"],
        node_path=tuple(row["path"]), user_id=row.get("user_id"),
        department_code=row.get("department_code"), display_name=row.get("display_name"),
        must_change_password=row.get("must_change_password", False),
    )


def create_user(conn: psycopg.Connection, *, username: str, display_name: str, role: str, node_code: str,
                password: str, department_code: str | None = None, origin: str = "cli",
                must_change_password: bool = False) -> int:
    if conn.execute("SELECT 1 FROM grid_nodes WHERE code = %s AND retired_at IS NULL", (node_code,)).fetchone() is None:
        raise IdentityError(f"unknown grid node {node_code!r}")
    try:
        row = conn.execute(
            """INSERT INTO users (username, display_name, role, node_code, department_code, password_hash,
                                  origin, must_change_password)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (username, display_name, role, node_code, department_code, hash_password(password), origin,
             must_change_password),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise IdentityError(f"user {username!r} already exists") from None
    return row["id"]


def set_password(conn: psycopg.Connection, username: str, password: str, *, must_change: bool = False) -> None:
    cur = conn.execute(
        """UPDATE users SET password_hash = %s, must_change_password = %s, password_changed_at = now(),
                  updated_at = now()
           WHERE username = %s""",
        (hash_password(password), must_change, username),
    )
    if cur.rowcount == 0:
        raise IdentityError(f"unknown user {username!r}")


@dataclass(frozen=True)
class LoginResult:
    principal: Principal | None
    reason: str | None = None          # why it failed (for the audit log, not the caller)
    node_code: str | None = None       # the account's node, when the name exists (whose administrators hear of it)


def authenticate(conn: psycopg.Connection, username: str, password: str) -> LoginResult:
    """Check a password: exactly one argon2 verification whatever the name, so the time of
    the answer does not tell which names exist. Throttling is store/logins.py's."""
    row = conn.execute(
        """SELECT u.id AS user_id, u.username AS name, u.role, u.node_code, u.department_code, u.display_name,
                  u.password_hash, u.active, u.must_change_password, g.path
           FROM users u JOIN grid_nodes g ON g.code = u.node_code WHERE u.username = %s""",
        (username,),
    ).fetchone()
    if row is None:
        _verify(_DUMMY_HASH, password)
        return LoginResult(None, "unknown user")
    if not row["active"]:
        _verify(_DUMMY_HASH, password)
        return LoginResult(None, "account disabled", row["node_code"])
    if not _verify(row["password_hash"], password):
        return LoginResult(None, "wrong password", row["node_code"])
    if _hasher.check_needs_rehash(row["password_hash"]):
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (_hasher.hash(password), row["user_id"]))
    return LoginResult(_principal(row, "user"), node_code=row["node_code"])


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def create_session(conn: psycopg.Connection, user_id: int, hours: int, client_ip: str | None,
                   user_agent: str | None) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute(
        """INSERT INTO sessions (token_hash, user_id, expires_at, client_ip, user_agent)
           VALUES (%s, %s, now() + make_interval(hours => %s), %s, %s)""",
        (token_digest(token), user_id, hours, client_ip, (user_agent or "")[:200]),
    )
    return token


def end_session(conn: psycopg.Connection, token: str) -> None:
    conn.execute("DELETE FROM sessions WHERE token_hash = %s", (token_digest(token),))


def end_all_sessions(conn: psycopg.Connection, user_id: int) -> int:
    """End every session of the account; how many there were."""
    return conn.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,)).rowcount


SESSION_LOOKUP = """
SELECT u.id AS user_id, u.username AS name, u.role, u.node_code, u.department_code, u.display_name,
       u.must_change_password, g.path, extract(epoch FROM s.expires_at - now())::float8 AS valid_s
FROM sessions s JOIN users u ON u.id = s.user_id JOIN grid_nodes g ON g.code = u.node_code
WHERE s.token_hash = %s AND s.expires_at > now() AND u.active
"""

TOKEN_LOOKUP = """
UPDATE api_tokens t SET last_used_at = now()
FROM grid_nodes g
WHERE t.token_hash = %s AND g.code = t.node_code AND t.revoked_at IS NULL
  AND (t.expires_at IS NULL OR t.expires_at > now())
RETURNING t.name, t.role, t.node_code, g.path, extract(epoch FROM t.expires_at - now())::float8 AS valid_s
"""


def principal_for_token(conn: psycopg.Connection, token: str) -> Principal | None:
    """Resolve a bearer secret: a login session first, else an API token."""
    found = _lookup(conn, token_digest(token))
    return found[0] if found else None


def _lookup(conn: psycopg.Connection, digest: str) -> tuple[Principal, float | None] | None:
    """(principal, seconds it stays valid: None for a token without expiry) or None."""
    row = conn.execute(SESSION_LOOKUP, (digest,)).fetchone()
    if row is not None:
        return _principal(row, "user"), row["valid_s"]
    row = conn.execute(TOKEN_LOOKUP, (digest,)).fetchone()
    if row is not None:
        return _principal(row, "token"), row["valid_s"]
    return None


# ---------------------------------------------------------------------------- the principal cache

# Changes to sessions, users, API tokens or grid paths NOTIFY this channel in their own
# transaction (migration 0012): a process caching principals drops them all.
IDENTITY_CHANNEL = "xlhub_identity"
# The longest a looked-up principal is reused without looking again (an API token's
# last_used_at is then at most this stale).
CACHE_S = 300.0


class PrincipalCache:
    """Token (by its digest) → principal, for a process that authenticates every request.

    An entry lives until its session or token expires, at most CACHE_S, and not one moment
    longer than the notifications say nothing changed: ``clear()`` (called for every
    IDENTITY_CHANNEL notification) drops everything, so a logout, a disabled user, a
    password change or a revoked token takes effect at once in every process. The cache
    is off (every call looks up) until ``enable()`` — while the notifications are not heard
    it must be. A lookup started before a ``clear()`` does not store its (maybe stale)
    answer."""

    def __init__(self, ttl_s: float = CACHE_S) -> None:
        self.ttl_s = ttl_s
        self.enabled = False
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def enable(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self.enabled = True

    def disable(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self.enabled = False

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` when the cache holds it (no database)."""
        digest = token_digest(token)
        with self._lock:
            entry = self._entries.get(digest) if self.enabled else None
            if entry is not None and entry[1] > time.monotonic():
                self.hits += 1
                return entry[0]
            if entry is not None:
                del self._entries[digest]
        return None

    def resolve(self, conn: psycopg.Connection, token: str) -> Principal | None:
        """The principal of ``token``: cached, else looked up (and kept)."""
        principal = self.cached(token)
        if principal is not None:
            return principal
        digest = token_digest(token)
        with self._lock:
            generation, enabled = self.generation, self.enabled
            self.misses += 1
        found = _lookup(conn, digest)
        if found is None:
            return None
        principal, valid_s = found
        if enabled:
            lifetime = self.ttl_s if valid_s is None else min(self.ttl_s, valid_s)
            with self._lock:
                if self.generation == generation and len(self._entries) < 100_000:
                    self._entries[digest] = (principal, time.monotonic() + lifetime)
        return principal


def create_api_token(conn: psycopg.Connection, *, name: str, role: str, node_code: str, created_by: str,
                     days: int | None = None) -> str:
    """A token for a machine client (e.g. the case system). Returned once; stored hashed."""
    token = "xlt_" + secrets.token_urlsafe(32)
    try:
        conn.execute(
            """INSERT INTO api_tokens (name, token_hash, role, node_code, created_by, expires_at)
               VALUES (%s, %s, %s, %s, %s, CASE WHEN %s::int IS NULL THEN NULL ELSE now() + make_interval(days => %s::int) END)""",
            (name, token_digest(token), role, node_code, created_by, days, days),
        )
    except psycopg.errors.UniqueViolation:
        raise IdentityError(f"API token {name!r} already exists") from None
    except psycopg.errors.ForeignKeyViolation:
        raise IdentityError(f"unknown grid node {node_code!r}") from None
    return token


def revoke_api_token(conn: psycopg.Connection, name: str) -> None:
    if conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
                    (name,)).rowcount == 0:
        raise IdentityError(f"no active API token named {name!r}")


# ---------------------------------------------------------------------------- administering accounts

# What an administrator may change of an account (not its name, not its password: see
# reset_password), and the changes after which its open sessions must not go on: what
# the person may see or do is decided by them, so a session opened before (a live view,
# a feed) would outlive the decision.
USER_FIELDS = ("display_name", "role", "node_code", "department_code", "active")
SCOPE_FIELDS = frozenset({"role", "node_code", "department_code"})


def user_for_update(conn: psycopg.Connection, username: str) -> dict | None:
    """An account with its node's path (to judge scope), locked until the transaction
    ends, so that two administrators' changes do not interleave."""
    return conn.execute(
        """SELECT u.id, u.username, u.display_name, u.role, u.node_code, u.department_code, u.active, u.origin,
                  u.must_change_password, u.created_at, g.path
           FROM users u JOIN grid_nodes g ON g.code = u.node_code WHERE u.username = %s FOR UPDATE OF u""",
        (username,),
    ).fetchone()


def update_user(conn: psycopg.Connection, username: str, **changes) -> tuple[dict, dict]:
    """Change an account: (before, after) of the fields that really changed (both empty
    when nothing did). Disabling it, or changing its role, node or department, ends all
    its sessions in the same transaction; enabling it brings none back."""
    from config.vocabulary import Role

    unknown = set(changes) - set(USER_FIELDS)
    if unknown:
        raise IdentityError(f"cannot change {', '.join(sorted(unknown))} of an account")
    row = user_for_update(conn, username)
    if row is None:
        raise IdentityError(f"unknown user {username!r}")
    after = {k: v for k, v in changes.items() if row[k] != v}
    if not after:
        return {}, {}
    if "role" in after:
        try:
            Role(after["role"])
        except ValueError:
            raise IdentityError(f"unknown role {after['role']!r}") from None
    for field in ("display_name", "role", "node_code", "active"):
        if field in after and after[field] is None:
            raise IdentityError(f"{field} cannot be empty")
    if "node_code" in after and conn.execute("SELECT 1 FROM grid_nodes WHERE code = %s AND retired_at IS NULL",
                                             (after["node_code"],)).fetchone() is None:
        raise IdentityError(f"unknown grid node {after['node_code']!r}")
    if after.get("department_code") is not None and conn.execute(
            "SELECT 1 FROM departments WHERE code = %s", (after["department_code"],)).fetchone() is None:
        raise IdentityError(f"unknown department {after['department_code']!r}")
    assignments = ", ".join(f"{field} = %({field})s" for field in after)      # names from USER_FIELDS only
    conn.execute(f"UPDATE users SET {assignments}, updated_at = now() WHERE id = %(id)s", {**after, "id": row["id"]})
    if after.get("active") is False or SCOPE_FIELDS & after.keys():
        end_all_sessions(conn, row["id"])
    return {k: row[k] for k in after}, after


def set_active(conn: psycopg.Connection, username: str, active: bool) -> bool:
    """Enable or disable (停用) an account; whether that changed anything. Disabling ends
    its sessions at once (and SESSION_LOOKUP refuses an inactive account's anyway)."""
    return bool(update_user(conn, username, active=active)[1])


def reset_password(conn: psycopg.Connection, username: str, password: str | None = None) -> str | None:
    """An administrator's reset: the given password, else a generated one (returned, to be
    shown once). The person must change it at the next login, and every session they have
    ends: whoever was using the account is out."""
    generated = None if password else generate_password()
    set_password(conn, username, password or generated, must_change=True)
    row = conn.execute("SELECT id FROM users WHERE username = %s", (username,)).fetchone()
    end_all_sessions(conn, row["id"])
    return generated
