"""Device playback through the API (issue 14 item 5): a GB/T 28181 NVR (the simulator) that
registered with a real GbServer, whose channels became cameras in 东山镇; the gb28181 process's
playback service found through its heartbeat, signed with the API's own tap key.

- the device timeline lists the NVR's RecordInfo ranges;
- playing a device range gives an fMP4 whose frames carry the REQUESTED time (burnt-in strip);
- scope (another township: 404), permission (a grid worker: 403), audit (who, camera, range,
  source device); a camera that is not a GB channel: 404; no gb28181 process: 503."""
from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import av
import pytest

from cameras.gb28181 import manscdp, registry
from cameras.gb28181.sim.device import channel_ids
from cameras.sim.scene import decode_timestamp_strip
from cameras.tap import tap_key
from store.db import connect
from tests.api.conftest import api, seeded_db  # noqa: F401  (fixtures re-exported)
from tests.cameras.gb28181.nvr import running_nvr

pytestmark = pytest.mark.timeout(180)

NVR = "51019910111180000031"
DAY = datetime(2026, 12, 5, 0, 0, tzinfo=UTC)
CHANNELS = channel_ids(NVR, 1)
CAM = registry.camera_id(CHANNELS[0])


@pytest.fixture(scope="module")
def gb_process(api, seeded_db, tmp_path_factory):  # noqa: F811
    """What the gb28181 process runs (the SIP server, the playback service, the heartbeat) and the NVR."""
    records = [manscdp.RecordItem(DAY + timedelta(hours=h), DAY + timedelta(hours=h, minutes=30), "alarm" if h == 9
                                  else "time", "东山村NVR录像") for h in (8, 9, 10, 11, 12)]
    with running_nvr(seeded_db, tap_key(api.settings), tmp_path_factory.mktemp("gbvar"), NVR, records) as nvr:
        yield nvr.server, nvr.device


def test_device_timeline_lists_the_nvr_records(api, gb_process):  # noqa: F811
    with api.client("ds-supervisor") as c:
        r = c.get(f"/api/recordings/{CAM}/device/timeline",
                  params={"start": (DAY + timedelta(hours=8, minutes=40)).isoformat(), "end": (DAY + timedelta(hours=12)).isoformat()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_id"] == NVR and body["channel_id"] == CHANNELS[0]
    starts = [datetime.fromisoformat(x["start"]) for x in body["records"]]
    assert starts == [DAY + timedelta(hours=h) for h in (9, 10, 11)]      # three of five, in two packets
    assert body["records"][0]["type"] == "alarm" and body["records"][0]["name"] == "东山村NVR录像"


def test_device_play_gives_the_requested_time(api, gb_process, seeded_db):  # noqa: F811
    server, nvr = gb_process
    start = DAY + timedelta(hours=10, minutes=5, seconds=7)
    with api.client("ds-supervisor") as c:
        r = c.get(f"/api/recordings/{CAM}/device/play",
                  params={"t": start.isoformat(), "end": (start + timedelta(seconds=3)).isoformat()}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith('video/mp4; codecs="avc1.')
    assert datetime.fromisoformat(r.headers["X-Start-Time"]) == start and r.headers["X-Source"] == "device"
    shown = []
    with av.open(io.BytesIO(r.content)) as container:
        for frame in container.decode(video=0):
            ms = decode_timestamp_strip(frame.to_ndarray(format="rgb24"))
            assert ms is not None
            shown.append(ms)
    want = int(start.timestamp() * 1000)
    assert shown[0] == want and shown == sorted(shown) and want + 2500 <= shown[-1] <= want + 3000
    with connect(seeded_db) as conn:
        audit = conn.execute("SELECT * FROM audit_log WHERE action = 'recordings.play' AND target LIKE %s "
                             "ORDER BY id DESC LIMIT 1", (f"%{CAM}/device/play%",)).fetchone()
    assert audit["actor"] == "ds-supervisor" and audit["detail"]["source"] == "device"
    assert audit["detail"]["from"].startswith("2026-12-05T10:05:07")


def test_scope_permission_and_refusals(api, gb_process):  # noqa: F811
    params = {"start": DAY.isoformat(), "end": (DAY + timedelta(hours=1)).isoformat()}
    with api.client("xh-supervisor") as c:
        assert c.get(f"/api/recordings/{CAM}/device/timeline", params=params).status_code == 404
        assert c.get(f"/api/recordings/{CAM}/device/play", params={"t": DAY.isoformat()}).status_code == 404
    with api.client("dsc-worker") as c:
        assert c.get(f"/api/recordings/{CAM}/device/timeline", params=params).status_code == 403
    with api.client("ds-supervisor") as c:
        r = c.get("/api/recordings/cam-dsc-01/device/timeline", params=params)
        assert r.status_code == 404 and "不是 GB/T 28181 设备通道" in r.text
        r = c.get(f"/api/recordings/{CAM}/device/play",
                  params={"t": DAY.isoformat(), "end": (DAY - timedelta(seconds=1)).isoformat()})
        assert r.status_code == 422


def test_a_fractional_start_begins_at_its_second(api, gb_process):  # noqa: F811
    start = DAY + timedelta(hours=11, minutes=1, seconds=2, milliseconds=640)
    with api.client("ds-supervisor") as c:
        r = c.get(f"/api/recordings/{CAM}/device/play",
                  params={"t": start.isoformat(), "end": (start + timedelta(seconds=1.5)).isoformat()}, timeout=30)
    assert r.status_code == 200, r.text
    begins = datetime.fromisoformat(r.headers["X-Start-Time"])
    assert begins == start.replace(microsecond=0)           # SDP t= is whole seconds: said, not hidden
    with av.open(io.BytesIO(r.content)) as container:
        first = next(iter(container.decode(video=0)))
        assert decode_timestamp_strip(first.to_ndarray(format="rgb24")) == int(begins.timestamp() * 1000)


def test_device_export_is_an_mp4_with_its_sha256(api, gb_process, seeded_db):  # noqa: F811
    import hashlib

    start = DAY + timedelta(hours=12, minutes=10)
    _, nvr = gb_process
    with api.client("ds-dispatcher") as c:
        r = c.post(f"/api/recordings/{CAM}/device/exports",
                   json={"start": start.isoformat(), "end": (start + timedelta(seconds=4)).isoformat(),
                         "reason": "案件调证 2026-118"})
        assert r.status_code == 202, r.text
        rec = r.json()
        assert rec["source"] == "device" and rec["camera_id"] == CAM
        deadline = time.monotonic() + 40
        while rec["state"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
            rec = c.get(rec["status_url"]).json()
        assert rec["state"] == "done", rec
        f = c.get(rec["file_url"])
    assert f.status_code == 200
    assert f.headers["X-Content-SHA256"] == rec["sha256"] == hashlib.sha256(f.content).hexdigest()
    assert f.content[4:8] == b"ftyp" and f.content.find(b"moov") < f.content.find(b"mdat")   # moov first
    with av.open(io.BytesIO(f.content)) as container:
        shown = [decode_timestamp_strip(fr.to_ndarray(format="rgb24")) for fr in container.decode(video=0)]
    want = int(start.timestamp() * 1000)
    assert shown[0] == want and want + 3500 <= shown[-1] <= want + 4000 and len(shown) >= 35
    # downloaded (录像下载: s=Download at the configured 4×), not played at 1×
    asked = [o for o in nvr.invites if o["t"] == f"{int(start.timestamp())} {int(start.timestamp()) + 4}"]
    assert [(o["session"], o["downloadspeed"]) for o in asked] == [("Download", 4)]
    assert rec["download_speed"] == 4 and "download_refused" not in rec
    with connect(seeded_db) as conn:
        done = conn.execute("SELECT * FROM audit_log WHERE action = 'recordings.export.finished' "
                            "ORDER BY id DESC LIMIT 1").fetchone()
    assert done["actor"] == "ds-dispatcher" and done["detail"]["sha256"] == rec["sha256"]
    assert done["detail"]["source"] == "device"
    with api.client("xh-dispatcher") as c:       # another township: 404
        assert c.post(f"/api/recordings/{CAM}/device/exports",
                      json={"start": start.isoformat(), "end": (start + timedelta(seconds=2)).isoformat(),
                            "reason": "越权调证"}).status_code == 404


def test_device_playback_control_reaches_the_nvr(api, gb_process, seeded_db):  # noqa: F811
    """Pause and speed of a device stream while it plays (MANSRTSP INFO to the NVR), scoped to its camera."""
    import threading

    server, nvr = gb_process
    start = DAY + timedelta(hours=8, minutes=20)
    got: list[bytes] = []
    with api.client("ds-supervisor") as c, c.stream(
            "GET", f"/api/recordings/{CAM}/device/play",
            params={"t": start.isoformat(), "end": (start + timedelta(seconds=8)).isoformat()}, timeout=30) as r:
        assert r.status_code == 200
        session = r.headers["X-Session"]
        reader = threading.Thread(target=lambda: got.extend(r.iter_bytes()), daemon=True)
        reader.start()
        source = nvr.playbacks[nvr.invites[-1]["call_id"]]
        with api.client("ds-supervisor") as ctl:
            p = ctl.post(f"/api/recordings/{CAM}/device/control", json={"session": session, "action": "pause"})
            assert p.status_code == 200, p.text
            assert p.json()["paused"] is True and source.paused
            p = ctl.post(f"/api/recordings/{CAM}/device/control",
                         json={"session": session, "action": "play", "scale": 4})
            assert p.status_code == 200 and p.json() == {"session": session, "paused": False, "scale": 4.0}
            assert source.speed == 4 and not source.paused
            bad = ctl.post(f"/api/recordings/{CAM}/device/control",
                           json={"session": session, "action": "play", "scale": 3})
            assert bad.status_code == 422 and "倍速" in bad.text
            # a session of this camera asked through another camera in scope: not found
            other = ctl.post("/api/recordings/cam-dsc-01/device/control", json={"session": session, "action": "pause"})
            assert other.status_code == 404
        with api.client("xh-supervisor") as away:     # another township
            assert away.post(f"/api/recordings/{CAM}/device/control",
                             json={"session": session, "action": "pause"}).status_code == 404
        reader.join(30)
    assert b"".join(got) and [c.method for _, _, c in nvr.infos[-2:]] == ["PAUSE", "PLAY"]
    with connect(seeded_db) as conn:
        rows = conn.execute("SELECT actor, outcome, detail FROM audit_log WHERE target LIKE %s ORDER BY id",
                            (f"%{CAM}/device/control%",)).fetchall()
    mine = [r["detail"].get("action") for r in rows if r["actor"] == "ds-supervisor"]
    assert mine[-3:] == ["pause", "play", "play"]               # every control audited, with what it asked
    assert rows[-1]["actor"] == "xh-supervisor"                 # the refused one too
