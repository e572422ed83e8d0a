"""Refused device credentials on the devices' HTTP endpoints are on record (issue 18): each
refusal is one audit record in the claimed device's grid node — read by that township's
administrators, not by another township's — or in the county's root when no such device
exists; the answer never tells which; a burst on one claimed device, or from one address
across device ids, raises exactly one ``security.device.refused`` event in its node."""
from __future__ import annotations

import httpx
import pytest

from config.vocabulary import Role
from store.db import connect
from store.security import BURST_COUNT, DEVICE_REFUSED
from tests.security.conftest import OTHER_DOOR, OWN_DOOR

PHOTO = {"file": ("p.jpg", b"\xff\xd8\xff\xe0not really a jpeg", "image/jpeg")}


def client(api, source: str, **kw) -> httpx.Client:
    """A client from a loopback address of its own: each test its own attackers."""
    return httpx.Client(base_url=api.base_url, timeout=20, transport=httpx.HTTPTransport(local_address=source), **kw)


def records(db_url: str, source: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("""SELECT actor, actor_kind, action, outcome, node_code, target, detail FROM audit_log
                               WHERE source_ip = %s ORDER BY id""", (source,)).fetchall()


def refused_events(db_url: str) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute("SELECT source_kind, grid_code, payload FROM events WHERE type = %s ORDER BY time",
                            (DEVICE_REFUSED,)).fetchall()


def grid_of(db_url: str, device_id: str) -> str:
    with connect(db_url) as conn:
        return conn.execute("SELECT grid_code FROM source_grid WHERE source_kind = 'device' AND source_id = %s",
                            (device_id,)).fetchone()["grid_code"]


def test_each_refusal_is_one_record_in_the_claimed_devices_node(api, security_db, tokens):
    db_url = security_db[0]
    source = "127.0.10.1"
    with client(api, source) as c:
        wrong = c.post(f"/api/devices/{OWN_DOOR}/media", auth=(OWN_DOOR, "not-its-password"), files=PHOTO)
        nobody = c.post("/api/devices/no-such-door/media", auth=("no-such-door", "whatever"), files=PHOTO)
        audio = c.get("/api/broadcasts/01HZZZZZZZZZZZZZZZZZZZZZZZ/audio", auth=(OWN_DOOR, "still-not-it"))
        garbled = c.post(f"/api/devices/{OWN_DOOR}/media", headers={"Authorization": "Basic !!not-base64!!"},
                         files=PHOTO)
        bare = c.post(f"/api/devices/{OWN_DOOR}/media", files=PHOTO)

    # the same answer whether the device exists or not
    for r in (wrong, nobody, audio):
        assert (r.status_code, r.json(), r.headers["www-authenticate"]) == \
            (401, wrong.json(), "Basic"), r.text
    assert "设备认证失败" in wrong.json()["detail"]
    assert garbled.status_code == 401 and "格式错误" in garbled.json()["detail"]
    assert bare.status_code == 401 and "需要设备凭据" in bare.json()["detail"]

    rows = records(db_url, source)          # one record per request: the middleware adds none
    assert [(r["action"], r["outcome"], r["target"], r["node_code"], r["detail"]["reason"]) for r in rows] == [
        ("device.auth", "denied", OWN_DOOR, grid_of(db_url, OWN_DOOR), "密码错误"),
        ("device.auth", "denied", "no-such-door", None, "无此设备"),
        ("device.auth", "denied", OWN_DOOR, grid_of(db_url, OWN_DOOR), "密码错误"),
        ("device.auth", "denied", None, None, "凭据格式错误"),
        ("device.auth", "denied", None, None, "未提供设备凭据"),
    ]
    assert rows[2]["detail"]["method"] == "GET" and rows[0]["detail"]["path"] == f"/api/devices/{OWN_DOOR}/media"
    assert refused_events(db_url) == []     # five refusals are no burst

    # the administrators of the door's township read it in GET /api/audit
    with httpx.Client(base_url=api.base_url, timeout=20,
                      headers={"Authorization": f"Bearer {tokens[Role.admin]}"}) as admin:
        seen = admin.get("/api/audit", params={"action_prefix": "device.auth"})
    assert seen.status_code == 200, seen.text
    assert any(r["target"] == OWN_DOOR and r["source_ip"] == source for r in seen.json()), seen.json()


def test_a_burst_on_one_device_raises_one_event_in_its_node(api, security_db, tokens):
    """Guesses at another township's door from many addresses: one event, in that door's
    node; the own township's administrator does not read those records."""
    db_url = security_db[0]
    before = len(refused_events(db_url))
    sources = [f"127.0.11.{i}" for i in range(1, BURST_COUNT + 3)]      # no address reaches a burst
    for i, source in enumerate(sources):
        with client(api, source) as c:
            assert c.post(f"/api/devices/{OTHER_DOOR}/media", auth=(OTHER_DOOR, f"guess-{i}"),
                          files=PHOTO).status_code == 401
    events = refused_events(db_url)[before:]
    assert len(events) == 1, events
    event = events[0]
    assert event["source_kind"] == "hub" and event["grid_code"] == grid_of(db_url, OTHER_DOOR)
    assert (event["payload"]["by"], event["payload"]["subject"], event["payload"]["device_id"],
            event["payload"]["refusals"]) == ("device", OTHER_DOOR, OTHER_DOOR, BURST_COUNT)
    assert event["payload"]["address"] == sources[BURST_COUNT - 1]
    assert sum(len(records(db_url, s)) for s in sources) == len(sources)

    with httpx.Client(base_url=api.base_url, timeout=20,
                      headers={"Authorization": f"Bearer {tokens[Role.admin]}"}) as admin:
        seen = admin.get("/api/audit", params={"action_prefix": "device.auth", "limit": 1000})
    assert seen.status_code == 200 and not [r for r in seen.json() if r["target"] == OTHER_DOOR], seen.json()


def test_a_burst_from_one_address_across_device_ids_raises_one_event(api, security_db):
    db_url = security_db[0]
    before = len(refused_events(db_url))
    source = "127.0.12.1"
    with client(api, source) as c:
        for i in range(BURST_COUNT + 3):                               # the spraying goes on past the burst
            device_id = f"sprayed-{i}"
            assert c.post(f"/api/devices/{device_id}/media", auth=(device_id, "password"),
                          files=PHOTO).status_code == 401
    events = refused_events(db_url)[before:]
    assert len(events) == 1, events
    event = events[0]
    with connect(db_url) as conn:
        root = conn.execute("SELECT code FROM grid_nodes WHERE parent_code IS NULL").fetchone()["code"]
    assert event["grid_code"] == root                                  # no such devices: the county's root
    assert (event["payload"]["by"], event["payload"]["subject"], event["payload"]["address"],
            event["payload"]["refusals"]) == ("address", source, source, BURST_COUNT)
    assert len(records(db_url, source)) == BURST_COUNT + 3


@pytest.mark.parametrize("device_id", ["door\x00nul", "x" * 500])
def test_a_claimed_id_of_any_text_is_still_recorded(api, security_db, device_id):
    db_url = security_db[0]
    source = "127.0.13.1" if "\x00" in device_id else "127.0.13.2"
    with client(api, source) as c:
        r = c.post("/api/devices/some-door/media", auth=(device_id, "pw"), files=PHOTO)
    assert r.status_code == 401, r.text
    (row,) = records(db_url, source)
    assert row["action"] == "device.auth" and "\x00" not in row["target"] and len(row["target"]) <= 128
