"""国标设备 in a real browser (Debian's chromium), issue 14 item 7: an unknown GB/T 28181 device
(the repo's device simulator, over real UDP) tries to register with the hub's SIP server
(GbServer, in this process, on the embedded PostgreSQL) and is refused; the county
administrator finds it under 未接入设备, admits it on a grid node of their choice, reads its SIP
password once (copy button, the warning that it is shown once); the device registers with that
password — its clock two minutes fast — and the page shows it 在线 with its channels and the
cameras they became, on the chosen grid node, the skew noted. Then the same page on a phone
(390×844) and a desk (1600×900) without sideways scroll, and a dispatcher (gb28181.read, not
manage) sees the list without the 接入 button."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet
from config.settings import DEMO_SITE_FILE
from config.site import load_site
from store.db import connect
from tests.live.conftest import live_api_server
from tests.web.conftest import UI

pytestmark = pytest.mark.timeout(240)

DEVICE = "51019910211320000077"      # nobody admitted it: the demo site has no account for it
GRID = "510199101202001"             # 桃园村第一网格, chosen in the admission dialog
CHANNELS = 3
NO_SIDEWAYS = "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"


@pytest.fixture(scope="module")
def hub(seeded_db, mqtt, tmp_path_factory):
    """The API and the GB/T 28181 SIP server sharing the hub's var dir (the password store)."""
    var = tmp_path_factory.mktemp("gb-ui-var")
    with live_api_server(seeded_db, mqtt.url, var_dir=var, site_file=DEMO_SITE_FILE) as api:
        site = load_site(DEMO_SITE_FILE)
        settings = GbSettings(host="127.0.0.1", port=0, keepalive_interval_s=2, keepalive_misses=3)
        server = GbServer(site.gb28181, settings, seeded_db, GbPasswords.for_settings(api.settings),
                          root_code=site.grid.code)
        server.start()
        try:
            yield api, server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def fleet(hub):
    f = SimFleet([])
    f.start()
    yield f
    f.stop()


def wait_for(cond, timeout=15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_admin_admits_an_unknown_device_which_then_registers_online(hub, fleet, browser, seeded_db, shots):
    api, server = hub
    site = load_site(DEMO_SITE_FILE).gb28181
    device = SimDevice(DEVICE, "not-yet-known", hub=("127.0.0.1", server.port), hub_id=site.sip_id,
                       domain=site.domain, channels=CHANNELS, per_packet=2, charset="GB2312", name="桃园村新装NVR",
                       keepalive_s=1.0)
    fleet.run(device.start())
    fleet.devices.append(device)
    for _ in range(2):                                     # the installer tries twice: refused, listed
        assert fleet.run(device.register()).status == 403

    ui = UI(browser, api.base_url)
    try:
        ui.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api.base_url)
        ui.login("admin")
        p = ui.page
        p.on("dialog", lambda d: d.accept())              # the confirmation of 接入
        p.click("#nav-admin")                             # 管理, then its tab 国标设备
        p.click("#nav-gb-devices")
        assert p.locator("#subnav a.active").inner_text() == "国标设备"
        card = f'#gb-unknown .gb-card[data-device="{DEVICE}"]'
        try:
            p.wait_for_selector(card)
        except Exception:
            raise AssertionError(f"{p.inner_text('body')[:1500]!r} {ui.errors} {ui.console[-10:]}") from None
        assert p.text_content(f"{card} .gb-attempts") == "2"
        assert "设备未准入" in p.text_content(card)
        assert p.locator(f'#gb-devices .gb-card[data-device="{DEVICE}"]').count() == 0
        p.click(f'{card} button[data-action="admit"]')
        p.fill("#gb-admit-name", "桃园村新装NVR")
        p.select_option("#gb-admit-grid", GRID)
        p.click("#gb-admit-submit")
        p.wait_for_selector("#gb-admit-password")
        assert "仅显示这一次" in p.text_content("#gb-admit-once")
        password = p.text_content("#gb-admit-password").strip()
        assert len(password) >= 8
        assert "51019900002000000001" in p.text_content(".modal")      # what to set on the device
        p.click("#gb-admit-copy")
        p.wait_for_function("document.querySelector('#gb-admit-copied').textContent.includes('已复制')")
        assert p.evaluate("navigator.clipboard.readText()") == password
        p.screenshot(path=str(shots / "60-gb28181-admit-password.png"))
        p.click("#gb-admit-done")
        # shown once: nothing on the page or in the list says it again
        assert password not in p.content()
        r = api.client("admin").get("/api/gb28181/devices")
        assert password not in r.text

        # the device, its clock two minutes fast, registers with the password read off the page
        fast = (datetime.now() + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%S.000")
        assert fleet.run(device.register(password=password, date=fast)).status == 200
        device.password = password
        fleet.run(_start_keepalive(device))
        assert wait_for(lambda: DEVICE in server.catalog_results, 20), "the catalog was read"
        online = f'#gb-devices .gb-card[data-device="{DEVICE}"][data-registration="online"]'
        p.click("#gb-refresh")
        p.wait_for_selector(online, timeout=15000)
        text = p.text_content(online)
        assert "在线" in text and "桃园村新装NVR" in text and "桃园村第一网格" in text
        assert f"UDP 127.0.0.1:{device.endpoint.port}" in p.text_content(f"{online} .gb-address")
        assert p.text_content(f"{online} .gb-channel-count").startswith(f"{CHANNELS} 路")
        assert "时钟快 120 秒" in p.text_content(f"{online} .gb-skew") or "时钟快 119 秒" in p.text_content(f"{online} .gb-skew")
        assert p.text_content(f"{online} .gb-keepalive") not in ("", "—")
        # the hub subscribed to its catalog after reading it (the simulator accepts): the card says so
        subscribed = ("(sel) => { const el = document.querySelector(sel + ' .gb-subscriptions');"
                      " if (el && el.textContent.includes('目录已订阅')) return true;"
                      " document.getElementById('gb-refresh').click(); return false; }")
        p.wait_for_function(subscribed, arg=online, timeout=20000, polling=1000)
        items = p.locator(f"{online} .gb-channels li")
        assert items.count() == CHANNELS
        first = items.nth(0).text_content()
        assert "桃园村新装NVR1号通道" in first and "gb-" in first          # the GB2312 names, the camera each became
        assert p.locator(f'#gb-unknown .gb-card[data-device="{DEVICE}"]').count() == 0
        p.screenshot(path=str(shots / "61-gb28181-online.png"), full_page=True)
        with connect(seeded_db) as conn:
            placed = conn.execute(
                """SELECT count(*) AS n FROM gb_channels c JOIN grid_membership m ON m.source_id = c.camera_id
                   AND m.valid_to IS NULL WHERE c.device_id = %s AND m.grid_code = %s""", (DEVICE, GRID)).fetchone()
            audit = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'gb28181.admit' AND target = %s",
                                 (f"gb28181:{DEVICE}",)).fetchall()
        assert placed["n"] == CHANNELS, "the channels' cameras are on the grid node chosen at admission"
        assert [a["actor"] for a in audit] == ["admin"] and audit[0]["detail"]["grid"] == GRID
        assert not ui.errors, ui.errors

        # the same page on a phone and on a desk: no sideways scroll
        for size in ({"width": 390, "height": 844}, {"width": 1600, "height": 900}):
            p.set_viewport_size(size)
            p.click("#gb-refresh")
            p.wait_for_selector(online)
            assert p.evaluate(NO_SIDEWAYS), f"sideways scroll at {size}"
            p.screenshot(path=str(shots / f"62-gb28181-{size['width']}.png"), full_page=True)
    finally:
        ui.close()


async def _start_keepalive(device: SimDevice) -> None:
    device.start_keepalive()


def test_a_township_dispatcher_reads_its_devices_but_cannot_admit(hub, browser, seeded_db):
    """ds-dispatcher (东山镇, gb28181.read): the unknown device the site file places in 东山镇 is
    listed, one it would place elsewhere (the county's root) is not, and there is no 接入."""
    api, _server = hub
    mine, other = "51019910131320000099", "51019920131320000098"
    with connect(seeded_db) as conn:
        for dev in (mine, other):
            conn.execute("""INSERT INTO gb_devices (id, host, port, transport, attempts, last_refusal, state)
                            VALUES (%s, '10.0.0.9', 5060, 'udp', 1, 'not-admitted', 'refused')
                            ON CONFLICT (id) DO NOTHING""", (dev,))
    ui = UI(browser, api.base_url)
    try:
        ui.login("ds-dispatcher")
        p = ui.page
        p.click("#nav-admin")                             # 管理 holds 国标设备 only, and opens it
        p.wait_for_function("location.hash === '#/gb-devices'")
        assert p.eval_on_selector_all("#subnav a", "els => els.map(e => e.textContent)") == ["国标设备"]
        p.wait_for_selector(f'#gb-unknown .gb-card[data-device="{mine}"]')
        assert p.locator(f'.gb-card[data-device="{other}"]').count() == 0
        assert p.locator('#gb-unknown button[data-action="admit"]').count() == 0
        assert not ui.errors, ui.errors
    finally:
        ui.close()
