"""告警规则 edited with forms in Debian's chromium, not as JSON: the county administrator adds a
rule (event types by name, a grid subtree, the alarm's severity, a case) and the alerts
worker's configuration matches an event of that type with it; the hub's refusals (an empty type
list, a duration written 三天, a time 25:00) appear in Chinese beside the field they name; a
schedule edited in the weekly grid and an arming entry round-trip; a township administrator
sees the same forms read-only; desk and phone without sideways scrolling."""
from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from alerts.config import load_config
from alerts.rules.compile import EventFacts
from config.settings import DEMO_SITE_FILE
from store import identity, sitedoc
from store.db import connect
from tests.api.conftest import PASSWORD
from tests.web.conftest import UI
from tests.web.test_admin_org import admin_api, tabs  # noqa: F401  (fixtures reused)

pytestmark = pytest.mark.timeout(240)

COUNTY = "510199000000"
TOWNSHIP = "510199101000"          # 东山镇
VILLAGE = "510199101201"           # 东山村
GRID_1 = "510199101201001"         # 东山村第一网格
OTHER_TOWNSHIP_GRID = ("510199000000", "510199201000", "510199201001", "510199201001001")
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
NO_SIDEWAYS = "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"


def open_alerting(p) -> None:
    if p.locator("#nav-admin").is_visible():
        p.click("#nav-admin")
        p.click("#nav-alerting")
    else:
        p.evaluate("location.hash = '#/alerting'")
    p.wait_for_selector("#rules-table tbody tr")


def field_error(p, path: str):
    return p.locator(f'#rule-form .field[data-path="{path}"] > .field-error')


def wait_text(locator, timeout=15000) -> str:
    deadline = time.monotonic() + timeout / 1000
    while time.monotonic() < deadline:
        text = locator.text_content() or ""
        if text:
            return text
        time.sleep(0.1)
    raise AssertionError("no error shown")


def test_the_county_admin_adds_a_rule_with_the_form(tabs, admin_api, seeded_db, shots):  # noqa: F811
    ui = tabs("admin")
    p = ui.page
    open_alerting(p)
    # the list speaks in names: the demo's door rule matches 门禁被强行打开, not door.forced_open
    assert "门禁被强行打开" in p.locator('#rules-table tr[data-rule="door-forced"] .rule-match').inner_text()
    p.click("#rule-new")
    p.fill("#rule-id", "door-held-test")
    p.fill("#rule-name", "门长时间未关（测试）")
    p.click("#rule-save")                                      # no event type yet: refused by the hub
    assert "至少需要 1 项" in wait_text(field_error(p, "when.types"))

    # event types chosen by their labels, grouped by source kind
    groups = p.eval_on_selector_all("#rule-types-pick optgroup", "gs => gs.map(g => g.label)")
    assert {"门禁", "摄像机", "无人机"} <= set(groups), groups
    assert p.locator('#rule-types-pick option[value="door.held_open"]').text_content() == "门长时间未关"
    p.select_option("#rule-types-pick", "door.held_open")
    p.select_option("#rule-types-pick", "door.tamper")
    assert p.locator("#rule-types .chip").all_inner_texts() == ["门长时间未关×", "门禁设备被破坏×"] or \
        [t.replace("×", "").strip() for t in p.locator("#rule-types .chip").all_inner_texts()] == ["门长时间未关", "门禁设备被破坏"]
    p.select_option("#rule-grids-pick", TOWNSHIP)
    assert "东山镇" in p.locator("#rule-grids .chip").inner_text()
    p.select_option("#rule-severity", "major")
    p.check("#rule-case")
    p.select_option("#rule-case-category", "hazard")
    p.select_option("#rule-case-urgency", "high")
    p.fill("#rule-clear-after", "三天")
    p.click("#rule-save")
    error = wait_text(field_error(p, "alarm.clear_after"))
    assert "不是有效的时长" in error and "30s" in error, error
    assert field_error(p, "when.types").text_content() == ""             # that one is fixed now
    p.screenshot(path=str(shots / "alerting-rule-refused.png"))

    p.fill("#rule-clear-after", "4h")
    p.click("#rule-save")
    row = p.locator('#rules-table tr[data-rule="door-held-test"]')
    row.wait_for()
    text = row.inner_text()
    assert "门长时间未关" in text and "东山镇" in text and "安全隐患 · 严重" in text and "重要" in text, text
    assert p.locator("#rule-form").count() == 0

    with admin_api.client("admin") as c:
        rules = c.get("/api/admin/alerting").json()["rules"]
    assert rules[-1] == {
        "id": "door-held-test", "name": "门长时间未关（测试）", "enabled": True,
        "when": {"types": ["door.held_open", "door.tamper"], "grids": [TOWNSHIP]},
        "alarm": {"severity": "major", "clear_after": "4h"},
        "case": {"category": "hazard", "urgency": "high"},
    }
    assert [r["id"] for r in rules[:-1]][:2] == ["door-forced", "radio-sos"]       # the others kept

    # the alerts worker's configuration (the registry's sections over the site file) uses it
    with connect(seeded_db) as conn:
        cfg = load_config(DEMO_SITE_FILE, sitedoc.sections(conn))
    now = datetime.now(UTC)
    here = (COUNTY, TOWNSHIP, VILLAGE, GRID_1)
    match = cfg.rules.match(EventFacts("door.held_open", "door-dsc", here, "major"), now)
    assert match.rule is not None and match.rule.id == "door-held-test"
    assert match.rule.case.category == "hazard" and str(match.rule.alarm.clear_after) == "4:00:00"
    assert cfg.rules.match(EventFacts("door.held_open", "door-x", OTHER_TOWNSHIP_GRID, "major"), now).rule is None

    # duplicate, then delete the copy: the list has the original once again
    row.locator('[data-action="duplicate"]').click()
    assert p.input_value("#rule-id") == "door-held-test-copy"
    p.click("#rule-save")
    p.locator('#rules-table tr[data-rule="door-held-test-copy"]').wait_for()
    p.once("dialog", lambda d: d.accept())
    p.locator('#rules-table tr[data-rule="door-held-test-copy"] [data-action="delete"]').click()
    p.locator('#rules-table tr[data-rule="door-held-test-copy"]').wait_for(state="detached")
    with admin_api.client("admin") as c:
        ids = [r["id"] for r in c.get("/api/admin/alerting").json()["rules"]]
    assert ids.count("door-held-test") == 1 and "door-held-test-copy" not in ids

    # order is priority (the first matching rule decides): 上移 puts it before the previous one
    p.locator('#rules-table tr[data-rule="door-held-test"] [data-action="up"]').click()
    p.wait_for_function("() => document.querySelector('#rules-table tbody tr:last-child').dataset.rule !== 'door-held-test'")
    with admin_api.client("admin") as c:
        ids = [r["id"] for r in c.get("/api/admin/alerting").json()["rules"]]
    assert ids[-2:] == ["door-held-test", "camera-intrusion"], ids
    assert not ui.errors, ui.errors


def test_a_schedule_edited_in_the_weekly_grid_and_arming_round_trip(tabs, admin_api, shots):  # noqa: F811
    ui = tabs("admin")
    p = ui.page
    open_alerting(p)
    sat = p.locator('.schedule[data-schedule="night"] .week-day[data-day="sat"]')
    assert sat.locator(".range").count() == 1
    assert sat.locator(".range-start").input_value() == "22:00" and sat.locator(".range-end").input_value() == "06:00"
    sat.locator('[data-action="add-range"]').click()
    added = sat.locator(".range").nth(1)
    added.locator(".range-start").fill("10:00")
    added.locator(".range-end").fill("25:00")
    p.click("#schedules-save")
    error = wait_text(p.locator("#schedules-error"))
    assert "时间须写作 HH:MM" in error, error
    assert "invalid" in (added.get_attribute("class") or "")
    added.locator(".range-end").fill("12:00")
    p.click("#schedules-save")
    with admin_api.client("admin") as c:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            night = c.get("/api/admin/alerting").json()["schedules"]["night"]
            if len(night["windows"]) == 2:
                break
            time.sleep(0.2)
    assert night == {"name": "夜间布防", "windows": [
        {"days": ALL_DAYS, "start": "22:00", "end": "06:00"},
        {"days": ["sat"], "start": "10:00", "end": "12:00"}]}

    # shown again as it was saved
    p.reload()
    open_alerting(p)
    sat = p.locator('.schedule[data-schedule="night"] .week-day[data-day="sat"]')
    assert [r.locator(".range-start").input_value() + "-" + r.locator(".range-end").input_value()
            for r in sat.locator(".range").all()] == ["22:00-06:00", "10:00-12:00"]
    assert p.locator('.schedule[data-schedule="night"] .week-day[data-day="fri"] .range').count() == 1

    # arming: 东山村 armed only at night
    p.click("#arming-new")
    entry = p.locator(".arming-entry").last
    entry.locator('select[id^="arming-grids-"]').select_option(VILLAGE)
    p.click("#arming-save")
    with admin_api.client("admin") as c:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            arming = c.get("/api/admin/alerting").json()["arming"]
            if arming:
                break
            time.sleep(0.2)
    assert arming == [{"schedule": "night", "grids": [VILLAGE]}]
    p.locator(".arming-entry .chip").wait_for()
    assert "东山村" in p.locator(".arming-entry .chip").inner_text()
    p.locator("#schedules-editor").screenshot(path=str(shots / "alerting-schedules.png"))
    p.locator("#arming-editor").screenshot(path=str(shots / "alerting-arming.png"))
    assert not ui.errors, ui.errors


def test_a_township_admin_sees_the_forms_read_only(tabs, seeded_db):  # noqa: F811
    username = "ds-admin-ro"
    with connect(seeded_db) as conn:
        if not conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone():
            identity.create_user(conn, username=username, display_name="东山镇管理员", role="admin",
                                 node_code=TOWNSHIP, password=PASSWORD)
    ui = tabs(username)
    p = ui.page
    open_alerting(p)
    p.wait_for_selector("#alerting-readonly")
    for button in ("#rule-new", "#schedules-save", "#arming-save", "#sla-save", "#alerting-rules-save"):
        assert p.locator(button).count() == 0, button
    assert p.locator('#rules-table [data-action="delete"]').count() == 0
    assert p.locator("#alerting-rules").get_attribute("readonly") is not None
    assert p.locator('.schedule[data-schedule="night"] .range-start').first.is_disabled()
    p.locator('#rules-table tr[data-rule="door-forced"] [data-action="edit"]').click()
    p.wait_for_selector("#rule-form")
    assert p.locator("#rule-name").is_disabled() and p.locator("#rule-save").count() == 0
    assert p.locator("#rule-types-pick").count() == 0 or p.locator("#rule-types-pick").is_disabled()
    assert not ui.errors, ui.errors


@pytest.mark.parametrize("size", [(1600, 900), (390, 844)], ids=["desk", "phone"])
def test_the_forms_fit_a_desk_and_a_phone(browser, admin_api, size, shots):  # noqa: F811
    ui = UI(browser, admin_api.base_url)
    try:
        ui.login("admin")                          # (the desk shell shows #whoami, which login waits for)
        p = ui.page
        p.set_viewport_size({"width": size[0], "height": size[1]})
        open_alerting(p)
        assert p.evaluate(NO_SIDEWAYS), "the alerting page scrolls sideways"
        p.screenshot(path=str(shots / f"alerting-{size[0]}.png"), full_page=True)
        p.locator("#schedules-editor").scroll_into_view_if_needed()
        p.screenshot(path=str(shots / f"alerting-schedules-{size[0]}.png"))
        p.click("#rule-new")
        p.wait_for_selector("#rule-form")
        p.select_option("#rule-types-pick", "camera.tamper.*")
        assert p.evaluate(NO_SIDEWAYS), "the rule form scrolls sideways"
        wide = p.evaluate("() => { const m = document.querySelector('.modal'); return m.scrollWidth <= m.clientWidth + 1; }")
        assert wide, "the rule form is wider than its window"
        p.screenshot(path=str(shots / f"alerting-rule-{size[0]}.png"))
        assert not ui.errors, ui.errors
    finally:
        ui.close()
