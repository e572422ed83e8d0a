"""Command phases and who asked: the state machine every command follows.

    pending ──publish──► sent ──► accepted ──► progress* ──► finished | failed | preempted | stopped
                           └────► rejected            (device answers, in ``res``)
    any open state ──deadline passed (or not delivered before its expiry)──► expired   (hub)

A phase that arrives after the command is final (a late ``finished`` after ``expired``)
is kept in the command's phase list, flagged late, and changes nothing."""
from __future__ import annotations

import re
from dataclasses import dataclass

OPEN = ("pending", "sent", "accepted", "progress")
FINAL = ("finished", "failed", "rejected", "preempted", "expired", "stopped")
STATES = OPEN + FINAL
# What the device may say (bus.commands.CommandResult.phase), and the state each one leads to.
DEVICE_PHASES = {"accepted": "accepted", "started": "progress", "progress": "progress", "finished": "finished",
                 "failed": "failed", "rejected": "rejected", "preempted": "preempted", "expired": "expired",
                 "stopped": "stopped"}
_RANK = {"pending": 0, "sent": 1, "accepted": 2, "progress": 3}

# 中文 first: what an operator sees.
STATE_LABELS = {
    "pending": "待发送", "sent": "已发送", "accepted": "设备已接受", "progress": "执行中", "finished": "已完成",
    "failed": "执行失败", "rejected": "设备拒绝", "preempted": "被更高优先级打断", "expired": "超时未完成",
    "stopped": "已停止",
}

COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class Requester:
    """Who sends a command: a person, an API token, or the hub itself (``system``)."""

    name: str
    kind: str = "system"          # user | token | system
    role: str | None = None
    node_code: str | None = None

    @classmethod
    def system(cls, name: str = "devices") -> Requester:
        return cls(name=name, kind="system")


def next_state(current: str, phase: str) -> str | None:
    """The state after a device phase, or None when the phase changes nothing (late,
    or a step backwards such as ``accepted`` after ``progress``)."""
    if current in FINAL:
        return None
    target = DEVICE_PHASES.get(phase)
    if target is None:
        return None
    if target in FINAL:
        return target
    if _RANK[target] < _RANK[current] or (target == current and target != "progress"):
        return None
    return target
