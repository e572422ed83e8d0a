"""The grid worker's phone (网格员 APP) in Debian's chromium at 390×844 with touch, and the
finishing touches of the desk UI at 1600×900: the tab bar, no page wider than the phone,
a report with a photo and the phone's position landing in the worker's grid, a report
entered OFFLINE queued and synchronised exactly once (its first answer lost on the way
back), grid-head verification (核查) with a photo, times in the site's zone in a UTC
browser, the case window's own URL closed by Back, and no console errors or 404s while
visiting every page and ending live views."""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from store.db import connect
from tests.api.conftest import PASSWORD
from tests.security.conftest import login

pytestmark = pytest.mark.timeout(300)

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
DESK = {"viewport": {"width": 1600, "height": 900}}
GRID_1 = "510199101201001"                         # 东山村第一网格: dsc-worker's and dsc-head's grid
IN_GRID_1 = {"latitude": 30.6450, "longitude": 104.4800}
SITE_TZ = ZoneInfo("Asia/Shanghai")
NO_SIDEWAYS = "() => ({sw: document.documentElement.scrollWidth, cw: document.documentElement.clientWidth})"


class Tab:
    def __init__(self, browser, base_url, *, form=PHONE, timezone="UTC", geolocation=None, block_sw=False):
        opts = dict(base_url=base_url, locale="zh-CN", timezone_id=timezone, bypass_csp=True, **form)
        if geolocation:
            opts.update(geolocation=geolocation, permissions=["geolocation"])
        if block_sw:
            opts["service_workers"] = "block"      # page.route() sees every request
        self.context = browser.new_context(**opts)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.bad: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("response", lambda r: self.bad.append(f"{r.status} {r.request.method} {r.url}")
                     if r.status >= 400 else None)

    def login(self, username):
        p = self.page
        p.goto("/")
        p.fill("#login-username", username)
        p.fill("#login-password", PASSWORD)
        p.click("#login-submit")
        p.wait_for_selector("#nav", timeout=20000)
        self.bad.clear()          # the 401 of "who am I?" before signing in is how the page learns it must ask
        self.errors.clear()
        return self

    def close(self):
        self.context.close()


@pytest.fixture
def tab(browser, live_api):
    opened = []

    def make(username=None, **kw):
        t = Tab(browser, live_api.base_url, **kw)
        opened.append(t)
        return t.login(username) if username else t
    yield make
    for t in opened:
        t.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    img = np.zeros((480, 640, 3), np.uint8)
    cv2.putText(img, "manhole", (40, 240), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 6)
    path = tmp_path_factory.mktemp("phone") / "scene.jpg"
    cv2.imwrite(str(path), img)
    return path


def nav_pages(page) -> list[str]:
    return page.eval_on_selector_all("#nav a", "els => els.map(e => e.dataset.page)")


def visit(page, pid):
    page.goto(f"/#/{pid}")
    page.wait_for_function("id => document.getElementById('page')?.dataset.page === id "
                           "&& !document.querySelector('#page > .loading')", arg=pid, timeout=20000)
    page.wait_for_load_state("networkidle", timeout=15000)


def cases_titled(db, title):
    with connect(db) as conn:
        return conn.execute("SELECT * FROM cases WHERE title = %s", (title,)).fetchall()


def wait_sent(page, timeout=30000):
    page.wait_for_function("() => document.getElementById('outbox-count')?.hidden === true", timeout=timeout)


def fill_report(page, title, photo):
    page.goto("/#/report")
    page.wait_for_selector("#report-form")
    page.wait_for_function("() => document.getElementById('report-place').dataset.grid !== undefined", timeout=15000)
    page.select_option("#report-category", "city")
    page.fill("#report-title", title)
    page.fill("#report-description", "村口井盖缺失，夜间有人经过，需尽快处理。")
    page.set_input_files("#report-photos", str(photo))


# ------------------------------------------------------------------------- the tab bar, layout

@pytest.mark.parametrize("user", ["dsc-worker", "ds-dispatcher"])
def test_phone_has_a_tab_bar_and_no_page_scrolls_sideways(tab, user, shots):
    t = tab(user)
    p = t.page
    pages = nav_pages(p)
    if user == "dsc-worker":
        assert pages[:2] == ["tasks", "report"] and p.evaluate("location.hash") == "#/tasks"
    box = p.locator("#nav").bounding_box()
    assert box["y"] + box["height"] >= 844 - 2 and box["width"] >= 388, box      # at the bottom, full width
    assert p.locator(f"#nav-{pages[0]}").is_visible()
    wide = {}
    for pid in pages:
        visit(p, pid)
        size = p.evaluate(NO_SIDEWAYS)
        if size["sw"] > size["cw"]:
            wide[pid] = size
        p.screenshot(path=str(shots / f"phone-{user}-{pid}.png"))
        # the tab of this page is reachable: tapping it keeps us here
        p.locator(f"#nav-{pid}").tap()
        assert p.evaluate("location.hash").startswith(f"#/{pid}")
    assert not wide, f"pages wider than the phone: {wide}"


def test_the_app_is_installable(tab, live_api):
    import httpx
    m = httpx.get(f"{live_api.base_url}/manifest.webmanifest")
    assert m.status_code == 200 and m.headers["content-type"].startswith("application/manifest+json")
    manifest = m.json()
    assert manifest["scope"] == "/" and manifest["display"] == "standalone"
    for icon in manifest["icons"]:
        r = httpx.get(f"{live_api.base_url}{icon['src']}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(icon["type"]), icon
    sw = httpx.get(f"{live_api.base_url}/sw.js")
    assert sw.status_code == 200 and sw.headers["content-type"].startswith("text/javascript")
    assert sw.headers["service-worker-allowed"] == "/"
    t = tab("dsc-worker")
    p = t.page
    scope = p.evaluate("async () => (await navigator.serviceWorker.ready).scope")
    assert scope == f"{live_api.base_url}/"
    # offline, the installed app still opens (from the worker's cache) and takes a report
    p.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10000)
    t.context.set_offline(True)
    p.reload()
    p.wait_for_selector("#nav", timeout=15000)
    p.goto("/#/report")
    p.wait_for_selector("#report-form")
    t.context.set_offline(False)


# ------------------------------------------------------------------------- reporting

def test_a_report_with_a_photo_and_the_phone_position_lands_in_the_workers_grid(tab, live_db, photo, shots):
    t = tab("dsc-worker", geolocation=IN_GRID_1)
    p = t.page
    title = f"井盖缺失 {uuid.uuid4().hex[:6]}"
    fill_report(p, title, photo)
    assert p.locator("#report-place").get_attribute("data-grid") == GRID_1
    assert "东山村第一网格" in p.text_content("#report-place")
    p.click("#report-submit")
    wait_sent(p)
    # the queue's badge is hidden before its first send too: wait for the hub to have it
    deadline = time.monotonic() + 30
    while not (rows := cases_titled(live_db, title)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(rows) == 1
    c = rows[0]
    assert c["grid_code"] == GRID_1 and c["channel"] == "grid"
    assert abs(c["lat"] - IN_GRID_1["latitude"]) < 1e-6 and abs(c["lon"] - IN_GRID_1["longitude"]) < 1e-6
    with connect(live_db) as conn:
        ev = conn.execute("SELECT e.bytes, e.media_type FROM case_evidence ce JOIN evidence e ON e.id = ce.evidence_id "
                          "WHERE ce.case_id = %s", (c["id"],)).fetchall()
    assert [(r["bytes"], r["media_type"]) for r in ev] == [(photo.stat().st_size, "image/jpeg")]
    p.screenshot(path=str(shots / "phone-report-sent.png"))


def test_an_offline_report_is_queued_and_sent_exactly_once_when_its_first_answer_is_lost(tab, live_db, photo, shots):
    t = tab("dsc-worker", geolocation=IN_GRID_1, block_sw=True)
    p = t.page
    title = f"离线上报 {uuid.uuid4().hex[:6]}"
    fill_report(p, title, photo)
    t.context.set_offline(True)
    p.click("#report-submit")
    p.wait_for_function("() => /待发送 1 条/.test(document.getElementById('outbox-count').textContent)")
    assert p.locator("#outbox-count").is_visible()
    assert "无网络" in p.text_content("#outbox-list")
    p.screenshot(path=str(shots / "phone-offline-queued.png"))
    time.sleep(1)
    assert cases_titled(live_db, title) == []          # nothing sent while offline
    # The network returns, but the answer to the first POST /api/cases is lost on the way
    # back: the hub made the case, the phone saw a network error and keeps the item.
    posts = []

    def lose_first_answer(route):
        if route.request.method != "POST":
            return route.continue_()
        posts.append(route.request.headers.get("idempotency-key"))
        if len(posts) == 1:
            response = route.fetch()
            assert response.status == 201
            return route.abort("failed")
        return route.continue_()
    p.route(re.compile(r".*/api/cases$"), lose_first_answer)
    t.context.set_offline(False)
    p.wait_for_function("() => document.querySelector('#outbox-list li')?.dataset.state === 'pending' "
                        "&& /已尝试 1 次/.test(document.getElementById('outbox-list').textContent)", timeout=20000)
    assert len(cases_titled(live_db, title)) == 1        # made once already
    p.click("#outbox-send")                               # the queue replayed
    wait_sent(p)
    p.evaluate("() => import('/web/outbox.js').then(m => m.flush())")    # and once more: nothing left to send
    assert len(posts) == 2 and posts[0] == posts[1] and posts[0]
    rows = cases_titled(live_db, title)
    assert len(rows) == 1, rows
    with connect(live_db) as conn:
        keys = conn.execute("SELECT result_ref FROM idempotency_keys WHERE principal = 'dsc-worker' AND key = %s",
                            (posts[0],)).fetchall()
        photos = conn.execute("SELECT count(*) AS n FROM case_evidence WHERE case_id = %s", (rows[0]["id"],)).fetchone()
    assert [k["result_ref"] for k in keys] == [rows[0]["id"]]
    assert photos["n"] == 1


# ------------------------------------------------------------------------- verification on the phone

def _case_in_feedback(api, title) -> dict:
    import httpx
    base = api.base_url

    def call(user, method, path, **kw):
        r = httpx.request(method, f"{base}{path}", headers={"Authorization": f"Bearer {login(api, user)}"},
                          timeout=20, **kw)
        assert r.status_code < 300, (user, path, r.text)
        return r.json()
    c = call("dsc-worker", "POST", "/api/cases", json={"title": title, "category": "city", "urgency": "high",
                                                       "grid_code": GRID_1})
    for action, body in (("accept", {}), ("register", {}), ("dispatch", {"departments": ["police-dongshan"]})):
        c = call("ds-dispatcher", "POST", f"/api/cases/{c['id']}/actions/{action}", json={"note": "请处理", **body})
    call("ds-police", "POST", f"/api/cases/{c['id']}/actions/sign", json={})
    c = call("ds-police", "POST", f"/api/cases/{c['id']}/actions/feedback", json={"note": "井盖已更换"})
    assert c["state"] == "feedback"
    return c


def test_the_grid_head_verifies_on_site_with_a_photo(tab, live_api, live_db, photo, shots):
    c = _case_in_feedback(live_api, f"核查 {uuid.uuid4().hex[:6]}")
    t = tab("dsc-head")
    p = t.page
    p.wait_for_selector(f'.task[data-id="{c["id"]}"]')
    p.locator(f'.task[data-id="{c["id"]}"]').tap()
    p.wait_for_selector('#case-actions [data-action="verify"]')
    assert p.evaluate("location.hash") == f"#/tasks/{c['id']}"
    p.fill("#action-note", "现场核查：井盖已更换，满意。")
    p.set_input_files("#action-photos", str(photo))
    p.screenshot(path=str(shots / "phone-verify.png"))
    p.locator('#case-actions [data-action="verify"]').tap()
    p.wait_for_function("() => document.getElementById('case-state')?.textContent === '已核查'", timeout=30000)
    wait_sent(p)
    with connect(live_db) as conn:
        row = conn.execute("SELECT state FROM cases WHERE id = %s", (c["id"],)).fetchone()
        shots_ = conn.execute("SELECT ce.added_by, e.source_kind FROM case_evidence ce JOIN evidence e ON e.id = ce.evidence_id "
                              "WHERE ce.case_id = %s", (c["id"],)).fetchall()
        verify = conn.execute("SELECT actor, note FROM case_transitions WHERE case_id = %s AND action = 'verify'",
                              (c["id"],)).fetchall()
    assert row["state"] == "verified"
    assert [(s["added_by"], s["source_kind"]) for s in shots_] == [("dsc-head", "person")]
    assert [(v["actor"], v["note"]) for v in verify] == [("dsc-head", "现场核查：井盖已更换，满意。")]
    # the timeline names people and departments, not codes
    timeline = p.text_content("#case-timeline")
    assert "周强" in timeline and "孙敏（东山派出所）" in timeline and "police-dongshan" not in timeline
    p.go_back()
    p.wait_for_function("() => !document.getElementById('case-page') && location.hash === '#/tasks'")


def test_the_grid_worker_signs_and_feeds_back_with_result_photos(tab, live_api, live_db, photo, shots):
    import httpx
    base = live_api.base_url

    def call(user, path, **body):
        r = httpx.post(f"{base}{path}", headers={"Authorization": f"Bearer {login(live_api, user)}"}, json=body,
                       timeout=20)
        assert r.status_code < 300, (user, path, r.text)
        return r.json()
    c = call("ds-dispatcher", "/api/cases", title=f"路灯不亮 {uuid.uuid4().hex[:6]}", category="city", grid_code=GRID_1)
    for action, body in (("accept", {}), ("register", {}), ("dispatch", {"assignee": "dsc-worker"})):
        c = call("ds-dispatcher", f"/api/cases/{c['id']}/actions/{action}", note="请网格员处理", **body)
    t = tab("dsc-worker")
    p = t.page
    p.wait_for_selector(f'.task[data-id="{c["id"]}"]')
    p.locator(f'.task[data-id="{c["id"]}"]').tap()
    p.locator('#case-actions [data-action="sign"]').tap()
    p.wait_for_function("() => document.getElementById('case-state')?.textContent === '处置中'", timeout=30000)
    wait_sent(p)
    # 反馈 needs the result in words: refused on the phone before anything is queued
    p.locator('#case-actions [data-action="feedback"]').tap()
    assert "需要填写办理意见" in p.text_content("#action-result")
    p.fill("#action-note", "已更换灯泡，路灯恢复。")
    p.set_input_files("#action-photos", str(photo))
    p.locator('#case-actions [data-action="feedback"]').tap()
    p.wait_for_function("() => document.getElementById('case-state')?.textContent === '已反馈'", timeout=30000)
    wait_sent(p)
    with connect(live_db) as conn:
        photos = conn.execute("SELECT ce.added_by FROM case_evidence ce WHERE ce.case_id = %s", (c["id"],)).fetchall()
    assert [x["added_by"] for x in photos] == ["dsc-worker"]
    p.wait_for_selector("#case-evidence img")                   # the result photo, shown on the case
    case_text = p.text_content("#case-page")
    assert "null" not in case_text and "object" not in case_text, case_text
    p.screenshot(path=str(shots / "phone-feedback.png"))
    with connect(live_db) as conn:
        row = conn.execute("SELECT state FROM cases WHERE id = %s", (c["id"],)).fetchone()
        parts = conn.execute("SELECT assignee, state, note FROM case_assignments WHERE case_id = %s", (c["id"],)).fetchall()
        photos = conn.execute("SELECT ce.added_by FROM case_evidence ce WHERE ce.case_id = %s", (c["id"],)).fetchall()
    assert row["state"] == "feedback"
    assert [(a["assignee"], a["state"]) for a in parts] == [("dsc-worker", "done")]
    assert [x["added_by"] for x in photos] == ["dsc-worker"]
    # the dispatched part by name and in words (not "dsc-worker · done")
    t2 = tab("ds-dispatcher", form=DESK)
    t2.page.goto(f"/#/cases/{c['id']}")
    t2.page.wait_for_selector("#case-created")
    text = t2.page.text_content("#case-page")
    assert "张伟 · 已反馈" in text and "done" not in text


# ------------------------------------------------------------------------- finish: times, URL, names

def test_times_show_in_the_site_zone_in_a_utc_browser_and_back_closes_the_case(tab, live_api, live_db):
    import httpx
    token = login(live_api, "ds-dispatcher")
    title = f"时区 {uuid.uuid4().hex[:6]}"
    c = httpx.post(f"{live_api.base_url}/api/cases", headers={"Authorization": f"Bearer {token}"},
                   json={"title": title, "category": "dispute", "grid_code": GRID_1}).json()
    t = tab("ds-dispatcher", form=DESK, timezone="UTC")
    p = t.page
    assert p.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") in ("UTC", "Etc/UTC")
    created = datetime.fromisoformat(c["created_at"]).astimezone(SITE_TZ).strftime("%Y-%m-%d %H:%M:%S")
    # the case's own URL opens it
    p.goto(f"/#/cases/{c['id']}")
    p.wait_for_selector("#case-created")
    assert p.text_content("#case-created") == created
    p.click(".modal header .icon-btn")
    p.wait_for_function("() => !document.getElementById('case-page') && location.hash === '#/cases'")
    # opened from the board: Back closes it and stays on the board
    p.click(f'.card[data-id="{c["id"]}"]')
    p.wait_for_selector("#case-created")
    assert p.evaluate("location.hash") == f"#/cases/{c['id']}"
    p.go_back()
    p.wait_for_function("() => !document.getElementById('case-page') && location.hash === '#/cases'")
    assert p.locator("#case-board").is_visible()
    # and Forward opens it again
    p.go_forward()
    p.wait_for_selector("#case-created")
    # a time typed on the site's wall clock (a broadcast's 定时) means that time at the site
    typed = p.evaluate("() => import('/web/ui.js').then(m => m.fromSiteLocal('2026-12-07T08:30').toISOString())")
    assert typed == "2026-12-07T00:30:00.000Z"
    # the clock in the top bar runs on the site's time too
    clock = p.text_content("#clock")
    now = datetime.now(SITE_TZ)
    assert abs((int(clock[:2]) - now.hour) % 24) in (0, 1, 23), (clock, now)
    assert "place" not in p.text_content("#case-place") and "510199" not in p.text_content("#case-place")


def test_no_console_errors_or_404s_on_any_page_or_when_live_views_end(tab, live_api):
    import httpx
    t = tab("ds-supervisor", form=DESK, timezone="UTC")
    p = t.page
    sessions = []
    p.on("response", lambda r: sessions.append(r.json()["session_id"])
         if r.url.endswith("/offer") and r.status == 200 else None)
    for pid in nav_pages(p):
        visit(p, pid)
    visit(p, "wall")
    p.click("#layout-4")
    p.wait_for_selector('.tile[data-state="live"]', timeout=40000)
    time.sleep(1)
    visit(p, "cases")                      # leaving the wall ends every live session
    time.sleep(1.5)
    visit(p, "wall")
    p.wait_for_selector('.tile[data-state="live"]', timeout=40000)
    # The hub ends a viewer's session first (here: the same viewer from another device; in
    # the field: the peer connection failed or closed) — the page's own "end" that follows
    # is not an error.
    token = login(live_api, "ds-supervisor")
    ended = 0
    for sid in list(sessions):
        r = httpx.delete(f"{live_api.base_url}/api/live/sessions/{sid}", headers={"Authorization": f"Bearer {token}"})
        ended += r.status_code == 204
    assert ended >= 1
    visit(p, "cases")
    time.sleep(1.5)
    visit(p, "wall")
    p.wait_for_selector('.tile[data-state="live"]', timeout=40000)
    p.click("#logout")                     # and so does signing out
    p.wait_for_selector("#login-username")
    time.sleep(1.5)
    assert not t.bad, t.bad
    assert not t.errors, t.errors


def test_the_map_on_a_phone_spreads_markers_at_one_place_and_shows_cases_and_alarms(tab, live_api, shots):
    import httpx
    token = login(live_api, "ds-dispatcher")
    # a case reported right at 东山村委会 (where its door, speaker and radio are)
    c = httpx.post(f"{live_api.base_url}/api/cases", headers={"Authorization": f"Bearer {token}"},
                   json={"title": f"地图 {uuid.uuid4().hex[:6]}", "category": "city", "lat": 30.6511, "lon": 104.4884}).json()
    assert c["grid_code"] == GRID_1
    t = tab("ds-dispatcher")
    p = t.page
    visit(p, "map")
    p.wait_for_selector(f'.case-marker[data-id="{c["id"]}"]')
    boxes = p.eval_on_selector_all("#map-svg .marker, #map-svg .case-marker", """els => els.map(e => {
        const b = e.getBoundingClientRect(); return {id: e.dataset.id, x: b.x + b.width / 2, y: b.y + b.height / 2, w: b.width}; })""")
    assert len(boxes) >= 11
    assert min(b["w"] for b in boxes) >= 10, boxes            # readable on the phone, not 4-px dots
    close = [(a["id"], b["id"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
             if abs(a["x"] - b["x"]) < 8 and abs(a["y"] - b["y"]) < 8]
    assert not close, f"markers on top of each other: {close}"
    p.screenshot(path=str(shots / "phone-map.png"))
    size = p.evaluate(NO_SIDEWAYS)
    assert size["sw"] <= size["cw"], size
    p.locator(f'.case-marker[data-id="{c["id"]}"]').tap()
    p.wait_for_selector("#case-created")
    assert p.evaluate("location.hash") == f"#/cases/{c['id']}"


def test_desk_pages_do_not_scroll_sideways_at_1600(tab):
    t = tab("ds-dispatcher", form=DESK, timezone="Asia/Shanghai")
    p = t.page
    wide = {}
    for pid in nav_pages(p):
        visit(p, pid)
        size = p.evaluate(NO_SIDEWAYS)
        if size["sw"] > size["cw"]:
            wide[pid] = size
    assert not wide, wide
    assert not t.bad, t.bad
