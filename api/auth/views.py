"""Accounts: log in, log out, who am I, change password."""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.auth.throttle import address_throttle, login_bursts
from api.deps import SESSION_COOKIE, Conn, CurrentPrincipal, client_ip, request_token
from api.permissions import Permission, allowed
from config.vocabulary import ROLE_LABELS, Role
from store import identity, logins, security
from store.audit import record

router = APIRouter(prefix="/api/auth", tags=["auth 账户"])

WRONG = "用户名或密码错误 (wrong username or password)"


def too_many(wait_s: float, whose: str = "") -> HTTPException:
    wait = int(wait_s) + 1
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                         f"{whose}登录失败次数过多，请 {wait} 秒后再试 (too many failed logins: try again in {wait} s)",
                         headers={"Retry-After": str(wait)})


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)
    token: bool = Field(False, description="also return the session token in the body, for a client that keeps "
                                           "no cookies (scripts; machine clients should use API tokens). The web "
                                           "UI never asks: its session lives in an HttpOnly cookie only.")


class FailedAttempts(BaseModel):
    """Failed logins on this account since its last login (shown to the owner at login)."""
    count: int
    last_at: datetime | None
    last_address: str | None


class LoginResponse(BaseModel):
    token: str | None = Field(None, description="only when the login asked for it (token: true)")
    username: str
    role: str
    role_label: str
    node_code: str
    must_change_password: bool
    failed_attempts: FailedAttempts | None = Field(None, description="failed logins since the last one, if any")


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
    """Log in. Unknown names, disabled accounts and wrong passwords get one answer in one
    time; a name guessed at too often is throttled from clients it does not know, never at
    its owner's own browser (store/logins.py); every refusal is audited where the account
    lives, and a burst of them raises a security event."""
    request.state.audited = True
    settings = request.app.state.settings
    throttle, address = address_throttle(request), client_ip(request)
    wait = throttle.wait(address)
    if wait > 0:
        record(conn, entry_for(request, "auth.login", "denied", target=body.username, actor=body.username,
                               detail={"reason": "too many failed logins from this address"}))
        conn.commit()
        raise too_many(wait, "来自此地址的")
    device = request.cookies.get(logins.DEVICE_COOKIE)
    gate = logins.gate(conn, body.username, device)
    if gate.wait_s > 0:
        record(conn, entry_for(request, "auth.login", "denied", target=body.username, actor=body.username,
                               node_code=_node_of(conn, gate.username),
                               detail={"reason": f"throttled after {gate.failures} failed logins",
                                       "known_browser": gate.known_browser}))
        conn.commit()
        raise too_many(gate.wait_s)
    result = identity.authenticate(conn, gate.username, body.password)
    if result.principal is None:
        failures = logins.failed(conn, gate, address)
        record(conn, entry_for(request, "auth.login", "denied", target=body.username, actor=body.username,
                               node_code=result.node_code,
                               detail={"reason": f"{result.reason} ({failures} in a row)",
                                       "known_browser": gate.known_browser}))
        _bursts(request, conn, gate.username, result.node_code, address, throttle.failed(address))
        conn.commit()        # the failure and its record survive the error response
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, WRONG)
    p = result.principal
    since, device = logins.succeeded(conn, gate, p.user_id, device)
    token = identity.create_session(conn, p.user_id, settings.session_hours, address,
                                    request.headers.get("user-agent"))
    request.state.principal = p
    record(conn, entry_for(request, "auth.login", "ok", target=p.name,
                           detail={"failed_since_last_login": since.count} if since.count else None))
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        max_age=settings.session_hours * 3600, secure=secure)
    # Says "this browser has logged in here before": it opens nothing by itself, it only
    # keeps its owner out of the throttle that guessers elsewhere run into.
    response.set_cookie(logins.DEVICE_COOKIE, device, httponly=True, samesite="strict", path="/api/auth",
                        max_age=logins.DEVICE_COOKIE_DAYS * 86400, secure=secure)
    return LoginResponse(token=token if body.token else None, username=p.name, role=p.role, role_label=role_label(p.role),
                         node_code=p.node_code, must_change_password=p.must_change_password,
                         failed_attempts=FailedAttempts(count=since.count, last_at=since.last_at,
                                                        last_address=since.last_address) if since.count else None)


def _node_of(conn, username: str) -> str | None:
    row = conn.execute("SELECT node_code FROM users WHERE username = %s", (username,)).fetchone()
    return row["node_code"] if row else None


def _bursts(request: Request, conn, username: str, node_code: str | None, address: str | None,
            address_blocked: bool) -> None:
    """A burst of failures on one name, or an address that just got blocked: a security event."""
    n = login_bursts(request).hit(f"name:{username}")
    if n:
        security.raise_event(conn, security.LOGIN_BURST, subject=username, node_code=node_code,
                             payload={"username": username, "failures": n, "window_s": security.BURST_WINDOW_S,
                                      "last_address": address})
    if address_blocked:
        security.raise_event(conn, security.ADDRESS_BLOCKED, subject=address or "", node_code=None,
                             payload={"address": address, "failures": address_throttle(request).limit,
                                      "window_s": address_throttle(request).window_s})


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
def change_password(body: PasswordChange, request: Request, principal: CurrentPrincipal, conn: Conn) -> None:
    if principal.kind != "user":
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "API 令牌没有密码 (API tokens have no password)")
    # Throttled like the login: a stolen session must not make this a side door for guessing.
    gate = logins.gate(conn, principal.name, request.cookies.get(logins.DEVICE_COOKIE))
    if gate.wait_s > 0:
        raise too_many(gate.wait_s)
    if identity.authenticate(conn, principal.name, body.old_password).principal is None:
        logins.failed(conn, gate, client_ip(request))
        conn.commit()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "原密码错误 (old password is wrong)")
    try:
        identity.set_password(conn, principal.name, body.new_password)
    except identity.IdentityError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    # Every session of this person ends: whoever had the old password is out.
    identity.end_all_sessions(conn, principal.user_id)
