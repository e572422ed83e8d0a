"""Who is calling the Open311 facade, and for which jurisdiction: one place for the views
(api/open311/views.py) and the intake (api/open311/intake.py)."""
from __future__ import annotations

from fastapi import Request

from api.deps import bearer_token
from api.open311.config import Open311Settings
from api.open311.formats import Open311Error
from api.permissions import Permission, allowed
from config.vocabulary import CATEGORY_LABELS
from store.identity import Principal

SERVICE_CODES = tuple(c.value for c in CATEGORY_LABELS)


def settings_of(request: Request) -> Open311Settings:
    cfg = getattr(request.app.state, "open311_settings", None)
    if cfg is None:
        cfg = request.app.state.open311_settings = Open311Settings()
    return cfg


def principal_of(request: Request, conn, params: dict, *, required: bool) -> Principal | None:
    """The caller behind ``Authorization: Bearer`` or ``api_key`` (query, form or JSON body);
    None for a keyless caller where keyless is allowed. A key that is given must be valid."""
    token = bearer_token(request) or params.get("api_key")
    if not token:
        if required:
            raise Open311Error(401, "缺少 api_key (api_key or a bearer token is required)")
        return None
    principal = request.app.state.principals.resolve(conn, str(token))
    if principal is None:
        raise Open311Error(401, "api_key 无效或已吊销 (invalid or revoked api_key)")
    request.state.principal = principal
    return principal


def require(principal: Principal, permission: Permission) -> None:
    if not allowed(principal.role, permission):
        raise Open311Error(403, f"角色无此权限 (role {principal.role} lacks permission {permission.value})")


def root_code(conn) -> str | None:
    row = conn.execute("SELECT code FROM grid_nodes WHERE parent_code IS NULL AND retired_at IS NULL "
                       "ORDER BY code LIMIT 1").fetchone()
    return row["code"] if row else None


def check_jurisdiction(request: Request, conn, params: dict) -> None:
    """``jurisdiction_id`` is optional (one jurisdiction here); when given it must be this one."""
    given = params.get("jurisdiction_id")
    if given in (None, ""):
        return
    expected = settings_of(request).jurisdiction_id or root_code(conn)
    if str(given) != expected:
        raise Open311Error(400, f"jurisdiction_id 不属于本平台 (unknown jurisdiction_id: this endpoint serves "
                                f"jurisdiction {expected})")
