"""Accounts: log in, log out, who am I, change password."""
from __future__ import annotations

import threading
import time
from collections import deque

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.deps import SESSION_COOKIE, Conn, CurrentPrincipal, client_ip, request_token
from api.permissions import Permission, allowed
from config.vocabulary import ROLE_LABELS, Role
from store import identity
from store.audit import record

router = APIRouter(prefix="/api/auth", tags=["auth 账户"])

# Failed logins per client address. An account locks after identity.FREE_ATTEMPTS failures
# in a row; guessing one password across many accounts (password spraying) never locks any
# of them, so the address is slowed as well: past ADDRESS_FAILURES failures within
# ADDRESS_WINDOW_S it gets 429 without a password check (which also spares the CPU the
# argon2 work). Kept per API process, in memory.
ADDRESS_FAILURES = 20
ADDRESS_WINDOW_S = 60.0


class AddressThrottle:
    def __init__(self, limit: int = ADDRESS_FAILURES, window_s: float = ADDRESS_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        q = self._failures.get(address)
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def wait(self, address: str | None) -> float:
        """Seconds this address must wait before its next attempt (0: go ahead)."""
        if not address:
            return 0.0
        now = time.monotonic()
        with self._lock:
            q = self._recent(address, now)
            return q[0] + self.window_s - now if q and len(q) >= self.limit else 0.0

    def failed(self, address: str | None) -> None:
        if not address:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 50_000:          # bounded: forget addresses that went quiet
                for key in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
                    del self._failures[key]
            q = self._recent(address, now)
            if q is None:
                q = self._failures[address] = deque()
            q.append(now)


_throttle_lock = threading.Lock()


def address_throttle(request: Request) -> AddressThrottle:
    state = request.app.state
    with _throttle_lock:
        throttle = getattr(state, "login_throttle", None)
        if throttle is None:
            throttle = state.login_throttle = AddressThrottle()
    return throttle


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    token: bool = Field(False, description="also return the session token in the body, for a client that keeps "
                                           "no cookies (scripts; machine clients should use API tokens). The web "
                                           "UI never asks: its session lives in an HttpOnly cookie only.")


class LoginResponse(BaseModel):
    token: str | None = Field(None, description="only when the login asked for it (token: true)")
    username: str
    role: str
    role_label: str
    node_code: str
    must_change_password: bool


class Me(BaseModel):
    kind: str
    username: str
    display_name: str | None
    role: str
    role_label: str
    node_code: str
    node_path: list[str]
    department_code: str | None
    must_change_password: bool
    permissions: list[str] = []      # what the role may do (api/permissions.py): the UI shows only those controls


class PasswordChange(BaseModel):
    old_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


def role_label(role: str) -> str:
    try:
        return ROLE_LABELS[Role(role)]
    except ValueError:
        return role


@router.post("/login", response_model=LoginResponse)
def login(body: LoginRequest, request: Request, response: Response, conn: Conn) -> LoginResponse:
    request.state.audited = True
    settings = request.app.state.settings
    throttle, address = address_throttle(request), client_ip(request)
    wait = throttle.wait(address)
    if wait > 0:
        record(conn, entry_for(request, "auth.login", "denied", target=body.username,
                               detail={"reason": "too many failed logins from this address"}, actor=body.username))
        conn.commit()
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many failed logins from this address: try again in {int(wait) + 1} s",
                            headers={"Retry-After": str(int(wait) + 1)})
    result = identity.authenticate(conn, body.username, body.password)
    if result.principal is None:
        throttle.failed(address)
        record(conn, entry_for(request, "auth.login", "denied", target=body.username,
                               detail={"reason": result.reason}, actor=body.username))
        # The failure counter and the audit record must survive the error response.
        conn.commit()
        if result.retry_after:
            wait = int(result.retry_after) + 1
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"too many failed logins: try again in {wait} s", headers={"Retry-After": str(wait)})
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    p = result.principal
    token = identity.create_session(conn, p.user_id, settings.session_hours, client_ip(request),
                                    request.headers.get("user-agent"))
    request.state.principal = p
    record(conn, entry_for(request, "auth.login", "ok", target=p.name))
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        max_age=settings.session_hours * 3600, secure=request.url.scheme == "https")
    return LoginResponse(token=token if body.token else None, username=p.name, role=p.role, role_label=role_label(p.role),
                         node_code=p.node_code, must_change_password=p.must_change_password)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, principal: CurrentPrincipal, conn: Conn) -> None:
    token = request_token(request)
    if principal.kind == "user" and token:
        identity.end_session(conn, token)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me", response_model=Me)
async def me(principal: CurrentPrincipal) -> Me:
    return Me(kind=principal.kind, username=principal.name, display_name=principal.display_name,
              role=principal.role, role_label=role_label(principal.role), node_code=principal.node_code,
              node_path=list(principal.node_path), department_code=principal.department_code,
              must_change_password=principal.must_change_password,
              permissions=[p.value for p in Permission if allowed(principal.role, p)])


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(body: PasswordChange, principal: CurrentPrincipal, conn: Conn) -> None:
    if principal.kind != "user":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "API tokens have no password")
    if identity.authenticate(conn, principal.name, body.old_password).principal is None:
        conn.commit()  # keep the failure count: this endpoint must not be a side door for guessing
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "old password is wrong")
    try:
        identity.set_password(conn, principal.name, body.new_password)
    except identity.IdentityError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    # Every session of this person ends: whoever had the old password is out.
    identity.end_all_sessions(conn, principal.user_id)
