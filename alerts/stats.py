"""Assessment (考核评价) from the electronic archive: by area, department, post or person —
counts, on-time rate, mean and p90 duration of every stage and overall, reopen rate
(不满意再分流) and satisfaction.

Stage durations come from the ``stage_done`` the case service writes into each record
that ends a stage (seconds spent with pauses excluded, and whether the stage kept its
limit), so the figures are those of the limits in force when the work was done.

- ``area``: cases grouped by the node of the chosen level (township by default) above
  the place they happened;
- ``department``: cases by the departments that had a part; the handling stage is the
  department's own (signed → fed back) time;
- ``post`` / ``person``: the stages each role / each person completed.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any

import psycopg

from alerts.actor import Actor
from alerts.cases.models import CaseState
from config.vocabulary import Stage
from store.where import Where

STAGES = tuple(Stage)
LEVELS = {"county": ("county",), "township": ("township",), "village": ("village", "community"),
          "grid": ("grid",)}
FINISHED_OK = {CaseState.closed.value, CaseState.evaluated.value}


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(0.9 * len(ordered)) - 1)
    return round(ordered[k], 3)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


class _Group:
    def __init__(self, key: str, name: str | None) -> None:
        self.key, self.name = key, name
        self.cases: set[str] = set()
        self.closed = self.closed_on_time = self.overdue_now = self.reached_feedback = self.reopened = 0
        self.total_s: list[float] = []
        self.stage_s: dict[str, list[float]] = defaultdict(list)
        self.stage_on_time: dict[str, list[bool]] = defaultdict(list)
        self.satisfaction: list[int] = []
        self.supervisions = 0
        self.actions = 0

    def add_case(self, c: dict) -> None:
        if c["id"] in self.cases:
            return
        self.cases.add(c["id"])
        if c["state"] in FINISHED_OK and c["closed_at"] is not None:
            self.closed += 1
            self.closed_on_time += int(c["closed_at"] <= c["due_at"])
            self.total_s.append((c["closed_at"] - c["created_at"]).total_seconds() - float(c["paused_s"] or 0))
        if c["overdue"] or c["stage_overdue"]:
            self.overdue_now += int(c["state"] not in FINISHED_OK)
        if c["reached_feedback"]:
            self.reached_feedback += 1
            self.reopened += int(c["reopen_count"] > 0)
        if c["satisfaction"] is not None:
            self.satisfaction.append(c["satisfaction"])
        self.supervisions += c["supervisions"]

    def add_stage(self, stage: str, seconds: float | None, on_time: bool) -> None:
        if seconds is not None:
            self.stage_s[stage].append(seconds)
        self.stage_on_time[stage].append(bool(on_time))

    def result(self) -> dict[str, Any]:
        return {
            "key": self.key, "name": self.name, "cases": len(self.cases), "closed": self.closed,
            "on_time_rate": _rate(self.closed_on_time, self.closed), "overdue_open": self.overdue_now,
            "duration_s": {"mean": _mean(self.total_s), "p90": _p90(self.total_s)},
            "stages": {s: {"count": len(self.stage_on_time.get(s, [])), "mean_s": _mean(self.stage_s.get(s, [])),
                           "p90_s": _p90(self.stage_s.get(s, [])),
                           "on_time_rate": _rate(sum(self.stage_on_time.get(s, [])), len(self.stage_on_time.get(s, [])))}
                       for s in STAGES},
            "reopen_rate": _rate(self.reopened, self.reached_feedback),
            "satisfaction": {"count": len(self.satisfaction), "mean": _mean([float(x) for x in self.satisfaction]),
                             "satisfied_rate": _rate(sum(x >= 4 for x in self.satisfaction), len(self.satisfaction))},
            "supervisions": self.supervisions, "actions": self.actions,
        }


def assessment(conn: psycopg.Connection, actor: Actor, *, by: str = "area", level: str = "township",
               since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    if by not in ("area", "department", "post", "person"):
        raise ValueError("by must be area, department, post or person")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    w = Where(levels=list(LEVELS[level]))
    if actor.kind != "system":
        w.add("c.grid_path @> ARRAY[%(node)s]::text[]", node=actor.node_code)
    w.add("c.created_at >= %(since)s", since=since)
    w.add("c.created_at < %(until)s", until=until)
    cases = conn.execute(
        f"""SELECT c.id, c.state, c.created_at, c.closed_at, c.due_at, c.paused_s, c.overdue, c.stage_overdue, c.sla,
                   c.reopen_count, c.satisfaction, c.supervisions,
                   EXISTS (SELECT 1 FROM case_transitions f WHERE f.case_id = c.id AND f.to_state = 'feedback')
                       AS reached_feedback,
                   (SELECT n.code FROM grid_nodes n WHERE n.code = ANY(c.grid_path) AND n.level = ANY(%(levels)s)
                    ORDER BY cardinality(n.path) DESC LIMIT 1) AS area
            FROM cases c WHERE {w}""", w.params).fetchall()
    by_id = {c["id"]: c for c in cases}
    ids = list(by_id)
    names = {r["code"]: r["name"] for r in conn.execute("SELECT code, name FROM grid_nodes")}
    names.update({r["code"]: r["name"] for r in conn.execute("SELECT code, name FROM departments")})
    groups: dict[str, _Group] = {}

    def group(key: str | None) -> _Group:
        key = key or "-"
        if key not in groups:
            groups[key] = _Group(key, names.get(key))
        return groups[key]

    records = conn.execute(
        """SELECT case_id, action, actor, actor_kind, actor_role, actor_department,
                  detail -> 'stage_done' AS stage_done
           FROM case_transitions
           WHERE case_id = ANY(%s) AND (actor_kind <> 'system' OR detail ? 'stage_done') ORDER BY id""",
        (ids,)).fetchall()
    if by == "area":
        for c in cases:
            group(c["area"]).add_case(c)
        for r in records:
            g = group(by_id[r["case_id"]]["area"])
            if r["stage_done"]:
                g.add_stage(r["stage_done"]["stage"], r["stage_done"]["seconds"], r["stage_done"]["on_time"])
    elif by == "department":
        parts = conn.execute(
            """SELECT case_id, department_code, assigned_at, accepted_at, done_at, state FROM case_assignments
               WHERE case_id = ANY(%s) AND department_code IS NOT NULL""", (ids,)).fetchall()
        for p in parts:
            g = group(p["department_code"])
            c = by_id[p["case_id"]]
            g.add_case(c)
            if p["done_at"] is not None:
                limit = (c["sla"].get("stages") or {}).get("handle")
                seconds = (p["done_at"] - p["assigned_at"]).total_seconds()
                g.add_stage("handle", seconds, limit is None or seconds <= limit)
        for r in records:
            if r["actor_department"] and r["actor_kind"] != "system":
                group(r["actor_department"]).actions += 1
    else:
        field = "actor_role" if by == "post" else "actor"
        for r in records:
            if r[field] is None or r["actor_kind"] == "system":
                continue
            g = group(r[field])
            g.actions += 1
            g.add_case(by_id[r["case_id"]])
            if r["stage_done"]:
                g.add_stage(r["stage_done"]["stage"], r["stage_done"]["seconds"], r["stage_done"]["on_time"])
    overall = _Group("*", "合计")
    for c in cases:
        overall.add_case(c)
    for r in records:
        if r["stage_done"]:
            overall.add_stage(r["stage_done"]["stage"], r["stage_done"]["seconds"], r["stage_done"]["on_time"])
    return {"by": by, "level": level if by == "area" else None, "since": since, "until": until,
            "total": overall.result(), "groups": sorted((g.result() for g in groups.values()), key=lambda g: g["key"])}
