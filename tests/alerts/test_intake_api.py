"""Intake and dispatch that people can use (issue 17, items 2, 4 and 5), through the real
API and the alerts engine: a hotline report lands at the place's township with the
caller's personal information masked and revealed only on purpose (audited); the dispatch
pickers list who serves the place; photos attach to a case; feedback needs its result;
refusals are in Chinese; an alarm becomes a case; a supervisor's flag keeps its category,
urgency and note."""
from __future__ import annotations

import hashlib

import pytest

from tests.alerts.conftest import insert_event, one, query, wait_for
from tests.alerts.test_case_api import GRID_DSC1, TOWNSHIP_DS, act, api, new_case  # noqa: F401  (fixture)

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")


@pytest.fixture(autouse=True, scope="module")
def evidence_dir(tmp_path_factory):
    """Attachments go to a throwaway evidence store (the API reads the setting per request)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("evidence")
        mp.setenv("XLHUB_EVIDENCE_DIR", str(path))
        yield path


def test_hotline_report_lands_at_the_township_with_the_caller_masked(api):  # noqa: F811
    case = new_case(api, "hotline", reporter={"name": "张三丰", "phone": "13812345678"})
    assert (case["owner_code"], case["channel"]) == (TOWNSHIP_DS, "hotline")     # not the county
    assert case["reporter"] == {"name": "张**", "phone": "138****5678"} and case["reporter_revealable"]
    listed = next(c for c in api.users["hotline"].get("/api/cases?channel=hotline").json() if c["id"] == case["id"])
    assert listed["reporter"] == {"name": "张**", "phone": "138****5678"}
    assert "13812345678" not in api.users["ds-dispatcher"].get(f"/api/cases/{case['id']}").text

    # the reveal: whole, for those who call back, and every one on record
    before = one(api.db, "SELECT coalesce(max(id), 0) AS m FROM audit_log")["m"]
    r = api.users["hotline"].get(f"/api/cases/{case['id']}/reporter")
    assert r.status_code == 200 and r.json()["reporter"] == {"name": "张三丰", "phone": "13812345678"}
    assert api.users["ds-dispatcher"].get(f"/api/cases/{case['id']}/reporter").status_code == 200
    refused = api.users["ds-supervisor"].get(f"/api/cases/{case['id']}/reporter")
    assert refused.status_code == 403                                           # not a role that calls back
    assert api.users["xh-dispatcher"].get(f"/api/cases/{case['id']}/reporter").status_code == 404
    records = query(api.db, "SELECT actor, action, outcome FROM audit_log WHERE id > %s AND target LIKE %s ORDER BY id",
                    (before, f"%{case['id']}/reporter%"))
    assert [(r["actor"], r["action"], r["outcome"]) for r in records][:2] == [
        ("hotline", "case.reporter.reveal", "ok"), ("ds-dispatcher", "case.reporter.reveal", "ok")]
    assert any(r["actor"] == "ds-supervisor" and r["outcome"] == "denied" for r in records)


def test_refusals_name_what_is_wrong_in_chinese(api):  # noqa: F811
    r = api.users["hotline"].post("/api/cases", json={"title": "x", "category": "nope", "grid_code": GRID_DSC1,
                                                      "reporter": {"name": "李四", "phone": "call me"}})
    assert r.status_code == 422
    assert "联系电话格式无效" in r.json()["detail"] and "category：取值无效" in r.json()["detail"], r.text
    r = api.users["hotline"].post("/api/cases", json={"category": "city", "grid_code": GRID_DSC1})
    assert r.status_code == 422 and "title：必填" in r.json()["detail"]
    case = new_case(api, "hotline")
    r = api.users["hotline"].post(f"/api/cases/{case['id']}/actions/register", json={})
    assert r.status_code == 409 and "案件当前为“待受理”，不能立案" in r.json()["detail"]
    act(api, "ds-dispatcher", case["id"], "accept")
    act(api, "ds-dispatcher", case["id"], "register")
    r = api.users["ds-dispatcher"].post(f"/api/cases/{case['id']}/actions/dispatch", json={})
    assert r.status_code == 400 and r.json()["detail"].startswith("派遣须选择处置部门或网格员")
    r = api.users["ds-dispatcher"].post(f"/api/cases/{case['id']}/actions/dispatch", json={"departments": ["police-xihe"]})
    assert r.status_code == 400 and "不负责该案件的事发地" in r.json()["detail"]


def test_pickers_list_who_serves_the_place_and_feedback_needs_its_result_and_takes_photos(api, evidence_dir):  # noqa: F811
    case = new_case(api, "hotline", category="city", title="路灯不亮")
    cid = case["id"]
    picks = api.users["ds-dispatcher"].get(f"/api/cases/{cid}/assignees").json()
    codes = {d["code"] for d in picks["departments"]}
    people = {p["username"]: p for p in picks["people"]}
    assert "police-dongshan" in codes and "police-xihe" not in codes
    assert {"dsc-worker", "dsc-head"} <= set(people) and people["dsc-worker"]["display_name"] == "张伟"
    assert people["dsc-worker"]["role_label"] == "网格员"
    assert api.users["xh-dispatcher"].get(f"/api/cases/{cid}/assignees").status_code == 404

    act(api, "ds-dispatcher", cid, "accept")
    act(api, "ds-dispatcher", cid, "register")
    act(api, "ds-dispatcher", cid, "dispatch", departments=["police-dongshan"])
    r = api.users["ds-police"].post(f"/api/cases/{cid}/actions/feedback", json={"note": "  "})
    assert r.status_code == 400 and r.json()["detail"].startswith("反馈须填写处置结果"), r.text
    # the result photo
    r = api.users["ds-police"].post(f"/api/cases/{cid}/attachments", files={"file": ("done.jpg", JPEG, "image/jpeg")},
                                    data={"note": "修复后"})
    assert r.status_code == 201, r.text
    att = r.json()
    assert att["sha256"] == hashlib.sha256(JPEG).hexdigest()
    got = api.users["ds-dispatcher"].get(att["url"])
    assert got.status_code == 200 and got.content == JPEG and got.headers["X-Content-SHA256"] == att["sha256"]
    r = api.users["ds-police"].post(f"/api/cases/{cid}/attachments", files={"file": ("x.gif", b"GIF89a", "image/gif")})
    assert r.status_code == 415 and "不支持的文件类型" in r.json()["detail"]
    assert api.users["xh-dispatcher"].post(f"/api/cases/{cid}/attachments",
                                           files={"file": ("x.jpg", JPEG, "image/jpeg")}).status_code == 404
    done = act(api, "ds-police", cid, "feedback", note="已更换灯泡，恢复照明")
    assert done["state"] == "feedback"
    assert any(e["evidence_id"] == att["evidence_id"] and e["media_type"] == "image/jpeg" for e in done["evidence"])
    assert any(t["action"] == "evidence" and t["actor"] == "ds-police" for t in done["timeline"])
    assert one(api.db, "SELECT hold FROM evidence WHERE id = %s", (att["evidence_id"],))["hold"] == f"case {cid}"
    stored, = evidence_dir.rglob(f"{att['evidence_id']}.jpg")      # in the evidence store (alerts/cases/media)
    assert stored.read_bytes() == JPEG
    assert one(api.db, "SELECT 1 AS x FROM audit_log WHERE action = 'case.attachment' AND actor = 'ds-police' "
                       "AND target = %s", (case["number"],)) is not None


def test_a_dispatcher_opens_a_case_from_an_alarm(api):  # noqa: F811
    insert_event(api.db, "cam-dsc-01", "camera.tamper.covered", severity="major")
    alarm = wait_for(lambda: one(api.db, "SELECT * FROM alarms WHERE source_id = 'cam-dsc-01' "
                                         "AND type = 'camera.tamper.covered' AND state = 'active'"), what="alarm")
    assert alarm["case_id"] is None                                 # the rule raises no case of its own
    assert api.users["xh-dispatcher"].post(f"/api/alarms/{alarm['id']}/case", json={}).status_code == 404
    r = api.users["ds-dispatcher"].post(f"/api/alarms/{alarm['id']}/case",
                                        json={"category": "hazard", "urgency": "high", "description": "镜头被遮挡"})
    assert r.status_code == 201, r.text
    case = r.json()
    assert (case["alarm_id"], case["category"], case["urgency"], case["owner_code"]) == (
        alarm["id"], "hazard", "high", TOWNSHIP_DS)
    assert case["alarm"]["id"] == alarm["id"] and case["description"] == "镜头被遮挡"
    again = api.users["ds-dispatcher"].post(f"/api/alarms/{alarm['id']}/case", json={})
    assert again.status_code == 409 and case["number"] in again.json()["detail"]


def test_a_supervisors_flag_keeps_category_urgency_and_note(api):  # noqa: F811
    note = "井盖缺失，行人有坠落危险"
    insert_event(api.db, "cam-dsc-01", "camera.flag", severity="critical",
                 payload={"detail": {"by": "ds-supervisor", "category": "城市管理", "note": note}})
    case = wait_for(lambda: one(api.db, "SELECT * FROM cases WHERE description LIKE %s", (f"{note}%",)),
                    timeout=15, what="case from the flag")
    assert (case["category"], case["urgency"], case["channel"]) == ("city", "high", "video")
    assert case["title"].startswith(note) and "ds-supervisor标记" in case["description"]
    # without a person's choice the rule's defaults stand (an evidence answer has no ``by``)
    insert_event(api.db, "cam-tyc-01", "camera.flag", severity="minor", payload={"detail": {"category": "城市管理"}})
    plain = wait_for(lambda: one(api.db, "SELECT c.* FROM cases c JOIN alarms a ON a.id = c.alarm_id "
                                         "WHERE a.source_id = 'cam-tyc-01' AND a.type = 'camera.flag'"), timeout=15)
    assert (plain["category"], plain["urgency"]) == ("public_order", "medium")
