"""The case lifecycle through the real API, with role and scope checked on every
transition: who may take each step, from which state, at which level (一级一权限: another
township's case answers 404), verification separated from handling (监督和处置相分离),
parallel dispatch and send-back (退单), unsatisfied verification (不满意再分流),
escalation (上报) and hand-down (交办), suspension pausing the clock, alarms acknowledged
and cleared, the Open311 facade and the assessment figures (考核评价)."""
from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from store import identity
from store.db import connect
from store.registry import sync_site
from tests.alerts.conftest import EngineRunner, insert_event, one, query, wait_for, write_site
from tests.api.conftest import PASSWORD, ApiServer

TOWNSHIP_DS, TOWNSHIP_XH = "510199101000", "510199201000"
GRID_DSC1, VILLAGE_DSC = "510199101201001", "510199101201"
USERS = ("hotline", "lead", "admin", "ds-dispatcher", "xh-dispatcher", "ds-supervisor", "xh-supervisor", "dsc-worker",
         "dsc-worker2", "dsc-head", "ds-police")


@pytest.fixture(scope="module")
def api(db_url, demo_site, mqtt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("case-api")
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
        for user in demo_site.users:
            identity.set_password(conn, user.username, PASSWORD)
        identity.create_user(conn, username="dsc-worker2", display_name="王芳", role="grid_worker",
                             node_code=GRID_DSC1, password=PASSWORD)
    site = write_site(tmp / "site.yaml")
    saved = os.environ.get("XLHUB_SITE_FILE")
    os.environ["XLHUB_SITE_FILE"] = str(site)
    try:
        with ApiServer(db_url, mqtt.url) as server, EngineRunner(db_url, mqtt.url, site):
            server.db = db_url
            server.users = {u: server.client(u) for u in USERS}
            yield server
            for c in server.users.values():
                c.close()
    finally:
        if saved is None:
            os.environ.pop("XLHUB_SITE_FILE", None)
        else:
            os.environ["XLHUB_SITE_FILE"] = saved


def act(api, user, case_id, action, expect=200, **body):
    r = api.users[user].post(f"/api/cases/{case_id}/actions/{action}", json=body)
    assert r.status_code == expect, f"{user} {action}: {r.status_code} {r.text}"
    return r.json()


def allowed(api, user, case_id) -> set[str]:
    r = api.users[user].get(f"/api/cases/{case_id}")
    assert r.status_code == 200, r.text
    return {a["action"] for a in r.json()["allowed_actions"]}


def new_case(api, user, **fields):
    body = {"title": "邻里纠纷", "category": "dispute", "urgency": "medium", "grid_code": GRID_DSC1,
            "description": "两户因宅基地边界发生争执", "reporter": {"name": "张三", "phone": "13800000000"}, **fields}
    r = api.users[user].post("/api/cases", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_full_lifecycle_with_role_and_scope_on_every_step(api):
    case = new_case(api, "hotline")
    cid = case["id"]
    # the place's township is responsible (not the hotline's county); the reporter is masked
    assert (case["state"], case["owner_code"], case["channel"]) == ("reported", TOWNSHIP_DS, "hotline")
    assert case["reporter"] == {"name": "张*", "phone": "138****0000"}        # whole only through the reveal
    assert allowed(api, "hotline", cid) == {"accept", "reject", "cancel", "note"}
    assert api.users["admin"].get("/api/cases").status_code == 403            # administrators handle no cases
    assert api.users["xh-dispatcher"].get(f"/api/cases/{cid}").status_code == 404
    act(api, "xh-dispatcher", cid, "accept", 404)                             # another township: not even seen
    act(api, "ds-police", cid, "accept", 403)                                 # a department does not accept
    assert "reporter" not in api.users["dsc-worker"].get(f"/api/cases/{cid}").json()   # below the responsible level
    act(api, "hotline", cid, "register", 409)                                 # not from reported
    act(api, "hotline", cid, "accept")
    assert act(api, "lead", cid, "escalate")["owner_code"] == "510199000000"   # 上报 to the county
    act(api, "ds-dispatcher", cid, "register", 403)                           # the county holds it, not the township
    act(api, "hotline", cid, "hand_down", 403, target_node=TOWNSHIP_DS)       # a hotline seat does not hand down
    act(api, "lead", cid, "hand_down", 400, target_node=TOWNSHIP_XH)          # not on the way to the place
    assert act(api, "lead", cid, "hand_down", target_node=TOWNSHIP_DS)["owner_code"] == TOWNSHIP_DS   # 交办
    act(api, "ds-dispatcher", cid, "register")
    act(api, "ds-dispatcher", cid, "dispatch", 400, departments=["police-xihe-nope"])
    act(api, "ds-dispatcher", cid, "dispatch", 400)                            # to whom?
    act(api, "ds-supervisor", cid, "dispatch", 403, departments=["police-dongshan"])
    d = act(api, "ds-dispatcher", cid, "dispatch", departments=["police-dongshan"], assignee="dsc-worker")
    assert d["state"] == "dispatched" and len(d["assignments"]) == 2        # in parallel
    assert allowed(api, "ds-police", cid) == {"sign", "send_back", "feedback", "note"}
    act(api, "dsc-head", cid, "sign", 403)                                    # nothing dispatched to them
    assert act(api, "ds-police", cid, "sign")["state"] == "handling"
    assert act(api, "ds-police", cid, "feedback", note="已调解")["state"] == "handling"   # the worker's part is open
    assert act(api, "dsc-worker", cid, "feedback", note="现场已核实双方达成一致")["state"] == "feedback"
    act(api, "dsc-worker", cid, "verify", 403)                                # 监督和处置相分离: handled it
    act(api, "ds-police", cid, "verify", 403)
    act(api, "dsc-head", cid, "reopen", 400)                                  # 不满意 needs a reason
    r = act(api, "dsc-head", cid, "reopen", note="一方仍有异议")
    assert r["state"] == "registered" and r["reopen_count"] == 1
    act(api, "ds-dispatcher", cid, "dispatch", departments=["police-dongshan"])
    assert act(api, "ds-police", cid, "send_back", note="不属于本所职责")["state"] == "registered"   # 退单
    act(api, "ds-dispatcher", cid, "dispatch", assignee="dsc-worker2")
    assert act(api, "dsc-worker2", cid, "feedback", note="再次调解成功")["state"] == "feedback"
    act(api, "dsc-worker", cid, "verify", 403)                                # handled an earlier round
    assert act(api, "dsc-head", cid, "verify")["state"] == "verified"
    act(api, "xh-dispatcher", cid, "close", 404)
    act(api, "ds-police", cid, "close", 403)
    assert act(api, "ds-dispatcher", cid, "close")["state"] == "closed"
    act(api, "hotline", cid, "evaluate", 400)                                 # how satisfied?
    done = act(api, "hotline", cid, "evaluate", satisfaction=4)
    assert done["state"] == "evaluated" and done["satisfaction"] == 4
    act(api, "hotline", cid, "evaluate", 409, satisfaction=5)
    assert allowed(api, "ds-dispatcher", cid) == {"note"}

    steps = [(t["action"], t["actor"], t["to_state"]) for t in done["timeline"]]
    assert steps[0] == ("create", "hotline", "reported") and steps[-1] == ("evaluate", "hotline", "evaluated")
    assert [s[0] for s in steps].count("dispatch") == 3
    assert all(t["source_ip"] == "127.0.0.1" and t["actor_role"] for t in done["timeline"])
    audited = {r["action"] for r in query(api.db, "SELECT action FROM audit_log WHERE target = %s", (done["number"],))}
    assert {"case.create", "case.accept", "case.hand_down", "case.dispatch", "case.verify", "case.close",
            "case.evaluate"} <= audited
    denied = one(api.db, "SELECT * FROM audit_log WHERE actor = 'dsc-worker' AND outcome = 'denied' AND target = %s",
                 (f"/api/cases/{cid}/actions/verify",))
    assert denied is not None                                               # refusals are on record too


def test_grid_worker_self_closes_small_matters_and_escalates_the_rest(api):
    small = new_case(api, "dsc-worker", category="city", urgency="low", title="井盖松动")
    assert (small["owner_code"], small["channel"]) == (GRID_DSC1, "grid")
    act(api, "dsc-worker", small["id"], "self_close", 400)
    assert act(api, "dsc-worker", small["id"], "self_close", note="已现场固定")["state"] == "closed"   # 自行处置结案
    big = new_case(api, "dsc-worker", category="hazard", urgency="high", title="山体裂缝")
    act(api, "dsc-worker", big["id"], "self_close", 403, note="x")
    assert act(api, "dsc-worker", big["id"], "escalate")["owner_code"] == VILLAGE_DSC   # 上报: grid → village
    act(api, "dsc-worker", big["id"], "escalate", 403)                     # now above the worker's level
    act(api, "xh-dispatcher", big["id"], "escalate", 404)
    assert act(api, "ds-dispatcher", big["id"], "escalate")["owner_code"] == TOWNSHIP_DS
    assert act(api, "lead", big["id"], "supervise", note="请加快处置")["supervisions"] == 1   # 督办


def test_suspension_pauses_the_clock(api):
    case = new_case(api, "ds-supervisor", category="public_order", urgency="low", title="夜间噪音")
    cid = case["id"]
    due = datetime.fromisoformat(case["due_at"])
    act(api, "ds-dispatcher", cid, "suspend", 400)
    assert act(api, "ds-dispatcher", cid, "suspend", note="等待当事人回乡")["state"] == "suspended"
    act(api, "ds-dispatcher", cid, "accept", 409)
    time.sleep(1.2)
    resumed = act(api, "ds-dispatcher", cid, "resume")
    assert resumed["state"] == "reported"
    assert (datetime.fromisoformat(resumed["due_at"]) - due).total_seconds() >= 1.2
    act(api, "ds-dispatcher", cid, "cancel", 400)
    assert act(api, "ds-dispatcher", cid, "cancel", note="重复登记")["state"] == "cancelled"


def test_filters_scope_the_lists(api):
    mine = api.users["ds-dispatcher"].get("/api/cases").json()
    assert mine and all(TOWNSHIP_DS in c["grid_path"] for c in mine)
    assert api.users["xh-dispatcher"].get("/api/cases").json() == []
    county = api.users["lead"].get("/api/cases", params={"category": "hazard", "urgency": "high"}).json()
    assert [c["title"] for c in county] == ["山体裂缝"]
    assert api.users["lead"].get("/api/cases", params={"state": ["closed", "evaluated"]}).json()
    assert api.users["lead"].get("/api/cases", params={"grid": TOWNSHIP_XH}).json() == []
    assert api.users["lead"].get("/api/cases", params={"overdue": "true"}).json() == []
    # the police handler sees the case dispatched to its department, not the others
    police = {c["title"] for c in api.users["ds-police"].get("/api/cases").json()}
    assert "邻里纠纷" in police


def test_alarms_are_acknowledged_and_cleared_in_scope(api):
    insert_event(api.db, "door-lls", "door.forced_open")
    alarm = wait_for(lambda: one(api.db, "SELECT * FROM alarms WHERE source_id = 'door-lls'"), what="the alarm")
    aid = alarm["id"]
    listed = api.users["xh-supervisor"].get("/api/alarms", params={"state": "active"}).json()
    assert aid in [a["id"] for a in listed]
    assert api.users["ds-dispatcher"].get(f"/api/alarms/{aid}").status_code == 404
    assert api.users["ds-dispatcher"].post(f"/api/alarms/{aid}/acknowledge").status_code == 404
    assert api.users["dsc-worker"].post(f"/api/alarms/{aid}/acknowledge").status_code == 403
    r = api.users["xh-dispatcher"].post(f"/api/alarms/{aid}/acknowledge", json={"note": "已电话联系社区"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged" and r.json()["acked_by"] == "xh-dispatcher"
    assert api.users["xh-dispatcher"].post(f"/api/alarms/{aid}/acknowledge").status_code == 409
    r = api.users["xh-supervisor"].post(f"/api/alarms/{aid}/clear", json={"note": "误报"})
    assert r.json()["state"] == "cleared" and r.json()["cleared_by"] == "xh-supervisor"
    detail = api.users["xh-supervisor"].get(f"/api/alarms/{aid}").json()
    assert detail["allowed_actions"] == [] and detail["events"][0]["type"] == "door.forced_open"


def test_open311_facade(api):
    with connect(api.db) as conn:
        county_key = identity.create_api_token(conn, name="open311-portal", role="hotline", node_code="510199000000",
                                               created_by="test")
        xihe_key = identity.create_api_token(conn, name="open311-xihe", role="hotline", node_code=TOWNSHIP_XH,
                                             created_by="test")
    c = api.client()
    services = c.get("/open311/v2/services.json", params={"api_key": county_key}).json()
    assert {s["service_code"] for s in services} == {"public_order", "hazard", "dispute", "city", "sentiment"}
    assert c.get("/open311/v2/requests.json").status_code == 401      # services are public, requests are not
    r = c.post("/open311/v2/requests.json", data={"api_key": county_key, "service_code": "city", "lat": "30.65",
                                                  "long": "104.49", "description": "村口路灯不亮\n已经三天了",
                                                  "first_name": "李", "phone": "13900000000",
                                                  "address_string": "东山村村口"})
    assert r.status_code == 200, r.text
    number = r.json()[0]["service_request_id"]
    case = one(api.db, "SELECT * FROM cases WHERE number = %s", (number,))
    assert (case["grid_code"], case["channel"], case["reporter"]["phone"]) == (GRID_DSC1, "open311", "13900000000")
    got = c.get(f"/open311/v2/requests/{number}.json", params={"api_key": county_key}).json()
    assert got[0]["status"] == "open" and got[0]["status_notes"] == "待受理" and got[0]["service_code"] == "city"
    listed = c.get("/open311/v2/requests.json", params={"api_key": county_key, "status": "open"}).json()
    assert number in [x["service_request_id"] for x in listed]
    assert c.get(f"/open311/v2/requests/{number}.json", params={"api_key": xihe_key}).status_code == 404
    r = c.post("/open311/v2/requests.json", json={"api_key": xihe_key, "service_code": "city", "lat": 30.65,
                                                  "long": 104.49, "description": "越界"})
    assert r.status_code == 404 and r.json()[0]["code"] == 404
    r = c.post("/open311/v2/requests.json", json={"api_key": county_key, "service_code": "city", "lat": 10,
                                                  "long": 10, "description": "外地"})
    assert r.status_code == 400
    c.close()


def test_assessment_figures_come_from_the_archive(api):
    by_area = api.users["lead"].get("/api/alerts/stats", params={"by": "area"}).json()
    ds = next(g for g in by_area["groups"] if g["key"] == TOWNSHIP_DS)
    assert ds["name"] == "东山镇" and ds["cases"] >= 3 and ds["closed"] >= 2
    assert ds["on_time_rate"] == 1.0 and ds["reopen_rate"] > 0
    assert ds["satisfaction"] == {"count": 1, "mean": 4.0, "satisfied_rate": 1.0}
    assert ds["stages"]["accept"]["count"] >= 1 and ds["stages"]["handle"]["mean_s"] is not None
    by_dept = api.users["lead"].get("/api/alerts/stats", params={"by": "department"}).json()
    police = next(g for g in by_dept["groups"] if g["key"] == "police-dongshan")
    assert police["name"] == "东山派出所" and police["cases"] == 1 and police["stages"]["handle"]["count"] == 1
    by_post = api.users["lead"].get("/api/alerts/stats", params={"by": "post"}).json()
    assert {"dispatcher", "hotline", "grid_worker", "department_handler"} <= {g["key"] for g in by_post["groups"]}
    xh = api.users["xh-dispatcher"].get("/api/alerts/stats").json()        # scoped: only 西河乡's door case
    assert [g["key"] for g in xh["groups"]] == [TOWNSHIP_XH] and xh["total"]["cases"] == 1
    assert api.users["dsc-worker"].get("/api/alerts/stats").status_code == 403
