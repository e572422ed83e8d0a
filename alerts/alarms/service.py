"""The alarm service: raise, repeat, re-raise (flap), correlate, acknowledge and clear
alarms — in the caller's transaction, with a feed entry per change."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from alerts import feed, labels
from alerts.actor import Actor
from alerts.alarms import flows
from alerts.alarms.models import AlarmAction, AlarmError, AlarmState, Event
from alerts.cases.models import EvidenceItem
from alerts.evidence import summary as evidence_summary
from config.alerting import Rule
from store.where import Where


@dataclass
class Raised:
    alarm: dict
    created: bool = False          # a new alarm
    reopened: bool = False         # a cleared alarm fired again within its flap window


def alarm_summary(a: dict) -> dict[str, Any]:
    state = AlarmState(a["state"])
    return {"id": a["id"], "rule_id": a["rule_id"], "source_kind": a["source_kind"], "source_id": a["source_id"],
            "type": a["type"], "type_label": labels.event_label(a["type"]), "severity": a["severity"],
            "severity_label": labels.severity_label(a["severity"]), "state": state.value, "state_label": state.label,
            "title": a["title"], "grid_code": a["grid_code"], "grid_path": list(a["grid_path"]), "lat": a["lat"],
            "lon": a["lon"], "first_at": a["first_at"], "last_at": a["last_at"], "count": a["count"],
            "flaps": a["flaps"], "flapping": a["flapping"], "acked_by": a["acked_by"], "acked_at": a["acked_at"],
            "ack_note": a["ack_note"], "cleared_by": a["cleared_by"], "cleared_at": a["cleared_at"],
            "clear_reason": a["clear_reason"], "case_id": a["case_id"], "correlated": list(a["correlated"]),
            "evidence": a["evidence"], "updated_at": a["updated_at"]}


def _publish(conn: psycopg.Connection, alarm: dict, action: str) -> None:
    feed.publish(conn, "alarm", alarm["id"], action, alarm["grid_path"],
                 {"title": alarm["title"], "type": alarm["type"], "severity": alarm["severity"],
                  "state": alarm["state"], "count": alarm["count"], "source_id": alarm["source_id"],
                  "case_id": alarm["case_id"], "flapping": alarm["flapping"]})


def raise_or_repeat(conn: psycopg.Connection, rule: Rule, ev: Event, grid_path: list[str], title: str,
                    now: datetime) -> Raised:
    """The alarm of (source, type) for this event: the open one counts a repeat; a
    cleared one within the flap window is re-raised (a flap: no new case, no actions);
    otherwise a new alarm."""
    spec = rule.alarm
    clear_due = ev.time + spec.clear_after if spec.clear_after else None
    open_alarm = conn.execute(
        "SELECT * FROM alarms WHERE source_id = %s AND type = %s AND state <> 'cleared' FOR UPDATE",
        (ev.source_id, ev.type)).fetchone()
    if open_alarm is not None:
        alarm = conn.execute(
            """UPDATE alarms SET count = count + 1, last_at = greatest(last_at, %s), last_event_id = %s,
                   clear_due_at = %s, updated_at = %s WHERE id = %s RETURNING *""",
            (ev.time, ev.id, clear_due, now, open_alarm["id"])).fetchone()
        _link(conn, alarm["id"], ev, "repeat")
        _publish(conn, alarm, "repeat")
        return Raised(alarm)
    recent = conn.execute(
        """SELECT * FROM alarms WHERE source_id = %s AND type = %s AND state = 'cleared' AND cleared_at > %s
           ORDER BY cleared_at DESC LIMIT 1 FOR UPDATE""",
        (ev.source_id, ev.type, now - spec.flap_window)).fetchone()
    if recent is not None:
        flaps = recent["flaps"] + 1
        alarm = conn.execute(
            """UPDATE alarms SET state = 'active', count = count + 1, flaps = %s, flapping = %s, last_at = %s,
                   last_event_id = %s, cleared_by = NULL, cleared_at = NULL, clear_reason = NULL, acked_by = NULL,
                   acked_at = NULL, ack_note = NULL, clear_due_at = %s, updated_at = %s
               WHERE id = %s RETURNING *""",
            (flaps, flaps >= spec.flap_limit, ev.time, ev.id, clear_due, now, recent["id"])).fetchone()
        _link(conn, alarm["id"], ev, "repeat")
        _publish(conn, alarm, "reopened")
        return Raised(alarm, reopened=True)
    case_due = None
    if rule.case is not None and rule.case.when == "unacknowledged" and rule.case.unacknowledged_for:
        case_due = ev.time + rule.case.unacknowledged_for
    alarm = conn.execute(
        """INSERT INTO alarms (id, rule_id, source_kind, source_id, type, severity, state, title, grid_code, grid_path,
               lat, lon, first_event_id, last_event_id, first_at, last_at, case_due_at, clear_due_at, created_at,
               updated_at)
           VALUES (%s, %s, %s, %s, %s, %s, 'active', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           RETURNING *""",
        (str(ULID()), rule.id, ev.source_kind, ev.source_id, ev.type, str(spec.severity), title[:200],
         ev.grid_code, grid_path, ev.lat, ev.lon, ev.id, ev.id, ev.time, ev.time, case_due, clear_due, now, now),
    ).fetchone()
    _link(conn, alarm["id"], ev, "trigger")
    _publish(conn, alarm, "raised")
    return Raised(alarm, created=True)


def _link(conn: psycopg.Connection, alarm_id: str, ev: Event, role: str) -> None:
    conn.execute("INSERT INTO alarm_events (alarm_id, event_id, event_time, role) VALUES (%s, %s, %s, %s) "
                 "ON CONFLICT DO NOTHING", (alarm_id, ev.id, ev.time, role))


def add_evidence(conn: psycopg.Connection, alarm: dict, items: list[EvidenceItem]) -> tuple[dict, list[EvidenceItem]]:
    """Add evidence references to the alarm (each once); returns the alarm and what was new."""
    known = {e.get("ref") for e in alarm["evidence"]}
    new = [i for i in items if i.ref not in known]
    if not new:
        return alarm, []
    alarm = conn.execute("UPDATE alarms SET evidence = evidence || %s, updated_at = now() WHERE id = %s RETURNING *",
                         (Jsonb([evidence_summary(i) for i in new]), alarm["id"])).fetchone()
    return alarm, new


def open_correlation(conn: psycopg.Connection, alarm: dict, camera_ids: list[str], opens_at: datetime,
                     closes_at: datetime, types: list[str]) -> dict:
    for cam in camera_ids:
        conn.execute(
            """INSERT INTO alarm_correlations (alarm_id, source_id, opens_at, closes_at, types) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (alarm_id, source_id) DO UPDATE SET closes_at = greatest(alarm_correlations.closes_at,
                   EXCLUDED.closes_at)""", (alarm["id"], cam, opens_at, closes_at, list(types)))
    return conn.execute("UPDATE alarms SET correlated = %s WHERE id = %s RETURNING *",
                        (sorted(set(alarm["correlated"]) | set(camera_ids)), alarm["id"])).fetchone()


def correlations_for(conn: psycopg.Connection, ev: Event) -> list[dict]:
    """Open correlation windows this event falls into (the incidents it belongs to)."""
    return conn.execute(
        """SELECT c.alarm_id, c.types FROM alarm_correlations c
           WHERE c.source_id = %s AND c.opens_at <= %s AND c.closes_at >= %s""",
        (ev.source_id, ev.time, ev.time)).fetchall()


def correlate(conn: psycopg.Connection, alarm_id: str, ev: Event) -> dict:
    _link(conn, alarm_id, ev, "correlated")
    alarm = conn.execute("SELECT * FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,)).fetchone()
    _publish(conn, alarm, "correlated")
    return alarm


def set_case(conn: psycopg.Connection, alarm_id: str, case_id: str) -> dict:
    return conn.execute("UPDATE alarms SET case_id = %s, case_due_at = NULL, updated_at = now() WHERE id = %s "
                        "RETURNING *", (case_id, alarm_id)).fetchone()


# ---------------------------------------------------------------------------- people and clocks

def _lock_visible(conn: psycopg.Connection, alarm_id: str, actor: Actor) -> dict:
    alarm = conn.execute("SELECT * FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,)).fetchone()
    if alarm is None or not actor.sees(alarm["grid_path"]):
        raise AlarmError("alarm not found", 404)
    return alarm


def acknowledge(conn: psycopg.Connection, alarm_id: str, actor: Actor, note: str | None = None,
                now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    alarm = _lock_visible(conn, alarm_id, actor)
    problem = flows.refusal(AlarmAction.acknowledge, AlarmState(alarm["state"]), alarm["grid_path"], actor)
    if problem:
        raise problem
    alarm = conn.execute(
        """UPDATE alarms SET state = 'acknowledged', acked_by = %s, acked_at = %s, ack_note = %s, case_due_at = NULL,
               updated_at = %s WHERE id = %s RETURNING *""", (actor.name, now, note, now, alarm_id)).fetchone()
    _publish(conn, alarm, "acknowledged")
    return alarm


def clear(conn: psycopg.Connection, alarm_id: str, actor: Actor, reason: str | None = None,
          now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    alarm = _lock_visible(conn, alarm_id, actor)
    problem = flows.refusal(AlarmAction.clear, AlarmState(alarm["state"]), alarm["grid_path"], actor)
    if problem:
        raise problem
    alarm = conn.execute(
        """UPDATE alarms SET state = 'cleared', cleared_by = %s, cleared_at = %s, clear_reason = %s, case_due_at = NULL,
               clear_due_at = NULL, updated_at = %s WHERE id = %s RETURNING *""",
        (actor.name, now, reason, now, alarm_id)).fetchone()
    _publish(conn, alarm, "cleared")
    return alarm


def clear_by_event(conn: psycopg.Connection, ev: Event, rule: Rule, now: datetime) -> list[dict]:
    """Clear the open alarms of this rule on the event's source (camera.online clears camera.offline)."""
    rows = conn.execute("SELECT id FROM alarms WHERE source_id = %s AND rule_id = %s AND state <> 'cleared'",
                        (ev.source_id, rule.id)).fetchall()
    out = []
    for r in rows:
        alarm = clear(conn, r["id"], Actor.system(f"rule:{rule.id}"), f"cleared by {ev.type}", now)
        conn.execute("INSERT INTO alarm_events (alarm_id, event_id, event_time, role) VALUES (%s, %s, %s, 'clear') "
                     "ON CONFLICT DO NOTHING", (alarm["id"], ev.id, ev.time))
        out.append(alarm)
    return out


def clear_quiet(conn: psycopg.Connection, now: datetime, limit: int = 200) -> int:
    """Clear alarms quiet for their rule's clear_after."""
    rows = conn.execute("SELECT id FROM alarms WHERE clear_due_at <= %s AND state <> 'cleared' "
                        "ORDER BY clear_due_at LIMIT %s FOR UPDATE SKIP LOCKED", (now, limit)).fetchall()
    for r in rows:
        clear(conn, r["id"], Actor.system("clear_after"), "quiet for the rule's clear_after", now)
    return len(rows)


def due_for_case(conn: psycopg.Connection, now: datetime, limit: int = 100) -> list[dict]:
    """Alarms left unacknowledged long enough to become cases (when: unacknowledged)."""
    return conn.execute(
        """SELECT * FROM alarms WHERE case_due_at <= %s AND case_id IS NULL AND state = 'active'
           ORDER BY case_due_at LIMIT %s FOR UPDATE SKIP LOCKED""", (now, limit)).fetchall()


# ---------------------------------------------------------------------------- reading

def list_alarms(conn: psycopg.Connection, actor: Actor, *, states: list[str] | None = None,
                severities: list[str] | None = None, type_prefix: str | None = None, grid: str | None = None,
                source_id: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: int = 100, offset: int = 0) -> list[dict]:
    w = Where()
    if actor.kind != "system":
        w.add("a.grid_path @> ARRAY[%(node)s]::text[]", node=actor.node_code)
    w.add("a.state = ANY(%(states)s)", states=states)
    w.add("a.severity = ANY(%(severities)s)", severities=severities)
    w.add("a.type LIKE %(type)s",
          type=type_prefix.replace("%", r"\%").replace("_", r"\_").rstrip("*") + "%" if type_prefix else None)
    w.add("a.grid_path @> ARRAY[%(grid)s]::text[]", grid=grid)
    w.add("a.source_id = %(source)s", source=source_id)
    w.add("a.last_at >= %(since)s", since=since)
    w.add("a.first_at < %(until)s", until=until)
    rows = conn.execute(f"SELECT a.* FROM alarms a WHERE {w} "
                        "ORDER BY a.last_at DESC, a.id DESC LIMIT %(limit)s OFFSET %(offset)s",
                        {**w.params, "limit": limit, "offset": offset}).fetchall()
    return [alarm_summary(r) for r in rows]


def get_alarm(conn: psycopg.Connection, alarm_id: str, actor: Actor) -> dict:
    alarm = conn.execute("SELECT * FROM alarms WHERE id = %s", (alarm_id,)).fetchone()
    if alarm is None or not actor.sees(alarm["grid_path"]):
        raise AlarmError("alarm not found", 404)
    out = alarm_summary(alarm)
    out["events"] = conn.execute(
        """SELECT ae.role, ae.event_id, ae.event_time, e.type, e.source_id, e.severity, e.evidence
           FROM alarm_events ae LEFT JOIN events e ON e.id = ae.event_id AND e.time = ae.event_time
           WHERE ae.alarm_id = %s ORDER BY ae.event_time DESC LIMIT 200""", (alarm_id,)).fetchall()
    out["allowed_actions"] = [{"action": a.value, "label": a.label}
                              for a in flows.allowed(AlarmState(alarm["state"]), alarm["grid_path"], actor)]
    return out
