"""Administration: user accounts and API tokens within the caller's subtree, and the
audit log (read and verify)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.admin.checks import checked
from api.audit import entry_for
from api.deps import Conn, ensure_in_scope, in_scope, require
from api.permissions import Permission
from config.vocabulary import Role
from store import audit, identity, logins
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
    if conn.execute("SELECT 1 FROM users WHERE username = %s", (body.username,)).fetchone():
        raise HTTPException(status.HTTP_409_CONFLICT, f"用户名 {body.username} 已存在（username）")
    _check_user(request, conn, body.username, _user_entry(body.username, body.display_name, body.role.value,
                                                          body.node_code, body.department_code))
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
                                 detail={"role": body.role.value, "node": body.node_code,
                                         "after": {"display_name": body.display_name, "role": body.role.value,
                                                   "node_code": body.node_code,
                                                   "department_code": body.department_code, "active": True}}))
    return CreatedUser(username=body.username, initial_password=generated)


class UserChange(BaseModel):
    """What an administrator changes of an account; a field left out stays as it is."""
    model_config = ConfigDict(extra="forbid")

    active: bool | None = Field(None, description="false: 停用 — every session of the account ends at once and "
                                                  "its logins fail; true: 启用 (ended sessions stay ended)")
    display_name: str | None = Field(None, min_length=1, max_length=64)
    role: Role | None = Field(None, description="ends the account's sessions (what it may do changed)")
    node_code: str | None = Field(None, min_length=1, max_length=64,
                                  description="a node inside the caller's subtree; ends the account's sessions")
    department_code: str | None = Field(None, min_length=1, max_length=64,
                                        description="null: no department; ends the account's sessions")

    @model_validator(mode="after")
    def _says_what_to_change(self) -> "UserChange":
        if not self.model_fields_set:
            raise ValueError("没有要修改的内容 (nothing to change)")
        nulls = sorted(f for f in self.model_fields_set - {"department_code"} if getattr(self, f) is None)
        if nulls:
            raise ValueError(f"不能为空 (cannot be null): {', '.join(nulls)}")
        return self


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, min_length=1, max_length=256,
                                 description="the new password; generated and returned once when omitted")


class ResetDone(BaseModel):
    username: str
    password: str | None = Field(None, description="the generated password, shown this once (null when the "
                                                   "request gave one)")
    must_change_password: bool


def _user_in_scope(conn, principal: Principal, username: str) -> dict:
    """The account, locked for the change; 404 alike for one that does not exist and one
    outside the caller's subtree (another township's accounts are not even confirmed)."""
    row = identity.user_for_update(conn, username)
    if row is None or not in_scope(principal, row["path"]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "用户不存在 (user not found)")
    return row


def _is_self(principal: Principal, row: dict) -> bool:
    return principal.kind == "user" and principal.user_id == row["id"]


def _identity_changed(request: Request, conn) -> None:
    """Commit an identity change (with its audit record) now, then forget this process's
    cached principals: from the moment the answer leaves, no request here is served an
    ended session (a lookup that overlapped is not kept: PrincipalCache). Other API
    processes drop theirs when the change's NOTIFY reaches them."""
    conn.commit()
    request.app.state.principals.clear()


def _identity_error(exc: identity.IdentityError) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"无法修改帐号 (cannot change the account): {exc}")


def _user_entry(username: str, display_name: str, role: str, node_code: str, department_code: str | None) -> dict:
    entry = {"username": username, "name": display_name, "role": role, "node": node_code}
    if department_code:
        entry["department"] = department_code
    return entry


def _check_user(request: Request, conn, username: str, entry: dict) -> None:
    """The account as it will be, checked by the site file's own checks (api/admin/checks.py):
    a department handler needs a department, others have none, the node and department exist."""
    def put(doc: dict) -> None:
        users = [u for u in doc.get("users") or [] if u.get("username") != username]
        doc["users"] = [*users, entry]
    checked(request, conn, put)


@router.patch("/users/{username}", response_model=User)
def update_user(username: str, body: UserChange, request: Request, conn: Conn,
                principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]) -> User:
    """Change an account of the caller's subtree: disable (停用) or enable (启用) it, or change
    its name, role, node or department. Disabling, and a change of role, node or department,
    ends all its sessions at once."""
    row = _user_in_scope(conn, principal, username)
    changes = body.model_dump(include=body.model_fields_set)
    if "role" in changes:
        changes["role"] = changes["role"].value
    wanted = {k: v for k, v in changes.items() if row[k] != v}
    if "node_code" in wanted and not in_scope(principal, node_path(conn, wanted["node_code"])):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "网格节点不存在 (grid node not found)")
    if _is_self(principal, row):
        if wanted.get("active") is False:
            raise HTTPException(status.HTTP_409_CONFLICT, "不能停用自己的帐号 (you cannot disable your own account)")
        if "role" in wanted:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                "不能更改自己的角色，请由另一位管理员操作 (you cannot change your own role)")
        if "node_code" in wanted:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                "不能更改自己的所属节点，请由另一位管理员操作 (you cannot move your own account)")
    if {"display_name", "role", "node_code", "department_code"} & wanted.keys():
        will = {**row, **wanted}
        _check_user(request, conn, username, _user_entry(username, will["display_name"], will["role"],
                                                         will["node_code"], will["department_code"]))
    try:
        before, after = identity.update_user(conn, username, **wanted)
    except identity.IdentityError as exc:
        raise _identity_error(exc) from None
    if after:
        action = "user.update"
        if "active" in after:
            action = "user.enable" if after["active"] else "user.disable"
        request.state.audited = True
        audit.record(conn, entry_for(request, action, "ok", target=username,
                                     detail={"before": before, "after": after}))
        _identity_changed(request, conn)
    user = {**row, **after}
    return User(**{k: user[k] for k in User.model_fields})


@router.post("/users/{username}/password", response_model=ResetDone)
def reset_password(username: str, request: Request, conn: Conn,
                   principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))],
                   body: PasswordReset | None = None) -> ResetDone:
    """An administrator's password reset (重置密码): the given password or a generated one
    (returned once); the person must change it at the next login, and every session of the
    account ends at once."""
    row = _user_in_scope(conn, principal, username)
    if _is_self(principal, row):
        # A reset needs no old password: a stolen session must not be able to keep the account.
        raise HTTPException(status.HTTP_409_CONFLICT, "不能重置自己的密码，请在“我的帐号”中修改 "
                                                      "(change your own password with POST /api/auth/password)")
    given = body.password if body else None
    try:
        generated = identity.reset_password(conn, username, given)
    except identity.IdentityError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"密码不符合要求 (password refused): {exc}") from None
    # The person starts again from every browser (a guesser's throttle would keep them out
    # of a new one); the guesser, with the old password useless, starts again too.
    logins.forget_failures(conn, username)
    request.state.audited = True
    audit.record(conn, entry_for(request, "user.password_reset", "ok", target=username,
                                 detail={"generated": generated is not None, "must_change_password": True}))
    _identity_changed(request, conn)
    return ResetDone(username=username, password=generated, must_change_password=True)


class SessionsEnded(BaseModel):
    username: str
    ended: int


@router.post("/users/{username}/sessions/end", response_model=SessionsEnded)
def end_sessions(username: str, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.USERS_MANAGE))]) -> SessionsEnded:
    """End every open session of an account (强制下线) at once: its browsers are logged out on
    their next request or feed message; the account stays enabled."""
    row = _user_in_scope(conn, principal, username)
    ended = identity.end_all_sessions(conn, row["id"])
    request.state.audited = True
    audit.record(conn, entry_for(request, "user.sessions_end", "ok", target=username, detail={"ended": ended}))
    _identity_changed(request, conn)
    return SessionsEnded(username=username, ended=ended)


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
