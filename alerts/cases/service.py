"""The case service: create cases, apply lifecycle actions, attach evidence, run the SLA
clocks — each in the caller's transaction, writing with every change its record in the
electronic archive (case_transitions), its outbox message(s) and its feed entry.

Every function takes an open connection (dict rows) and leaves committing to the caller:
the API commits per request, the engine per event batch, the CLI per command."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from alerts import feed, labels
from alerts.actor import Actor
from alerts.cases import flows, personal, sla
from alerts.cases.flows import AssignmentView, CaseView
from config.vocabulary import CHANNEL_LABELS, LEVEL_RANK, ROLE_LABELS
from store.where import Where
from alerts.cases.models import (
    ACTION_LABELS,
    FINISHED,
    Action,
    ActionParams,
    CaseError,
    CaseNotFound,
    CaseState,
    EvidenceItem,
    NewCase,
    record_label,
)
from alerts.config import AlertsConfig
from alerts.delivery import outbox

log = logging.getLogger(__name__)
S = CaseState


# ---------------------------------------------------------------------------- snapshots

def summary(case: dict) -> dict[str, Any]:
    """The case as shown to people and sent to case systems (no reporter: confidential)."""
    state = CaseState(case["state"])
    return {
        "id": case["id"], "number": case["number"], "title": case["title"], "description": case["description"],
        "category": case["category"], "category_label": labels.category_label(case["category"]),
        "urgency": case["urgency"], "urgency_label": labels.urgency_label(case["urgency"]),
        "urgency_colour": labels.urgency_colour(case["urgency"]),
        "channel": case["channel"], "channel_label": CHANNEL_LABELS.get(case["channel"], case["channel"]),
        "state": state.value, "state_label": state.label,
        "grid_code": case["grid_code"], "grid_path": list(case["grid_path"]),
        "owner_code": case["owner_code"], "owner_path": list(case["owner_path"]),
        "lat": case["lat"], "lon": case["lon"], "address": case["address"],
        "alarm_id": case["alarm_id"], "external_ref": case["external_ref"],
        "created_at": case["created_at"], "created_by": case["created_by"],
        "due_at": case["due_at"], "stage": case["stage"], "stage_label": labels.stage_label(case["stage"]),
        "stage_due_at": case["stage_due_at"], "overdue": case["overdue"], "stage_overdue": case["stage_overdue"],
        "warned": case["warned"], "suspended": state is S.suspended,
        "supervisions": case["supervisions"], "escalations": case["escalations"],
        "reopen_count": case["reopen_count"], "satisfaction": case["satisfaction"], "closed_at": case["closed_at"],
        "updated_at": case["updated_at"], "version": case["version"],
    }


def evidence_summary(row: dict) -> dict[str, Any]:
    detail = row.get("detail") or {}
    # Footage: a held range of a recording (kind recording: camera, range, segments, play and
    # export), or a snapshot/clip taken from one (the position it came from: camera, time, segment).
    recording = detail if row["kind"] == "recording" and detail else detail.get("recording")
    return {"id": row["id"], "kind": row["kind"], "ref": row["ref"], "sha256": row["sha256"],
            "media_type": row["media_type"], "evidence_id": row["evidence_id"], "source_id": row["source_id"],
            "event_id": row["event_id"], "captured_at": row["captured_at"], "added_at": row["added_at"],
            "added_by": row["added_by"], "recording": recording}


def missing_clips(conn: psycopg.Connection, case_id: str, evidence: list[dict]) -> list[dict]:
    """Clips of the case's events that the camera could not make (``evidence_missing``): the
    archive says why in place of the clip (a reference the case holds gets ``missing``; a
    flag's clip, never referenced, is listed after the evidence)."""
    rows = conn.execute(
        """SELECT m.id, m.event_id, m.source_id, m.reason, m.text, m.captured_at FROM evidence_missing m
           WHERE m.event_id IN (SELECT event_id FROM case_evidence WHERE case_id = %s AND event_id IS NOT NULL)
              OR m.id IN (SELECT coalesce(evidence_id, ref) FROM case_evidence WHERE case_id = %s)
           ORDER BY m.captured_at""", (case_id, case_id)).fetchall()
    by_ref = {e["evidence_id"] or e["ref"]: e for e in evidence}
    extra = []
    for m in rows:
        note = {"reason": m["reason"], "text": m["text"]}
        if m["id"] in by_ref:
            by_ref[m["id"]]["missing"] = note
        else:
            extra.append({"id": None, "kind": "clip", "ref": m["id"], "sha256": None, "media_type": None,
                          "evidence_id": None, "source_id": m["source_id"], "event_id": m["event_id"],
                          "captured_at": m["captured_at"], "added_at": None, "added_by": None, "missing": note})
    return extra


def load_view(conn: psycopg.Connection, case: dict) -> CaseView:
    rows = conn.execute(
        "SELECT id, round, department_code, assignee, state, handled_by FROM case_assignments WHERE case_id = %s",
        (case["id"],)).fetchall()
    current = tuple(AssignmentView(r["id"], r["department_code"], r["assignee"], r["state"], r["handled_by"])
                    for r in rows if r["round"] == case["round"])
    handlers = {r["handled_by"] for r in rows if r["handled_by"]}
    handlers |= {r["actor"] for r in conn.execute(
        "SELECT DISTINCT actor FROM case_transitions WHERE case_id = %s AND action = 'self_close'", (case["id"],))}
    return CaseView(
        state=CaseState(case["state"]), grid_path=tuple(case["grid_path"]), owner_path=tuple(case["owner_path"]),
        urgency=case["urgency"], assignments=current, handlers=frozenset(handlers),
        handler_departments=frozenset(r["department_code"] for r in rows
                                      if r["department_code"] and r["state"] in ("accepted", "done")),
        resume_state=CaseState(case["resume_state"]) if case["resume_state"] else None,
        departments_anywhere=frozenset(r["department_code"] for r in rows if r["department_code"]),
    )


def _record(conn: psycopg.Connection, case_id: str, at: datetime, action: str, from_state: str | None,
            to_state: str, actor: Actor, owner_code: str | None, note: str | None = None,
            detail: dict | None = None) -> dict:
    return conn.execute(
        """INSERT INTO case_transitions (case_id, at, action, from_state, to_state, actor, actor_kind, actor_role,
               actor_node, actor_department, source_ip, owner_code, note, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (case_id, at, action, from_state, to_state, actor.name, actor.kind, actor.role, actor.node_code,
         actor.department_code, actor.source_ip, owner_code, note, Jsonb(detail or {})),
    ).fetchone()


def transition_summary(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "at": row["at"], "action": row["action"], "label": record_label(row["action"]),
            "from_state": row["from_state"], "to_state": row["to_state"],
            "to_state_label": CaseState(row["to_state"]).label, "actor": row["actor"],
            "actor_kind": row["actor_kind"], "actor_role": row["actor_role"], "actor_node": row["actor_node"],
            "actor_department": row["actor_department"], "source_ip": row["source_ip"],
            "owner_code": row["owner_code"], "note": row["note"], "detail": row["detail"]}


def _announce(conn: psycopg.Connection, cfg: AlertsConfig, case: dict, event: str, action: str,
              body: dict[str, Any], now: datetime, actor: Actor | None = None) -> None:
    """Outbox message(s) and feed entry of one change, in the change's transaction."""
    snapshot = summary(case)
    exclude = {actor.name.split(":", 1)[1]} if actor is not None and actor.kind == "external" else set()
    outbox.enqueue(conn, cfg, case, event, {"case": snapshot, **body}, now, exclude)
    feed.publish(conn, "case", case["id"], action, case["grid_path"],
                 {"number": case["number"], "title": case["title"], "state": case["state"],
                  "state_label": snapshot["state_label"], "urgency": case["urgency"], "category": case["category"],
                  "owner_code": case["owner_code"], "overdue": case["overdue"] or case["stage_overdue"]})


# ---------------------------------------------------------------------------- create

def _number(conn: psycopg.Connection, cfg: AlertsConfig, now: datetime) -> str:
    """The next case number, gap-free: the counter row is updated in the case's own
    transaction, so a case that is rolled back gives its number back (a sequence would
    not). Concurrent creations wait for each other's commit on that row (migration 0015)."""
    seq = conn.execute("UPDATE case_number_counter SET last = last + 1 RETURNING last").fetchone()["last"]
    return f"XL{now.astimezone(cfg.timezone):%Y%m%d}-{seq:06d}"


def _path(conn: psycopg.Connection, code: str) -> list[str] | None:
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    return list(row["path"]) if row else None


def default_owner(conn: psycopg.Connection, actor: Actor, grid_path: list[str]) -> str:
    """The level responsible for a case a person raises: their own level when the place is
    inside it — but a county seat (the hotline, the county centre) hands a place inside a
    township to that township's control room (乡镇调度中心), which dispatches it; a place
    known only down to the county stays at the county. Outside the person's own line (a
    case system, the hub): the place itself."""
    if actor.node_code not in grid_path:
        return grid_path[-1]
    levels = {r["code"]: r["level"] for r in conn.execute(
        "SELECT code, level FROM grid_nodes WHERE code = ANY(%s)", (grid_path,))}
    township_rank = LEVEL_RANK["township"]
    if LEVEL_RANK.get(levels.get(actor.node_code, ""), 9) >= township_rank:
        return actor.node_code
    townships = [c for c in grid_path if LEVEL_RANK.get(levels.get(c, ""), -1) == township_rank]
    return townships[0] if townships else actor.node_code


def find_by_source(conn: psycopg.Connection, channel: str, source_ref: str) -> dict | None:
    return conn.execute("SELECT * FROM cases WHERE channel = %s AND source_ref = %s",
                        (channel, source_ref)).fetchone()


def create_case(conn: psycopg.Connection, cfg: AlertsConfig, new: NewCase, actor: Actor,
                now: datetime | None = None, *, evidence: list[EvidenceItem] | None = None) -> dict:
    """A new case in state reported (待受理), its clocks started.  With ``source_ref`` an
    existing case of the same channel and reference is returned instead (importing the
    same CAP alert twice makes one case)."""
    now = now or datetime.now(UTC)
    if new.source_ref:
        existing = find_by_source(conn, new.channel, new.source_ref)
        if existing is not None:
            return existing
    grid_path = _path(conn, new.grid_code)
    if grid_path is None:
        raise CaseError(f"没有编码为 {new.grid_code} 的网格或辖区 (unknown grid node)", 400)
    if actor.kind != "system" and not actor.sees(grid_path):
        raise CaseError(f"网格 {new.grid_code} 不存在或不在本辖区 (grid node not found)", 404)
    owner = new.owner_code
    if owner is None:
        owner = default_owner(conn, actor, grid_path)
    if owner not in grid_path:
        raise CaseError(f"责任单位 {owner} 不在事发地 {new.grid_code} 的上级路径上 "
                        f"(the responsible node is not above the case's place)", 400)
    owner_path = grid_path[:grid_path.index(owner) + 1]
    try:
        snap = cfg.sla_snapshot(new.category, new.urgency)
    except Exception as exc:
        raise CaseError(f"该类别与紧急程度没有配置办结时限 (no time limit for this case): {exc}", 400) from None
    clock = sla.start(snap, now, S.reported)
    case_id = str(ULID())
    case = conn.execute(
        """INSERT INTO cases (id, number, title, description, category, urgency, channel, state, grid_code, grid_path,
               owner_code, owner_path, lat, lon, address, alarm_id, source_ref, reporter, created_at, created_by, sla,
               due_at, stage, stage_started_at, stage_due_at, sla_check_at, updated_at)
           VALUES (%(id)s, %(number)s, %(title)s, %(description)s, %(category)s, %(urgency)s, %(channel)s, 'reported',
               %(grid_code)s, %(grid_path)s, %(owner)s, %(owner_path)s, %(lat)s, %(lon)s, %(address)s, %(alarm_id)s,
               %(source_ref)s, %(reporter)s, %(now)s, %(actor)s, %(sla)s, %(due_at)s, %(stage)s, %(stage_started_at)s,
               %(stage_due_at)s, %(sla_check_at)s, %(now)s)
           RETURNING *""",
        {"id": case_id, "number": _number(conn, cfg, now), "title": new.title[:200],
         "description": new.description or "", "category": new.category, "urgency": new.urgency,
         "channel": new.channel, "grid_code": new.grid_code, "grid_path": grid_path, "owner": owner,
         "owner_path": owner_path, "lat": new.lat, "lon": new.lon, "address": new.address,
         "alarm_id": new.alarm_id, "source_ref": new.source_ref,
         "reporter": Jsonb(new.reporter) if new.reporter else None, "now": now, "actor": actor.name,
         "sla": Jsonb(snap), "due_at": clock["due_at"], "stage": clock["stage"],
         "stage_started_at": clock["stage_started_at"], "stage_due_at": clock["stage_due_at"],
         "sla_check_at": clock["sla_check_at"]},
    ).fetchone()
    _record(conn, case_id, now, "create", None, S.reported.value, actor, owner,
            detail={"channel": new.channel, "alarm_id": new.alarm_id})
    items = list(evidence or [])
    if new.evidence_ids:
        items += evidence_from_store(conn, new.evidence_ids, actor)
    attached = attach_evidence(conn, cfg, case, items, actor, now, announce=False)
    body: dict[str, Any] = {"evidence": [evidence_summary(e) for e in attached]}
    if new.reporter:
        body["reporter"] = new.reporter        # the case system calls the reporter back (结果反馈)
    if new.alarm_id:
        body["alarm"] = conn.execute(
            "SELECT id, rule_id, source_kind, source_id, type, severity, count, first_at, correlated FROM alarms "
            "WHERE id = %s", (new.alarm_id,)).fetchone()
    _announce(conn, cfg, case, "case.created", "created", body, now)
    return case


def evidence_from_store(conn: psycopg.Connection, ids: list[str], actor: Actor) -> list[EvidenceItem]:
    """Evidence files by id (e.g. the snapshot a video supervisor took), only those of
    sources inside the actor's subtree."""
    rows = conn.execute(
        """SELECT e.*, m.grid_path AS path FROM evidence e
           LEFT JOIN membership_paths m ON m.source_id = e.source_id AND m.valid_from <= e.captured_at
                AND (m.valid_to IS NULL OR m.valid_to > e.captured_at)
           WHERE e.id = ANY(%s)""", (list(ids),)).fetchall()
    found = {r["id"]: r for r in rows if actor.kind == "system" or actor.sees(r["path"])}
    missing = [i for i in ids if i not in found]
    if missing:
        raise CaseError(f"evidence not found: {', '.join(missing[:5])}", 404)
    return [EvidenceItem(kind=_kind_of(r["media_type"]), ref=r["id"], sha256=r["sha256"], media_type=r["media_type"],
                         evidence_id=r["id"], source_kind=r["source_kind"], source_id=r["source_id"],
                         event_id=r["event_id"], captured_at=r["captured_at"]) for r in found.values()]


def _kind_of(media_type: str | None) -> str:
    if media_type and media_type.startswith("image/"):
        return "snapshot"
    if media_type and media_type.startswith("video/"):
        return "clip"
    return "media"


def attach_evidence(conn: psycopg.Connection, cfg: AlertsConfig, case: dict, items: list[EvidenceItem],
                    actor: Actor, now: datetime | None = None, *, announce: bool = True) -> list[dict]:
    """Attach evidence (each reference once per case).  With ``announce`` the addition is
    recorded in the archive and sent to the case systems (case.evidence)."""
    now = now or datetime.now(UTC)
    inserted = []
    for item in items:
        row = conn.execute(
            """INSERT INTO case_evidence (case_id, kind, ref, evidence_id, sha256, media_type, source_kind, source_id,
                   event_id, captured_at, added_at, added_by, detail)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (case_id, ref) DO NOTHING RETURNING *""",
            (case["id"], item.kind, item.ref, item.evidence_id, item.sha256, item.media_type, item.source_kind,
             item.source_id, item.event_id, item.captured_at, now, actor.name, Jsonb(item.detail)),
        ).fetchone()
        if row is not None:
            inserted.append(row)
    held = [r["evidence_id"] for r in inserted if r["evidence_id"]]
    if held:
        # The archive keeps it past the camera's evidence retention (the sweep skips held files).
        conn.execute("UPDATE evidence SET hold = %s WHERE id = ANY(%s) AND hold IS NULL", (f"case {case['id']}", held))
    if inserted and announce:
        _record(conn, case["id"], now, "evidence", case["state"], case["state"], actor, case["owner_code"],
                detail={"refs": [r["ref"] for r in inserted]})
        _announce(conn, cfg, case, "case.evidence", "evidence",
                  {"evidence": [evidence_summary(r) for r in inserted]}, now)
    return inserted


# ---------------------------------------------------------------------------- actions

def lock(conn: psycopg.Connection, case_id: str) -> dict:
    case = conn.execute("SELECT * FROM cases WHERE id = %s OR number = %s FOR UPDATE", (case_id, case_id)).fetchone()
    if case is None:
        raise CaseNotFound()
    return case


def apply(conn: psycopg.Connection, cfg: AlertsConfig, case_id: str, action: Action | str, actor: Actor,
          params: ActionParams | None = None, now: datetime | None = None) -> dict:
    """Take one lifecycle action; returns the case after it.  Raises CaseError (with the
    HTTP status to answer) when the state, the role or the scope does not allow it."""
    action = Action(action)
    params = params or ActionParams()
    now = now or datetime.now(UTC)
    case = lock(conn, case_id)
    view = load_view(conn, case)
    if params.expected_state and params.expected_state != case["state"] and flows.visible(view, actor):
        raise CaseError(f"案件已被他人办理，当前状态为“{CaseState(case['state']).label}”，请刷新后再试 "
                        f"(the case moved meanwhile: it is now {case['state']})")
    flows.check(action, view, actor)
    t = flows.TRANSITIONS[action]
    note = (params.note or "").strip() or None
    if action is Action.feedback and note is None and actor.is_person:
        raise CaseError("反馈须填写处置结果 (feedback needs the result: what was done)", 400)
    if t.needs_note and note is None and actor.kind != "system" and not (
            action is Action.feedback and actor.kind == "external"):     # a case system reports a status
        raise CaseError(f"“{action.label}”须填写办理意见，说明理由 ({action.value} needs a note saying why)", 400)
    updates: dict[str, Any] = {}
    detail: dict[str, Any] = dict(params.detail)
    owner_changed = False
    remaining: list[AssignmentView] | None = None

    if action is Action.dispatch:
        _dispatch(conn, case, actor, params, now, detail)
        updates["round"] = case["round"] + 1
    elif action in (Action.sign, Action.send_back, Action.feedback):
        wanted = ("assigned",) if action is Action.sign else ("assigned", "accepted")
        mine = flows.own_assignments(view, actor, wanted)
        new_state_of_part = {Action.sign: "accepted", Action.send_back: "returned", Action.feedback: "done"}[action]
        column = {Action.sign: "accepted_at", Action.send_back: "returned_at", Action.feedback: "done_at"}[action]
        handled_by = None if action is Action.send_back else actor.name
        for part in mine:
            # feedback on a part nobody signed for counts as signed then (签收 implied)
            signed = ", accepted_at = coalesce(accepted_at, %(now)s)" if action is Action.feedback else ""
            conn.execute(
                f"""UPDATE case_assignments SET state = %(state)s, {column} = %(now)s, note = coalesce(%(note)s, note),
                        handled_by = coalesce(%(by)s, handled_by){signed}
                    WHERE id = %(id)s""",
                {"state": new_state_of_part, "now": now, "note": note, "by": handled_by, "id": part.id})
        detail["parts"] = [p.department_code or p.assignee for p in mine]
        ids = {p.id for p in mine}
        remaining = [AssignmentView(a.id, a.department_code, a.assignee,
                                    new_state_of_part if a.id in ids else a.state, a.handled_by)
                     for a in view.assignments]
    elif action is Action.reopen:
        updates["reopen_count"] = case["reopen_count"] + 1
    elif action in (Action.close, Action.self_close):
        updates["closed_at"] = now
    elif action is Action.evaluate:
        if params.satisfaction is None or not 1 <= params.satisfaction <= 5:
            raise CaseError("评价须选择满意度：1（不满意）至 5（非常满意） (evaluate needs a satisfaction 1..5)", 400)
        updates["satisfaction"] = params.satisfaction
        detail["satisfaction"] = params.satisfaction
    elif action is Action.supervise:
        updates["supervisions"] = case["supervisions"] + 1
    elif action is Action.escalate:
        owner_path = list(case["owner_path"][:-1])
        updates.update(owner_code=owner_path[-1], owner_path=owner_path, escalations=case["escalations"] + 1)
        detail.update({"from": case["owner_code"], "to": owner_path[-1]})
        owner_changed = True
    elif action is Action.hand_down:
        target = params.target_node
        lower = list(case["grid_path"][len(case["owner_path"]):])
        if not target or target not in lower:
            raise CaseError(f"交办须选择责任单位与事发地之间的下级单位：{'、'.join(lower) or '无'} "
                            f"(hand_down needs target_node)", 400)
        owner_path = list(case["grid_path"][:case["grid_path"].index(target) + 1])
        updates.update(owner_code=target, owner_path=owner_path)
        detail.update({"from": case["owner_code"], "to": target})
        owner_changed = True
    elif action is Action.suspend:
        updates["resume_state"] = case["state"]
    elif action is Action.resume:
        updates["resume_state"] = None

    new_state = flows.next_state(action, view, remaining_after=remaining)
    if new_state != CaseState(case["state"]) or owner_changed:
        updates.update(sla.on_change(case, new_state, now, reset_stage=owner_changed))
        if case["stage"] and (updates.get("stage", case["stage"]) != case["stage"] or owner_changed):
            # The archive keeps how long the stage took and whether it kept its limit:
            # the assessment (考核评价) is computed from these records.
            detail["stage_done"] = sla.stage_done(case, now)
    updates["state"] = new_state.value
    case = _update(conn, case["id"], updates, now)
    record = _record(conn, case["id"], now, action.value, view.state.value, new_state.value, actor,
                     case["owner_code"], note, detail)
    _announce(conn, cfg, case, "case.transition", action.value, {"transition": transition_summary(record)}, now,
              actor)
    return case


def _dispatch(conn: psycopg.Connection, case: dict, actor: Actor, params: ActionParams, now: datetime,
              detail: dict) -> None:
    round_ = case["round"] + 1
    departments = list(dict.fromkeys(params.departments))
    if actor.kind == "external":
        conn.execute(
            """INSERT INTO case_assignments (case_id, round, assignee, node_code, state, assigned_at)
               VALUES (%s, %s, %s, %s, 'assigned', %s)""", (case["id"], round_, actor.name, case["owner_code"], now))
        detail["parts"] = [actor.name]
        return
    if not departments and not params.assignee:
        raise CaseError("派遣须选择处置部门或网格员 (dispatch needs departments and/or an assignee)", 400)
    for code in departments:
        dept = conn.execute("SELECT d.code, d.node_code, n.path FROM departments d JOIN grid_nodes n "
                            "ON n.code = d.node_code WHERE d.code = %s", (code,)).fetchone()
        if dept is None:
            raise CaseError(f"没有编码为 {code} 的部门 (unknown department)", 400)
        # A department of the place's line: at the place or above it, or inside the responsible level.
        if dept["node_code"] not in case["grid_path"] and case["owner_code"] not in dept["path"]:
            raise CaseError(f"部门 {code} 不负责该案件的事发地 (the department does not serve this case's place)", 400)
        conn.execute(
            """INSERT INTO case_assignments (case_id, round, department_code, node_code, state, assigned_at)
               VALUES (%s, %s, %s, %s, 'assigned', %s)""", (case["id"], round_, code, dept["node_code"], now))
    if params.assignee:
        user = conn.execute(
            "SELECT u.username, u.role, u.node_code, n.path FROM users u JOIN grid_nodes n ON n.code = u.node_code "
            "WHERE u.username = %s AND u.active", (params.assignee,)).fetchone()
        if user is None or user["role"] not in ("grid_worker", "grid_head"):
            raise CaseError(f"{params.assignee} 不是在岗的网格员或网格长 (not an active grid worker or grid head)", 400)
        if user["node_code"] not in case["grid_path"] and case["owner_code"] not in user["path"]:
            raise CaseError(f"{params.assignee} 不负责该案件的事发地 (the assignee does not serve this case's place)", 400)
        conn.execute(
            """INSERT INTO case_assignments (case_id, round, assignee, node_code, state, assigned_at)
               VALUES (%s, %s, %s, %s, 'assigned', %s)""", (case["id"], round_, user["username"], user["node_code"], now))
    detail["parts"] = departments + ([params.assignee] if params.assignee else [])


_UPDATABLE = {"state", "resume_state", "owner_code", "owner_path", "due_at", "stage", "stage_started_at",
              "stage_due_at", "stage_warned", "stage_overdue", "warned", "overdue", "overdue_at", "sla_check_at",
              "paused_at", "paused_s", "supervisions", "escalations", "reopen_count", "round", "satisfaction",
              "closed_at", "external_ref"}


def _update(conn: psycopg.Connection, case_id: str, updates: dict[str, Any], now: datetime) -> dict:
    bad = set(updates) - _UPDATABLE
    if bad:
        raise ValueError(f"not updatable: {sorted(bad)}")
    sets = ", ".join(f"{k} = %({k})s" for k in updates)
    return conn.execute(
        f"UPDATE cases SET {sets}{', ' if sets else ''}version = version + 1, updated_at = %(now__)s "
        "WHERE id = %(id__)s RETURNING *", {**updates, "id__": case_id, "now__": now}).fetchone()


def set_external_ref(conn: psycopg.Connection, case_id: str, ref: str, now: datetime | None = None) -> dict:
    return _update(conn, case_id, {"external_ref": ref[:200]}, now or datetime.now(UTC))


def record_note(conn: psycopg.Connection, cfg: AlertsConfig, case: dict, action: str, actor: Actor, note: str | None,
                detail: dict, now: datetime | None = None, *, announce: bool = True) -> dict:
    """A record in the archive that changes no state (broadcast reports, external statuses)."""
    now = now or datetime.now(UTC)
    row = _record(conn, case["id"], now, action, case["state"], case["state"], actor, case["owner_code"], note, detail)
    if announce:
        _announce(conn, cfg, case, "case.transition", action, {"transition": transition_summary(row)}, now, actor)
    return row


# ---------------------------------------------------------------------------- SLA

def sla_due(conn: psycopg.Connection, now: datetime, limit: int = 200) -> list[str]:
    return [r["id"] for r in conn.execute(
        "SELECT id FROM cases WHERE sla_check_at <= %s ORDER BY sla_check_at LIMIT %s", (now, limit))]


def sla_check(conn: psycopg.Connection, cfg: AlertsConfig, case_id: str, now: datetime | None = None) -> list[str]:
    """Record what the clocks of one case say now: warnings at 80 %, overdue marks with
    supervision (督办) by the hub, and — when the limit says so — escalation (上报) one
    level up.  Returns the marks recorded."""
    now = now or datetime.now(UTC)
    case = conn.execute("SELECT * FROM cases WHERE id = %s FOR UPDATE SKIP LOCKED", (case_id,)).fetchone()
    if case is None:
        return []
    marks = sla.due_marks(case, now)
    clock = Actor.system("sla")
    escalate = False
    for mark in marks:
        updates: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        if mark == "stage_warning":
            updates["stage_warned"] = True
            detail = {"scope": "stage", "stage": case["stage"], "due_at": case["stage_due_at"].isoformat()}
        elif mark == "stage_overdue":
            updates.update(stage_warned=True, stage_overdue=True, supervisions=case["supervisions"] + 1)
            detail = {"stage": case["stage"], "due_at": case["stage_due_at"].isoformat(), "supervised": True}
            escalate = bool(case["sla"].get("auto_escalate")) and len(case["owner_path"]) > 1
        elif mark == "sla_warning":
            updates["warned"] = True
            detail = {"scope": "total", "due_at": case["due_at"].isoformat()}
        elif mark == "overdue":
            updates.update(warned=True, overdue=True, overdue_at=now, supervisions=case["supervisions"] + 1)
            detail = {"due_at": case["due_at"].isoformat(), "supervised": True}
        merged = {**case, **updates}
        updates["sla_check_at"] = sla.next_check(merged)
        case = _update(conn, case_id, updates, now)
        note = {"stage_warning": f"{labels.stage_label(detail.get('stage'))}环节即将超时",
                "stage_overdue": f"{labels.stage_label(detail.get('stage'))}环节超时，系统自动督办",
                "sla_warning": "工单即将超过规定办结时间", "overdue": "工单超过规定办结时间，系统自动督办"}[mark]
        action = "sla_warning" if mark in ("stage_warning", "sla_warning") else mark
        row = _record(conn, case_id, now, action, case["state"], case["state"], clock, case["owner_code"], note, detail)
        outbox.enqueue(conn, cfg, case, "case.sla", {"case": summary(case), "transition": transition_summary(row)}, now)
        feed.publish(conn, "case", case_id, action, case["grid_path"],
                     {"number": case["number"], "title": case["title"], "state": case["state"], "mark": mark,
                      "overdue": case["overdue"] or case["stage_overdue"]})
    if escalate:
        apply(conn, cfg, case_id, Action.escalate, clock,
              ActionParams(note="环节超时，按规定自动上报", detail={"reason": "stage_overdue"}), now)
    return marks


# ---------------------------------------------------------------------------- reading

def _visibility(actor: Actor) -> tuple[str, dict]:
    if actor.kind == "system":
        return "true", {}
    clause = "c.grid_path @> ARRAY[%(scope_node)s]::text[]"
    params: dict[str, Any] = {"scope_node": actor.node_code}
    if actor.department_code:
        clause = (f"({clause} OR EXISTS (SELECT 1 FROM case_assignments sa WHERE sa.case_id = c.id "
                  "AND sa.department_code = %(scope_dept)s))")
        params["scope_dept"] = actor.department_code
    return clause, params


def get_case(conn: psycopg.Connection, case_id: str, actor: Actor) -> dict:
    clause, params = _visibility(actor)
    case = conn.execute(f"SELECT c.* FROM cases c WHERE (c.id = %(id)s OR c.number = %(id)s) AND {clause}",
                        {**params, "id": case_id}).fetchone()
    if case is None:
        raise CaseNotFound()
    return case


def detail(conn: psycopg.Connection, case: dict, actor: Actor, now: datetime | None = None) -> dict[str, Any]:
    """Everything the case page shows: the case, its archive (timeline), the parts
    dispatched, the evidence, the alarm, broadcasts, clocks and what the caller may do."""
    now = now or datetime.now(UTC)
    view = load_view(conn, case)
    timeline = [transition_summary(r) for r in conn.execute(
        "SELECT * FROM case_transitions WHERE case_id = %s ORDER BY id", (case["id"],))]
    assignments = conn.execute(
        """SELECT a.id, a.round, a.department_code, d.name AS department_name, a.assignee, a.node_code, a.state,
                  a.assigned_at, a.accepted_at, a.done_at, a.returned_at, a.handled_by, a.note
           FROM case_assignments a LEFT JOIN departments d ON d.code = a.department_code
           WHERE a.case_id = %s ORDER BY a.round, a.id""", (case["id"],)).fetchall()
    # A clip is referenced before its file is stored (the camera worker finishes it seconds
    # later): take its hash from the evidence table once it is there.
    evidence = [evidence_summary(r) for r in conn.execute(
        """SELECT ce.id, ce.kind, ce.ref, coalesce(ce.sha256, e.sha256) AS sha256,
                  coalesce(ce.media_type, e.media_type) AS media_type, coalesce(ce.evidence_id, e.id) AS evidence_id,
                  ce.source_id, ce.event_id, coalesce(ce.captured_at, e.captured_at) AS captured_at, ce.added_at,
                  ce.added_by, ce.detail
           FROM case_evidence ce LEFT JOIN evidence e ON e.id = coalesce(ce.evidence_id, ce.ref)
           WHERE ce.case_id = %s ORDER BY ce.id""", (case["id"],))]
    evidence += missing_clips(conn, case["id"], evidence)
    alarm = None
    if case["alarm_id"]:
        alarm = conn.execute(
            "SELECT id, rule_id, source_id, type, severity, state, title, count, first_at, last_at FROM alarms "
            "WHERE id = %s", (case["alarm_id"],)).fetchone()
    # Broadcasts are the devices layer's (device_broadcasts, one receipt per speaker).
    broadcasts = conn.execute(
        """SELECT b.id, b.kind, b.priority, b.text AS message, b.state AS status, b.targets AS area_codes,
                  b.requested_at, b.completed_at, l.reported_at,
                  (SELECT count(*) FROM device_broadcast_receipts r WHERE r.broadcast_id = b.id) AS speakers,
                  (SELECT count(*) FROM device_broadcast_receipts r WHERE r.broadcast_id = b.id
                       AND r.status = 'finished') AS finished,
                  (SELECT count(*) FROM device_broadcast_receipts r WHERE r.broadcast_id = b.id
                       AND r.late_status = 'finished') AS late_finished
           FROM case_broadcasts l JOIN device_broadcasts b ON b.id = l.broadcast_id
           WHERE l.case_id = %s ORDER BY b.requested_at""", (case["id"],)).fetchall()
    allowed = [{"action": a.value, "label": ACTION_LABELS[a], "needs_note": flows.TRANSITIONS[a].needs_note,
                "params": _action_params(a)} for a in flows.allowed_actions(view, actor)]
    out = summary(case)
    if actor.kind != "system" and actor.node_code in case["owner_path"]:
        # personal data only for the responsible level and above, masked; whole only
        # through the audited reveal (reporter_of), for the roles that call people back
        out["reporter"] = personal.masked(case["reporter"])
        out["reporter_revealable"] = bool(case["reporter"]) and actor.role in personal.REVEAL_ROLES
    out.update(timeline=timeline, assignments=assignments, evidence=evidence, alarm=alarm, broadcasts=broadcasts,
               allowed_actions=allowed, remaining_s=sla.remaining_s(case, now), sla=case["sla"])
    return out


def _action_params(action: Action) -> list[str]:
    return {Action.dispatch: ["departments", "assignee"], Action.hand_down: ["target_node"],
            Action.evaluate: ["satisfaction"]}.get(action, [])


def list_cases(conn: psycopg.Connection, actor: Actor, *, states: list[str] | None = None,
               category: str | None = None, categories: list[str] | None = None, urgency: str | None = None, overdue: bool | None = None,
               grid: str | None = None, since: datetime | None = None, until: datetime | None = None,
               channel: str | None = None, department: str | None = None, q: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict]:
    clause, params = _visibility(actor)
    w = Where(clause, **params)
    w.add("c.state = ANY(%(states)s)", states=states)
    w.add("c.category = %(category)s", category=category)
    w.add("c.category = ANY(%(categories)s)", categories=categories)
    w.add("c.urgency = %(urgency)s", urgency=urgency)
    if overdue is not None:
        w.add(("" if overdue else "NOT ") + "(c.overdue OR c.stage_overdue)")
    w.add("c.grid_path @> ARRAY[%(grid)s]::text[]", grid=grid)
    w.add("c.created_at >= %(since)s", since=since)
    w.add("c.created_at < %(until)s", until=until)
    w.add("c.channel = %(channel)s", channel=channel)
    w.add("EXISTS (SELECT 1 FROM case_assignments fa WHERE fa.case_id = c.id AND fa.department_code = %(department)s)",
          department=department)
    w.add("(c.title ILIKE %(q)s OR c.number ILIKE %(q)s OR c.description ILIKE %(q)s)",
          q="%" + q.replace("%", r"\%").replace("_", r"\_") + "%" if q else None)
    rows = conn.execute(f"SELECT c.* FROM cases c WHERE {w} "
                        "ORDER BY c.created_at DESC, c.id DESC LIMIT %(limit)s OFFSET %(offset)s",
                        {**w.params, "limit": limit, "offset": offset}).fetchall()
    out = []
    for r in rows:
        item = summary(r)
        if actor.kind != "system" and actor.node_code in r["owner_path"] and r["reporter"]:
            item["reporter"] = personal.masked(r["reporter"])
        out.append(item)
    return out


def reporter_of(conn: psycopg.Connection, case_id: str, actor: Actor) -> dict[str, Any]:
    """The reporter's personal information, whole: for the roles that call people back
    (personal.REVEAL_ROLES) at the case's responsible level or above; the caller audits."""
    case = get_case(conn, case_id, actor)
    if actor.role not in personal.REVEAL_ROLES:
        raise CaseError("当前角色无权查看报告人完整信息 (this role may not see the reporter's personal data)", 403)
    if actor.node_code not in case["owner_path"]:
        raise CaseError("仅案件责任单位及其上级可查看报告人信息 (only the responsible level or above)", 403)
    if not case["reporter"]:
        raise CaseError("该案件没有报告人信息 (the case has no reporter)", 404)
    return {"case_id": case["id"], "number": case["number"], "reporter": case["reporter"]}


def assignable(conn: psycopg.Connection, case_id: str, actor: Actor) -> dict[str, Any]:
    """Who a dispatch of this case may go to, by the rule ``_dispatch`` holds it to: the
    departments and the active grid workers and grid heads of the place's line (at the place
    or above it) or inside the responsible level."""
    case = get_case(conn, case_id, actor)
    serves = "(x.node_code = ANY(%(grid_path)s) OR n.path @> ARRAY[%(owner)s]::text[])"
    params = {"grid_path": list(case["grid_path"]), "owner": case["owner_code"]}
    departments = conn.execute(
        f"""SELECT x.code, x.name, x.node_code, n.name AS node_name FROM departments x
            JOIN grid_nodes n ON n.code = x.node_code WHERE {serves} ORDER BY array_length(n.path, 1) DESC, x.name""",
        params).fetchall()
    people = conn.execute(
        f"""SELECT x.username, x.display_name, x.role, x.node_code, n.name AS node_name FROM users x
            JOIN grid_nodes n ON n.code = x.node_code
            WHERE x.active AND x.role IN ('grid_worker', 'grid_head') AND {serves}
            ORDER BY (x.node_code = %(place)s) DESC, array_length(n.path, 1) DESC, x.username""",
        {**params, "place": case["grid_code"]}).fetchall()
    return {"case_id": case["id"], "departments": departments,
            "people": [{**p, "role_label": ROLE_LABELS.get(p["role"], p["role"])} for p in people]}


def is_finished(case: dict) -> bool:
    return CaseState(case["state"]) in FINISHED
