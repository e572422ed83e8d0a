"""SLA clocks of a case (规定时间内办结): one overall limit from creation to closing and one
per stage, each with a warning at ``warn_at`` (80 %) of its time and an overdue mark at
its end.  Suspension (挂起) pauses every clock; resuming shifts the deadlines by the pause.

The limits are copied into the case when it is created (``cases.sla``), so changing the
site file never rewrites the deadlines of cases already running.  Pure functions over
the case's columns; the service writes what they return.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from alerts.cases.models import FINISHED, CaseState
from config.alerting import Sla

S = CaseState
STAGE_OF: dict[CaseState, str] = {
    S.reported: "accept", S.accepted: "dispatch", S.registered: "dispatch", S.dispatched: "handle",
    S.handling: "handle", S.feedback: "verify", S.verified: "close",
}


def snapshot(sla: Sla, category: str, urgency: str) -> dict[str, Any]:
    limit = sla.limit_for(category, urgency)
    return {
        "total_s": limit.total.total_seconds(),
        "stages": {str(stage): d.total_seconds() for stage, d in limit.stages.items()},
        "warn_at": sla.warn_at,
        "auto_escalate": limit.auto_escalate,
    }


def _stage_fields(snap: dict, stage: str | None, now: datetime) -> dict[str, Any]:
    limit = (snap.get("stages") or {}).get(stage) if stage else None
    return {"stage": stage, "stage_started_at": now if stage else None,
            "stage_due_at": now + timedelta(seconds=limit) if limit else None,
            "stage_warned": False, "stage_overdue": False}


def start(snap: dict, created_at: datetime, state: CaseState) -> dict[str, Any]:
    """The clock columns of a new case."""
    fields = {"due_at": created_at + timedelta(seconds=snap["total_s"]), "warned": False, "overdue": False,
              "overdue_at": None, "paused_at": None, "paused_s": 0.0,
              **_stage_fields(snap, STAGE_OF.get(state), created_at)}
    fields["sla_check_at"] = next_check({**fields, "sla": snap, "state": state.value})
    return fields


def on_change(case: dict, new_state: CaseState, now: datetime, *, reset_stage: bool = False) -> dict[str, Any]:
    """The clock columns after the case moves to ``new_state`` (or changes hands when
    ``reset_stage``: the new level gets the stage's full time)."""
    snap = case["sla"]
    old = CaseState(case["state"])
    fields: dict[str, Any] = {}
    if old is S.suspended and new_state is not S.suspended and case.get("paused_at") is not None:
        pause = now - case["paused_at"]
        fields["paused_at"] = None
        fields["paused_s"] = float(case.get("paused_s") or 0) + pause.total_seconds()
        fields["due_at"] = case["due_at"] + pause
        if case.get("stage_due_at") is not None:
            fields["stage_due_at"] = case["stage_due_at"] + pause
        if case.get("stage_started_at") is not None:
            fields["stage_started_at"] = case["stage_started_at"] + pause
    if new_state in FINISHED:
        fields.update({"stage": None, "stage_started_at": None, "stage_due_at": None})
    elif new_state is S.suspended:
        if old is not S.suspended:
            fields["paused_at"] = now
    else:
        stage = STAGE_OF.get(new_state)
        if stage != case.get("stage") or reset_stage:
            fields.update(_stage_fields(snap, stage, now))
    merged = {**case, **fields, "state": new_state.value}
    fields["sla_check_at"] = next_check(merged)
    return fields


def next_check(case: dict) -> datetime | None:
    """The next moment something about this case's clocks becomes due, or None."""
    state = CaseState(case["state"])
    if state in FINISHED or state is S.suspended:
        return None
    snap = case["sla"]
    warn_at = float(snap.get("warn_at", 0.8))
    total = timedelta(seconds=snap["total_s"])
    moments = []
    if not case.get("warned"):
        moments.append(case["due_at"] - total * (1 - warn_at))
    if not case.get("overdue"):
        moments.append(case["due_at"])
    started, due = case.get("stage_started_at"), case.get("stage_due_at")
    if due is not None and started is not None:
        if not case.get("stage_warned"):
            moments.append(started + (due - started) * warn_at)
        if not case.get("stage_overdue"):
            moments.append(due)
    return min(moments) if moments else None


def due_marks(case: dict, now: datetime) -> list[str]:
    """Which marks are due now and not yet recorded: stage_warning, stage_overdue,
    sla_warning (overall), overdue (overall) — in that order."""
    state = CaseState(case["state"])
    if state in FINISHED or state is S.suspended:
        return []
    snap = case["sla"]
    warn_at = float(snap.get("warn_at", 0.8))
    total = timedelta(seconds=snap["total_s"])
    marks = []
    started, due = case.get("stage_started_at"), case.get("stage_due_at")
    if due is not None and started is not None:
        if not case.get("stage_overdue") and now >= due:
            marks.append("stage_overdue")
        elif not case.get("stage_warned") and now >= started + (due - started) * warn_at:
            marks.append("stage_warning")
    if not case.get("overdue") and now >= case["due_at"]:
        marks.append("overdue")
    elif not case.get("warned") and now >= case["due_at"] - total * (1 - warn_at):
        marks.append("sla_warning")
    return marks


def remaining_s(case: dict, now: datetime) -> dict[str, float | None]:
    """Seconds left overall and in the stage (negative: late); frozen while suspended."""
    at = case.get("paused_at") or now
    stage_due = case.get("stage_due_at")
    return {"total": (case["due_at"] - at).total_seconds() if case.get("due_at") else None,
            "stage": (stage_due - at).total_seconds() if stage_due else None}


def stage_done(case: dict, now: datetime) -> dict[str, Any]:
    """How the stage being left went: its name, seconds spent (pauses excluded) and
    whether it kept its limit."""
    started, due = case.get("stage_started_at"), case.get("stage_due_at")
    return {"stage": case.get("stage"), "seconds": round((now - started).total_seconds(), 3) if started else None,
            "on_time": True if due is None else now <= due, "owner_code": case.get("owner_code")}
