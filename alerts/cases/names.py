"""Names, not codes, for the people and things a case page shows: who acted (a person's
display name, a department's name, a rule's name for ``system:rule:<id>``, the hub's own
clocks in Chinese) and the state of each dispatched part (待签收 … 已反馈). Added to the case
detail as ``*_label`` fields beside the codes, which stay for integrators."""
from __future__ import annotations

from typing import Any

import psycopg

from config.vocabulary import ASSIGNMENT_STATE_LABELS, SYSTEM_ACTOR_LABELS


def actor_label(name: str | None, users: dict[str, str], rules: dict[str, str]) -> str | None:
    if not name:
        return name
    if name.startswith("system:"):
        what = name.removeprefix("system:")
        kind, _, rest = what.partition(":")
        if kind == "rule":
            return f"系统规则：{rules.get(rest, rest)}"
        base = SYSTEM_ACTOR_LABELS.get(kind)
        if base:
            return f"{base}{'：' + rest if rest else ''}"
        return f"系统（{what}）"
    if name.startswith("case-system:"):
        return f"外部系统：{name.removeprefix('case-system:')}"
    return users.get(name, name)


def label(conn: psycopg.Connection, detail: dict[str, Any], rule_names: dict[str, str]) -> dict[str, Any]:
    """Add ``actor_label`` / ``actor_department_label`` to the timeline, ``assignee_label`` /
    ``state_label`` to the assignments, ``added_by_label`` to the evidence, and the case's
    ``place_label`` (below the county) and ``owner_label``."""
    timeline, assignments, evidence = (detail.get(k) or [] for k in ("timeline", "assignments", "evidence"))
    people = {t.get("actor") for t in timeline} | {a.get("assignee") for a in assignments} | \
        {a.get("handled_by") for a in assignments} | {e.get("added_by") for e in evidence}
    people = sorted(p for p in people if p and ":" not in p)
    users = {r["username"]: r["display_name"] for r in conn.execute(
        "SELECT username, display_name FROM users WHERE username = ANY(%s)", (people,))} if people else {}
    depts = sorted({t.get("actor_department") for t in timeline if t.get("actor_department")})
    dept_names = {r["code"]: r["name"] for r in conn.execute(
        "SELECT code, name FROM departments WHERE code = ANY(%s)", (depts,))} if depts else {}
    for t in timeline:
        t["actor_label"] = actor_label(t.get("actor"), users, rule_names)
        if t.get("actor_department"):
            t["actor_department_label"] = dept_names.get(t["actor_department"], t["actor_department"])
    for a in assignments:
        a["state_label"] = ASSIGNMENT_STATE_LABELS.get(a.get("state"), a.get("state"))
        if a.get("assignee"):
            a["assignee_label"] = users.get(a["assignee"], a["assignee"])
        if a.get("handled_by"):
            a["handled_by_label"] = users.get(a["handled_by"], a["handled_by"])
    for e in evidence:
        if e.get("added_by"):
            e["added_by_label"] = actor_label(e["added_by"], users, rule_names)
    # The place and the responsible level by name, from the county down (a grid worker's own
    # tree does not hold the levels above their grid).
    codes = sorted(set(detail.get("grid_path") or []) | set(detail.get("owner_path") or []))
    names = {r["code"]: r["name"] for r in conn.execute(
        "SELECT code, name FROM grid_nodes WHERE code = ANY(%s)", (codes,))} if codes else {}
    detail["place_label"] = " › ".join(names.get(c, c) for c in (detail.get("grid_path") or [])[1:])
    detail["owner_label"] = names.get(detail.get("owner_code"), detail.get("owner_code"))
    return detail
