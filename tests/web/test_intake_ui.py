"""Issue 17 (items 2, 4, 5, 6) in a real browser at 1600×900: a hotline seat takes a phone
report (caller masked, place picked on the map, a photo) that lands at the place's
township; the township dispatcher dispatches with the pickers; the police station's
handler lands on their task list and feeds back with the result and a photo. A flag sent
from the wall as 城市管理 / 严重 with a note becomes a case carrying exactly those. A door
is unlocked only with a reason, and only by a role that may."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from store.db import connect
from tests.web.test_flag_to_case import CAM, evidence_dir, pipeline  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(300)
DB: dict = {}


@pytest.fixture(autouse=True)
def _db(live_db):
    DB["url"] = live_db
DESKTOP = {"width": 1600, "height": 900}
GRID_DSC1 = "510199101201001"        # 东山村第一网格 (东山镇)


def jpeg(colour: int, path) -> str:
    img = np.full((240, 320, 3), colour, np.uint8)
    cv2.putText(img, "XL", (100, 140), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    return str(path)


def login(ui_for, user):
    ui = ui_for(user)
    ui.page.set_viewport_size(DESKTOP)
    return ui, ui.page


def query(db, sql, params=()):
    with connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def act(p, action, note=None):
    before = p.text_content("#case-state")
    if note is not None:
        p.fill("#action-note", note)
    p.click(f'#case-actions .action-btn[data-action="{action}"]')
    p.wait_for_function("([b]) => document.querySelector('#case-state') && "
                        "document.querySelector('#case-state').textContent !== b", arg=[before], timeout=15000)


def open_card(p, number):
    p.click("#nav-cases")
    p.wait_for_selector(f'.card[data-number="{number}"]', timeout=15000)
    p.click(f'.card[data-number="{number}"]')
    p.wait_for_selector("#case-state")


def test_hotline_intake_to_township_dispatch_to_handler_feedback_with_photos(ui_for, live_api, evidence_dir,  # noqa: F811
                                                                              tmp_path, shots):
    # 1. the hotline seat: starts at the cases page, takes the call
    hotline, p = login(ui_for, "hotline")
    p.wait_for_selector("#case-new")
    assert p.evaluate("location.hash") == "#/cases"
    p.wait_for_selector("#case-board .columns")
    assert "null" not in p.text_content("#page")
    p.goto(p.url.split("#")[0] + "#/broadcast")        # a broadcast console they cannot use is not offered
    p.wait_for_selector("#broadcast-history")
    assert p.locator("#broadcast-send").count() == 0
    p.click("#nav-cases")
    p.click("#case-new")
    p.fill("#intake-title", "东山村路灯不亮")
    p.fill("#intake-caller-name", "张三丰")
    p.fill("#intake-caller-phone", "13812345678")
    p.click(f'#intake-map path[data-code="{GRID_DSC1}"]')          # the place, on the map
    assert p.eval_on_selector("#intake-grid", "s => s.value") == GRID_DSC1
    p.select_option("#intake-category", "city")
    p.check('input[name="intake-urgency"][value="medium"]')
    p.fill("#intake-description", "村口至村委会路段路灯整晚不亮")
    p.set_input_files("#intake-photos", jpeg(60, tmp_path / "report.jpg"))
    p.click("#intake-submit")
    p.wait_for_selector("#case-state", timeout=15000)
    case = query(DB["url"], "SELECT * FROM cases WHERE title = %s", ("东山村路灯不亮",))[0]
    number = case["number"]
    assert (case["owner_code"], case["channel"], case["category"]) == ("510199101000", "hotline", "city")
    assert case["reporter"] == {"name": "张三丰", "phone": "13812345678"}
    shown = p.text_content("#case-reporter")
    assert "张**" in shown and "138****5678" in shown and "13812345678" not in shown
    assert "东山镇" in p.text_content("#case-page")                 # 责任单位: the township
    p.click("#reporter-reveal")
    p.wait_for_selector("#reporter-full")
    assert "13812345678" in p.text_content("#reporter-full")
    assert query(DB["url"], "SELECT 1 FROM audit_log WHERE actor = 'hotline' AND action = 'case.reporter.reveal' "
                            "AND target LIKE %s", (f"%{case['id']}%",))
    p.wait_for_selector("#case-evidence img")
    p.screenshot(path=str(shots / "30-hotline-intake.png"))

    # 2. the township dispatcher: accept, register, dispatch with the pickers
    _, d = login(ui_for, "ds-dispatcher")
    open_card(d, number)
    act(d, "accept")
    act(d, "register")
    d.wait_for_selector('#action-departments input[value="police-dongshan"]', timeout=10000)
    assert d.locator('#action-departments input[value="police-xihe"]').count() == 0     # another township's
    assert d.locator('#action-assignee option[value="dsc-worker"]').count() == 1
    d.click('#case-actions .action-btn[data-action="dispatch"]')                       # nobody chosen yet
    d.wait_for_selector("#action-result .error")
    assert "请选择处置部门或网格员" in d.text_content("#action-result")
    d.check('#action-departments input[value="police-dongshan"]')
    act(d, "dispatch", note="请派出所协调供电所处置")
    assert d.text_content("#case-state") == "已派遣"
    d.screenshot(path=str(shots / "31-dispatch-pickers.png"))

    # 3. the police station's handler: lands on the task list, feeds back with result and photo
    _, q = login(ui_for, "ds-police")
    q.wait_for_selector(f'#task-list li[data-number="{number}"]', timeout=15000)
    assert q.evaluate("location.hash") == "#/cases" and q.locator("#nav-wall").count() == 0
    q.screenshot(path=str(shots / "32-handler-tasks.png"))
    q.click(f'#task-list li[data-number="{number}"] button')
    q.wait_for_selector("#case-state")
    act(q, "sign")
    q.click('#case-actions .action-btn[data-action="feedback"]')                       # no result written
    q.wait_for_selector("#action-result .error")
    assert "反馈须填写处置结果" in q.text_content("#action-result")
    q.set_input_files("#action-photos", jpeg(200, tmp_path / "result.jpg"))
    act(q, "feedback", note="已联系供电所更换灯具，恢复照明")
    assert q.text_content("#case-state") == "已反馈"
    q.wait_for_function("document.querySelectorAll('#case-evidence img').length === 2", timeout=15000)
    q.screenshot(path=str(shots / "33-handler-feedback.png"))
    parts = query(DB["url"], "SELECT state, note, handled_by FROM case_assignments WHERE case_id = %s", (case["id"],))
    assert parts == [{"state": "done", "note": "已联系供电所更换灯具，恢复照明", "handled_by": "ds-police"}]
    files = query(DB["url"], "SELECT added_by FROM case_evidence WHERE case_id = %s ORDER BY id", (case["id"],))
    assert [f["added_by"] for f in files] == ["hotline", "ds-police"]


def test_a_flag_from_the_wall_carries_category_urgency_and_note(pipeline, ui_for, live_api, shots):  # noqa: F811
    _, p = login(ui_for, "ds-supervisor")
    p.click("#nav-wall")
    tile = f'.tile[data-camera="{CAM}"]'
    p.wait_for_selector(f'{tile}[data-state="live"]', timeout=30000)
    time.sleep(1)
    p.click(f"{tile} .flag-btn")
    p.wait_for_selector("#flag-form")
    note = "村口井盖缺失，夜间行人有坠落危险"
    p.select_option("#flag-category", "城市管理")
    p.check('#flag-form input[name="urgency"][value="high"]')
    p.fill("#flag-note", note)
    p.click("#flag-submit")
    p.wait_for_function("document.querySelector('#flag-result').dataset.outcome", timeout=40000)
    assert p.get_attribute("#flag-result", "data-outcome") == "ok", p.text_content("#flag-result")
    deadline = time.monotonic() + 30
    found = []
    while time.monotonic() < deadline and not found:
        found = query(DB["url"], "SELECT * FROM cases WHERE channel = 'video' AND description LIKE %s", (f"{note}%",))
        time.sleep(0.5)
    assert found, "no case from the flag"
    case = found[0]
    assert (case["category"], case["urgency"]) == ("city", "high")           # as chosen, not the rule's defaults
    assert case["title"].startswith(note) and "ds-supervisor标记" in case["description"]
    p.keyboard.press("Escape")
    open_card(p, case["number"])
    head = p.text_content("#case-page .case-head")
    assert "城市管理" in head and "严重" in head and note in p.text_content("#case-page")
    p.screenshot(path=str(shots / "34-flag-case-carries-choice.png"))


def test_door_unlock_needs_a_reason_and_is_offered_only_to_who_may(ui_for, live_api, shots):
    _, sup = login(ui_for, "ds-supervisor")
    sup.click("#nav-devices")
    sup.wait_for_selector('#devices-table tr[data-device="door-dsc"]')
    assert sup.locator('tr[data-device="door-dsc"] button[data-action="unlock"]').count() == 0

    _, p = login(ui_for, "ds-dispatcher")
    p.click("#nav-devices")
    p.wait_for_selector('tr[data-device="door-dsc"] button[data-action="unlock"]')
    assert p.locator('#devices-table tr[data-kind="speaker"] button[data-action="volume"]').count() >= 1
    assert p.locator('#devices-table tr[data-kind="drone"] button[data-action="return_home"]').count() >= 1
    before = len(query(DB["url"], "SELECT id FROM device_commands WHERE name = 'unlock' AND device_id = 'door-dsc'"))
    p.click('tr[data-device="door-dsc"] button[data-action="unlock"]')
    p.click("#unlock-submit")
    p.wait_for_function("document.querySelector('#unlock-result').dataset.outcome === 'error'")
    assert "请填写开门事由" in p.text_content("#unlock-result")
    assert len(query(DB["url"], "SELECT id FROM device_commands WHERE name = 'unlock' AND device_id = 'door-dsc'")) == before
    p.fill("#unlock-reason", "维修人员进入机房")
    p.click("#unlock-submit")
    p.wait_for_function("document.querySelector('#unlock-result').dataset.outcome", timeout=20000)
    assert p.get_attribute("#unlock-result", "data-outcome") == "ok", p.text_content("#unlock-result")
    p.screenshot(path=str(shots / "35-door-unlock-reason.png"))
    audit = query(DB["url"], "SELECT detail FROM audit_log WHERE action = 'door.unlock' AND actor = 'ds-dispatcher' "
                             "ORDER BY id DESC LIMIT 1")
    assert audit and audit[0]["detail"]["reason"] == "维修人员进入机房"


def test_a_dispatcher_opens_a_case_from_an_alarm_and_clears_it(pipeline, ui_for, live_api, shots):  # noqa: F811
    from tests.alerts.conftest import insert_event
    insert_event(DB["url"], "cam-tyc-01", "camera.tamper.covered", severity="major")
    _, sup = login(ui_for, "ds-supervisor")
    sup.click("#nav-alerts")
    row = '#alarm-list li:has-text("摄像机被遮挡或移位")'
    sup.wait_for_selector(row, timeout=20000)
    assert sup.locator(f"{row} .clear-btn").count() == 1 and sup.locator(f"{row} .case-btn").count() == 1

    _, p = login(ui_for, "ds-dispatcher")
    p.click("#nav-alerts")
    p.wait_for_selector(f"{row} .case-btn", timeout=20000)
    alarm_id = p.get_attribute(row, "data-id")
    p.click(f"{row} .case-btn")
    p.select_option("#alarm-case-category", "hazard")
    p.select_option("#alarm-case-urgency", "high")
    p.fill("#alarm-case-description", "桃园村村口摄像机被遮挡，需到场查看")
    p.click("#alarm-case-submit")
    p.wait_for_selector("#case-state", timeout=15000)
    case = query(DB["url"], "SELECT * FROM cases WHERE alarm_id = %s", (alarm_id,))[0]
    assert (case["category"], case["urgency"], case["owner_code"]) == ("hazard", "high", "510199101000")
    p.screenshot(path=str(shots / "36-case-from-alarm.png"))
    p.keyboard.press("Escape")
    p.click("#nav-alerts")
    p.wait_for_selector(f'#alarm-list li[data-id="{alarm_id}"] .clear-btn', timeout=15000)
    assert p.locator(f'#alarm-list li[data-id="{alarm_id}"] .case-btn').count() == 0     # it has its case now
    p.click(f'#alarm-list li[data-id="{alarm_id}"] .clear-btn')
    p.fill("#clear-note", "已到场清理遮挡物")
    p.click("#clear-submit")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and query(DB["url"], "SELECT state FROM alarms WHERE id = %s",
                                                (alarm_id,))[0]["state"] != "cleared":
        time.sleep(0.3)
    assert query(DB["url"], "SELECT state FROM alarms WHERE id = %s", (alarm_id,))[0]["state"] == "cleared"
