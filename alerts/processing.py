"""From one event to alarms, incidents, cases and actions (the engine calls this for
every queued event, inside the transaction that also removes it from the queue).

1. an event named in a rule's ``cleared_by`` clears that rule's alarms on its source;
2. an event of a camera inside an open correlation window (the nearest cameras of a
   forced door within a minute) belongs to that incident: its evidence is attached to
   the alarm and its case, and it raises nothing of its own;
3. otherwise the first enabled, armed rule that matches decides: the alarm of (source,
   type) is raised or counts a repeat; a new alarm opens its correlation window (and
   looks back over it), becomes a case when the rule says so, and runs the actions
   (a broadcast is a devices-layer broadcast: the devices worker sends it and follows
   the speakers' receipts, see actions.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from alerts import actions, evidence, labels
from alerts.actor import Actor
from alerts.alarms import service as alarms
from alerts.alarms.models import Event
from alerts.cases import service as cases
from alerts.cases.models import Action, ActionParams, EvidenceItem, NewCase
from alerts.config import AlertsConfig
from alerts.registry import RegistryView
from alerts.rules.compile import EventFacts
from bus.commands import Command
from config.alerting import Rule, pattern_matches
from config.vocabulary import CATEGORY_LABELS, URGENCY_EVENT_SEVERITY, URGENCY_LABELS, Category, Urgency
from devices.broadcast import Voice

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    alarm_id: str | None = None
    case_id: str | None = None
    created_alarm: bool = False
    correlated_to: list[str] = field(default_factory=list)
    cleared: int = 0
    disarmed: list[str] = field(default_factory=list)
    broadcast: bool = False
    # MQTT commands to publish after the transaction commits: (source id, command)
    commands: list[tuple[str, Command]] = field(default_factory=list)


@dataclass(frozen=True)
class PersonChoice:
    """What a person chose and wrote when flagging (camera.flag with ``by``)."""
    by: str | None
    category: str | None
    urgency: str | None
    note: str | None


_CATEGORY_CODES = {**{c.value: c.value for c in Category}, **{label: c.value for c, label in CATEGORY_LABELS.items()}}
_URGENCY_CODES = {**{u.value: u.value for u in Urgency}, **{label: u.value for u, label in URGENCY_LABELS.items()}}
_URGENCY_OF_SEVERITY = {sev.value: u.value for u, sev in URGENCY_EVENT_SEVERITY.items()}


def person_choice(ev: Event | None) -> PersonChoice | None:
    """A supervisor's flag carries the category (code or label), the note and — as the
    event's severity (URGENCY_EVENT_SEVERITY) or in the detail — the urgency they chose.
    None for anything else (an evidence request's flag has no person behind it)."""
    if ev is None or ev.type != "camera.flag":
        return None
    detail = ev.payload.get("detail") or {}
    if not detail.get("by"):
        return None
    cat = _CATEGORY_CODES.get(str(detail.get("category") or "").strip())
    urg = _URGENCY_CODES.get(str(detail.get("urgency") or "").strip()) or _URGENCY_OF_SEVERITY.get(ev.severity or "")
    note = str(detail.get("note") or "").strip() or None
    return PersonChoice(str(detail["by"]), cat, urg, note)


class Processor:
    def __init__(self, registry: RegistryView, voice: Voice | None = None) -> None:
        self.registry = registry
        self.voice = voice          # broadcast text is synthesised with it (None: text only)

    def grid_path_of(self, ev: Event) -> list[str]:
        if ev.grid_path:
            return list(ev.grid_path)
        src = self.registry.source(ev.source_id)
        if src and src.grid_path:
            return list(src.grid_path)
        return [self.registry.root_code] if self.registry.root_code else []

    def position_of(self, ev: Event) -> tuple[float, float] | None:
        if ev.lat is not None and ev.lon is not None:
            return ev.lat, ev.lon
        src = self.registry.source(ev.source_id)
        if src and src.lat is not None and src.lon is not None:
            return src.lat, src.lon
        return None

    # -----------------------------------------------------------------------------------
    def process(self, conn: psycopg.Connection, cfg: AlertsConfig, ev: Event, now: datetime) -> Outcome:
        out = Outcome()
        for rule in cfg.rules.clearing(ev.type):
            out.cleared += len(alarms.clear_by_event(conn, ev, rule, now))
        requested = evidence.requested_for_alarm(ev)
        if requested is not None:          # the answer to an evidence request of an incident
            if conn.execute("SELECT 1 FROM alarms WHERE id = %s", (requested,)).fetchone() is not None:
                self._attach_correlated(conn, cfg, requested, ev, now)
                out.correlated_to.append(requested)
                return out
        for window in alarms.correlations_for(conn, ev):
            if any(pattern_matches(p, ev.type) for p in window["types"]):
                self._attach_correlated(conn, cfg, window["alarm_id"], ev, now)
                out.correlated_to.append(window["alarm_id"])
        if out.correlated_to:
            return out
        grid_path = self.grid_path_of(ev)
        match = cfg.rules.match(EventFacts(ev.type, ev.source_id, tuple(grid_path), ev.severity), now)
        out.disarmed = match.disarmed
        if match.rule is None:
            return out
        rule = match.rule
        source = self.registry.source(ev.source_id)
        source_name = source.name if source else ev.source_id
        title = rule.alarm.title or f"{rule.name}（{source_name}）"
        raised = alarms.raise_or_repeat(conn, rule, ev, grid_path, title, now)
        alarm = raised.alarm
        out.alarm_id, out.created_alarm = alarm["id"], raised.created
        own = evidence.from_event(conn, ev)
        if own:
            alarm, new = alarms.add_evidence(conn, alarm, own)
            if new and alarm["case_id"]:
                self._attach_to_case(conn, cfg, alarm["case_id"], new, now)
        if raised.created:
            alarm = self._open_incident(conn, rule, alarm, ev, now, out)
            if rule.case is not None and rule.case.when == "immediately":
                out.case_id = self.open_case(conn, cfg, rule, alarm, ev, now)
            self._run_actions(conn, cfg, rule, alarm, ev, grid_path, now, out)
        elif not raised.reopened and rule.case is not None and rule.case.when == "repeats" \
                and alarm["case_id"] is None and alarm["count"] >= (rule.case.repeats or 0):
            out.case_id = self.open_case(conn, cfg, rule, alarm, ev, now)
        return out

    # -- incidents ------------------------------------------------------------------------
    def _open_incident(self, conn: psycopg.Connection, rule: Rule, alarm: dict, ev: Event, now: datetime,
                       out: Outcome) -> dict:
        spec = rule.alarm.correlate
        if spec is None:
            return alarm
        pos = self.position_of(ev)
        if pos is None:
            return alarm
        cams = [s.id for s, _d in self.registry.nearest_cameras(pos[0], pos[1], spec.nearest_cameras,
                                                                spec.max_distance_m, exclude=ev.source_id)]
        if not cams:
            return alarm
        opens, closes = ev.time - spec.window, ev.time + spec.window
        alarm = alarms.open_correlation(conn, alarm, cams, opens, closes, list(spec.types))
        # Look back: camera events of the window that arrived before the trigger.
        earlier = conn.execute(
            """SELECT * FROM events WHERE source_id = ANY(%s) AND time BETWEEN %s AND %s ORDER BY time""",
            (cams, opens, ev.time + timedelta(seconds=1))).fetchall()
        items: list[EvidenceItem] = []
        for row in earlier:
            cev = Event.from_row(row)
            if any(pattern_matches(p, cev.type) for p in spec.types):
                alarms.correlate(conn, alarm["id"], cev)
                items += evidence.from_event(conn, cev)
        items += evidence.stored_near(conn, cams, opens, ev.time + timedelta(seconds=1))
        if ev.source_kind != "camera":
            excerpt = evidence.telemetry_excerpt(conn, ev.source_id, ev.time, spec.window, timedelta(seconds=1))
            if excerpt is not None:
                items.append(excerpt)
        alarm, _ = alarms.add_evidence(conn, alarm, items)
        if spec.request_evidence:
            # The camera workers' own command: the frame at the event's time and a clip
            # around it, answered by a camera.flag event that names this alarm.
            for cam in cams:
                out.commands.append((cam, evidence.evidence_request(alarm, rule, ev.time)))
        return alarm

    def _attach_correlated(self, conn: psycopg.Connection, cfg: AlertsConfig, alarm_id: str, ev: Event,
                           now: datetime) -> None:
        alarm = alarms.correlate(conn, alarm_id, ev)
        items = evidence.from_event(conn, ev)
        if items:
            alarm, new = alarms.add_evidence(conn, alarm, items)
            if new and alarm["case_id"]:
                self._attach_to_case(conn, cfg, alarm["case_id"], new, now)

    def _attach_to_case(self, conn: psycopg.Connection, cfg: AlertsConfig, case_id: str, items: list[EvidenceItem],
                        now: datetime) -> None:
        case = conn.execute("SELECT * FROM cases WHERE id = %s FOR UPDATE", (case_id,)).fetchone()
        if case is not None and not cases.is_finished(case):
            cases.attach_evidence(conn, cfg, case, items, Actor.system("correlation"), now)

    # -- cases and actions ----------------------------------------------------------------
    def open_case(self, conn: psycopg.Connection, cfg: AlertsConfig, rule: Rule, alarm: dict, ev: Event | None,
                  now: datetime) -> str:
        spec = rule.case
        grid_path = list(alarm["grid_path"])
        owner = self.registry.node_at_level(grid_path, spec.level)
        source = self.registry.source(alarm["source_id"])
        source_name = source.name if source else alarm["source_id"]
        local = alarm["first_at"].astimezone(cfg.timezone)
        description = (f"{source_name}于{local:%Y-%m-%d %H:%M:%S}发生“{labels.event_label(alarm['type'])}”，"
                       f"告警级别：{labels.severity_label(alarm['severity'])}")
        if alarm["count"] > 1:
            description += f"，累计{alarm['count']}次"
        if alarm["correlated"]:
            names = [(self.registry.source(c).name if self.registry.source(c) else c) for c in alarm["correlated"]]
            description += f"；已关联附近摄像机：{'、'.join(names)}"
        description += "。"
        items = [evidence.from_summary(e) for e in alarm["evidence"]]
        system = Actor.system(f"rule:{rule.id}")
        category, urgency, title = str(spec.category), str(spec.urgency), spec.title or alarm["title"]
        chosen = person_choice(ev)
        if chosen is not None:
            # A person's flag: what they chose and wrote is the case; the rule's are defaults.
            category, urgency = chosen.category or category, chosen.urgency or urgency
            if chosen.note:
                title = f"{chosen.note.splitlines()[0][:60]}（{source_name}）"
                description = f"{chosen.note}\n——{chosen.by or ''}标记。{description}"
            elif chosen.by:
                description = f"{chosen.by}标记。{description}"
        case = cases.create_case(conn, cfg, NewCase(
            title=title, category=category, urgency=urgency,
            channel="video" if alarm["source_kind"] == "camera" else "device", grid_code=alarm["grid_code"] or
            grid_path[-1], owner_code=owner, description=description, lat=alarm["lat"], lon=alarm["lon"],
            alarm_id=alarm["id"]), system, now, evidence=items)
        alarms.set_case(conn, alarm["id"], case["id"])
        if spec.auto_register:
            cases.apply(conn, cfg, case["id"], Action.accept, system, ActionParams(note="规则自动受理"), now)
            cases.apply(conn, cfg, case["id"], Action.register, system, ActionParams(note="规则自动立案"), now)
            if spec.dispatch_to:
                cases.apply(conn, cfg, case["id"], Action.dispatch, system,
                            ActionParams(note="规则自动派遣", departments=list(spec.dispatch_to)), now)
        return case["id"]

    def _run_actions(self, conn: psycopg.Connection, cfg: AlertsConfig, rule: Rule, alarm: dict, ev: Event,
                     grid_path: list[str], now: datetime, out: Outcome) -> None:
        case_id = out.case_id or alarm["case_id"]
        for action in rule.actions:
            if action.broadcast is not None:
                b = action.broadcast
                area = self.registry.node_at_level(grid_path, b.area)
                made = actions.request_broadcast(conn, actions.AlertBroadcast(
                    area_codes=[area] if area else [], message=b.message, kind=b.kind, repeat=b.repeat,
                    requested_by=f"system:rule:{rule.id}", case_id=case_id, alarm_id=alarm["id"]), self.voice)
                out.broadcast = out.broadcast or made is not None
            elif action.notify is not None:
                n = action.notify
                node = self.registry.node_at_level(grid_path, n.level)
                if node is None:
                    continue
                actions.notify(conn, role=n.role, node_code=node, node_path=self.registry.path(node),
                               title=alarm["title"], body=n.message or labels.event_label(ev.type),
                               case_id=case_id, alarm_id=alarm["id"])
