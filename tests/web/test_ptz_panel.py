"""The video wall's PTZ (云台) panel in a real browser (Debian's chromium through Playwright),
against the real API, the camera worker (over MQTT) and the SOAP fake ONVIF camera, whose
ptz_commands record what reached the camera: an arrow held down moves at the chosen speed and
is renewed while held, letting go sends one stop; the ■ button sends one stop; an arrow
held from the keyboard, ■ or moving the focus away ends it with one stop; the camera's
presets are listed and gone to; a role without cameras.ptz gets no PTZ button."""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.web.conftest import PTZ_CAM, PTZ_PRESETS, open_wall, tile

pytestmark = pytest.mark.timeout(240)

PTZ_BUTTON = 'button[aria-label="云台"]'
RENEW_S = 1.5       # web/pages/wall.js PTZ_RENEW_MS: a held arrow's move is renewed this often
# After the last command, how long the camera must then hear nothing more: a renewal timer
# left running would send its next move within RENEW_S. An observation window, not a timing
# assertion: nothing below asserts how fast anything happened.
QUIET_S = RENEW_S + 1.0


def wait_until(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def names(commands) -> list[str]:
    return [name for name, _ in commands]


def open_panel(ui_for, user: str = "ds-supervisor"):
    ui, p = open_wall(ui_for, user)
    p.click(f"{tile(PTZ_CAM)} {PTZ_BUTTON}")
    p.wait_for_selector("#ptz-panel")
    p.wait_for_selector("#ptz-presets button[data-token]", timeout=20000)   # presets read: the panel is ready
    return ui, p


def test_holding_an_arrow_moves_at_the_chosen_speed_renews_and_one_stop_on_release(ptz_worker, ptz_camera,
                                                                                  ui_for, shots):
    ui, p = open_wall(ui_for, "ds-supervisor")
    # Only ONVIF cameras have the PTZ button (cam-tyc-01 is RTSP only).
    p.wait_for_selector(tile("cam-tyc-01"))
    assert p.locator(f'{tile("cam-tyc-01")} {PTZ_BUTTON}').count() == 0
    p.click(f"{tile(PTZ_CAM)} {PTZ_BUTTON}")
    p.wait_for_selector("#ptz-panel")
    # 慢 (0.25), not the default 中 (0.5): the speed chosen is the speed sent.
    p.click('#ptz-panel button[data-speed="0.25"]')
    expect(p.locator('#ptz-panel button[data-speed="0.25"]')).to_have_attribute("aria-pressed", "true")
    expect(p.locator('#ptz-panel button[data-speed="0.5"]')).to_have_attribute("aria-pressed", "false")
    cmds = ptz_camera.ptz_commands
    before = len(cmds)

    p.hover("#ptz-right")
    p.mouse.down()
    expect(p.locator("#ptz-result")).to_have_text("云台转动中…")
    wait_until(lambda: names(cmds[before:]).count("ContinuousMove") >= 2, "a renewal of the held move")
    held = cmds[before:]
    assert "Stop" not in names(held), held
    expect(p.locator("#ptz-result")).to_have_text("云台转动中…")     # renewals leave the status alone
    p.screenshot(path=str(shots / "22-ptz-held.png"))
    p.mouse.up()

    expect(p.locator("#ptz-result")).to_have_text("已停止", timeout=20000)
    wait_until(lambda: "Stop" in names(cmds[before:]), "the stop at the camera")
    time.sleep(QUIET_S)
    sent = cmds[before:]
    moves = [v for name, v in sent if name == "ContinuousMove"]
    assert names(sent) == ["ContinuousMove"] * len(moves) + ["Stop"], \
        f"moves while held, then exactly one stop and nothing after it: {names(sent)}"
    assert len(moves) >= 2
    for v in moves:
        assert float(v["PanTilt.x"]) == 0.25 and float(v["PanTilt.y"]) == 0, v

    # A click on 放大 + is a short hold: a zoom move at the same speed, then its stop.
    before = len(cmds)
    p.click("#ptz-zoom-in")
    wait_until(lambda: "Stop" in names(cmds[before:]), "the zoom's stop")
    expect(p.locator("#ptz-result")).to_have_text("已停止")
    zoom = cmds[before:]
    assert names(zoom) == ["ContinuousMove", "Stop"], zoom
    assert float(zoom[0][1]["Zoom.x"]) == 0.25, zoom
    assert not ui.errors, ui.errors


def test_the_stop_button_sends_exactly_one_stop(ptz_worker, ptz_camera, ui_for):
    ui, p = open_panel(ui_for)
    ptz = []
    p.on("request", lambda r: ptz.append((r.method, r.url.rsplit("/ptz/", 1)[1])) if "/ptz/" in r.url else None)
    cmds = ptz_camera.ptz_commands
    before = len(cmds)
    p.click("#ptz-stop")
    expect(p.locator("#ptz-result")).to_have_text("已停止", timeout=20000)
    wait_until(lambda: "Stop" in names(cmds[before:]), "the stop at the camera")
    time.sleep(QUIET_S)
    assert names(cmds[before:]) == ["Stop"]
    assert ptz == [("POST", "stop")]
    assert not ui.errors, ui.errors


def test_the_stop_button_ends_a_move_held_from_the_keyboard_with_one_stop(ptz_worker, ptz_camera, ui_for):
    ui, p = open_panel(ui_for)
    cmds = ptz_camera.ptz_commands
    before = len(cmds)
    p.focus("#ptz-left")
    p.keyboard.down("Enter")
    expect(p.locator("#ptz-result")).to_have_text("云台转动中…")
    wait_until(lambda: "ContinuousMove" in names(cmds[before:]), "the move")
    p.click("#ptz-stop")
    expect(p.locator("#ptz-result")).to_have_text("已停止", timeout=20000)
    wait_until(lambda: "Stop" in names(cmds[before:]), "the stop at the camera")
    time.sleep(QUIET_S)
    p.keyboard.up("Enter")
    sent = cmds[before:]
    moves = [v for name, v in sent if name == "ContinuousMove"]
    assert names(sent) == ["ContinuousMove"] * len(moves) + ["Stop"], names(sent)
    assert all(float(v["PanTilt.x"]) == -0.5 for v in moves), moves     # 中, the default speed
    assert not ui.errors, ui.errors


def test_a_key_held_on_an_arrow_that_loses_focus_stops_the_move(ptz_worker, ptz_camera, ui_for):
    """The key's keyup then goes to another element: the arrow must let go when focus leaves
    it, not renew the move until the panel is closed."""
    ui, p = open_panel(ui_for)
    cmds = ptz_camera.ptz_commands
    before = len(cmds)
    p.focus("#ptz-up")
    p.keyboard.down("Enter")
    expect(p.locator("#ptz-result")).to_have_text("云台转动中…")
    wait_until(lambda: "ContinuousMove" in names(cmds[before:]), "the move")
    p.focus('#ptz-panel button[data-speed="1"]')       # e.g. Tab to the speed buttons, Enter still down
    p.keyboard.up("Enter")
    expect(p.locator("#ptz-result")).to_have_text("已停止", timeout=20000)
    wait_until(lambda: "Stop" in names(cmds[before:]), "the stop at the camera")
    time.sleep(QUIET_S)
    sent = cmds[before:]
    moves = [v for name, v in sent if name == "ContinuousMove"]
    assert names(sent) == ["ContinuousMove"] * len(moves) + ["Stop"], names(sent)
    assert all(float(v["PanTilt.y"]) == 0.5 for v in moves), moves
    assert not ui.errors, ui.errors


def test_presets_are_listed_and_gone_to(ptz_worker, ptz_camera, ui_for, shots):
    ui, p = open_panel(ui_for)
    buttons = p.locator("#ptz-presets button[data-token]")
    listed = {buttons.nth(i).get_attribute("data-token"): buttons.nth(i).text_content() for i in range(buttons.count())}
    assert listed == {token: f"转到 {name}" for token, (name, *_) in PTZ_PRESETS.items()}
    for token in ("2", "1"):
        name, *position = PTZ_PRESETS[token]
        before = len(ptz_camera.ptz_commands)
        p.click(f'#ptz-presets button[data-token="{token}"]')
        expect(p.locator("#ptz-result")).to_have_text(f"已转到预置位 {name}", timeout=20000)
        sent = ptz_camera.ptz_commands[before:]
        assert [(n, v.get("PresetToken")) for n, v in sent] == [("GotoPreset", token)], sent
        assert ptz_camera.position == tuple(position)
    p.screenshot(path=str(shots / "21-wall-ptz.png"))
    assert not ui.errors, ui.errors


def test_no_ptz_button_without_the_permission(ptz_worker, ui_for):
    ui, p = open_wall(ui_for, "dsc-worker")         # a grid worker watches; steering is not the grid worker's
    me = p.evaluate("fetch('/api/auth/me', {credentials: 'include'}).then(r => r.json())")
    assert "cameras.ptz" not in me.get("permissions", []), me
    # The tile's header is drawn (its other buttons are there), without the PTZ button.
    p.wait_for_selector(f'{tile(PTZ_CAM)} [data-role="health"]')
    assert p.locator(f"{tile(PTZ_CAM)} header button").count() > 0
    assert p.locator(f"{tile(PTZ_CAM)} {PTZ_BUTTON}").count() == 0
    assert not ui.errors, ui.errors
