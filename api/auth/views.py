"""Accounts: log in, log out, who am I, change password."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.deps import SESSION_COOKIE, Conn, CurrentPrincipal, client_ip
from config.site import ROLE_LABELS, Role
from store import identity
from store.audit import record

router = APIRouter(prefix="/api/auth", tags=["auth 账户"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class LoginResponse(BaseModel):
    token: str
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


class PasswordChange(BaseModel):
    old_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


def role_label(role: str) -> str:
    try:
        return ROLE_LABELS[Role(role)]
    except ValueError:
        return role


def _bearer_or_cookie(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(SESSION_COOKIE)


@router.post("/login", response_model=LoginResponse)
def login(body: LoginRequest, request: Request, response: Response, conn: Conn) -> LoginResponse:
    request.state.audited = True
    settings = request.app.state.settings
    result = identity.authenticate(conn, body.username, body.password)
    if result.principal is None:
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
    return LoginResponse(token=token, username=p.name, role=p.role, role_label=role_label(p.role),
                         node_code=p.node_code, must_change_password=p.must_change_password)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, principal: CurrentPrincipal, conn: Conn) -> None:
    token = _bearer_or_cookie(request)
    if principal.kind == "user" and token:
        identity.end_session(conn, token)
    response.delete_cookie(SESSION_COOKIE)


@router.get("/me", response_model=Me)
def me(principal: CurrentPrincipal) -> Me:
    return Me(kind=principal.kind, username=principal.name, display_name=principal.display_name,
              role=principal.role, role_label=role_label(principal.role), node_code=principal.node_code,
              node_path=list(principal.node_path), department_code=principal.department_code,
              must_change_password=principal.must_change_password)


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
