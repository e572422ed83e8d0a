"""Alarms (告警): what a rule makes of events.  One open alarm per (source, type) counts
the repeats; acknowledging (确认) records who saw it, clearing (清除) ends it."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from config.vocabulary import ALARM_STATE_LABELS


class AlarmState(StrEnum):
    active = "active"
    acknowledged = "acknowledged"
    cleared = "cleared"

    @property
    def label(self) -> str:
        return ALARM_STATE_LABELS[self.value]


class AlarmAction(StrEnum):
    acknowledge = "acknowledge"    # 确认
    clear = "clear"                # 清除

    @property
    def label(self) -> str:
        return {"acknowledge": "确认", "clear": "清除"}[self.value]


@dataclass(frozen=True)
class Event:
    """An event as alerts reads it from the events table."""
    time: datetime
    id: str
    source_time: datetime | None
    source_kind: str
    source_id: str
    type: str
    grid_code: str | None
    grid_path: tuple[str, ...]
    severity: str | None
    lat: float | None
    lon: float | None
    msg_id: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, r: dict) -> Event:
        return cls(time=r["time"], id=r["id"], source_time=r["source_time"], source_kind=r["source_kind"],
                   source_id=r["source_id"], type=r["type"], grid_code=r["grid_code"],
                   grid_path=tuple(r["grid_path"] or ()), severity=r["severity"], lat=r["lat"], lon=r["lon"],
                   msg_id=r["msg_id"], payload=r["payload"] or {},
                   evidence=r["evidence"] if isinstance(r["evidence"], list) else [])


class AlarmError(Exception):
    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
