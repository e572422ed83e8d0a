"""User-facing words (Chinese, as the control room says them) for the codes alerts uses."""
from __future__ import annotations

from config.alerting import CATEGORY_LABELS, SEVERITY_LABELS, STAGE_LABELS, URGENCY_COLOURS, URGENCY_LABELS

ALARM_STATE_LABELS = {"active": "未确认", "acknowledged": "已确认", "cleared": "已清除"}

CHANNEL_LABELS = {
    "video": "视频发现", "device": "物联感知", "hotline": "热线受理", "grid": "网格员上报", "cap": "预警信息",
    "open311": "网上受理", "external": "外部系统", "api": "平台录入",
}

# Default titles of events when a rule gives none.
EVENT_LABELS = {
    "door.forced_open": "门禁被强行打开", "door.duress": "门禁胁迫报警", "door.tamper": "门禁设备被破坏",
    "door.held_open": "门长时间未关", "door.access_denied": "门禁拒绝通行",
    "radio.sos": "对讲机紧急求助", "drone.geofence": "无人机越界", "drone.link_lost": "无人机失联",
    "drone.low_battery": "无人机电量低", "camera.offline": "摄像机离线", "camera.flag": "视频监督员标记",
    "camera.motion": "画面有移动", "camera.intrusion": "区域入侵", "camera.fire": "疑似火情", "camera.smoke": "疑似烟雾",
    "camera.tamper.covered": "摄像机被遮挡", "camera.tamper.moved": "摄像机被移位", "camera.tamper.defocus": "摄像机失焦",
}


def event_label(event_type: str) -> str:
    if event_type in EVENT_LABELS:
        return EVENT_LABELS[event_type]
    if event_type.startswith("camera.tamper."):
        return "摄像机遭破坏"
    return event_type


def category_label(code: str) -> str:
    return next((v for k, v in CATEGORY_LABELS.items() if k.value == code), code)


def urgency_label(code: str) -> str:
    return next((v for k, v in URGENCY_LABELS.items() if k.value == code), code)


def urgency_colour(code: str) -> str | None:
    return next((v for k, v in URGENCY_COLOURS.items() if k.value == code), None)


def severity_label(code: str) -> str:
    return next((v for k, v in SEVERITY_LABELS.items() if k.value == code), code)


def stage_label(code: str | None) -> str | None:
    if code is None:
        return None
    return next((v for k, v in STAGE_LABELS.items() if k.value == code), code)
