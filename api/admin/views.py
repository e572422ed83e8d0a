"""Administration: user accounts and API tokens within the caller's subtree, and the
audit log (read and verify)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from api.audit import entry_for
from api.deps import Conn, ensure_in_scope, require
from api.permissions import Permission
from config.vocabulary import Role
from store import audit, identity
from store.identity import Principal
from store.registry import node_path
from store.where import Where

router = APIRouter(prefix="/api", tags=["admin 管理"])


class User(BaseModel):
    username: str
    display_name: str
    role: str
    node_code: str
    department_code: str | None
    active: bool
    must_change_password: bool
    created_at: datetime


class NewUser(BaseModel):
    username: str = Field(pattern=r"^[a-z0-9_.-]{2,32}$")
    display_name: str = Field(min_length=1, max_length=64)
    role: Role
    node_code: str = Field(min_length=1, max_length=64)
    department_code: str | None = None
    password: str | None = Field(None, min_length=1, max_length=256,
                                 description="initial password; generated and returned once when omitted")


class CreatedUser(BaseModel):
    username: str
    initial_password: str | None = None


@router.get("/users", response_model=list[User])
def list_users(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.USERS_READ))]) -> list[User]:
    rows = conn.execute(
        """SELECT u.username, u.display_name, u.role, u.node_code, u.department_code, u.active,
                  u.must_change_password, u.created_at
           FROM users u JOIN grid_nodes g ON g.code = u.node_code
           WHERE g.path @> ARRAY[%s] ORDER BY g.path, u.username""", (principal.node_code,)).fetchall()
    return [User(**r) for r in rows]


@router.post("/users", response_model=CreatedUser, status_code=status.HTTP_201_CREATED)
def create_user(body: NewUser, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]) -> CreatedUser:
    # An administrator creates accounts only inside their own subtree.
    ensure_in_scope(principal, node_path(conn, body.node_code), f"grid node {body.node_code!r}")
    generated = None if body.password else identity.generate_password()
    try:
        identity.create_user(conn, username=body.username, display_name=body.display_name, role=body.role.value,
                             node_code=body.node_code, department_code=body.department_code,
                             password=body.password or generated, origin="api",
                             must_change_password=generated is not None)
    except identity.IdentityError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT if "exists" in str(exc) else status.HTTP_400_BAD_REQUEST,
                            str(exc)) from None
    request.state.audited = True
    audit.record(conn, entry_for(request, "user.create", "ok", target=body.username,
                                 detail={"role": body.role.value, "node": body.node_code}))
    return CreatedUser(username=body.username, initial_password=generated)


class NewToken(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9_.-]{2,64}$")
    role: Role
    node_code: str
    days: int | None = Field(None, ge=1, le=3650)


class CreatedToken(BaseModel):
    name: str
    token: str


@router.post("/tokens", response_model=CreatedToken, status_code=status.HTTP_201_CREATED)
def create_token(body: NewToken, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.TOKENS_MANAGE))]) -> CreatedToken:
    """An API token for a machine client (e.g. the case system); shown once, stored hashed."""
    ensure_in_scope(principal, node_path(conn, body.node_code), f"grid node {body.node_code!r}")
    try:
        token = identity.create_api_token(conn, name=body.name, role=body.role.value, node_code=body.node_code,
                                          created_by=principal.name, days=body.days)
    except identity.IdentityError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    request.state.audited = True
    audit.record(conn, entry_for(request, "token.create", "ok", target=body.name,
                                 detail={"role": body.role.value, "node": body.node_code}))
    return CreatedToken(name=body.name, token=token)


class AuditRecord(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    role: str | None
    node_code: str | None
    action: str
    target: str | None
    source_ip: str | None
    outcome: str
    detail: dict


@router.get("/audit", response_model=list[AuditRecord])
def list_audit(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.AUDIT_READ))],
               actor: str | None = None, action_prefix: str | None = None, since: datetime | None = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[AuditRecord]:
    """Audit records of the caller's subtree, newest first: what its people did, and what was
    tried against its accounts and devices (failed logins, refused credentials). Records of
    no node — a login with a name nobody has, a refused broker connection — are the
    county's: the root's administrators read them."""
    w = Where("(node_code IN (SELECT code FROM grid_nodes WHERE path @> ARRAY[%(node)s])"
              + (" OR node_code IS NULL)" if len(principal.node_path) == 1 else ")"), node=principal.node_code)
    w.add("actor = %(actor)s", actor=actor)
    w.add("starts_with(action, %(action)s)", action=action_prefix)
    w.add("at >= %(since)s", since=since)
    rows = conn.execute(f"""SELECT id, at, actor, actor_kind, role, node_code, action, target, source_ip, outcome, detail
                            FROM audit_log WHERE {w} ORDER BY id DESC LIMIT %(limit)s""",
                        {**w.params, "limit": limit}).fetchall()
    return [AuditRecord(**r) for r in rows]


class ChainStatus(BaseModel):
    ok: bool
    records: int
    broken_at: int | None
    reason: str | None


@router.get("/audit/verify", response_model=ChainStatus)
def verify_audit(conn: Conn, principal: Annotated[Principal, Depends(require(Permission.AUDIT_READ))]) -> ChainStatus:
    """Recompute the whole hash chain (the same check as `xlhub audit verify`)."""
    report = audit.verify(conn)
    return ChainStatus(ok=report.ok, records=report.records, broken_at=report.broken_at, reason=report.reason)
