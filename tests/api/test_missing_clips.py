"""A clip that was promised and could not be made says so where people look (issue 12,
item 2): an automatic event's evidence ("recording…" until then) and a case made from a
flag show why there is no clip, instead of a clip being recorded forever or silence.

The camera is FFmpeg's H.263 (which old cameras send and MP4 cannot hold), read by the
hub's StreamReader into a real CameraPipeline whose EvidenceStore writes real files and
rows in the test database; the API is the real one."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from bus.commands import FlagCommand
from cameras.config import CameraAnalytics, CameraSpec
from cameras.evidence import EvidenceStore
from cameras.reader import StreamReader
from cameras.pipeline import CameraPipeline, OutEvent
from store.db import connect, open_pool
from tests.cameras.test_flag_clip_notes import ANALYTICS, streams  # noqa: F401  (fixture)

CAM = "cam-h263-missing"
GRID = "510199101201"        # 东山村 (东山镇): ds-supervisor's area


@pytest.fixture(scope="module")
def camera(seeded_db, streams, tmp_path_factory):  # noqa: F811
    with connect(seeded_db) as conn:
        conn.execute("INSERT INTO cameras (id, name, rtsp_url) VALUES (%s, '旧摄像机 H.263', 'rtsp://127.0.0.1:9/x')",
                     (CAM,))
        conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                     "VALUES ('camera', %s, %s, now() - interval '1 day')", (CAM, GRID))
    pool = open_pool(seeded_db, min_size=1, max_size=2, name="test-missing-clips")
    events: list[OutEvent] = []
    jobs = ThreadPoolExecutor(2)
    store = EvidenceStore(tmp_path_factory.mktemp("missing-evidence"), pool)
    # The file is read faster than real time: the pipeline's clock is set ahead, as a live
    # camera's would be by the time its frames arrived.
    pipeline = CameraPipeline(CameraSpec(id=CAM, url=str(streams["h263"]),
                                         analytics=CameraAnalytics.model_validate(ANALYTICS)),
                              emit=events.append, store=store, jobs=jobs, wall=lambda: time.time() + 10)
    StreamReader(CAM, str(streams["h263"]), pipeline).read_once()
    yield pipeline, store, events
    jobs.shutdown()
    pool.close()


def test_an_automatic_events_clip_that_cannot_be_made_says_why(camera, api):
    pipeline, store, events = camera
    at = pipeline.ring.records()[0].wall + 2.5
    event_id = pipeline.raise_event("camera.motion", at, {"zone": "门口"})
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    (event,) = [e for e in events if e.id == event_id]
    (clip,) = [e for e in event.evidence if e.kind == "clip"]
    assert clip.pending, "the event leaves before its clip is cut"
    pipeline.tick()                          # the clip's after-part is in the ring: it is cut now
    pipeline.jobs.submit(lambda: None).result(10)
    deadline = time.monotonic() + 10
    while store._missing and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.flush()
    with api.client("ds-supervisor") as c:
        items = c.get(f"/api/events/{event_id}/evidence").json()
    with api.client("xh-supervisor") as c:
        other = c.get(f"/api/events/{event_id}/evidence").json()
    by_kind = {i["kind"]: i for i in items}
    assert by_kind["snapshot"]["url"] and by_kind["snapshot"]["missing"] is None
    missing = by_kind["clip"]
    assert missing["id"] == clip.id and missing["url"] is None
    assert missing["missing"]["reason"] == "codec"
    assert missing["missing"]["text"].startswith("片段无法生成") and "h263" in missing["missing"]["text"]
    assert other == [], "another township sees none of it"


def test_a_case_from_a_flag_whose_clip_could_not_be_made_says_why(camera, api):
    pipeline, store, _ = camera
    event = pipeline.flag(FlagCommand(frame_ts=datetime.fromtimestamp(pipeline.ring.records()[0].wall + 3, UTC),
                                      category="治安防控", by="ds-supervisor"))
    assert event.detail["clip_missing"]["reason"] == "codec"
    assert store.flush()
    (snap,) = event.evidence
    with api.client("ds-supervisor") as c:
        r = c.post("/api/cases", json={"title": "门口有人翻越围墙", "category": "public_order",
                                       "grid_code": GRID, "evidence_ids": [snap.id]})
        assert r.status_code == 201, r.text
        case = c.get(f"/api/cases/{r.json()['id']}").json()
    kinds = [(e["kind"], (e.get("missing") or {}).get("reason")) for e in case["evidence"]]
    assert kinds == [("snapshot", None), ("clip", "codec")]
    assert case["evidence"][1]["missing"]["text"].startswith("片段无法生成")
    assert case["evidence"][1]["event_id"] == event.id
