"""An H.265 camera on the video wall, in Debian's chromium (issue 12, item 1): the tile used
to say 离线 beside 在线 with 标记事件 disabled while the browser waited for H.264 that never
came. Now the hub transcodes the camera's HEVC to H.264 once (api/live/transcode.py): the
tile plays — frames counted by the page keep advancing — says 转码 HEVC→H.264, and can flag.
The camera is GStreamer's own RTSP server sending H.265 (tests/cameras/peers/gst_rtsp.py)."""
from __future__ import annotations

import pytest

from store.db import connect
from tests.cameras.peers import GstPeer
from tests.web.conftest import open_wall, tile

pytestmark = pytest.mark.timeout(240)

GRID = "510199101201001"       # 东山村第一网格, with the wall's other cameras
CAM = "cam-dsc-hevc"


@pytest.fixture(scope="module")
def hevc_camera(live_db):
    with GstPeer(codec="h265", fps=10) as peer:
        with connect(live_db) as conn:
            conn.execute("INSERT INTO cameras (id, name, rtsp_url) VALUES (%s, '东山村H265球机', %s)", (CAM, peer.url()))
            conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                         "VALUES ('camera', %s, %s, now() - interval '1 day')", (CAM, GRID))
        yield peer


def test_an_h265_camera_plays_on_the_wall(hevc_camera, live_api, ui_for, shots):
    ui, p = open_wall(ui_for, "ds-supervisor")
    p.click("#layout-16")
    sel = tile(CAM)
    p.wait_for_selector(sel, timeout=15000)
    p.wait_for_function(f"document.querySelector('{sel}').dataset.state === 'live' "
                        f"&& Number(document.querySelector('{sel}').dataset.frames) > 0", timeout=30000)
    first = int(p.get_attribute(sel, "data-frames") or 0)
    p.wait_for_function(f"Number(document.querySelector('{sel}').dataset.frames) >= {first + 10}", timeout=20000)
    p.wait_for_function(f"document.querySelector('{sel}').dataset.transcoded === 'hevc'", timeout=10000)
    assert "转码 HEVC→H.264" in p.text_content(f'{sel} [data-role="frames"]')
    assert p.is_enabled(f"{sel} .flag-btn"), "a playing H.265 camera can be flagged"
    # no worker reports on this camera (状态未知): a playing tile does not also say so
    assert p.is_hidden(f'{sel} [data-role="health"]')
    # the footer stays one line on a 16-tile wall, the video keeps its height
    footer, video = p.evaluate(f"""() => {{ const t = document.querySelector('{sel}');
        return [t.querySelector('footer').getBoundingClientRect().height,
                t.querySelector('video').getBoundingClientRect().height]; }}""")
    assert footer < 32 and video > 3 * footer, (footer, video)
    p.screenshot(path=str(shots / "21-wall-hevc.png"))
    assert not ui.errors, ui.errors
