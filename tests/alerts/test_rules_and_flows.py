"""Pure parts, no database: the rules in the site file (checked like every other problem,
with file, line and reason), arming schedules, rule matching, the lifecycle's state
machine, SLA clock arithmetic, CAP parsing and the webhook signature."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.actor import Actor
from alerts.cap.parse import CapError, parse_cap
from alerts.cases import flows, sla
from alerts.cases.flows import AssignmentView, CaseView
from alerts.cases.models import Action, CaseNotFound, CaseState
from alerts.delivery.signing import signature, verify
from alerts.rules.compile import EventFacts, RuleSet
from alerts.rules.schedule import is_active
from config.alerting import Schedule, parse_duration
from config.settings import DEMO_SITE_FILE
from config.site import check_site_file, load_site

S = CaseState
COUNTY, TOWN, VILLAGE, GRID = "510199000000", "510199101000", "510199101201", "510199101201001"
OTHER_TOWN = "510199201000"


# ---------------------------------------------------------------------------- site file

def test_demo_rules_load_and_broken_rules_are_reported_with_reasons(tmp_path):
    site = load_site(DEMO_SITE_FILE)
    assert [r.id for r in site.rules][:3] == ["door-forced", "radio-sos", "camera-tamper"]
    assert site.sla.limit_for("public_order", "high").stages["accept"] == timedelta(minutes=5)
    data = yaml.safe_load(DEMO_SITE_FILE.read_text(encoding="utf-8"))
    data["rules"][0]["when"] = {"types": ["dor.forced_open"], "sources": ["door-dsx"]}
    data["rules"][0]["case"].update(category="治安", dispatch_to=["police"])
    data["rules"][1]["alarm"]["correlate"]["window"] = "a minute"
    data["rules"][1]["actions"].append({"broadcast": {"message": "x"}, "notify": {"role": "dispatcher"}})
    data["rules"][6]["armed"] = "nigth"
    data["sla"]["limits"][0]["stages"]["verfy"] = "1m"
    data["sla"]["limits"][0]["stages"]["handle"] = "5h"
    data["case_systems"] = [{"name": "a", "url": "https://user:pw@example.org/hook", "secret_env": "X"},
                            {"name": "a", "url": "http://127.0.0.1:9/hook"}]
    data["arming"] = [{"schedule": "night", "grids": ["999"]}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    site, problems = check_site_file(path)
    assert site is None
    found = {p.path: p.reason for p in problems}
    assert all(p.line for p in problems)
    assert "did you mean 'door'" in found["rules[0].when.types[0]"]
    assert "unknown camera or device 'door-dsx' (did you mean 'door-dsc'?)" == found["rules[0].when.sources[0]"]
    assert "'治安' is not valid" in found["rules[0].case.category"]
    assert "auto_register" in found["rules[0].case.dispatch_to"]
    assert "unknown department 'police'" in found["rules[0].case.dispatch_to[0]"]
    assert "not a duration" in found["rules[1].alarm.correlate.window"]
    assert "exactly one of 'broadcast' or 'notify'" in found["rules[1].actions[2]"]
    assert "unknown schedule 'nigth' (did you mean 'night'?)" == found["rules[6].armed"]
    assert "did you mean 'verify'" in found["sla.limits[0].stages.verfy"]
    assert "longer than the total limit" in found["sla.limits[0].stages.handle"]
    assert "user name/password" in found["case_systems[0].url"] and "pw" not in found["case_systems[0].url"]
    assert "duplicate case system 'a'" in found["case_systems[1].name"]
    assert "secret_env or secret_file" in found["case_systems[1]"]
    assert "unknown grid node '999'" in found["arming[0].grids[0]"]


def test_durations():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration(90) == timedelta(seconds=90) and parse_duration("500ms") == timedelta(milliseconds=500)
    for bad in ("", "5 minutes", "0s", -1, True, "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_schedules_cross_midnight_and_rules_match_in_order():
    tz = ZoneInfo("Asia/Shanghai")
    night = Schedule(windows=[{"days": ["fri"], "start": "22:00", "end": "06:00"}])
    friday = datetime(2026, 11, 27, tzinfo=tz)          # a Friday
    assert is_active(night, friday.replace(hour=23), tz)
    assert is_active(night, (friday + timedelta(days=1)).replace(hour=5, minute=59), tz)     # Saturday early
    assert not is_active(night, (friday + timedelta(days=1)).replace(hour=6), tz)
    assert not is_active(night, friday.replace(hour=21, minute=59), tz)
    assert not is_active(night, (friday - timedelta(days=1)).replace(hour=23), tz)          # Thursday
    rules = RuleSet(load_site(DEMO_SITE_FILE))
    grid_tyc = (COUNTY, TOWN, "510199101202", "510199101202001")
    motion = EventFacts("camera.motion", "cam-tyc-01", grid_tyc, "info")
    day = datetime(2026, 11, 27, 12, tzinfo=tz)
    m = rules.match(motion, day)
    assert m.rule is None and m.disarmed == ["night-motion"]                 # not armed by day
    assert rules.match(motion, day.replace(hour=23)).rule.id == "night-motion"
    assert rules.match(EventFacts("camera.motion", "cam-dsc-01", (COUNTY, TOWN, VILLAGE, GRID), "info"),
                       day.replace(hour=23)).rule is None                    # not one of the armed grids
    tamper = rules.match(EventFacts("camera.tamper.moved", "cam-dsc-01", (COUNTY,), "major"), day)
    assert tamper.rule.id == "camera-tamper"
    assert [r.id for r in rules.clearing("camera.online")] == ["camera-tamper", "camera-offline"]


# ---------------------------------------------------------------------------- the state machine

def person(role, node, name="u", department=None):
    path = {COUNTY: (COUNTY,), TOWN: (COUNTY, TOWN), VILLAGE: (COUNTY, TOWN, VILLAGE),
            GRID: (COUNTY, TOWN, VILLAGE, GRID), OTHER_TOWN: (COUNTY, OTHER_TOWN)}[node]
    return Actor(name=name, kind="user", role=role, node_code=node, node_path=path, department_code=department)


def view(state, owner=(COUNTY, TOWN), **kw):
    return CaseView(state=state, grid_path=(COUNTY, TOWN, VILLAGE, GRID), owner_path=owner, urgency="medium", **kw)


def test_every_action_refuses_other_townships_with_404_and_admins_with_403():
    outsider = person("dispatcher", OTHER_TOWN)
    admin = person("admin", COUNTY)
    for action in Action:
        for state in S:
            assert isinstance(flows.refusal(action, view(state), outsider), CaseNotFound)
            problem = flows.refusal(action, view(state), admin)
            assert problem is not None and problem.status in (403, 409)


def test_roles_and_levels():
    dispatcher, hotline = person("dispatcher", TOWN), person("hotline", COUNTY)
    worker, police = person("grid_worker", GRID, "w"), person("department_handler", TOWN, "p", "police")
    reported = view(S.reported)
    assert set(flows.allowed_actions(reported, dispatcher)) == {Action.accept, Action.reject, Action.escalate,
                                                                Action.hand_down, Action.supervise, Action.suspend,
                                                                Action.cancel, Action.note}
    assert flows.refusal(Action.accept, reported, worker).status == 403       # below the responsible level
    assert flows.refusal(Action.accept, reported, police).status == 403       # not a department's step
    assert flows.allowed_actions(reported, hotline)                            # above it
    at_root = view(S.registered, owner=(COUNTY,))
    assert flows.refusal(Action.escalate, at_root, hotline.__class__(**{**hotline.__dict__, "role": "dispatcher"}))
    parts = (AssignmentView(1, "police", None, "assigned"), AssignmentView(2, None, "w", "accepted"))
    dispatched = view(S.handling, assignments=parts, handlers=frozenset({"w"}))
    assert set(flows.allowed_actions(dispatched, police)) == {Action.sign, Action.send_back, Action.feedback,
                                                             Action.note}
    assert flows.refusal(Action.sign, dispatched, worker).status == 403      # already signed for
    assert flows.next_state(Action.feedback, dispatched, remaining_after=[
        AssignmentView(1, "police", None, "done"), parts[1]]) is S.handling
    assert flows.next_state(Action.feedback, dispatched, remaining_after=[
        AssignmentView(1, "police", None, "done"), AssignmentView(2, None, "w", "done")]) is S.feedback
    assert flows.next_state(Action.send_back, dispatched, remaining_after=[
        AssignmentView(1, "police", None, "returned"), AssignmentView(2, None, "w", "returned")]) is S.registered
    fed = view(S.feedback, handlers=frozenset({"w"}), handler_departments=frozenset({"police"}))
    assert flows.refusal(Action.verify, fed, worker).status == 403             # handled it
    assert flows.refusal(Action.verify, fed, person("grid_head", GRID, "h")) is None
    assert flows.refusal(Action.verify, fed, person("grid_worker", GRID, "w2", "police")).status == 403


def test_external_paths():
    assert flows.external_path(S.reported, S.closed) == [Action.accept, Action.register, Action.dispatch,
                                                         Action.feedback, Action.verify, Action.close]
    assert flows.external_path(S.feedback, S.registered) == [Action.reopen]
    assert flows.external_path(S.closed, S.reported) is None
    assert flows.external_path(S.handling, S.handling) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(Action)), max_size=30))
def test_the_hub_itself_follows_the_table(actions):
    """Whatever the hub is asked, it moves only along the table: evaluated only after
    closed, closed only after verified or a self-close, never out of a finished state."""
    system = Actor.system("test")
    state, history = S.reported, [S.reported]
    for action in actions:
        v = view(state, resume_state=S.registered)
        if flows.refusal(action, v, system) is not None:
            continue
        done = [AssignmentView(1, "police", None, "done")]
        new = flows.next_state(action, v, remaining_after=done)
        if new is S.evaluated and state is not S.evaluated:
            assert state is S.closed
        if new is S.closed and state is not S.closed:
            assert state is S.verified or action is Action.self_close
        if state in (S.closed, S.evaluated, S.rejected, S.cancelled):
            assert new in (state, S.evaluated)
        state = new
        history.append(state)


def test_sla_clock_pauses_while_suspended():
    t0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
    snap = {"total_s": 3600, "stages": {"accept": 600}, "warn_at": 0.8, "auto_escalate": False}
    case = {"sla": snap, "state": "reported", **sla.start(snap, t0, S.reported)}
    assert case["sla_check_at"] == t0 + timedelta(seconds=480)                # 80 % of the accept stage
    assert sla.due_marks(case, t0 + timedelta(seconds=500)) == ["stage_warning"]
    assert sla.due_marks(case, t0 + timedelta(seconds=700)) == ["stage_overdue"]
    case.update(sla.on_change(case, S.suspended, t0 + timedelta(seconds=100)))
    case["state"] = "suspended"
    assert case["sla_check_at"] is None and sla.due_marks(case, t0 + timedelta(hours=5)) == []
    case.update(sla.on_change(case, S.reported, t0 + timedelta(seconds=1900)))
    case["state"] = "reported"
    assert case["due_at"] == t0 + timedelta(seconds=3600 + 1800)              # paused 30 minutes
    assert case["stage_due_at"] == t0 + timedelta(seconds=600 + 1800)
    assert sla.stage_done(case, t0 + timedelta(seconds=2000))["seconds"] == 200


# ---------------------------------------------------------------------------- CAP and signatures

def test_cap_parsing_refuses_what_a_warning_never_needs():
    with pytest.raises(CapError, match="DTDs and entities"):
        parse_cap('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><alert/>')
    with pytest.raises(CapError, match="CAP 1.2 namespace"):
        parse_cap("<alert><identifier>x</identifier></alert>")
    with pytest.raises(CapError, match="<sender> is required"):
        parse_cap('<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier>'
                  "<status>Actual</status><msgType>Alert</msgType></alert>")


def test_signatures():
    body = b'{"a":1}'
    sig = signature(b"k", 1000, body)
    assert verify(b"k", "1000", sig, body, now=1100) is None
    assert "does not match" in verify(b"k", "1000", sig, body + b" ", now=1100)
    assert "does not match" in verify(b"other", "1000", sig, body, now=1100)
    assert "away from" in verify(b"k", "1000", sig, body, now=2000)
    assert "missing" in verify(b"k", None, sig, body)
