"""Administration applied live (issue 17 item 1): grid nodes, departments, users and the
alerting rules/SLA limits through the API — each change checked by the site file's own
checks (errors in Chinese naming the field), audited with before and after, scoped to the
administrator's subtree (another township's → 404), and live (a move re-scopes at once and
keeps the membership history; a disabled account's session ends; an SLA change reaches
the alerts worker by NOTIFY)."""
from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from config.vocabulary import Role
from store.db import connect
from store.listen import Listener
from tests.api.conftest import PASSWORD
from tests.security.conftest import (OTHER_TOWNSHIP, OTHER_VILLAGE, OWN_CAMERA, OWN_GRID, OWN_TOWNSHIP, OWN_VILLAGE, login)

COUNTY = "510199000000"


@pytest.fixture(scope="module")
def admin(api, tokens):
    """The township 东山镇's administrator."""
    with httpx.Client(base_url=api.base_url, timeout=30, headers={"Authorization": f"Bearer {tokens[Role.admin]}"}) as c:
        yield c


@pytest.fixture(scope="module")
def county(api):
    with httpx.Client(base_url=api.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {login(api, 'admin')}"}) as c:
        yield c


@pytest.fixture(scope="module")
def sdb(security_db) -> str:
    return security_db[0]


def code() -> str:
    return "t" + uuid.uuid4().hex[:10]


def last_audit(db: str, action: str, target: str) -> dict:
    with connect(db) as conn:
        row = conn.execute("SELECT * FROM audit_log WHERE action = %s AND target = %s ORDER BY id DESC LIMIT 1",
                           (action, target)).fetchone()
    assert row is not None, f"no audit record {action} {target}"
    return row


def test_a_township_admin_adds_a_grid_in_its_subtree_audited(admin, sdb):
    c = code()
    r = admin.post("/api/admin/grid/nodes", json={"code": c, "name": "测试网格", "level": "grid",
                                                  "parent_code": OWN_VILLAGE})
    assert r.status_code == 201, r.text
    assert r.json()["path"][-2:] == [OWN_VILLAGE, c]
    rec = last_audit(sdb, "grid.create", c)
    assert rec["detail"]["before"] is None and rec["detail"]["after"]["name"] == "测试网格"
    assert c in {n["code"] for n in admin.get("/api/admin/grid/nodes").json()}
    # another township: not even confirmed to exist
    r = admin.post("/api/admin/grid/nodes", json={"code": code(), "name": "越权", "level": "grid",
                                                  "parent_code": OTHER_VILLAGE})
    assert r.status_code == 404, r.text
    assert admin.patch(f"/api/admin/grid/nodes/{OTHER_VILLAGE}", json={"name": "x"}).status_code == 404


def test_the_site_files_checks_refuse_a_wrong_level_in_chinese_naming_the_field(admin):
    r = admin.post("/api/admin/grid/nodes", json={"code": code(), "name": "错层级", "level": "township",
                                                  "parent_code": OWN_VILLAGE})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "层级错误" in detail and "level" in detail and "层级" in detail, detail


def test_a_boundary_is_pasted_as_geojson_and_checked_with_shapely(admin, sdb):
    c = code()
    assert admin.post("/api/admin/grid/nodes", json={"code": c, "name": "边界网格", "level": "grid",
                                                     "parent_code": OWN_VILLAGE}).status_code == 201
    square = {"type": "Polygon", "coordinates": [[[104.40, 30.60], [104.41, 30.60], [104.41, 30.61],
                                                  [104.40, 30.61], [104.40, 30.60]]]}
    r = admin.patch(f"/api/admin/grid/nodes/{c}", json={"boundary": {"type": "Feature", "geometry": square},
                                                       "center": {"lat": 30.605, "lon": 104.405}})
    assert r.status_code == 200, r.text
    assert r.json()["boundary"] == [[104.4, 30.6], [104.41, 30.6], [104.41, 30.61], [104.4, 30.61]]
    rec = last_audit(sdb, "grid.update", c)
    assert rec["detail"]["before"]["boundary"] is None and len(rec["detail"]["after"]["boundary"]) == 4
    bowtie = {"type": "Polygon", "coordinates": [[[104.40, 30.60], [104.41, 30.61], [104.41, 30.60],
                                                  [104.40, 30.61], [104.40, 30.60]]]}
    r = admin.patch(f"/api/admin/grid/nodes/{c}", json={"boundary": bowtie})
    assert r.status_code == 422 and "边界无效" in r.json()["detail"], r.text
    two = {"type": "MultiPolygon", "coordinates": [square["coordinates"], [[[104.5, 30.6], [104.51, 30.6],
                                                                            [104.51, 30.61], [104.5, 30.6]]]]}
    r = admin.patch(f"/api/admin/grid/nodes/{c}", json={"boundary": two})
    assert r.status_code == 422 and "2 个部分" in r.json()["detail"], r.text
    # the centre outside the boundary: the site file's own rule, in Chinese
    r = admin.patch(f"/api/admin/grid/nodes/{c}", json={"center": {"lat": 30.9, "lon": 104.9}})
    assert r.status_code == 422 and "中心点不在节点边界内" in r.json()["detail"], r.text


def test_retiring_a_node_that_still_has_cameras_is_refused_with_the_reason(admin):
    r = admin.post(f"/api/admin/grid/nodes/{OWN_VILLAGE}/retire")
    assert r.status_code == 409 and "下级节点" in r.json()["detail"], r.text
    r = admin.post(f"/api/admin/grid/nodes/{OWN_GRID}/retire")
    assert r.status_code == 409 and "摄像机" in r.json()["detail"], r.text
    assert admin.post(f"/api/admin/grid/nodes/{OWN_TOWNSHIP}/retire").status_code == 409   # its own node


def test_an_empty_node_is_retired_not_deleted(admin, sdb):
    c = code()
    assert admin.post("/api/admin/grid/nodes", json={"code": c, "name": "待撤销", "level": "grid",
                                                     "parent_code": OWN_VILLAGE}).status_code == 201
    r = admin.post(f"/api/admin/grid/nodes/{c}/retire")
    assert r.status_code == 200 and r.json()["retired"] is True, r.text
    with connect(sdb) as conn:
        assert conn.execute("SELECT retired_at FROM grid_nodes WHERE code = %s", (c,)).fetchone()["retired_at"]
    assert c not in {n["code"] for n in admin.get("/api/admin/grid/nodes").json()}


def test_moving_a_village_updates_the_subtree_paths_and_keeps_the_membership_history(county, sdb):
    with connect(sdb) as conn:
        before = conn.execute("SELECT id, grid_code, valid_from, valid_to FROM grid_membership WHERE source_id = %s "
                              "ORDER BY id", (OWN_CAMERA,)).fetchall()
        grid = before[-1]["grid_code"]
    r = county.post(f"/api/admin/grid/nodes/{OWN_VILLAGE}/move", json={"parent_code": OTHER_TOWNSHIP})
    assert r.status_code == 200, r.text
    try:
        with connect(sdb) as conn:
            path = conn.execute("SELECT path FROM grid_nodes WHERE code = %s", (grid,)).fetchone()["path"]
            assert path == [COUNTY, OTHER_TOWNSHIP, OWN_VILLAGE, grid]
            after = conn.execute("SELECT id, grid_code, valid_from, valid_to FROM grid_membership WHERE source_id = %s "
                                 "ORDER BY id", (OWN_CAMERA,)).fetchall()
            assert after == before          # the camera is still in the same grid, since the same time
            cam = conn.execute("SELECT grid_path FROM source_grid WHERE source_id = %s", (OWN_CAMERA,)).fetchone()
            assert cam["grid_path"][:2] == [COUNTY, OTHER_TOWNSHIP]
        rec = last_audit(sdb, "grid.move", OWN_VILLAGE)
        assert rec["detail"]["before"]["parent_code"] == OWN_TOWNSHIP
        assert rec["detail"]["after"]["parent_code"] == OTHER_TOWNSHIP
        # a village cannot go under a grid: the site file's level rule
        r = county.post(f"/api/admin/grid/nodes/{OWN_VILLAGE}/move", json={"parent_code": grid})
        assert r.status_code == 409, r.text      # its own subtree
    finally:
        r = county.post(f"/api/admin/grid/nodes/{OWN_VILLAGE}/move", json={"parent_code": OWN_TOWNSHIP})
        assert r.status_code == 200, r.text


def test_departments_are_created_checked_and_retired_only_when_unused(admin, sdb):
    c = code()
    r = admin.post("/api/admin/departments", json={"code": c, "name": "测试城管中队", "node_code": OWN_TOWNSHIP})
    assert r.status_code == 201, r.text
    assert last_audit(sdb, "department.create", c)["detail"]["after"]["name"] == "测试城管中队"
    assert admin.post("/api/admin/departments", json={"code": code(), "name": "越权", "node_code": OTHER_TOWNSHIP}
                      ).status_code == 404
    u = "d" + code()
    r = admin.post("/api/users", json={"username": u, "display_name": "部门处置员", "role": "department_handler",
                                       "node_code": OWN_TOWNSHIP, "department_code": c, "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = admin.post(f"/api/admin/departments/{c}/retire")
    assert r.status_code == 409 and "在用帐号" in r.json()["detail"], r.text
    assert admin.patch(f"/api/users/{u}", json={"active": False}).status_code == 200
    r = admin.post(f"/api/admin/departments/{c}/retire")
    assert r.status_code == 200 and r.json()["retired"], r.text
    rec = last_audit(sdb, "department.retire", c)
    assert rec["detail"]["before"]["retired"] is False and rec["detail"]["after"]["retired"] is True
    # a retired department is no longer one an account can be given
    r = admin.patch(f"/api/users/{u}", json={"department_code": c})
    assert r.status_code in (200, 422)


def test_a_user_is_checked_by_the_site_rules_in_chinese(admin):
    r = admin.post("/api/users", json={"username": "x" + code(), "display_name": "无部门", "role": "department_handler",
                                       "node_code": OWN_TOWNSHIP, "password": PASSWORD})
    assert r.status_code == 422, r.text
    assert "职能部门用户必须指定部门" in r.json()["detail"] and "department" in r.json()["detail"], r.text
    r = admin.post("/api/users", json={"username": "x" + code(), "display_name": "无此部门", "role": "department_handler",
                                       "node_code": OWN_TOWNSHIP, "department_code": "no-such-dept",
                                       "password": PASSWORD})
    assert r.status_code == 422 and "部门 'no-such-dept' 不存在" in r.json()["detail"], r.text
    # what the request itself cannot say is named too, in Chinese, without echoing the value
    r = admin.post("/api/users", json={"username": "Bad Name!", "display_name": "x", "role": "grid_worker",
                                       "node_code": OWN_TOWNSHIP, "password": "Secret-value-2026"})
    assert r.status_code == 422 and "username：格式无效" in r.json()["detail"], r.text
    assert "Secret-value-2026" not in r.text and "Bad Name!" not in r.text


def test_a_site_user_is_edited_in_the_ui_and_the_change_stands(admin, sdb):
    """The registry is the live truth: an account the site file declared is edited here
    like any other (the file is applied again only when it changes)."""
    r = admin.patch("/api/users/ds-supervisor", json={"display_name": "赵磊（已调岗）"})
    assert r.status_code == 200, r.text
    rec = last_audit(sdb, "user.update", "ds-supervisor")
    assert rec["detail"] == {"before": {"display_name": "赵磊"}, "after": {"display_name": "赵磊（已调岗）"}}
    assert admin.patch("/api/users/ds-supervisor", json={"display_name": "赵磊"}).status_code == 200


def test_ending_sessions_logs_the_person_out_at_once(api, admin, sdb):
    u = "s" + code()
    assert admin.post("/api/users", json={"username": u, "display_name": "会话测试", "role": "grid_worker",
                                          "node_code": OWN_VILLAGE, "password": PASSWORD}).status_code == 201
    with httpx.Client(base_url=api.base_url, timeout=20, headers={"Authorization": f"Bearer {login(api, u)}"}) as c:
        assert c.get("/api/auth/me").status_code == 200
        r = admin.post(f"/api/users/{u}/sessions/end")
        assert r.status_code == 200 and r.json()["ended"] == 1, r.text
        assert c.get("/api/auth/me").status_code == 401
    assert last_audit(sdb, "user.sessions_end", u)["detail"] == {"ended": 1}
    assert admin.post("/api/users/xh-dispatcher/sessions/end").status_code == 404


def test_sla_limits_are_checked_audited_and_announced_to_the_alerts_worker(api, admin, county, sdb):
    current = county.get("/api/admin/alerting").json()
    sla = current["sla"]
    assert sla["default"]["total"] == "72h"
    # a township's administrator may read but not change what applies county-wide
    assert admin.put("/api/admin/alerting/sla", json={"data": sla}).status_code == 403
    bad = {**sla, "warn_at": 7}
    r = county.put("/api/admin/alerting/sla", json={"data": bad})
    assert r.status_code == 422 and "sla.warn_at" in r.json()["detail"], r.text
    heard = threading.Event()
    stop = threading.Event()
    listener = Listener(sdb, ["xlhub_alerting"], lambda channel, payload: heard.set(), name="test-alerting",
                        on_connect=None)
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(1.0)
    try:
        new = {**sla, "default": {**sla["default"], "total": "48h"}}
        r = county.put("/api/admin/alerting/sla", json={"data": new})
        assert r.status_code == 200, r.text
        assert heard.wait(10), "no NOTIFY on xlhub_alerting"
    finally:
        stop.set()
    rec = last_audit(sdb, "alerting.sla.update", "sla")
    assert rec["detail"]["before"]["default"]["total"] == "72h" and rec["detail"]["after"]["default"]["total"] == "48h"
    # the alerts worker's configuration (what it compiles rules and SLA clocks from) reads it
    from alerts.worker import AlertsWorker
    from config.settings import Settings
    worker = AlertsWorker(Settings(database_url=sdb))
    cfg = worker.config()
    assert cfg.site.sla.default.total.total_seconds() == 48 * 3600
    r = county.put("/api/admin/alerting/sla", json={"data": sla})
    assert r.status_code == 200
    worker.sections_changed.set()
    assert worker.config().site.sla.default.total.total_seconds() == 72 * 3600
