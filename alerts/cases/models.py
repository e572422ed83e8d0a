"""The vocabulary of the shared case lifecycle (工单/案卷): states, actions and the inputs
of the case service."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class CaseState(StrEnum):
    reported = "reported"          # 待受理: raised by a rule, a person or a case system
    accepted = "accepted"          # 已受理
    registered = "registered"      # 已立案: waiting for dispatch (派遣)
    dispatched = "dispatched"      # 已派遣: waiting for a department to sign for it
    handling = "handling"          # 处置中
    feedback = "feedback"          # 已反馈: waiting for verification (核查)
    verified = "verified"          # 已核查: waiting to be closed
    closed = "closed"              # 已结案: waiting for evaluation (评价)
    evaluated = "evaluated"        # 已评价
    rejected = "rejected"          # 不予受理
    cancelled = "cancelled"        # 已撤销
    suspended = "suspended"        # 已挂起: the clock is paused

    @property
    def label(self) -> str:
        return STATE_LABELS[self]


STATE_LABELS: dict[CaseState, str] = {
    CaseState.reported: "待受理", CaseState.accepted: "已受理", CaseState.registered: "已立案",
    CaseState.dispatched: "已派遣", CaseState.handling: "处置中", CaseState.feedback: "已反馈",
    CaseState.verified: "已核查", CaseState.closed: "已结案", CaseState.evaluated: "已评价",
    CaseState.rejected: "不予受理", CaseState.cancelled: "已撤销", CaseState.suspended: "已挂起",
}

# A case in one of these is finished: no clock runs, only evaluation remains.
FINISHED = frozenset({CaseState.closed, CaseState.evaluated, CaseState.rejected, CaseState.cancelled})
OPEN = frozenset(CaseState) - FINISHED


class Action(StrEnum):
    accept = "accept"              # 受理
    reject = "reject"              # 不予受理
    register = "register"          # 立案
    dispatch = "dispatch"          # 派遣 (to one or several departments, or a grid worker)
    escalate = "escalate"          # 上报: one level up the grid tree
    hand_down = "hand_down"        # 交办: to a lower level
    sign = "sign"                  # 签收: a department takes its dispatched part
    send_back = "send_back"        # 退单: a department sends its part back
    feedback = "feedback"          # 反馈: a department reports its result
    verify = "verify"              # 核查 (满意): someone other than the handler confirms
    reopen = "reopen"              # 不满意再分流: back to dispatch
    close = "close"                # 结案
    self_close = "self_close"      # 自行处置结案: a grid worker handles a small matter at once
    evaluate = "evaluate"          # 评价
    supervise = "supervise"        # 督办
    suspend = "suspend"            # 挂起
    resume = "resume"              # 恢复
    cancel = "cancel"              # 撤销
    note = "note"                  # 补充说明

    @property
    def label(self) -> str:
        return ACTION_LABELS[self]


ACTION_LABELS: dict[Action, str] = {
    Action.accept: "受理", Action.reject: "不予受理", Action.register: "立案", Action.dispatch: "派遣",
    Action.escalate: "上报", Action.hand_down: "交办", Action.sign: "签收", Action.send_back: "退单",
    Action.feedback: "反馈", Action.verify: "核查", Action.reopen: "不满意再分流", Action.close: "结案",
    Action.self_close: "自行处置结案", Action.evaluate: "评价", Action.supervise: "督办", Action.suspend: "挂起",
    Action.resume: "恢复", Action.cancel: "撤销", Action.note: "补充说明",
}

# Records in the archive that are not actions of people.
SYSTEM_RECORD_LABELS = {
    "create": "生成工单", "sla_warning": "即将超时", "overdue": "超时", "stage_overdue": "环节超时",
    "evidence": "追加证据", "broadcast_report": "广播回执",
    "broadcast_late_receipt": "迟到回执", "external_status": "外部系统状态",
}


def record_label(action: str) -> str:
    try:
        return Action(action).label
    except ValueError:
        return SYSTEM_RECORD_LABELS.get(action, action)


@dataclass
class NewCase:
    title: str
    category: str
    urgency: str
    channel: str                           # video, device, hotline, grid, cap, open311, external, api
    grid_code: str                         # where it happened
    owner_code: str | None = None          # the responsible level; default: decided by the service
    description: str = ""
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    alarm_id: str | None = None
    source_ref: str | None = None          # CAP identifier, Open311 token …: importing twice is one case
    reporter: dict[str, Any] | None = None
    evidence_ids: list[str] = field(default_factory=list)
    created_at: datetime | None = None


@dataclass
class ActionParams:
    note: str | None = None
    departments: list[str] = field(default_factory=list)     # dispatch
    assignee: str | None = None                               # dispatch to a grid worker (username)
    target_node: str | None = None                            # hand_down
    satisfaction: int | None = None                           # evaluate: 1..5
    expected_state: str | None = None                         # refuse if the case moved meanwhile
    detail: dict[str, Any] = field(default_factory=dict)


class CaseError(Exception):
    """A request the lifecycle refuses; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class CaseNotFound(CaseError):
    def __init__(self, what: str = "case") -> None:
        super().__init__(f"{_WHAT.get(what, what)}不存在或不在本辖区 ({what} not found)", 404)


_WHAT = {"case": "案件", "alarm": "告警"}


@dataclass
class EvidenceItem:
    """One piece of evidence attached to a case: a file of the evidence store (snapshot,
    clip, media), a telemetry excerpt or a broadcast report (kept inline in ``detail``);
    each with its SHA-256."""
    kind: str
    ref: str
    sha256: str | None = None
    media_type: str | None = None
    evidence_id: str | None = None
    source_kind: str | None = None
    source_id: str | None = None
    event_id: str | None = None
    captured_at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)
