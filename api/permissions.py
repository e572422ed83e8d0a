"""What each role may do (一级一权限).  Scope — which part of the grid tree — is a separate
check: every principal sees only the subtree of its own node."""
from __future__ import annotations

from enum import StrEnum

from config.site import Role


class Permission(StrEnum):
    GRID_READ = "grid.read"
    CAMERAS_READ = "cameras.read"
    DEVICES_READ = "devices.read"
    EVENTS_READ = "events.read"
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"
    TOKENS_MANAGE = "tokens.manage"
    AUDIT_READ = "audit.read"
    LIVE_VIEW = "live.view"          # 实时视频: WebRTC live view and its snapshot fallback


_ALL_STAFF = set(Role)
GRANTS: dict[Permission, set[Role]] = {
    Permission.GRID_READ: _ALL_STAFF,
    Permission.CAMERAS_READ: _ALL_STAFF,
    Permission.DEVICES_READ: _ALL_STAFF,
    Permission.EVENTS_READ: _ALL_STAFF,
    Permission.USERS_READ: {Role.admin, Role.centre_lead},
    Permission.USERS_MANAGE: {Role.admin},
    Permission.TOKENS_MANAGE: {Role.admin},
    Permission.AUDIT_READ: {Role.admin, Role.centre_lead},
    # Everyone who works a grid or a control room; a department handler sees the evidence
    # attached to the cases dispatched to it, not the cameras.
    Permission.LIVE_VIEW: _ALL_STAFF - {Role.department_handler},
}


def allowed(role: str, permission: Permission) -> bool:
    try:
        return Role(role) in GRANTS[permission]
    except ValueError:
        return False
