"""The alerting part of the site file: rules (event → alarm → case, automatic actions),
arming schedules, SLA time limits and the external case systems cases are delivered to.

    rules:          which event types make which alarms, which alarms become cases
    schedules:      named weekly time windows (布防时间)
    arming:         which grids / sources / rules are armed only during a schedule
    sla:            time limits per category × urgency, per stage and overall (规定时间内办结)
    case_systems:   webhook targets (secrets by reference: secret_env or secret_file)
    cap:            CAP emergency warnings (应急预警): how areas are matched to the grid tree, the
                    feeds the alerts worker polls, the senders that must sign (their certificates)

The models live here and :mod:`config.site` adds them to :class:`config.site.Site`; the
cross-reference checks (:func:`alerting_findings`) run on the raw data from
``config.site.rules.site_rules`` so that ``xlhub check-config`` reports them with file,
line and path like every other problem.  This module must not import :mod:`config.site`
(site imports it).
"""
from __future__ import annotations

import math
import re
from datetime import time as dtime
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from config.vocabulary import (
    CATEGORY_LABELS,
    EVENT_FAMILIES,
    URGENCY_LABELS,
    ALARM_SEVERITY_LABELS,
    AlarmSeverity,
    EVENT_SEVERITIES,
    Category,
    GridLevel,
    Role,
    Stage,
    Urgency,
)
from config.fields import (
    SECRET_QUERY_KEYS,
    Code,
    EmptyDict,
    EmptyList,
    EnvName,
    Id,
    SecretFile,
    StrictModel,
    Text,
    TimeZone,
    check_text,
    from_problem,
    suggest,
    unknown_ref,
)

__all__ = [
    "AlarmSpec", "Arming", "CapSettings", "CaseSpec", "CaseSystem", "Correlation", "RuleAction", "Rule", "Schedule", "Sla",
    "SlaLimit", "Weekday", "alerting_findings", "parse_duration", "pattern_matches",
]


# ---------------------------------------------------------------------------- vocabulary
# Codes and labels are config/vocabulary.py's; an alarm's severity is its AlarmSeverity.

class Weekday(StrEnum):
    mon = "mon"
    tue = "tue"
    wed = "wed"
    thu = "thu"
    fri = "fri"
    sat = "sat"
    sun = "sun"


CASE_EVENTS = ("case.created", "case.transition", "case.sla", "case.evidence")


def _from_label(labels: dict) -> BeforeValidator:
    """Accept the Chinese label (治安防控) as well as the code (public_order)."""
    by_label = {label: member.value for member, label in labels.items()}

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return by_label.get(value.strip(), value)
        return value
    return BeforeValidator(convert)


# ---------------------------------------------------------------------------- value checks

_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)(d|h|ms|m|s))")
_PATTERN_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*(?:\.\*)?")
_HHMM_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")


def parse_duration(value: Any) -> timedelta:
    """``90`` (seconds), ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, ``"500ms"``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m, 2h or 1d, not a boolean")
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite duration")
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            n, unit = float(m.group(1)), m.group(2)
            seconds += n * {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
            pos = m.end()
        if not text or pos != len(text):
            shown = value if len(value) <= 30 else value[:27] + "…"
            raise ValueError(f"'{shown}' is not a duration (write e.g. 30s, 5m, 2h, 1d or 1h30m)")
    else:
        raise ValueError("must be a duration such as 30s, 5m, 2h or 1d")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    if seconds > 366 * 86400:
        raise ValueError("must be at most a year")
    return timedelta(seconds=seconds)




def _pattern(value: str) -> str:
    if not _PATTERN_RE.fullmatch(value):
        raise ValueError("must be a dotted event type such as door.forced_open, optionally ending in .* "
                         "(camera.tamper.*)")
    kind = value.split(".", 1)[0]
    if kind not in EVENT_FAMILIES:
        raise ValueError(f"must start with a source kind or security ({', '.join(EVENT_FAMILIES)}), not '{kind}'"
                         + suggest(kind, EVENT_FAMILIES))
    if value.count(".") == 0:
        raise ValueError(f"names only the kind; write {value}.* for every {value} event")
    return value




def _hhmm(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1440 * 60:
        # YAML 1.1 reads an unquoted 22:00 as the sexagesimal number 1320 (minutes): take it back.
        value = f"{value // 60:02d}:{value % 60:02d}"
    if not isinstance(value, str) or not _HHMM_RE.fullmatch(value.strip()):
        raise ValueError("must be a time of day as \"HH:MM\" (00:00–24:00, in quotes)")
    return value.strip()


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable webhook URL, or None; never echoes user-info."""
    if not url or any(c.isspace() for c in url):
        return "must be a URL without spaces"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if "@" in rest:
        return ("user name/password embedded in the URL; remove them (the webhook is authenticated by its "
                "HMAC signature with secret_env or secret_file)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if not parts.hostname:
        return "host missing"
    if port is not None and not 1 <= port <= 65535:
        return "port is out of range 1–65535"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in SECRET_QUERY_KEYS:
            return f"a secret in the query string ('{key}=…'); use secret_env or secret_file"
    return None


LongText = Annotated[str, Field(max_length=1000), AfterValidator(check_text)]
EventPattern = Annotated[str, AfterValidator(_pattern)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
HttpUrl = Annotated[str, from_problem(http_url_problem)]
TimeOfDay = Annotated[str, BeforeValidator(_hhmm)]
CategoryField = Annotated[Category, _from_label(CATEGORY_LABELS)]
UrgencyField = Annotated[Urgency, _from_label(URGENCY_LABELS)]
SeverityField = Annotated[AlarmSeverity, _from_label(ALARM_SEVERITY_LABELS)]


def pattern_matches(pattern: str, event_type: str) -> bool:
    """``camera.tamper.*`` matches ``camera.tamper.covered`` (and deeper), not ``camera.tamper``."""
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


# ---------------------------------------------------------------------------- rules

class EventMatch(StrictModel):
    """Which events a rule looks at."""
    types: Annotated[list[EventPattern], Field(min_length=1, max_length=32)]
    sources: Annotated[list[Id], EmptyList] = Field(default_factory=list, description="camera/device ids; empty: any")
    grids: Annotated[list[Code], EmptyList] = Field(default_factory=list, description="grid subtrees; empty: any")
    min_severity: Literal[EVENT_SEVERITIES] | None = Field(
        None, description="ignore events whose severity hint is below this")


class Correlation(StrictModel):
    """One incident: events of the nearest cameras within a window around the trigger are
    attached to its alarm (with their snapshots and clips) instead of raising their own."""
    window: Duration = timedelta(seconds=60)
    nearest_cameras: int = Field(2, ge=1, le=8)
    max_distance_m: float = Field(3000, gt=0, le=100_000, allow_inf_nan=False)
    types: Annotated[list[EventPattern], Field(min_length=1), EmptyList] = Field(
        default_factory=lambda: ["camera.*"])
    request_evidence: bool = Field(True, description="ask the cameras for a snapshot and clip around the event")


class AlarmSpec(StrictModel):
    severity: SeverityField
    title: Text | None = Field(None, description="default: the rule's name")
    correlate: Correlation | None = None
    clear_after: Duration | None = Field(None, description="clear automatically when quiet this long")
    cleared_by: Annotated[list[EventPattern], EmptyList] = Field(
        default_factory=list, description="event types of the same source that clear the alarm")
    flap_window: Duration = timedelta(minutes=5)
    flap_limit: int = Field(3, ge=1, le=100, description="re-raises within flap_window before it is 'flapping'")


class CaseSpec(StrictModel):
    category: CategoryField
    urgency: UrgencyField
    level: GridLevel = Field("township", description="the level responsible for the case (责任层级)")
    when: Literal["immediately", "repeats", "unacknowledged"] = "immediately"
    repeats: int | None = Field(None, ge=2, le=10_000, description="with when: repeats")
    unacknowledged_for: Duration | None = Field(None, description="with when: unacknowledged")
    auto_register: bool = Field(False, description="the system accepts and registers (受理, 立案) at once")
    dispatch_to: Annotated[list[Id], EmptyList] = Field(
        default_factory=list, description="departments to dispatch to at once (needs auto_register)")
    title: Text | None = None


class BroadcastAction(StrictModel):
    """Play a message on the speakers (村村响) of the area around the event."""
    area: GridLevel = Field("village", description="the event's node at this level: its speakers play")
    message: LongText
    kind: Literal["notice", "emergency"] = "emergency"
    repeat: int = Field(2, ge=1, le=10)


class NotifyAction(StrictModel):
    """Notify the people of a role at the event's node of a level (e.g. the on-duty dispatcher)."""
    role: Role
    level: GridLevel = "township"
    message: LongText | None = None


class RuleAction(StrictModel):
    """Exactly one of broadcast or notify."""
    broadcast: BroadcastAction | None = None
    notify: NotifyAction | None = None


class Rule(StrictModel):
    id: Id
    name: Text
    enabled: bool = True
    when: EventMatch
    alarm: AlarmSpec
    case: CaseSpec | None = None
    actions: Annotated[list[RuleAction], EmptyList, Field(max_length=16)] = Field(default_factory=list)
    armed: Id | None = Field(None, description="schedule during which the rule is armed; absent: always")


# ---------------------------------------------------------------------------- schedules

class TimeWindow(StrictModel):
    days: Annotated[list[Weekday], EmptyList] = Field(default_factory=lambda: list(Weekday),
                                                      description="days the window starts on; default every day")
    start: TimeOfDay
    end: TimeOfDay = Field(description="end before start: the window crosses midnight")



class Schedule(StrictModel):
    name: Text | None = None
    timezone: TimeZone | None = Field(None, description="default: the site's")
    windows: Annotated[list[TimeWindow], Field(min_length=1, max_length=64)]


class Arming(StrictModel):
    """Events of these grids/sources raise alarms (of these rules) only while the schedule is on."""
    schedule: Id
    grids: Annotated[list[Code], EmptyList] = Field(default_factory=list)
    sources: Annotated[list[Id], EmptyList] = Field(default_factory=list)
    rules: Annotated[list[Id], EmptyList] = Field(default_factory=list, description="empty: every rule")


# ---------------------------------------------------------------------------- SLA

def _stage(value: str) -> str:
    if value not in Stage.__members__:
        stages = ", ".join(f"{s.value} ({s.label})" for s in Stage)
        raise ValueError(f"unknown stage '{value[:30]}'{suggest(value, list(Stage.__members__))}; stages: {stages}")
    return value


StageKey = Annotated[str, AfterValidator(_stage)]


class SlaDefault(StrictModel):
    total: Duration
    stages: Annotated[dict[StageKey, Duration], EmptyDict] = Field(
        default_factory=dict, description="accept, dispatch, handle, verify, close")
    auto_escalate: bool = False


class SlaLimit(SlaDefault):
    category: CategoryField | None = Field(None, description="absent: any category")
    urgency: UrgencyField | None = Field(None, description="absent: any urgency")


class Sla(StrictModel):
    warn_at: float = Field(0.8, gt=0, lt=1, allow_inf_nan=False, description="share of a limit that warns")
    default: SlaDefault = Field(default_factory=lambda: SlaDefault(total=timedelta(days=3)))
    limits: Annotated[list[SlaLimit], EmptyList] = Field(default_factory=list)

    def limit_for(self, category: str, urgency: str) -> SlaDefault:
        """The most specific limit: category+urgency, then category, then urgency, then default."""
        best, best_score = None, -1
        for lim in self.limits:
            if lim.category is not None and lim.category != category:
                continue
            if lim.urgency is not None and lim.urgency != urgency:
                continue
            score = (2 if lim.category is not None else 0) + (1 if lim.urgency is not None else 0)
            if score > best_score:
                best, best_score = lim, score
        return best or self.default


# ---------------------------------------------------------------------------- case systems

class Retry(StrictModel):
    first: Duration = timedelta(seconds=1)
    max_interval: Duration = timedelta(hours=1)
    give_up_after: Duration = Field(timedelta(hours=24), description="then the message is dead-lettered")


class CaseSystem(StrictModel):
    """An external case system (e.g. the county's 网格化服务管理平台) that receives cases by
    webhook and reports their status back."""
    name: Id
    url: HttpUrl
    secret_env: EnvName | None = None
    secret_file: SecretFile | None = None
    events: Annotated[list[Literal["case.created", "case.transition", "case.sla", "case.evidence"]], EmptyList] = \
        Field(default_factory=lambda: list(CASE_EVENTS))
    categories: Annotated[list[CategoryField], EmptyList] = Field(default_factory=list, description="empty: all")
    grids: Annotated[list[Code], EmptyList] = Field(default_factory=list, description="empty: the whole site")
    inbound_token: Annotated[str, Field(pattern=r"^[a-z0-9_.-]{2,64}$")] | None = Field(
        None, description="name of the API token the system posts status changes back with")
    timeout: Duration = timedelta(seconds=10)
    retry: Retry = Field(default_factory=Retry)


# ---------------------------------------------------------------------------- CAP warnings

class FeedRetry(StrictModel):
    first: Duration = timedelta(seconds=10)
    max_interval: Duration = timedelta(hours=1)


class CapFeed(StrictModel):
    """A CAP 1.2 Atom or RSS feed (e.g. the province's 突发事件预警信息发布 feed): polled by the
    alerts worker with conditional GET; each new entry's alert is imported once."""
    name: Id
    url: HttpUrl
    interval: Duration = Field(timedelta(seconds=60), description="between polls of an unchanged feed")
    timeout: Duration = timedelta(seconds=10)
    allow_non_actual: bool = Field(False, description="act on Exercise/Test alerts too (never in production)")
    retry: FeedRetry = Field(default_factory=FeedRetry)


class CapSender(StrictModel):
    """A CAP sender whose alerts are accepted only with a valid enveloped XML signature
    (XML-DSig) made with this certificate."""
    sender: Annotated[str, Field(min_length=1, max_length=200)]
    certificate_file: SecretFile = Field(description="PEM, relative to the site file")


class CapSettings(StrictModel):
    """How a CAP warning's polygons and circles are matched to grid nodes' boundaries
    (alerts/cap/areas.py)."""
    min_overlap: float = Field(
        0.8, gt=0, le=1, allow_inf_nan=False,
        description="share of a grid node's area the warning must cover for the node to be warned whole "
                    "(a township instead of its villages); below it the node's children are matched")
    border_tolerance_m: float = Field(
        25, ge=0, le=1000, allow_inf_nan=False,
        description="an overlap thinner than this along a node's border is the slack of a hand-drawn line, "
                    "not coverage (a polygon traced around one village does not reach its neighbours)")
    feeds: Annotated[list[CapFeed], EmptyList] = Field(default_factory=list,
                                                        description="CAP Atom/RSS feeds (alerts/cap/feeds.py)")
    senders: Annotated[list[CapSender], EmptyList] = Field(
        default_factory=list, description="senders whose alerts must be signed (alerts/cap/signature.py)")


# ---------------------------------------------------------------------------- cross-checks (raw data)

def _dur(value: Any) -> timedelta | None:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        return None


def _strs(value: Any) -> list[tuple[int, str]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []


def alerting_findings(data: dict, *, codes: dict[str, tuple] | None, sources: dict[str, tuple],
                      source_kinds: dict[str, str], departments: dict[str, tuple] | None) -> list[tuple[tuple, str]]:
    """Rules spanning objects of the alerting sections: references to grid codes, sources,
    departments and schedules; one secret source per case system; rule ids and case
    system names unique; SLA stage limits within the total.  Tolerates broken data."""
    out: list[tuple[tuple, str]] = []

    def node_ref(loc: tuple, value: Any) -> None:
        if codes and isinstance(value, str) and value not in codes:
            out.append((loc, unknown_ref("grid node", value, codes)))

    def source_ref(loc: tuple, value: Any) -> None:
        if isinstance(value, str) and value not in sources:
            out.append((loc, unknown_ref("camera or device", value, sources)))

    schedules = data.get("schedules")
    schedule_ids = {k for k in schedules if isinstance(k, str)} if isinstance(schedules, dict) else set()

    def schedule_ref(loc: tuple, value: Any) -> None:
        if isinstance(value, str) and value not in schedule_ids:
            out.append((loc, unknown_ref("schedule", value, schedule_ids, section="schedules")))

    # -- rules
    rule_ids: dict[str, tuple] = {}
    rules = data.get("rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        loc = ("rules", i)
        rid = rule.get("id")
        if isinstance(rid, str):
            if rid in rule_ids:
                out.append((loc + ("id",), f"duplicate rule id '{rid}' (first at rules[{rule_ids[rid][1]}])"))
            else:
                rule_ids[rid] = loc
        when = rule.get("when")
        if isinstance(when, dict):
            for j, src in _strs(when.get("sources")):
                source_ref(loc + ("when", "sources", j), src)
                kind = source_kinds.get(src)
                pats = [p for _, p in _strs(when.get("types"))]
                if kind and pats and not any(p.split(".", 1)[0] == kind for p in pats):
                    out.append((loc + ("when", "sources", j),
                                f"'{src}' is a {kind}, but no event type of this rule starts with '{kind}.'"))
            for j, code in _strs(when.get("grids")):
                node_ref(loc + ("when", "grids", j), code)
        schedule_ref(loc + ("armed",), rule.get("armed"))
        case = rule.get("case")
        if isinstance(case, dict):
            mode = case.get("when", "immediately")
            if mode == "repeats" and case.get("repeats") is None:
                out.append((loc + ("case", "repeats"), "when: repeats needs 'repeats: N' (the count that opens a case)"))
            if mode == "unacknowledged" and case.get("unacknowledged_for") is None:
                out.append((loc + ("case", "unacknowledged_for"),
                            "when: unacknowledged needs 'unacknowledged_for: <duration>'"))
            if mode != "repeats" and case.get("repeats") is not None:
                out.append((loc + ("case", "repeats"), "only used with when: repeats"))
            if mode != "unacknowledged" and case.get("unacknowledged_for") is not None:
                out.append((loc + ("case", "unacknowledged_for"), "only used with when: unacknowledged"))
            dispatch = _strs(case.get("dispatch_to"))
            if dispatch and case.get("auto_register") is not True:
                out.append((loc + ("case", "dispatch_to"),
                            "dispatching at once needs 'auto_register: true' (a case is registered 立案 before 派遣)"))
            for j, dept in dispatch:
                if departments is not None and dept not in departments:
                    out.append((loc + ("case", "dispatch_to", j),
                                unknown_ref("department", dept, departments, section="departments")))
        actions = rule.get("actions")
        for j, action in enumerate(actions if isinstance(actions, list) else []):
            if not isinstance(action, dict):
                continue
            given = [k for k in ("broadcast", "notify") if action.get(k) is not None]
            if len(given) != 1:
                out.append((loc + ("actions", j), "each action is exactly one of 'broadcast' or 'notify'"))
        alarm = rule.get("alarm")
        if isinstance(alarm, dict):
            trig = [p for _, p in _strs(when.get("types"))] if isinstance(when, dict) else []
            for j, pat in _strs(alarm.get("cleared_by")):
                if any(pattern_matches(t, pat) or t == pat for t in trig):
                    out.append((loc + ("alarm", "cleared_by", j),
                                f"'{pat}' also raises this alarm: an event cannot both raise and clear it"))

    # -- arming
    arming = data.get("arming")
    for i, entry in enumerate(arming if isinstance(arming, list) else []):
        if not isinstance(entry, dict):
            continue
        loc = ("arming", i)
        schedule_ref(loc + ("schedule",), entry.get("schedule"))
        if not _strs(entry.get("grids")) and not _strs(entry.get("sources")):
            out.append((loc, "names no 'grids' or 'sources' to arm"))
        for j, code in _strs(entry.get("grids")):
            node_ref(loc + ("grids", j), code)
        for j, src in _strs(entry.get("sources")):
            source_ref(loc + ("sources", j), src)
        for j, rid in _strs(entry.get("rules")):
            if isinstance(rules, list) and rid not in rule_ids:
                out.append((loc + ("rules", j), unknown_ref("rule", rid, rule_ids)))

    # -- schedules: a window must not be empty
    for sid, sched in (schedules.items() if isinstance(schedules, dict) else []):
        windows = sched.get("windows") if isinstance(sched, dict) else None
        for j, w in enumerate(windows if isinstance(windows, list) else []):
            if isinstance(w, dict) and w.get("start") is not None and w.get("start") == w.get("end"):
                out.append((("schedules", sid, "windows", j, "end"), "equals start: the window would be empty"))

    # -- SLA: stage limits within the total; no two limits for the same category × urgency
    sla = data.get("sla")
    if isinstance(sla, dict):
        entries = [(("sla", "default"), sla.get("default"))]
        limits = sla.get("limits")
        entries += [(("sla", "limits", i), lim) for i, lim in enumerate(limits if isinstance(limits, list) else [])]
        seen: dict[tuple, int] = {}
        for loc, lim in entries:
            if not isinstance(lim, dict):
                continue
            total = _dur(lim.get("total"))
            stages = lim.get("stages")
            if total is not None and isinstance(stages, dict):
                for stage, value in stages.items():
                    d = _dur(value)
                    if d is not None and d > total:
                        out.append((loc + ("stages", stage), f"is longer than the total limit ({lim.get('total')})"))
            if loc[1] == "limits":
                key = (_label_key(lim.get("category"), CATEGORY_LABELS), _label_key(lim.get("urgency"), URGENCY_LABELS))
                if all(isinstance(k, (str, type(None))) for k in key):
                    if key in seen:
                        out.append((loc, f"a second limit for the same category and urgency "
                                         f"(first at sla.limits[{seen[key]}])"))
                    else:
                        seen[key] = loc[2]

    # -- case systems
    systems = data.get("case_systems")
    names: dict[str, int] = {}
    for i, system in enumerate(systems if isinstance(systems, list) else []):
        if not isinstance(system, dict):
            continue
        loc = ("case_systems", i)
        name = system.get("name")
        if isinstance(name, str):
            if name in names:
                out.append((loc + ("name",), f"duplicate case system '{name}' (first at case_systems[{names[name]}])"))
            else:
                names[name] = i
        given = [k for k in ("secret_env", "secret_file") if system.get(k) is not None]
        if not given:
            out.append((loc, "needs exactly one signing secret source: secret_env or secret_file "
                             "(secrets are never written in the site file)"))
        elif len(given) > 1:
            out.append((loc + (given[1],), "secret_env and secret_file are both given; keep exactly one"))
        for j, code in _strs(system.get("grids")):
            node_ref(loc + ("grids", j), code)

    # -- CAP feeds and senders
    cap = data.get("cap") if isinstance(data.get("cap"), dict) else {}
    for section, key in (("feeds", "name"), ("senders", "sender")):
        firsts: dict[str, int] = {}
        items = cap.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, str):
                if value in firsts:
                    out.append((("cap", section, i, key),
                                f"duplicate {key} '{value}' (first at cap.{section}[{firsts[value]}])"))
                else:
                    firsts[value] = i
    return out


def _label_key(value: Any, labels: dict) -> Any:
    if isinstance(value, str):
        for member, label in labels.items():
            if value.strip() == label:
                return member.value
    return value


# Times of day as datetime.time (for the schedule evaluator).
def time_of_day(text: str) -> dtime:
    if text == "24:00":
        return dtime(23, 59, 59, 999999)
    h, m = text.split(":")
    return dtime(int(h), int(m))
