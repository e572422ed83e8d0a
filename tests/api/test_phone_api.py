"""The grid worker's phone against the real API: photos uploaded as evidence, a report
placed by the phone's position, and Idempotency-Key — a report, photo or action sent again
(its answer lost on a village network) returns the first result instead of a duplicate,
even when both copies arrive at once."""
from __future__ import annotations

import hashlib
import threading
import uuid

import httpx
import pytest

from store.db import connect
from tests.api.conftest import ApiServer

pytestmark = pytest.mark.timeout(120)

GRID_1 = "510199101201001"            # 东山村第一网格 (dsc-worker's grid)
IN_GRID_1 = (30.6500, 104.4800)       # inside its boundary
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb0043") + b"\x08" * 64 + b"\xff\xd9"


@pytest.fixture(scope="module")
def server(seeded_db, mqtt, tmp_path_factory):
    with ApiServer(seeded_db, mqtt.url, var_dir=tmp_path_factory.mktemp("var")) as s:
        yield s


@pytest.fixture(scope="module")
def worker(server):
    with server.client("dsc-worker") as c:
        yield c


def key() -> dict:
    return {"Idempotency-Key": str(uuid.uuid4())}


def upload(client, headers=None, data=JPEG, media_type="image/jpeg"):
    return client.post("/api/cases/media", files={"file": ("p.jpg", data, media_type)}, headers=headers or {})


def cases_titled(db_url, title) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT id, grid_code, channel FROM cases WHERE title = %s", (title,)).fetchall()


def test_site_exposes_its_time_zone(worker):
    r = worker.get("/api/site")
    assert r.status_code == 200 and r.json()["timezone"] == "Asia/Shanghai", r.text


def test_a_photo_uploaded_twice_with_one_key_is_one_evidence_file(worker, seeded_db):
    k = key()
    first, again = upload(worker, k), upload(worker, k)
    assert first.status_code == 201 and again.status_code == 201, (first.text, again.text)
    assert first.json()["evidence_id"] == again.json()["evidence_id"]
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert first.json()["sha256"] == hashlib.sha256(JPEG).hexdigest()
    with connect(seeded_db) as conn:
        n = conn.execute("SELECT count(*) AS n FROM evidence WHERE sha256 = %s AND source_kind = 'person' "
                         "AND source_id = 'dsc-worker'", (hashlib.sha256(JPEG).hexdigest(),)).fetchone()["n"]
    assert n == 1


def test_uploads_refuse_what_is_not_a_photo_or_video_and_bad_keys(worker):
    r = upload(worker, data=b"#!/bin/sh\n", media_type="text/x-shellscript")
    assert r.status_code == 415 and "不支持的文件类型" in r.json()["detail"]
    r = upload(worker, data=b"", media_type="image/jpeg")
    assert r.status_code == 400 and "文件为空" in r.json()["detail"]
    r = upload(worker, {"Idempotency-Key": "short"})
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"]


def test_a_report_is_placed_by_the_phone_position_and_sent_twice_is_one_case(worker, seeded_db):
    photo = upload(worker, key()).json()["evidence_id"]
    title = f"井盖缺失 {uuid.uuid4().hex[:6]}"
    body = {"title": title, "category": "city", "urgency": "medium", "lat": IN_GRID_1[0], "lon": IN_GRID_1[1],
            "evidence_ids": [photo]}
    k = key()
    first = worker.post("/api/cases", json=body, headers=k)
    again = worker.post("/api/cases", json=body, headers=k)
    assert first.status_code == 201 and again.status_code == 201, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    c = first.json()
    assert c["grid_code"] == GRID_1 and c["channel"] == "grid"
    assert [e["evidence_id"] for e in c["evidence"]] == [photo]
    assert len(cases_titled(seeded_db, title)) == 1
    # the same key for another request is refused, naming the reason
    other = worker.post("/api/cases/media", files={"file": ("p.jpg", JPEG, "image/jpeg")}, headers=k)
    assert other.status_code == 422 and "另一请求" in other.json()["detail"]


def test_two_copies_arriving_at_once_make_one_case(worker, server, seeded_db):
    title = f"同时到达 {uuid.uuid4().hex[:6]}"
    body = {"title": title, "category": "hazard", "lat": IN_GRID_1[0], "lon": IN_GRID_1[1]}
    k = key()
    token = worker.headers["Authorization"]
    answers: list[httpx.Response] = []

    def send():
        answers.append(httpx.post(f"{server.base_url}/api/cases", json=body, timeout=20,
                                  headers={**k, "Authorization": token}))
    threads = [threading.Thread(target=send) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(a.status_code for a in answers) == [201] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(cases_titled(seeded_db, title)) == 1


def test_a_position_outside_every_grid_is_refused_with_the_reason(worker):
    r = worker.post("/api/cases", json={"title": "远处", "category": "city", "lat": 10.0, "lon": 10.0})
    assert r.status_code == 422 and "不在本平台的任何网格内" in r.json()["detail"]
    r = worker.post("/api/cases", json={"title": "无处", "category": "city"})
    assert r.status_code == 422 and "缺少位置" in r.json()["detail"]


def test_an_action_takes_the_photos_of_its_sender_only(worker, server, seeded_db):
    c = worker.post("/api/cases", json={"title": f"自行处置 {uuid.uuid4().hex[:6]}", "category": "city",
                                        "lat": IN_GRID_1[0], "lon": IN_GRID_1[1]}).json()
    with server.client("dsc-head") as head:
        theirs = upload(head, key()).json()["evidence_id"]
    refused = worker.post(f"/api/cases/{c['id']}/actions/self_close",
                          json={"note": "已处理", "evidence_ids": [theirs]}, headers=key())
    assert refused.status_code == 404, refused.text
    mine = upload(worker, key()).json()["evidence_id"]
    k = key()
    done = worker.post(f"/api/cases/{c['id']}/actions/self_close", json={"note": "已处理", "evidence_ids": [mine]},
                       headers=k)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "closed" and mine in [e["evidence_id"] for e in done.json()["evidence"]]
    # sent again (the answer was lost): the first result, not a 409 for a case already closed
    again = worker.post(f"/api/cases/{c['id']}/actions/self_close", json={"note": "已处理", "evidence_ids": [mine]},
                        headers=k)
    assert again.status_code == 200 and again.json()["state"] == "closed", again.text
    with connect(seeded_db) as conn:
        n = conn.execute("SELECT count(*) AS n FROM case_transitions WHERE case_id = %s AND action = 'self_close'",
                         (c["id"],)).fetchone()["n"]
    assert n == 1
    # names beside the codes
    timeline = done.json()["timeline"]
    assert any(t["actor_label"] == "张伟" for t in timeline)
    assert done.json()["place_label"].startswith("东山镇")
