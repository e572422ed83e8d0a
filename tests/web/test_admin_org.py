"""Administration in a real browser (Debian's chromium): an administrator disables a user
whose session is open in another browser, and that browser is logged out at once (the feed
tells it, its next request is refused); an administrator adds a grid node in 网格管理 and an
account on it in 用户管理; the pages are offered only to roles that have the permission."""
from __future__ import annotations

import time
import uuid

import pytest

from store import identity
from store.db import connect
from tests.api.conftest import PASSWORD, ApiServer
from tests.web.conftest import UI

pytestmark = pytest.mark.timeout(240)

VILLAGE = "510199101201"       # 东山村


@pytest.fixture(scope="module")
def admin_api(seeded_db, mqtt):
    with ApiServer(seeded_db, mqtt.url) as server:
        yield server


@pytest.fixture
def tabs(browser, admin_api):
    opened: list[UI] = []

    def make(username: str, password: str = PASSWORD) -> UI:
        ui = UI(browser, admin_api.base_url)
        opened.append(ui)
        return ui.login(username, password)

    yield make
    for ui in opened:
        ui.close()


def test_disabling_a_user_ends_their_open_session_in_another_browser(tabs, seeded_db, shots):
    victim = f"w{uuid.uuid4().hex[:8]}"
    with connect(seeded_db) as conn:
        identity.create_user(conn, username=victim, display_name="被停用的网格员", role="grid_worker",
                             node_code=VILLAGE, password=PASSWORD)
    worker = tabs(victim)
    wp = worker.page
    wp.click("#nav-account")
    wp.wait_for_selector("#me")
    assert wp.locator("#nav-users").count() == 0          # not offered to a grid worker

    admin = tabs("admin")
    ap = admin.page
    ap.click("#nav-admin")                      # 管理, then its tab
    ap.click("#nav-users")
    row = ap.locator(f'tr[data-username="{victim}"]')
    row.wait_for()
    ap.once("dialog", lambda d: d.accept())
    row.locator('button[data-action="disable"]').click()
    ap.locator(f'tr[data-username="{victim}"] .badge.bad').wait_for()
    ap.screenshot(path=str(shots / "admin-users.png"))

    # The worker's browser makes no request of its own: the feed ends and the page returns to login.
    wp.wait_for_selector("#login-username", timeout=15000)
    assert "会话已过期" in wp.text_content("#login-error")
    wp.fill("#login-username", victim)
    wp.fill("#login-password", PASSWORD)
    wp.click("#login-submit")
    wp.wait_for_function("document.querySelector('#login-error').textContent.length > 0")
    assert "用户名或密码错误" in wp.text_content("#login-error")


def test_an_admin_adds_a_grid_node_and_a_user_on_it(tabs, seeded_db, shots):
    code = f"5101991012019{uuid.uuid4().int % 100:02d}"
    admin = tabs("admin")
    p = admin.page
    p.click("#nav-admin")                      # 管理, then its tab
    p.click("#nav-grid")
    p.wait_for_selector("#grid-add")          # the tree and the first node's details
    p.locator(f'#grid-tree button[data-code="{VILLAGE}"]').click()
    p.locator(f'#grid-tree button.active[data-code="{VILLAGE}"]').wait_for()
    p.wait_for_function(f"document.querySelector('#grid-detail h2 small').textContent.includes('{VILLAGE}')")
    p.fill("#grid-child-code", code)
    p.fill("#grid-child-name", "东山村测试网格")
    p.click("#grid-add-submit")
    try:
        p.locator(f'#grid-tree button.active[data-code="{code}"]').wait_for(timeout=15000)
    except Exception:
        raise AssertionError(f"not added: {p.text_content('#grid-error')!r} {admin.errors} {admin.console[-5:]}") from None
    # draw its boundary: four clicks on the map, then save
    box = p.locator("#boundary-map").bounding_box()
    for fx, fy in ((0.3, 0.3), (0.6, 0.3), (0.6, 0.6), (0.3, 0.6)):
        p.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    p.click("#boundary-save-drawn")
    p.wait_for_function("document.querySelector('#boundary-map polygon') !== null")
    p.screenshot(path=str(shots / "admin-grid.png"))
    with connect(seeded_db) as conn:
        node = conn.execute("SELECT name, parent_code, boundary FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    assert node["name"] == "东山村测试网格" and node["parent_code"] == VILLAGE
    deadline = time.monotonic() + 10
    while node["boundary"] is None and time.monotonic() < deadline:
        with connect(seeded_db) as conn:
            node = conn.execute("SELECT boundary FROM grid_nodes WHERE code = %s", (code,)).fetchone()
    assert node["boundary"] and len(node["boundary"]) == 4

    username = f"g{uuid.uuid4().hex[:8]}"
    p.click("#nav-admin")                      # 管理, then its tab
    p.click("#nav-users")
    p.click("#user-new")
    p.fill("#user-username", username)
    p.fill("#user-name", "新网格员")
    p.select_option("#user-role", "department_handler")
    p.select_option("#user-node", code)
    p.click("#user-save")
    p.wait_for_function("document.querySelector('#user-form-error').textContent.length > 0")
    assert "职能部门用户必须指定部门" in p.text_content("#user-form-error")
    p.select_option("#user-role", "grid_worker")
    p.click("#user-save")
    p.wait_for_selector("#initial-password")
    initial = p.text_content("#initial-password").strip()
    with connect(seeded_db) as conn:
        user = conn.execute("SELECT node_code, role, must_change_password FROM users WHERE username = %s",
                            (username,)).fetchone()
    assert user == {"node_code": code, "role": "grid_worker", "must_change_password": True}
    assert not admin.errors
    # the new account logs in with the password shown once, scoped to the new grid
    newcomer = tabs(username, initial).page
    newcomer.wait_for_selector("#me-node")          # first login: sent to change the password
    assert "东山村测试网格" in newcomer.text_content("#me-node")


def test_the_admin_pages_work_under_the_uis_own_content_security_policy(browser, admin_api):
    ui = UI(browser, admin_api.base_url, bypass_csp=False)
    try:
        ui.login("admin")
        p = ui.page
        p.click("#nav-admin")
        for page, ready in [("users", "#users-table tbody tr"), ("departments", "#departments-table tbody tr"),
                            ("grid", "#boundary-map"), ("alerting", "#sla-table tbody tr")]:
            p.click(f"#nav-{page}")
            try:
                p.wait_for_selector(ready, timeout=30000)
            except Exception:
                raise AssertionError(f"{page}: {p.inner_text('#page')[:300]!r} {ui.errors} {ui.console[-5:]}") from None
        assert '"total": "72h"' in p.input_value("#alerting-sla")
        violations = [m for m in ui.console if "Content Security Policy" in m or "Refused to" in m]
        assert not violations, violations
        assert not ui.errors, ui.errors
    finally:
        ui.close()


def test_sla_limits_are_edited_in_a_table_and_refused_in_chinese(tabs, seeded_db):
    admin = tabs("admin")
    p = admin.page
    p.click("#nav-admin")                      # 管理, then its tab
    p.click("#nav-alerting")
    p.wait_for_selector("#sla-table tbody tr")
    first = p.locator('#sla-table tbody tr[data-default="true"] input[data-f="total"]')
    assert first.input_value() == "72h"
    first.fill("三天")
    p.click("#sla-save")
    p.wait_for_function("document.querySelector('#sla-error').textContent.length > 0")
    assert "sla.default.total" in p.text_content("#sla-error")
    assert "不是有效的时长" in p.text_content("#sla-error")
    p.locator('#sla-table tbody tr[data-default="true"] input[data-f="total"]').fill("48h")
    p.click("#sla-save")
    p.wait_for_function("JSON.parse(document.querySelector('#alerting-sla').value).default.total === '48h'")
    with connect(seeded_db) as conn:
        data = conn.execute("SELECT data FROM site_sections WHERE name = 'sla'").fetchone()["data"]
    assert data["default"]["total"] == "48h" and len(data["limits"]) >= 1
    assert data["limits"][0]["category"] in ("public_order", "治安防控")
    assert not admin.errors


def test_the_administrators_menu_fits_a_desk_and_groups_the_administration_pages(tabs, shots):
    """Six administration pages beside the control room's would push the menu past a desk's
    width: they share one entry, 管理, and a row of tabs above each of them."""
    p = tabs("admin").page
    fits = "(() => { const n = document.getElementById('nav'); return n.scrollWidth <= n.clientWidth + 1; })()"
    assert p.evaluate(fits), "the top menu scrolls sideways on a 1440 px desk"
    top = p.eval_on_selector_all("#nav a", "els => els.map(e => e.id)")
    assert "nav-admin" in top and not {"nav-users", "nav-grid", "nav-cameras"} & set(top), top
    assert p.locator("#subnav").is_hidden()                      # not on the wall
    p.click("#nav-admin")
    p.wait_for_selector("#subnav a.active")
    tabs_ = p.eval_on_selector_all("#subnav a", "els => els.map(e => e.textContent)")
    assert {"摄像机管理", "用户管理", "部门管理", "网格管理", "告警规则"} <= set(tabs_), tabs_
    p.click("#nav-users")
    p.wait_for_function("location.hash === '#/users'")
    assert p.locator("#nav-admin").get_attribute("class") == "active"
    assert p.locator("#subnav a.active").inner_text() == "用户管理"
    p.wait_for_selector("#users-table tbody tr")
    p.screenshot(path=str(shots / "admin-menu.png"))
    p.click("#nav-account")
    p.wait_for_function("location.hash.startsWith('#/account')")
    assert p.locator("#subnav").is_hidden()
