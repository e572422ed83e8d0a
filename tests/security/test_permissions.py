"""Permissions as a matrix (一级一权限): every route of the API × every role × the caller's
own subtree and another township's, driven against the real API.

ROUTES below is the one table of what each route is meant to allow: who (public, any
logged-in caller, a permission of api/permissions.py GRANTS, or its own rule) and how
scope applies (a resource in another township answers 404; a list never shows another
township's items). The route table of the app is the source of the rows: a route
without an entry here fails `test_every_route_has_a_declared_expectation`, so a new
endpoint cannot be forgotten; an entry whose permission differs from the `require(...)`
the route declares fails too. The same table says which routes must leave an audit record
(tests/security/test_audit_completeness.py).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from fastapi.routing import iter_route_contexts

from api.permissions import GRANTS, Permission
from config.vocabulary import Role
from tests.security.conftest import (
    OTHER_CAMERA,
    OTHER_DOOR,
    OTHER_GB_DEVICE,
    OTHER_GRID,
    OTHER_SPEAKER,
    OTHER_TOWNSHIP,
    OTHER_USER,
    OTHER_VILLAGE,
    OWN_CAMERA,
    OWN_DOOR,
    OWN_GB_DEVICE,
    OWN_GRID,
    OWN_SPEAKER,
    OWN_TOWNSHIP,
    OWN_VILLAGE,
    login,
    role_user,
)

P = Permission
_n = itertools.count()
NOT_THERE = "01ZZZZZZZZZZZZZZZZZZZZZZZZ"      # a well-formed id nobody has


def GB_CAMERA(device: str) -> str:      # noqa: N802 - read as a constant: the camera of the device's channel
    return "gb-" + device[:10] + "1310000001"


@dataclass(frozen=True)
class Rule:
    """What one route is meant to do.

    auth:   "public" | "user" (any logged-in caller) | "device" (HTTP Basic of a device) |
            a Permission (GRANTS decide) | a frozenset of roles (a rule of its own).
    scope:  "path"  — the resource named in the path (or body) of another township → 404;
            "list"  — the answer never contains another township's items (``hidden``);
            "role"  — no resource the test can place on both sides: only role is judged;
            "none"  — not scoped (vocabulary, the caller's own things).
    args:   path parameters: value, or (own, other), or a callable(side, ctx) → value.
    body/query/files: likewise (callables get (side, ctx)).
    audit:  "write" — every call leaves one audit record; "read" — a sensitive read, audited;
            None — not audited (a plain read).
    ok:     status codes an allowed caller may get besides 2xx (a missing worker: 504 …).
    inline: the permission is checked inside the view (no require() dependency to compare).
    """
    auth: object
    scope: str = "none"
    args: dict = field(default_factory=dict)
    body: object = None
    query: object = None
    files: object = None
    hidden: tuple = ()
    audit: str | None = None
    ok: frozenset = frozenset()
    inline: bool = False
    stream: bool = False


def both(own, other):
    return (own, other)


def uniq(prefix: str) -> Callable:
    return lambda side, ctx: f"{prefix}{next(_n)}"


GATEWAY = frozenset({502, 503, 504})
CASE = lambda side, ctx: ctx.resources.cases.get(side, NOT_THERE)
CASE_SCOPE = "path"       # downgraded to "role" at run time when no case could be made
FEED_ROLES = frozenset(r for r in Role if r in GRANTS[P.ALARMS_READ] | GRANTS[P.CASES_READ])

ROUTES: dict[tuple[str, str], Rule] = {
    # ---------------------------------------------------------------- health, auth, web UI
    ("GET", "/healthz"): Rule("public"),
    ("GET", "/readyz"): Rule("public", ok=frozenset({503})),
    ("GET", "/metrics"): Rule("public"),
    ("GET", "/openapi.json"): Rule("public"),
    ("GET", "/docs"): Rule("public"),
    ("GET", "/docs/oauth2-redirect"): Rule("public"),
    ("GET", "/redoc"): Rule("public"),
    ("GET", "/"): Rule("public"),
    ("GET", "/index.html"): Rule("public"),
    ("GET", "/favicon.ico"): Rule("public"),
    ("GET", "/web/{path:path}"): Rule("public", args={"path": "app.js"}, ok=frozenset({404})),
    ("POST", "/api/auth/login"): Rule("public", body={"username": "nobody-at-all", "password": "wrong-Pass-1"},
                                      ok=frozenset({401}), audit="write"),
    ("POST", "/api/auth/logout"): Rule("user", audit="write"),
    ("GET", "/api/auth/me"): Rule("user"),
    ("GET", "/api/vocabulary"): Rule("user"),
    ("GET", "/api/site"): Rule("user"),
    ("GET", "/manifest.webmanifest"): Rule("public"),
    ("GET", "/sw.js"): Rule("public"),
    ("POST", "/api/auth/password"): Rule("user", body={"old_password": "not-my-password-1",
                                                       "new_password": "Another-pass-2026"}, audit="write"),
    # ---------------------------------------------------------------- registry
    ("GET", "/api/grid"): Rule(P.GRID_READ, "list", hidden=(OTHER_TOWNSHIP,)),
    ("GET", "/api/cameras"): Rule(P.CAMERAS_READ, "list", hidden=(OTHER_CAMERA,)),
    ("GET", "/api/cameras/{camera_id}"): Rule(P.CAMERAS_READ, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}),
    ("GET", "/api/devices"): Rule(P.DEVICES_READ, "list", hidden=(OTHER_DOOR,)),
    ("GET", "/api/devices/{device_id}"): Rule(P.DEVICES_READ, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)}),
    ("GET", "/api/sources/{source_id}/grid-history"): Rule(P.GRID_READ, "path",
                                                           {"source_id": both(OWN_CAMERA, OTHER_CAMERA)}),
    ("GET", "/api/events"): Rule(P.EVENTS_READ, "list", hidden=(OTHER_CAMERA,)),
    # ---------------------------------------------------------------- GB/T 28181 devices
    ("GET", "/api/gb28181/devices"): Rule(P.GB28181_READ, "list", hidden=(OTHER_GB_DEVICE,)),
    ("POST", "/api/gb28181/devices/{device_id}/admit"): Rule(
        P.GB28181_MANAGE, "path", {"device_id": both(OWN_GB_DEVICE, OTHER_GB_DEVICE)}, body={}, audit="write"),
    # ---------------------------------------------------------------- administration
    ("GET", "/api/users"): Rule(P.USERS_READ, "list", hidden=(OTHER_USER,)),
    ("POST", "/api/users"): Rule(P.USERS_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "username": f"mx{next(_n)}", "display_name": "矩阵新用户", "role": "grid_worker",
        "node_code": OWN_VILLAGE if side == "own" else OTHER_VILLAGE}),
    # a throwaway account per call on either side: a reset ends the sessions of the one it concerns
    ("PATCH", "/api/users/{username}"): Rule(P.USERS_MANAGE, "path", audit="write", body={"display_name": "改名的用户"},
                                             args={"username": lambda side, ctx: ctx.throwaway_user(side)}),
    ("POST", "/api/users/{username}/password"): Rule(P.USERS_MANAGE, "path", audit="write",
                                                     args={"username": lambda side, ctx: ctx.throwaway_user(side)}),
    ("POST", "/api/tokens"): Rule(P.TOKENS_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "name": f"mx-token-{next(_n)}", "role": "dispatcher",
        "node_code": OWN_VILLAGE if side == "own" else OTHER_VILLAGE}),
    ("GET", "/api/audit"): Rule(P.AUDIT_READ, "list", hidden=(OTHER_USER,)),
    ("GET", "/api/audit/verify"): Rule(P.AUDIT_READ),
    ("POST", "/api/users/{username}/sessions/end"): Rule(P.USERS_MANAGE, "path", audit="write",
                                                         args={"username": lambda side, ctx: ctx.throwaway_user(side)}),
    # grid nodes, departments, alerting (issue 17): throwaway nodes and departments on either side
    ("GET", "/api/admin/grid/nodes"): Rule(P.GRID_MANAGE, "list", hidden=(OTHER_TOWNSHIP,)),
    ("POST", "/api/admin/grid/nodes"): Rule(P.GRID_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "code": f"mxn{next(_n)}", "name": "矩阵网格", "level": "grid",
        "parent_code": OWN_VILLAGE if side == "own" else OTHER_VILLAGE}),
    ("PATCH", "/api/admin/grid/nodes/{code}"): Rule(P.GRID_MANAGE, "path", audit="write", body={"name": "矩阵改名"},
                                                    args={"code": lambda side, ctx: ctx.throwaway_node(side)}),
    ("POST", "/api/admin/grid/nodes/{code}/move"): Rule(
        P.GRID_MANAGE, "path", audit="write", args={"code": lambda side, ctx: ctx.throwaway_node(side)},
        body=lambda side, ctx: {"parent_code": OWN_VILLAGE if side == "own" else OTHER_VILLAGE}),
    ("POST", "/api/admin/grid/nodes/{code}/retire"): Rule(P.GRID_MANAGE, "path", audit="write",
                                                          args={"code": lambda side, ctx: ctx.throwaway_node(side)}),
    ("GET", "/api/admin/departments"): Rule(P.DEPARTMENTS_MANAGE, "list", hidden=("police-xihe",)),
    ("POST", "/api/admin/departments"): Rule(P.DEPARTMENTS_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "code": f"mxd{next(_n)}", "name": "矩阵部门", "node_code": OWN_TOWNSHIP if side == "own" else OTHER_TOWNSHIP}),
    ("PATCH", "/api/admin/departments/{code}"): Rule(
        P.DEPARTMENTS_MANAGE, "path", audit="write", body={"name": "矩阵改名部门"},
        args={"code": lambda side, ctx: ctx.throwaway_department(side)}),
    ("POST", "/api/admin/departments/{code}/retire"): Rule(
        P.DEPARTMENTS_MANAGE, "path", audit="write", args={"code": lambda side, ctx: ctx.throwaway_department(side)}),
    ("GET", "/api/admin/alerting"): Rule(P.ALERTING_READ),
    # The matrix' administrator is a township's: rules and SLA limits apply county-wide and
    # are the county administrators' (403 with the reason; tests/security/test_admin_org.py).
    ("PUT", "/api/admin/alerting/{section}"): Rule(P.ALERTING_MANAGE, args={"section": "sla"}, audit="write",
                                                   body={"data": {}}, ok=frozenset({403})),
    # ---------------------------------------------------------------- cameras (issue 3)
    ("POST", "/api/cameras/{camera_id}/flags"): Rule(
        P.CAMERAS_FLAG, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, audit="write", ok=GATEWAY,
        body=lambda side, ctx: {"frame_time": datetime.now(UTC).isoformat(), "category": "治安防控"}),
    ("GET", "/api/cameras/{camera_id}/snapshot"): Rule(P.CAMERAS_READ, "path",
                                                       {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)},
                                                       audit="read", ok=GATEWAY),
    # ---------------------------------------------------------------- recordings (issue 13)
    # The matrix' cameras have no footage: an allowed caller of play/frame/flag gets 404 "该时刻没有录像"
    # (scope is told apart on the timeline, which answers 200 with no spans; tests/api/test_recording_playback.py)
    ("GET", "/api/recordings/{camera_id}/timeline"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)},
        query={"start": "2026-12-07T08:00:00+08:00", "end": "2026-12-07T09:00:00+08:00"}),
    ("GET", "/api/recordings/{camera_id}/play"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, audit="read",
        query={"t": "2026-12-07T08:00:00+08:00"}, ok=frozenset({404}), stream=True),
    # device playback (issue 14 item 5): the matrix' GB channels' cameras; no gb28181 process runs here, so an
    # allowed caller in scope gets 503 "GB/T 28181 服务未运行" (another township's camera: 404 before that)
    ("GET", "/api/recordings/{camera_id}/device/timeline"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(GB_CAMERA(OWN_GB_DEVICE), GB_CAMERA(OTHER_GB_DEVICE))},
        query={"start": "2026-12-07T08:00:00+08:00", "end": "2026-12-07T09:00:00+08:00"}, ok=frozenset({503})),
    ("GET", "/api/recordings/{camera_id}/device/play"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(GB_CAMERA(OWN_GB_DEVICE), GB_CAMERA(OTHER_GB_DEVICE))},
        audit="read", query={"t": "2026-12-07T08:00:00+08:00"}, ok=frozenset({503}), stream=True),
    ("POST", "/api/recordings/{camera_id}/device/control"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(GB_CAMERA(OWN_GB_DEVICE), GB_CAMERA(OTHER_GB_DEVICE))},
        audit="write", ok=frozenset({503}), body={"session": "0123456789abcdef", "action": "pause"}),
    ("POST", "/api/recordings/{camera_id}/device/exports"): Rule(
        P.RECORDINGS_EXPORT, "path", {"camera_id": both(GB_CAMERA(OWN_GB_DEVICE), GB_CAMERA(OTHER_GB_DEVICE))},
        audit="write", ok=frozenset({503}),
        body={"start": "2026-12-07T08:00:00+08:00", "end": "2026-12-07T08:01:00+08:00", "reason": "案件调证"}),
    ("GET", "/api/recordings/{camera_id}/frame"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, audit="read",
        query={"t": "2026-12-07T08:00:00+08:00"}, ok=frozenset({404})),
    ("POST", "/api/recordings/{camera_id}/flags"): Rule(
        P.RECORDINGS_PLAY, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, audit="write", ok=frozenset({404}),
        body={"at": "2026-12-07T08:00:00+08:00", "category": "治安防控"}),
    # PTZ: the demo's cameras have no ONVIF address, so an allowed caller gets 409 with the reason
    ("POST", "/api/cameras/{camera_id}/ptz/move"): Rule(
        P.CAMERAS_PTZ, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, body={"pan": 0.5, "timeout": 0.5},
        audit="write", ok=GATEWAY | {409}),
    ("POST", "/api/cameras/{camera_id}/ptz/stop"): Rule(P.CAMERAS_PTZ, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)},
                                                        audit="write", ok=GATEWAY | {409}),
    ("GET", "/api/cameras/{camera_id}/ptz/presets"): Rule(P.CAMERAS_PTZ, "path",
                                                          {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, ok=GATEWAY | {409}),
    ("POST", "/api/cameras/{camera_id}/ptz/presets/{token}/goto"): Rule(
        P.CAMERAS_PTZ, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA), "token": "1"}, audit="write",
        ok=GATEWAY | {409}),
    ("GET", "/api/camera-health"): Rule(P.CAMERAS_READ, "list", hidden=(OTHER_CAMERA,)),
    # ---------------------------------------------------------------- 摄像机管理 (issue 17)
    ("GET", "/api/camera-credentials"): Rule(P.CAMERAS_MANAGE),
    ("GET", "/api/cameras/{camera_id}/settings"): Rule(P.CAMERAS_MANAGE, "path",
                                                       {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}),
    ("POST", "/api/cameras"): Rule(P.CAMERAS_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "id": f"mx-cam-{next(_n)}", "name": "矩阵摄像机", "grid": OWN_GRID if side == "own" else OTHER_GRID,
        "rtsp_url": "rtsp://127.0.0.1:9/matrix", "credentials": "demo-cams"}),
    ("PATCH", "/api/cameras/{camera_id}"): Rule(P.CAMERAS_MANAGE, "path", audit="write", body={"name": "改名的摄像机"},
                                                args={"camera_id": lambda side, ctx: ctx.throwaway_camera(side)}),
    ("POST", "/api/cameras/{camera_id}/maintenance"): Rule(
        P.CAMERAS_MANAGE, "path", audit="write", body={"on": True},
        args={"camera_id": lambda side, ctx: ctx.throwaway_camera(side)}),
    ("DELETE", "/api/cameras/{camera_id}"): Rule(P.CAMERAS_MANAGE, "path", audit="write",
                                                 args={"camera_id": lambda side, ctx: ctx.throwaway_camera(side)}),
    # port 9 (discard) on loopback: refused at once, answered 200 with 无法连接
    ("POST", "/api/camera-connection-tests"): Rule(P.CAMERAS_MANAGE, "none", audit="write",
                                                   body={"rtsp_url": "rtsp://127.0.0.1:9/matrix"}),
    ("GET", "/api/evidence/{evidence_id}"): Rule(P.EVENTS_READ, "path", audit="read",
                                                 args={"evidence_id": lambda side, ctx: ctx.resources.evidence[side]}),
    ("GET", "/api/events/{event_id}/evidence"): Rule(
        P.EVENTS_READ, "list", args={"event_id": lambda side, ctx: ctx.resources.events[side]},
        hidden=(lambda ctx: ctx.resources.evidence["other"],)),
    # ---------------------------------------------------------------- recordings: export, holds (issue 13)
    # no footage of the matrix' cameras: an allowed caller is told so (422) after scope and role
    ("POST", "/api/recordings/exports"): Rule(P.RECORDINGS_EXPORT, "path", audit="write", ok=frozenset({422}),
                                              body=lambda side, ctx: {
                                                  "camera_id": OWN_CAMERA if side == "own" else OTHER_CAMERA,
                                                  "start": "2026-01-01T08:00:00+08:00",
                                                  "end": "2026-01-01T08:05:00+08:00", "reason": "权限矩阵测试"}),
    ("GET", "/api/recordings/exports/{export_id}"): Rule(P.RECORDINGS_EXPORT, "role", {"export_id": NOT_THERE}),
    ("GET", "/api/recordings/exports/{export_id}/file"): Rule(P.RECORDINGS_EXPORT, "role", {"export_id": NOT_THERE},
                                                              audit="read"),
    ("POST", "/api/cases/{case_id}/recordings"): Rule(P.RECORDINGS_PLAY, CASE_SCOPE, audit="write",
                                                      args={"case_id": CASE}, ok=frozenset({409, 422}),
                                                      body={"camera_id": OWN_CAMERA,
                                                            "start": "2026-01-01T08:00:00+08:00",
                                                            "end": "2026-01-01T08:05:00+08:00",
                                                            "reason": "权限矩阵测试"}),
    ("GET", "/api/recordings/holds"): Rule(P.RECORDINGS_PLAY, "list", hidden=(OTHER_CAMERA,)),
    ("GET", "/api/recordings/{camera_id}/integrity"): Rule(P.AUDIT_READ, "path",
                                                           {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)}, audit="read"),
    ("POST", "/api/recordings/holds"): Rule(P.RECORDINGS_EXPORT, "path", audit="write", ok=frozenset({422}),
                                            body=lambda side, ctx: {
                                                "camera_id": OWN_CAMERA if side == "own" else OTHER_CAMERA,
                                                "start": "2026-01-01T08:00:00+08:00",
                                                "end": "2026-01-01T08:05:00+08:00", "reason": "权限矩阵测试",
                                                "expires_at": "2030-01-01T00:00:00+08:00"}),
    ("POST", "/api/recordings/holds/{hold_id}/release"): Rule(P.RECORDINGS_EXPORT, "role", {"hold_id": 999999},
                                                              body={"reason": "权限矩阵测试"}, audit="write"),
    # ---------------------------------------------------------------- live video
    ("POST", "/api/live/{camera_id}/offer"): Rule(P.LIVE_VIEW, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)},
                                                  body={"sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n", "type": "offer"},
                                                  audit="read", ok=GATEWAY | {400, 409, 422}),
    ("DELETE", "/api/live/sessions/{session_id}"): Rule("user", args={"session_id": "no-such-session"},
                                                        ok=frozenset({404}), audit="write"),
    ("GET", "/api/live/{camera_id}/frame.jpg"): Rule(P.LIVE_VIEW, "path", {"camera_id": both(OWN_CAMERA, OTHER_CAMERA)},
                                                     audit="read", ok=GATEWAY | {409}),
    ("GET", "/api/live/status"): Rule(P.LIVE_VIEW, "list", hidden=(OTHER_CAMERA,)),
    ("GET", "/api/live/clock"): Rule("user"),
    # ---------------------------------------------------------------- field devices (issue 4)
    ("GET", "/api/device-state"): Rule(P.DEVICES_READ, "list", hidden=(OTHER_DOOR,)),
    ("GET", "/api/devices/{device_id}/state"): Rule(P.DEVICES_READ, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)}),
    ("GET", "/api/devices/{device_id}/telemetry"): Rule(P.DEVICES_READ, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)}),
    ("GET", "/api/grid/{code}/telemetry"): Rule(P.DEVICES_READ, "path", {"code": both(OWN_GRID, OTHER_GRID)}),
    ("GET", "/api/devices/{device_id}/track"): Rule(P.DEVICES_READ, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)}),
    ("GET", "/api/grid/{code}/tracks"): Rule(P.DEVICES_READ, "path", {"code": both(OWN_GRID, OTHER_GRID)}),
    ("GET", "/api/devices/{device_id}/events"): Rule(P.EVENTS_READ, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)}),
    ("GET", "/api/grid/{code}/events"): Rule(P.EVENTS_READ, "path", {"code": both(OWN_GRID, OTHER_GRID)}),
    ("POST", "/api/devices"): Rule(P.DEVICES_MANAGE, "path", audit="write", body=lambda side, ctx: {
        "id": f"mx-door-{next(_n)}", "kind": "door", "name": "矩阵门禁", "grid": OWN_GRID if side == "own" else OTHER_GRID}),
    ("PATCH", "/api/devices/{device_id}"): Rule(P.DEVICES_MANAGE, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)},
                                                body={"name": "改名的门禁"}, audit="write"),
    ("DELETE", "/api/devices/{device_id}"): Rule(P.DEVICES_MANAGE, "path", audit="write",
                                                 args={"device_id": lambda side, ctx: ctx.throwaway_device(side)}),
    ("POST", "/api/devices/{device_id}/credentials"): Rule(
        P.DEVICES_MANAGE, "path", audit="write", body={"client_certificate": False},
        args={"device_id": lambda side, ctx: ctx.throwaway_device(side)}),
    ("POST", "/api/devices/{device_id}/commands"): Rule(
        P.DEVICE_COMMAND, "path", {"device_id": both(OWN_SPEAKER, OTHER_SPEAKER)}, audit="write",
        body={"name": "volume", "body": {"volume": 40}}),
    ("GET", "/api/devices/{device_id}/commands"): Rule(P.DEVICES_READ, "path",
                                                       {"device_id": both(OWN_SPEAKER, OTHER_SPEAKER)}),
    ("GET", "/api/commands/{command_id}"): Rule(P.DEVICES_READ, "role", {"command_id": NOT_THERE}),
    ("POST", "/api/doors/{device_id}/unlock"): Rule(P.DOOR_UNLOCK, "path", {"device_id": both(OWN_DOOR, OTHER_DOOR)},
                                                    body={"duration_s": 5, "reason": "权限矩阵测试"}, audit="write"),
    ("POST", "/api/broadcasts/audio"): Rule(P.BROADCAST_SEND, "none", audit="write", ok=frozenset({400, 413, 415, 422}),
                                            files={"file": ("notice.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav")}),
    ("POST", "/api/broadcasts"): Rule(P.BROADCAST_SEND, "path", audit="write", body=lambda side, ctx: {
        "targets": [OWN_VILLAGE if side == "own" else OTHER_VILLAGE], "text": "权限矩阵测试通告"}),
    ("GET", "/api/broadcasts"): Rule(P.BROADCAST_READ, "list", hidden=(OTHER_VILLAGE,)),
    ("GET", "/api/broadcasts/{broadcast_id}"): Rule(P.BROADCAST_READ, "role", {"broadcast_id": NOT_THERE}),
    ("GET", "/api/broadcasts/{broadcast_id}/report"): Rule(P.BROADCAST_READ, "role", {"broadcast_id": NOT_THERE}),
    ("DELETE", "/api/broadcasts/{broadcast_id}"): Rule(P.BROADCAST_SEND, "role", {"broadcast_id": NOT_THERE},
                                                       audit="write"),
    ("GET", "/api/broadcasts/{broadcast_id}/audio"): Rule(P.BROADCAST_READ, "role", {"broadcast_id": NOT_THERE},
                                                          inline=True),
    # live voice (实时喊话): the matrix's offer has an audio section aiortc cannot answer → 422 in scope
    ("POST", "/api/broadcasts/live"): Rule(P.BROADCAST_SEND, "path", audit="write", ok=frozenset({422}),
                                           body=lambda side, ctx: {
        "sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "targets": [OWN_VILLAGE if side == "own" else OTHER_VILLAGE]}),
    ("DELETE", "/api/broadcasts/live/{broadcast_id}"): Rule(P.BROADCAST_SEND, "role", {"broadcast_id": NOT_THERE},
                                                            audit="write"),
    ("GET", "/api/broadcasts/{broadcast_id}/live.mp3"): Rule(P.BROADCAST_READ, "role", {"broadcast_id": NOT_THERE},
                                                             inline=True),
    ("POST", "/api/devices/{device_id}/media"): Rule("device", args={"device_id": OWN_DOOR}, audit="write",
                                                     files={"file": ("x.jpg", b"\xff\xd8\xff", "image/jpeg")}),
    # ---------------------------------------------------------------- alarms and cases (issue 5)
    ("GET", "/api/alerts/vocabulary"): Rule(P.CASES_READ),
    ("GET", "/api/alarms"): Rule(P.ALARMS_READ, "list", hidden=(OTHER_CAMERA,)),
    ("GET", "/api/alarms/{alarm_id}"): Rule(P.ALARMS_READ, "role", {"alarm_id": NOT_THERE}),
    ("POST", "/api/alarms/{alarm_id}/acknowledge"): Rule(P.ALARMS_HANDLE, "role", {"alarm_id": NOT_THERE}, audit="write"),
    ("POST", "/api/alarms/{alarm_id}/clear"): Rule(P.ALARMS_HANDLE, "role", {"alarm_id": NOT_THERE}, audit="write"),
    ("POST", "/api/cases"): Rule(P.CASES_CREATE, "path", audit="write", body=lambda side, ctx: {
        "title": "权限矩阵工单", "category": "public_order", "grid_code": OWN_GRID if side == "own" else OTHER_GRID}),
    ("GET", "/api/cases"): Rule(P.CASES_READ, "list", hidden=(OTHER_GRID,)),
    ("POST", "/api/cases/media"): Rule(P.CASES_ACT, "none", audit="write", ok=frozenset({415}),
                                       files={"file": ("x.jpg", b"\xff\xd8\xff\xd9", "image/jpeg")}),
    ("GET", "/api/cases/{case_id}"): Rule(P.CASES_READ, CASE_SCOPE, {"case_id": CASE}),
    ("POST", "/api/cases/{case_id}/actions/{action}"): Rule(P.CASES_ACT, CASE_SCOPE, audit="write",
                                                            args={"case_id": CASE, "action": "note"},
                                                            body={"note": "权限矩阵补充说明"}, ok=frozenset({409, 422})),
    ("GET", "/api/cases/{case_id}/evidence/{evidence_row}"): Rule(P.CASE_EVIDENCE, "role", audit="read",
                                                                  args={"case_id": CASE, "evidence_row": 999999}),
    # issue 17: attachments, the audited reveal of a reporter, the dispatch pickers, alarm → case
    ("POST", "/api/cases/{case_id}/attachments"): Rule(P.CASES_ACT, CASE_SCOPE, {"case_id": CASE}, audit="write",
                                                       files={"file": ("x.jpg", b"\xff\xd8\xff", "image/jpeg")}),
    ("GET", "/api/cases/{case_id}/reporter"): Rule(P.CASES_REPORTER, CASE_SCOPE, {"case_id": CASE}, audit="read"),
    ("GET", "/api/cases/{case_id}/assignees"): Rule(P.CASES_ACT, CASE_SCOPE, {"case_id": CASE}),
    ("POST", "/api/alarms/{alarm_id}/case"): Rule(P.CASES_CREATE, "role", {"alarm_id": NOT_THERE}, audit="write",
                                                  body={"category": "city", "urgency": "high"}),
    ("GET", "/api/notifications"): Rule(P.CASES_READ, "none"),
    ("POST", "/api/notifications/{notification_id}/acknowledge"): Rule(P.CASES_READ, "role",
                                                                       {"notification_id": 999999}, audit="write"),
    ("GET", "/api/outbox"): Rule(P.OUTBOX_READ, "list", hidden=(OTHER_TOWNSHIP,)),
    ("POST", "/api/outbox/replay"): Rule(P.OUTBOX_REPLAY, "none", body={"ids": [999999]}, audit="write"),
    ("POST", "/api/alerts/cap"): Rule(P.CAP_IMPORT, "none", body=b"<alert>not really CAP</alert>", audit="write",
                                      ok=frozenset({400, 422})),
    ("POST", "/api/alerts/cap/preview"): Rule(P.CAP_IMPORT, "none", body=b"<alert>not really CAP</alert>",
                                              audit="write", ok=frozenset({400, 422})),
    ("GET", "/api/alerts/cap"): Rule(P.CASES_READ, "list", hidden=(OTHER_GRID,)),
    ("GET", "/api/alerts/cap/feeds"): Rule(P.CAP_IMPORT, "none"),
    ("GET", "/api/alerts/stats"): Rule(P.STATS_READ, "none"),
    ("GET", "/api/alerts/feed"): Rule(FEED_ROLES, "none", stream=True, inline=True),
    # case systems post status back with their own API token and signature: no person may
    ("POST", "/api/alerts/inbound/{system}"): Rule(frozenset(), "none", {"system": "case-system"},
                                                   body={"message_id": "m1", "case_id": "x", "status": "handling"},
                                                   audit="write", inline=True),
    # Open311 (api/open311): discovery and services hold no case data and answer anyone; a
    # request read without a key is refused (401) unless XLHUB_OPEN311_PUBLIC_NODE is set.
    ("GET", "/open311/discovery.{fmt}"): Rule("public", args={"fmt": "json"}),
    ("GET", "/open311/v2/discovery.{fmt}"): Rule("public", args={"fmt": "xml"}),
    ("GET", "/open311/v2/services.{fmt}"): Rule("public", args={"fmt": "json"}),
    ("GET", "/open311/v2/services/{service_code}.{fmt}"): Rule("public", args={"service_code": "public_order",
                                                                                "fmt": "xml"}),
    ("GET", "/open311/v2/requests.{fmt}"): Rule(P.CASES_READ, "list", hidden=(OTHER_GRID,), inline=True,
                                                args={"fmt": "json"}),
    ("GET", "/open311/v2/requests/{service_request_id}.{fmt}"): Rule(
        P.CASES_READ, "role", inline=True, args={"service_request_id": "NO-SUCH-CASE", "fmt": "json"}),
    ("POST", "/open311/v2/requests.{fmt}"): Rule(P.CASES_CREATE, "role", inline=True, audit="write",
                                                 ok=frozenset({400, 422}), args={"fmt": "json"}),
}
INTERNAL = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def app_routes(app) -> list[tuple[str, str, object]]:
    out = []
    for rc in iter_route_contexts(app.routes):
        for method in sorted(rc.methods or ()):
            if method != "HEAD":
                out.append((method, rc.path, rc))
    return out


def declared_permissions(rc) -> set[str]:
    """Permissions named by require(...) anywhere in the route's dependency tree."""
    found: set[str] = set()

    def walk(dep):
        call = dep.call
        if call is not None and getattr(call, "__closure__", None):
            for name, cell in zip(call.__code__.co_freevars, call.__closure__):
                if name == "permission":
                    try:
                        found.add(str(cell.cell_contents))
                    except ValueError:
                        pass
        for d in dep.dependencies:
            walk(d)

    dependant = getattr(rc, "dependant", None)
    if dependant is not None:
        walk(dependant)
    return found


def test_every_route_has_a_declared_expectation(api):
    app = api.server.config.app
    routes = {(m, p) for m, p, _ in app_routes(app)}
    missing = sorted(routes - set(ROUTES))
    stale = sorted(set(ROUTES) - routes)
    assert not missing, ("routes without a declared permission expectation (add them to ROUTES in "
                         f"tests/security/test_permissions.py): {missing}")
    assert not stale, f"ROUTES names routes the app does not have: {stale}"


def test_declared_permission_matches_the_routes_dependency(api):
    app = api.server.config.app
    wrong = []
    for method, path, rc in app_routes(app):
        rule = ROUTES.get((method, path))
        if rule is None or rule.inline:
            continue
        found = declared_permissions(rc)
        expected = {str(rule.auth)} if isinstance(rule.auth, Permission) else set()
        if found != expected:
            wrong.append(f"{method} {path}: table says {sorted(expected) or rule.auth!r}, route requires {sorted(found)}")
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- driving
class Ctx:
    def __init__(self, api, tokens, resources, security_db):
        self.api, self.tokens, self.resources = api, tokens, resources
        self.db_url = security_db[0]
        self._devices = itertools.count()
        self._users = itertools.count()

    def throwaway_user(self, side: str) -> str:
        """An account made for one change (the matrix' own people keep their sessions)."""
        from store import identity
        from store.db import connect
        username = f"mx-user-{side}-{next(self._users)}"
        with connect(self.db_url) as conn:
            identity.create_user(conn, username=username, display_name="待改用户", role="grid_worker",
                                 node_code=OWN_VILLAGE if side == "own" else OTHER_VILLAGE, password="Throwaway-2026")
        return username

    def throwaway_node(self, side: str) -> str:
        """A grid made for one change (renaming or retiring the demo's would change the rest)."""
        from store.db import connect
        code = f"mx-node-{side}-{next(self._users)}"
        village = OWN_VILLAGE if side == "own" else OTHER_VILLAGE
        with connect(self.db_url) as conn:
            path = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (village,)).fetchone()["path"]
            conn.execute("INSERT INTO grid_nodes (code, name, level, parent_code, path, origin) "
                         "VALUES (%s, '待改网格', 'grid', %s, %s, 'api')", (code, village, [*path, code]))
        return code

    def throwaway_department(self, side: str) -> str:
        from store.db import connect
        code = f"mx-dept-{side}-{next(self._users)}"
        with connect(self.db_url) as conn:
            conn.execute("INSERT INTO departments (code, name, node_code, origin) VALUES (%s, '待改部门', %s, 'api')",
                         (code, OWN_TOWNSHIP if side == "own" else OTHER_TOWNSHIP))
        return code

    def throwaway_camera(self, side: str) -> str:
        """A camera made for one change (the matrix' own cameras stay as they are)."""
        from store.db import connect
        cam = f"mx-chg-{side}-{next(self._devices)}"
        grid = OWN_GRID if side == "own" else OTHER_GRID
        with connect(self.db_url) as conn:
            conn.execute("INSERT INTO cameras (id, name, rtsp_url, credentials_ref, origin) "
                         "VALUES (%s, '待改摄像机', 'rtsp://127.0.0.1:9/x', 'demo-cams', 'api')", (cam,))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (cam, grid))
        return cam

    def throwaway_device(self, side: str) -> str:
        """A device made for one DELETE (decommissioning the demo's devices would change the rest)."""
        from store.db import connect
        dev = f"mx-del-{side}-{next(self._devices)}"
        grid = OWN_GRID if side == "own" else OTHER_GRID
        with connect(self.db_url) as conn:
            conn.execute("INSERT INTO devices (id, kind, name) VALUES (%s, 'door', '待删门禁')", (dev,))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('device', %s, %s, now() - interval '1 day')", (dev, grid))
        return dev


def _value(v, side, ctx):
    if callable(v):
        return v(side, ctx)
    if isinstance(v, tuple) and len(v) == 2:
        return v[0] if side == "own" else v[1]
    return v


def request_for(method: str, path: str, rule: Rule, side: str, ctx: Ctx) -> dict:
    url = path
    for name, v in rule.args.items():
        url = url.replace("{" + name + "}", str(_value(v, side, ctx))).replace("{" + name + ":path}",
                                                                                str(_value(v, side, ctx)))
    kw: dict = {"method": method, "url": url}
    body = _value(rule.body, side, ctx)
    if isinstance(body, bytes):
        kw["content"] = body
        kw["headers"] = {"Content-Type": "application/xml"}
    elif body is not None:
        kw["json"] = body
    if rule.files is not None:
        kw["files"] = _value(rule.files, side, ctx)
    if rule.query is not None:
        kw["params"] = _value(rule.query, side, ctx)
    return kw


def call(client: httpx.Client, kw: dict, stream: bool = False) -> tuple[int, str]:
    if stream:
        with client.stream(**kw) as r:
            return r.status_code, ""
    r = client.request(**kw)
    return r.status_code, r.text


def allowed_roles(rule: Rule) -> set[Role]:
    if rule.auth in ("public", "user"):
        return set(Role)
    if rule.auth == "device":
        return set()
    if isinstance(rule.auth, Permission):
        return set(GRANTS[rule.auth])
    return set(rule.auth)


def expectation(rule: Rule, role: Role, side: str, scope: str) -> str:
    """allowed | denied | hidden (404) | device (401: a person is not a device)."""
    if rule.auth == "device":
        return "device"
    if role not in allowed_roles(rule):
        return "denied"
    if side == "other" and scope == "path":
        return "hidden"
    return "allowed"


def judge(rule: Rule, expected: str, status: int, text: str, hidden: list[str]) -> str | None:
    if status >= 500 and status not in rule.ok:
        return f"server error {status}: {text[:200]}"
    if expected == "device":
        return None if status == 401 else f"a person's token got {status} from a device-only route"
    if expected == "denied":
        if rule.auth == frozenset() and status in (403, 404):
            return None
        return None if status == 403 else f"expected 403, got {status}: {text[:160]}"
    if expected == "hidden":
        return None if status == 404 else f"another township's resource: expected 404, got {status}: {text[:160]}"
    if status in rule.ok:
        return None
    if status in (401, 403) or (status == 404 and rule.scope != "role"):
        return f"allowed caller refused with {status}: {text[:160]}"
    for marker in hidden:
        if marker in text:
            return f"answer shows another township's {marker!r}"
    return None


def test_permission_matrix(api, tokens, resources, security_db, figures=None):
    ctx = Ctx(api, tokens, resources, security_db)
    app = api.server.config.app
    failures: list[str] = []
    calls = 0
    clients = {role: httpx.Client(base_url=api.base_url, timeout=30, headers={"Authorization": f"Bearer {tok}"})
               for role, tok in tokens.items()}
    anonymous = httpx.Client(base_url=api.base_url, timeout=30)
    try:
        for method, path, _ in app_routes(app):
            rule = ROUTES.get((method, path))
            if rule is None or path in INTERNAL:
                continue
            scope = rule.scope
            if rule.args.get("case_id") is CASE and len(resources.cases) < 2:
                scope = "role"
            # Nobody logged in: only public routes answer.
            if rule.auth != "public":
                status, text = call(anonymous, request_for(method, path, rule, "own", ctx), rule.stream)
                calls += 1
                if status != 401:
                    failures.append(f"{method} {path} anonymous: expected 401, got {status}: {text[:120]}")
            for role, side in itertools.product(Role, ("own", "other")):
                if scope in ("none", "role", "list") and side == "other" and rule.scope != "list":
                    continue
                client = clients[role]
                if path == "/api/auth/logout":         # ends the session: use a fresh one
                    client = httpx.Client(base_url=api.base_url, timeout=30,
                                          headers={"Authorization": f"Bearer {login(api, role_user(role))}"})
                kw = request_for(method, path, rule, side, ctx)
                status, text = call(client, kw, rule.stream)
                calls += 1
                hidden = [h(ctx) if callable(h) else h for h in rule.hidden]
                problem = judge(rule, expectation(rule, role, side, scope), status, text, hidden)
                if problem:
                    failures.append(f"{method} {path} as {role.value} ({side} subtree, {kw['url']}): {problem}")
    finally:
        for c in clients.values():
            c.close()
        anonymous.close()
    print(f"\npermission matrix: {calls} calls, {len(failures)} failures; cases on both sides: {resources.cases}")
    assert not failures, f"{len(failures)} of {calls} calls not as designed:\n" + "\n".join(failures)


WIDENING = [
    ("/api/cameras", {"grid": OTHER_TOWNSHIP}, OTHER_CAMERA),
    ("/api/devices", {"grid": OTHER_TOWNSHIP}, OTHER_DOOR),
    ("/api/events", {"grid": OTHER_TOWNSHIP}, OTHER_CAMERA),
    ("/api/events", {"source_id": OTHER_CAMERA}, OTHER_CAMERA),
    ("/api/device-state", {"grid": OTHER_TOWNSHIP}, OTHER_DOOR),
    ("/api/alarms", {"grid": OTHER_TOWNSHIP}, OTHER_CAMERA),
    ("/api/alarms", {"source": OTHER_CAMERA}, OTHER_CAMERA),
    ("/api/cases", {"grid": OTHER_TOWNSHIP}, OTHER_GRID),
    ("/api/audit", {"actor": OTHER_USER}, OTHER_USER),
    ("/open311/v2/requests.json", {}, OTHER_GRID),
    ("/open311/v2/requests.json", {"service_code": "public_order,hazard,dispute,city,sentiment"}, OTHER_GRID),
    ("/open311/v2/requests.xml", {"jurisdiction_id": "510199000000"}, OTHER_GRID),
]


def test_query_parameters_cannot_widen_scope(api, tokens, resources):
    """Filters name another township's node, source or person: the answer stays inside
    the caller's own subtree (empty, or a 4xx), never the other township's items."""
    login(api, OTHER_USER)          # the other township's dispatcher leaves audit records to find
    problems = []
    for role in (Role.admin, Role.centre_lead, Role.dispatcher):
        with httpx.Client(base_url=api.base_url, timeout=30, headers={"Authorization": f"Bearer {tokens[role]}"}) as c:
            for path, params, marker in WIDENING:
                r = c.get(path, params=params)
                if r.status_code >= 500 or (r.status_code == 200 and marker in r.text):
                    problems.append(f"{role.value} GET {path} {params}: {r.status_code} {r.text[:160]}")
    assert not problems, "\n".join(problems)
