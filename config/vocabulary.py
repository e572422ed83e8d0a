"""The hub's one vocabulary: every code a person, a device or another system sees, with
its Chinese label (the words the control room says; English stays the code).

Roles, grid levels, source kinds, the two severity scales, case categories, urgencies and
stages, alarm states, intake channels, and the catalogue of event types (label and
default severity hint of each). Everything else imports these: the site file's models
(config/site), the bus contract (bus/), the alerts, the API's ``/api/vocabulary`` — which
the web UI reads at start instead of keeping a copy.

Two severity scales, on purpose:
- an *event's* severity is a hint from its source: ``info < minor < major < critical``;
- an *alarm's* severity is decided by the rule that raised it: ``critical > major > minor
  > warning`` (提示), most severe first, as alarm lists sort.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args


class Role(StrEnum):
    admin = "admin"
    video_supervisor = "video_supervisor"
    dispatcher = "dispatcher"
    hotline = "hotline"
    grid_worker = "grid_worker"
    grid_head = "grid_head"
    department_handler = "department_handler"
    centre_lead = "centre_lead"

    @property
    def label(self) -> str:
        return ROLE_LABELS[self]


ROLE_LABELS: dict[Role, str] = {
    Role.admin: "管理员",
    Role.video_supervisor: "视频监督员",
    Role.dispatcher: "调度员",
    Role.hotline: "坐席",
    Role.grid_worker: "网格员",
    Role.grid_head: "网格长",
    Role.department_handler: "职能部门",
    Role.centre_lead: "中心主任",
}


class GridLevel(StrEnum):
    county = "county"
    township = "township"
    village = "village"
    community = "community"
    grid = "grid"

    @property
    def label(self) -> str:
        return LEVEL_LABELS[self]

    @property
    def rank(self) -> int:
        """Depth of the level in the administrative tree: village and community share 2."""
        return LEVEL_RANK[self]


LEVEL_LABELS: dict[GridLevel, str] = {
    GridLevel.county: "县(区)",
    GridLevel.township: "乡镇(街道)",
    GridLevel.village: "村",
    GridLevel.community: "社区",
    GridLevel.grid: "网格",
}
LEVEL_RANK: dict[str, int] = {
    GridLevel.county: 0,
    GridLevel.township: 1,
    GridLevel.village: 2,
    GridLevel.community: 2,
    GridLevel.grid: 3,
}


class DeviceKind(StrEnum):
    """Field devices: each has its own broker account (一机一帐号)."""
    door = "door"
    speaker = "speaker"
    drone = "drone"
    radio = "radio"

    @property
    def label(self) -> str:
        return DEVICE_KIND_LABELS[self]


DEVICE_KIND_LABELS: dict[DeviceKind, str] = {
    DeviceKind.door: "门禁",
    DeviceKind.speaker: "广播",
    DeviceKind.drone: "无人机",
    DeviceKind.radio: "公网对讲机",
}
DEVICE_KINDS: tuple[str, ...] = tuple(k.value for k in DeviceKind)
# Every source that speaks on the bus: the field devices and the cameras (whose workers
# are the hub's own processes). The first segment of every event type and topic kind.
SOURCE_KINDS: tuple[str, ...] = (*DEVICE_KINDS, "camera")
# Event families: a source kind, the hub's own security events (store/security.py), or the
# recordings' storage (cameras/recording/quota.py).
EVENT_FAMILIES: tuple[str, ...] = (*SOURCE_KINDS, "security", "recording")
SOURCE_KIND_LABELS: dict[str, str] = {**{k.value: v for k, v in DEVICE_KIND_LABELS.items()}, "camera": "摄像机"}
EVENT_FAMILY_LABELS: dict[str, str] = {**SOURCE_KIND_LABELS, "security": "安全", "recording": "录像"}


class EventSeverity(StrEnum):
    """A source's hint of how bad an event is (info < minor < major < critical)."""
    info = "info"
    minor = "minor"
    major = "major"
    critical = "critical"

    @property
    def label(self) -> str:
        return EVENT_SEVERITY_LABELS[self]

    @property
    def rank(self) -> int:
        return EVENT_SEVERITIES.index(self.value)


EVENT_SEVERITIES: tuple[str, ...] = tuple(s.value for s in EventSeverity)
EVENT_SEVERITY_LABELS: dict[EventSeverity, str] = {
    EventSeverity.info: "提示", EventSeverity.minor: "次要", EventSeverity.major: "重要", EventSeverity.critical: "紧急",
}


class AlarmSeverity(StrEnum):
    """An alarm's severity, decided by its rule; most severe first."""
    critical = "critical"
    major = "major"
    minor = "minor"
    warning = "warning"

    @property
    def label(self) -> str:
        return ALARM_SEVERITY_LABELS[self]

    @property
    def rank(self) -> int:
        return _ALARM_SEVERITY_RANK[self]


ALARM_SEVERITY_LABELS: dict[AlarmSeverity, str] = {
    AlarmSeverity.critical: "紧急", AlarmSeverity.major: "重要", AlarmSeverity.minor: "次要",
    AlarmSeverity.warning: "提示",
}
_ALARM_SEVERITY_RANK = {AlarmSeverity.critical: 0, AlarmSeverity.major: 1, AlarmSeverity.minor: 2,
                        AlarmSeverity.warning: 3}


class Category(StrEnum):
    """Case categories named by the grid-governance sources."""
    public_order = "public_order"
    hazard = "hazard"
    dispute = "dispute"
    city = "city"
    sentiment = "sentiment"

    @property
    def label(self) -> str:
        return CATEGORY_LABELS[self]


CATEGORY_LABELS: dict[Category, str] = {
    Category.public_order: "治安防控",
    Category.hazard: "安全隐患",
    Category.dispute: "矛盾纠纷",
    Category.city: "城市管理",
    Category.sentiment: "社情民意",
}


class Urgency(StrEnum):
    """紧急程度, coloured as the attention levels: green 一般, yellow 中等, red 严重."""
    low = "low"
    medium = "medium"
    high = "high"

    @property
    def label(self) -> str:
        return URGENCY_LABELS[self]


URGENCY_LABELS: dict[Urgency, str] = {Urgency.low: "一般", Urgency.medium: "中等", Urgency.high: "严重"}
URGENCY_COLOURS: dict[Urgency, str] = {Urgency.low: "green", Urgency.medium: "yellow", Urgency.high: "red"}
# The event severity a person's choice of urgency gives a flag from the video wall.
URGENCY_EVENT_SEVERITY: dict[Urgency, EventSeverity] = {
    Urgency.low: EventSeverity.minor, Urgency.medium: EventSeverity.major, Urgency.high: EventSeverity.critical,
}


class Stage(StrEnum):
    """The stages a case waits in, each with its own clock."""
    accept = "accept"        # 待受理: reported → accepted
    dispatch = "dispatch"    # 待派遣: accepted/registered → dispatched
    handle = "handle"        # 处置中: dispatched/handling → feedback
    verify = "verify"        # 待核查: feedback → verified
    close = "close"          # 待结案: verified → closed

    @property
    def label(self) -> str:
        return STAGE_LABELS[self]


STAGE_LABELS: dict[Stage, str] = {
    Stage.accept: "受理", Stage.dispatch: "派遣", Stage.handle: "处置", Stage.verify: "核查", Stage.close: "结案",
}

ALARM_STATE_LABELS: dict[str, str] = {"active": "未确认", "acknowledged": "已确认", "cleared": "已清除"}

# The three intake channels of the case lifecycle, and the systems that feed them.
CHANNEL_LABELS: dict[str, str] = {
    "video": "视频发现", "device": "物联感知", "hotline": "热线受理", "grid": "网格员上报", "cap": "预警信息",
    "open311": "网上受理", "external": "外部系统", "api": "平台录入",
}

# A department's (or grid worker's) part of a dispatched case (case_assignments.state).
ASSIGNMENT_STATE_LABELS: dict[str, str] = {
    "assigned": "待签收", "accepted": "已签收", "done": "已反馈", "returned": "已退单", "cancelled": "已撤回",
}
# Who acted, when it was the hub itself (Actor.system(...) names; rules are named by the site).
SYSTEM_ACTOR_LABELS: dict[str, str] = {
    "sla": "系统（时限监控）", "cap": "系统（预警信息）", "broadcast": "系统（广播）", "correlation": "系统（告警关联）",
    "clear_after": "系统（告警自动清除）", "rule": "系统规则", "cap-feed": "系统（预警订阅）", "cli": "系统（命令行）",
}


class StreamProblem(StrEnum):
    """Why a camera's stream is not playing, as a person can act on it (cameras/failures.py
    classifies FFmpeg's errors into these; the tile, /api/cameras and camera.offline say it)."""
    auth_failed = "auth_failed"                        # 401/403: user name or password
    not_found = "not_found"                            # 404: no stream at that path
    unreachable = "unreachable"                        # refused, no route, name not found
    no_response = "no_response"                        # connected, then silence
    transport_unsupported = "transport_unsupported"    # 461: the server refuses TCP (or UDP)
    codec_unsupported = "codec_unsupported"            # no video track the hub can read
    not_rtsp = "not_rtsp"                              # something answers, not a camera
    stream_ended = "stream_ended"                      # the camera closed a playing stream
    stalled = "stalled"                                # open, but no frame for too long
    no_address = "no_address"                          # ONVIF has not given a stream URI yet
    other = "other"

    @property
    def label(self) -> str:
        return STREAM_PROBLEM_LABELS[self]


STREAM_PROBLEM_LABELS: dict[StreamProblem, str] = {
    StreamProblem.auth_failed: "认证失败", StreamProblem.not_found: "地址错误",
    StreamProblem.unreachable: "无法连接", StreamProblem.no_response: "无响应",
    StreamProblem.transport_unsupported: "传输方式不支持", StreamProblem.codec_unsupported: "编码不支持",
    StreamProblem.not_rtsp: "非视频流服务", StreamProblem.stream_ended: "视频流中断",
    StreamProblem.stalled: "画面停滞", StreamProblem.no_address: "未获取到视频流地址",
    StreamProblem.other: "其他故障",
}

# A camera's recording, as the wall's tile and /readyz say it (cameras/recording/writer.py).
RECORDING_STATE_LABELS: dict[str, str] = {
    "recording": "录像中", "behind": "录像滞后", "failed": "录像异常", "idle": "未录像", "unknown": "录像状态未知",
}

# How the hub pulls RTSP: over the RTSP connection (TCP, interleaved), over UDP, or TCP
# first and UDP when the server answers 461 Unsupported Transport.
# Broadcasts (村村响, devices/broadcast): a broadcast's state — also its report's outcome,
# which is ``playing`` while any speaker has not answered finally — each speaker's receipt,
# and what a village heard.
BROADCAST_STATE_LABELS: dict[str, str] = {
    "scheduled": "待播放", "sending": "发送中", "playing": "播放中", "done": "全部播放完成", "partial": "部分播放完成",
    "failed": "未能播放", "stopped": "已停止", "cancelled": "已取消", "no_speakers": "范围内无广播设备",
}
BROADCAST_RECEIPT_LABELS: dict[str, str] = {
    "pending": "待发送", "sent": "已发送", "accepted": "已接收", "started": "正在播放", "finished": "已播放完成",
    "failed": "播放失败", "preempted": "被更高优先级广播打断", "rejected": "设备拒绝播放",
    "expired": "超时未回执", "offline": "离线未收听", "cancelled": "已取消", "stopped": "已停止播放",
}
BROADCAST_VILLAGE_LABELS: dict[str, str] = {
    "heard": "已收听", "heard_late": "已收听（回执迟到）", "partial": "部分收听", "not_heard": "未收听",
    "in_progress": "播放中",
}

RtspTransport = Literal["auto", "tcp", "udp"]
RTSP_TRANSPORTS: tuple[str, ...] = get_args(RtspTransport)
RTSP_TRANSPORT_LABELS: dict[str, str] = {"auto": "自动 (先TCP后UDP)", "tcp": "TCP", "udp": "UDP"}


# ---------------------------------------------------------------------------- event types

@dataclass(frozen=True, slots=True)
class EventType:
    label: str
    severity: str          # the default hint (EventSeverity) when the source gives none


def _family(kind: str, pairs: dict[str, tuple[str, str]]) -> dict[str, EventType]:
    return {f"{kind}.{name}": EventType(label, severity) for name, (label, severity) in pairs.items()}


def _every_kind(name: str, label: str, severity: str) -> dict[str, EventType]:
    return {f"{kind}.{name}": EventType(f"{SOURCE_KIND_LABELS[kind]}{label}", severity) for kind in SOURCE_KINDS}


# Every event type a source of the hub can emit (tests/test_vocabulary.py holds every
# source to it). Camera types are open-ended on the bus (``camera.<anything>``): the ones
# here are those the camera workers and the ONVIF parsers raise; an unknown one falls back
# to its family's label (event_label).
EVENT_TYPES: dict[str, EventType] = {
    **_family("door", {
        "access_granted": ("门禁通行", "info"), "access_denied": ("门禁拒绝通行", "minor"),
        "opened": ("门已打开", "info"), "closed": ("门已关闭", "info"), "held_open": ("门长时间未关", "minor"),
        "forced_open": ("门禁被强行打开", "major"), "duress": ("门禁胁迫报警", "critical"),
        "tamper": ("门禁设备被破坏", "major"), "exit_button": ("按钮开门", "info"),
    }),
    **_family("speaker", {"playback": ("广播播放回执", "info")}),
    **_family("drone", {
        "low_battery": ("无人机电量低", "minor"), "geofence": ("无人机越界", "major"),
        "link_lost": ("无人机失联", "major"), "health": ("无人机状态告警", "minor"),
        # DJI Cloud API docks (devices/dialects/dji.py): HMS alarms, wayline task progress
        "hms": ("无人机健康告警", "minor"), "flight_task": ("无人机航线任务", "info"),
    }),
    **_family("radio", {
        "sos": ("对讲机紧急求助", "critical"), "ptt_start": ("对讲开始", "info"), "ptt_stop": ("对讲结束", "info"),
        "geofence": ("对讲机进出网格", "info"),
    }),
    **_family("camera", {
        "online": ("摄像机恢复在线", "info"), "offline": ("摄像机离线", "major"),
        "frozen": ("画面冻结", "minor"), "frozen.cleared": ("画面恢复", "minor"),
        "tamper.covered": ("摄像机被遮挡", "major"), "tamper.defocused": ("摄像机失焦", "major"),
        "tamper.moved": ("摄像机被移位", "major"), "tamper.dark": ("画面过暗", "major"),
        "tamper.bright": ("画面过亮", "major"), "tamper.cleared": ("摄像机恢复正常", "major"),
        "motion": ("画面有移动", "info"), "flag": ("视频监督员标记", "minor"),
        "input": ("摄像机报警输入", "minor"), "intrusion": ("区域入侵", "major"),
        "intrusion.field": ("区域入侵", "major"), "intrusion.line": ("越线", "major"),
        "fire": ("疑似火情", "critical"), "smoke": ("疑似烟雾", "critical"),
        # GB/T 28181 alarm notifications (cameras/gb28181/manscdp.py ALARM_TYPES)
        "video_lost": ("视频信号丢失", "major"), "tamper.device": ("设备防拆报警", "major"),
    }),
    # Every source: availability (MQTT last will, or the hub's heartbeat timeout), answers
    # to commands, and media uploaded by field devices (drones, body cameras).
    **_every_kind("online", "上线", "info"),
    **_every_kind("offline", "离线", "minor"),
    **_every_kind("command_result", "指令回执", "info"),
    **{f"{k}.media": EventType(f"{SOURCE_KIND_LABELS[k]}上传图像", "info") for k in DEVICE_KINDS},
    # The hub's own security events (store/security.py): bursts of refused credentials.
    **_family("security", {
        "login.burst": ("登录失败次数激增", "major"), "address.blocked": ("来源地址多次登录失败已被限制", "major"),
        "mqtt.refused": ("设备接入认证多次失败", "major"), "device.refused": ("设备上传认证多次失败", "major"),
    }),
    # The recordings' storage (cameras/recording/quota.py): the disk nearly full although old
    # footage is deleted, its end, and footage that could not be deleted.
    **_family("recording", {
        "disk_low": ("录像存储空间不足", "major"), "disk_ok": ("录像存储空间恢复", "info"),
        "delete_failed": ("录像文件无法删除", "major"),
    }),
}
# The camera workers' own availability events are stronger than a device's last will.
EVENT_TYPES["camera.online"] = EventType("摄像机恢复在线", "info")
EVENT_TYPES["camera.offline"] = EventType("摄像机离线", "major")

# A cleared condition keeps its family's hint (a rule on camera.tamper.* sees its
# camera.tamper.cleared as major): as the contract has always said.
CAMERA_DEFAULT_SEVERITY = "minor"
# Families: the label and severity of a camera event the catalogue does not name
# (``camera.tamper.sprayed`` from some firmware): by its second segment.
_CAMERA_FAMILIES: dict[str, EventType] = {
    "tamper": EventType("摄像机遭破坏", "major"), "offline": EventType("摄像机离线", "major"),
    "intrusion": EventType("区域入侵", "major"), "fire": EventType("疑似火情", "critical"),
    "smoke": EventType("疑似烟雾", "critical"), "online": EventType("摄像机恢复在线", "info"),
    "motion": EventType("画面有移动", "info"),
}


def event_type(type_: str) -> EventType | None:
    """The catalogue entry of an event type, or of its family for camera types it does not
    name; None for an unknown type."""
    found = EVENT_TYPES.get(type_)
    if found is not None:
        return found
    parts = type_.split(".")
    if parts[0] == "camera" and len(parts) > 1:
        return _CAMERA_FAMILIES.get(parts[1])
    return None


def event_label(type_: str) -> str:
    """What people read for an event type (the code itself when nothing better is known)."""
    found = event_type(type_)
    return found.label if found is not None else type_


def event_severity(type_: str) -> str | None:
    """The default severity hint of an event type: its own, its family's, ``minor`` for any
    other camera event (the bus takes ``camera.<anything>``); None: not a type the hub knows."""
    found = event_type(type_)
    if found is not None:
        return found.severity
    return CAMERA_DEFAULT_SEVERITY if type_.startswith("camera.") and len(type_) > 7 else None


# ---------------------------------------------------------------------------- lookups

def label_of(labels: dict, code: str | None, default: str | None = None) -> str | None:
    """The label of ``code`` in one of the tables above (keys are StrEnums: compare values)."""
    if code is None:
        return default
    for key, label in labels.items():
        if key == code:
            return label
    return default if default is not None else code


def as_json() -> dict:
    """Everything above as the API serves it (``GET /api/vocabulary``)."""
    return {
        "roles": {k.value: v for k, v in ROLE_LABELS.items()},
        "levels": {k.value: v for k, v in LEVEL_LABELS.items()},
        "source_kinds": dict(SOURCE_KIND_LABELS),
        "event_kinds": dict(EVENT_FAMILY_LABELS),
        "event_severities": {k.value: v for k, v in EVENT_SEVERITY_LABELS.items()},
        "alarm_severities": {k.value: v for k, v in ALARM_SEVERITY_LABELS.items()},
        "categories": {k.value: v for k, v in CATEGORY_LABELS.items()},
        "urgencies": {k.value: {"label": URGENCY_LABELS[k], "colour": URGENCY_COLOURS[k],
                                "event_severity": URGENCY_EVENT_SEVERITY[k].value} for k in Urgency},
        "stages": {k.value: v for k, v in STAGE_LABELS.items()},
        "alarm_states": dict(ALARM_STATE_LABELS),
        "channels": dict(CHANNEL_LABELS),
        "assignment_states": dict(ASSIGNMENT_STATE_LABELS),
        "system_actors": dict(SYSTEM_ACTOR_LABELS),
        "stream_problems": {k.value: v for k, v in STREAM_PROBLEM_LABELS.items()},
        "rtsp_transports": dict(RTSP_TRANSPORT_LABELS),
        "recording_states": dict(RECORDING_STATE_LABELS),
        "broadcast_states": dict(BROADCAST_STATE_LABELS),
        "broadcast_receipts": dict(BROADCAST_RECEIPT_LABELS),
        "broadcast_villages": dict(BROADCAST_VILLAGE_LABELS),
        "event_types": {k: {"label": v.label, "severity": v.severity} for k, v in sorted(EVENT_TYPES.items())},
        "event_families": {f"camera.{k}": v.label for k, v in _CAMERA_FAMILIES.items()},
    }
