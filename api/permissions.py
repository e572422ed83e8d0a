"""What each role may do (一级一权限).  Scope — which part of the grid tree — is a separate
check: every principal sees only the subtree of its own node."""
from __future__ import annotations

from enum import StrEnum

from config.vocabulary import Role


class Permission(StrEnum):
    GRID_READ = "grid.read"
    CAMERAS_READ = "cameras.read"
    DEVICES_READ = "devices.read"
    EVENTS_READ = "events.read"
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"
    TOKENS_MANAGE = "tokens.manage"
    AUDIT_READ = "audit.read"
    CAMERAS_FLAG = "cameras.flag"    # 标记事件: a supervisor's flag raises a video-sourced event
    LIVE_VIEW = "live.view"          # 实时视频: WebRTC live view and its snapshot fallback
    CAMERAS_PTZ = "cameras.ptz"      # 云台控制: turn, zoom, presets of ONVIF PTZ cameras
    RECORDINGS_PLAY = "recordings.play"      # 调阅录像: the timeline and playback (audited: faces, plates)
    RECORDINGS_EXPORT = "recordings.export"  # 导出录像: a range to one MP4 with its SHA-256 (a reason required)
    # alerts: alarms, cases, their evidence, deliveries, CAP warnings, assessment
    ALARMS_READ = "alarms.read"
    ALARMS_HANDLE = "alarms.handle"          # acknowledge (确认) and clear (清除)
    CASES_READ = "cases.read"
    CASES_CREATE = "cases.create"            # intake: hotline, grid workers, video supervisors
    CASES_ACT = "cases.act"                  # lifecycle actions; flows.py decides which, per state and role
    CASE_EVIDENCE = "cases.evidence"         # download evidence files (audited)
    CASES_REPORTER = "cases.reporter"        # reveal a reporter's name and phone, whole (audited)
    OUTBOX_READ = "outbox.read"
    OUTBOX_REPLAY = "outbox.replay"
    CAP_IMPORT = "cap.import"                # emergency warnings (应急预警)
    STATS_READ = "stats.read"                # 考核评价
    # field devices
    DEVICES_MANAGE = "devices.manage"        # add, update, decommission devices, issue their credentials
    CAMERAS_MANAGE = "cameras.manage"        # 摄像机管理: add, edit, retire, maintenance, test connection
    DEVICE_COMMAND = "device.command"        # drone mission / return home, speaker volume, door replay …
    DOOR_UNLOCK = "door.unlock"              # 远程开门 (signed, audited)
    BROADCAST_SEND = "broadcast.send"        # 广播：通告 and 应急预警
    BROADCAST_READ = "broadcast.read"        # broadcast history and reports (回执)
    # administration applied live (api/admin): checked by the site file's checks, audited
    GRID_MANAGE = "grid.manage"              # 网格管理: add, rename, move, retire nodes, boundaries
    DEPARTMENTS_MANAGE = "departments.manage"  # 部门管理
    ALERTING_READ = "alerting.read"          # 告警规则 and 办结时限 as configured
    ALERTING_MANAGE = "alerting.manage"      # edit them (the county's administrators: they apply county-wide)
    # GB/T 28181 access (国标接入)
    GB28181_READ = "gb28181.read"            # devices: registration, address, keepalive, unknown devices
    GB28181_MANAGE = "gb28181.manage"        # admit a device (its SIP password, 一机一帐号)


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
    Permission.CAMERAS_FLAG: {Role.video_supervisor, Role.dispatcher, Role.centre_lead, Role.admin},
    # Steering a camera changes what every viewer of it sees (and what it records): the
    # people who work the wall — the video supervisor at it, the control room's dispatcher.
    Permission.CAMERAS_PTZ: {Role.video_supervisor, Role.dispatcher},
    # Recorded footage shows faces and plates (personal information): the people who watch
    # cameras for a living may play it; exporting it out of the hub — for the police, a
    # court — is the control room's and its lead's, each time with a reason.
    Permission.RECORDINGS_PLAY: {Role.video_supervisor, Role.dispatcher, Role.centre_lead},
    Permission.RECORDINGS_EXPORT: {Role.dispatcher, Role.centre_lead},
    Permission.ALARMS_READ: _ALL_STAFF - {Role.department_handler},
    Permission.ALARMS_HANDLE: {Role.video_supervisor, Role.dispatcher, Role.centre_lead, Role.grid_head},
    # Administrators manage accounts and devices; they do not handle cases (and see none).
    Permission.CASES_READ: _ALL_STAFF - {Role.admin},
    Permission.CASES_CREATE: {Role.hotline, Role.video_supervisor, Role.grid_worker, Role.grid_head, Role.dispatcher,
                              Role.centre_lead},
    Permission.CASES_ACT: _ALL_STAFF - {Role.admin},
    Permission.CASE_EVIDENCE: _ALL_STAFF - {Role.admin},
    # Personal information (§7.2): only those who call a reporter back (结果反馈) see it whole.
    Permission.CASES_REPORTER: {Role.hotline, Role.dispatcher, Role.centre_lead},
    Permission.OUTBOX_READ: {Role.admin, Role.centre_lead, Role.dispatcher},
    Permission.OUTBOX_REPLAY: {Role.admin, Role.centre_lead},
    Permission.CAP_IMPORT: {Role.dispatcher, Role.centre_lead},
    Permission.STATS_READ: {Role.centre_lead, Role.dispatcher},
    Permission.DEVICES_MANAGE: {Role.admin},
    Permission.CAMERAS_MANAGE: {Role.admin},
    Permission.DEVICE_COMMAND: {Role.dispatcher, Role.centre_lead, Role.admin},
    # Opening a guarded door from afar: the control room's dispatcher, and the administrator.
    Permission.DOOR_UNLOCK: {Role.dispatcher, Role.admin},
    Permission.BROADCAST_SEND: {Role.dispatcher, Role.centre_lead, Role.admin},
    Permission.BROADCAST_READ: _ALL_STAFF - {Role.department_handler},
    Permission.GRID_MANAGE: {Role.admin},
    Permission.DEPARTMENTS_MANAGE: {Role.admin},
    Permission.ALERTING_READ: {Role.admin, Role.centre_lead},
    Permission.ALERTING_MANAGE: {Role.admin},
    # Device addresses and registration are operations data: the administrator and the control room.
    Permission.GB28181_READ: {Role.admin, Role.centre_lead, Role.dispatcher},
    Permission.GB28181_MANAGE: {Role.admin},
}


def allowed(role: str, permission: Permission) -> bool:
    try:
        return Role(role) in GRANTS[permission]
    except ValueError:
        return False
