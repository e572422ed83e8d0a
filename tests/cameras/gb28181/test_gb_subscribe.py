"""Catalog subscription (目录订阅) against the device simulator over real UDP sockets and a real
PostgreSQL: SUBSCRIBE after register (Event: Catalog;id=, Expires, a Catalog Query body), refresh
in the dialog before expiry, NOTIFY ADD/OFF/DEL applied to the registry and announced on
xlhub_registry, a device that refuses (489) noted 不支持目录订阅 and queried periodically instead
(one SUBSCRIBE, no retry loop), unsubscribe (Expires: 0) on unregister and offline, 481 for a
NOTIFY of an unknown dialog or an unregistered device (audited), 400 for a bad Event."""
from __future__ import annotations

import json
import time

import psycopg
import pytest

from cameras.gb28181 import manscdp, registry
from cameras.gb28181.manscdp import Channel
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
GRID = "510199101201001"


@pytest.fixture(scope="module")
def gb(site_db, tmp_path_factory):
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, placement=[GbPlacement(civil_code="51019910", grid=GRID)])
    pw = GbPasswords(tmp_path_factory.mktemp("var"), SecretBox(derive_key("test-master-key-0123456789")))
    settings = GbSettings(host="127.0.0.1", port=0, tcp=False, keepalive_interval_s=0.5, keepalive_misses=4,
                          catalog_timeout_s=10, catalog_subscribe_expires_s=4, subscribe_timeout_s=3,
                          catalog_query_interval_s=1.5)
    server = GbServer(site, settings, site_db, pw, root_code="510199000000")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(gb):
    f = SimFleet([])
    f.start()
    yield f
    f.stop()


def device(gb, fleet, device_id, **kw) -> SimDevice:
    with connect(gb.db_url) as conn:
        registry.admit(conn, device_id, by="test")
    password = gb.passwords.set(device_id)
    d = SimDevice(device_id, password, hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN, keepalive_s=0.3,
                  **kw)
    fleet.run(d.start())
    fleet.devices.append(d)
    assert fleet.run(d.register()).status == 200
    fleet.loop.call_soon_threadsafe(d.start_keepalive)
    return d


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def row(gb, sql, *args):
    with connect(gb.db_url) as conn:
        return conn.execute(sql, args).fetchone()


def sub_row(gb, device_id):
    return row(gb, """SELECT catalog_subscription, catalog_subscription_reason, catalog_subscription_expires_at
                      FROM gb_devices WHERE id = %s""", device_id)


def subscribes(d: SimDevice, kind: str = "catalog") -> list:
    """The SUBSCRIBEs the device received of one kind (Event: Catalog… or presence)."""
    return [r for r in d.subscribes if (r.get("Event") or "").startswith("Catalog") == (kind == "catalog")]


def announced(listen, cam: str, timeout: float = 5.0) -> bool:
    """The camera was announced on xlhub_registry (other announcements skipped)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        for n in listen.notifies(timeout=left, stop_after=1):
            if n.payload.startswith("{") and json.loads(n.payload) == {"kind": "camera", "id": cam}:
                return True
    return False


def chan(device_id: str, n: int, name: str) -> Channel:
    return Channel(f"{device_id[:10]}131{n:07d}", name, manufacturer="XLHub-Sim", ptz_type=3, lon=104.51, lat=30.61)


def test_subscribe_notify_add_off_del_applied_and_announced(gb, fleet):
    dev = "51019910111320000101"
    listen = psycopg.connect(gb.db_url, autocommit=True)
    listen.execute("LISTEN xlhub_registry")
    d = device(gb, fleet, dev, channels=2)
    assert wait_for(lambda: gb.devices.get(dev) and gb.devices[dev].sub_state == "active")
    first = subscribes(d)[0]
    assert first.get("Event").startswith("Catalog;id=")
    assert first.get("Expires") == "4"
    body = manscdp.parse(first.body)
    assert (body.kind, body.cmd, body.device_id) == ("Query", "Catalog", dev)
    assert first.get("Content-Type") == manscdp.CONTENT_TYPE
    assert wait_for(lambda: sub_row(gb, dev)["catalog_subscription"] == "active")
    assert sub_row(gb, dev)["catalog_subscription_expires_at"] is not None
    # the catalog query of register came first: two cameras
    assert wait_for(lambda: row(gb, "SELECT channel_count FROM gb_devices WHERE id = %s", dev)["channel_count"] == 2)
    list(listen.notifies(timeout=0.5))                    # drain what the catalog query announced

    new = chan(dev, 777, "新增路口摄像机")
    cam = registry.camera_id(new.channel_id)
    resp = fleet.run(d.notify_catalog([("ADD", new)]))
    assert resp.status == 200
    assert wait_for(lambda: row(gb, "SELECT active FROM cameras WHERE id = %s", cam) is not None)
    got = row(gb, """SELECT c.name, c.active, c.rtsp_url, m.grid_code FROM cameras c JOIN grid_membership m
                     ON m.source_id = c.id AND m.valid_to IS NULL WHERE c.id = %s""", cam)
    assert got == {"name": "新增路口摄像机", "active": True, "rtsp_url": f"gb28181://{dev}/{new.channel_id}",
                   "grid_code": GRID}
    assert row(gb, "SELECT channel_count FROM gb_devices WHERE id = %s", dev)["channel_count"] == 3
    assert announced(listen, cam)
    assert new.channel_id in gb.devices[dev].channels

    assert fleet.run(d.notify_catalog([("OFF", new)])).status == 200
    assert wait_for(lambda: row(gb, "SELECT status FROM gb_channels WHERE camera_id = %s", cam)["status"] == "OFF")
    assert row(gb, "SELECT active FROM cameras WHERE id = %s", cam)["active"] is True
    assert announced(listen, cam)

    assert fleet.run(d.notify_catalog([("DEL", new)])).status == 200
    assert wait_for(lambda: row(gb, "SELECT active FROM cameras WHERE id = %s", cam)["active"] is False)
    ch = row(gb, "SELECT retired_at FROM gb_channels WHERE camera_id = %s", cam)
    assert ch["retired_at"] is not None                               # retired, not deleted
    assert row(gb, "SELECT count(*) AS n FROM grid_membership WHERE source_id = %s", cam)["n"] == 1
    assert row(gb, "SELECT channel_count FROM gb_devices WHERE id = %s", dev)["channel_count"] == 2
    assert announced(listen, cam)
    assert new.channel_id not in gb.devices[dev].channels
    listen.close()


def test_refreshed_in_the_dialog_before_expiry(gb, fleet):
    dev = "51019910111320000102"
    d = device(gb, fleet, dev, channels=1)
    assert wait_for(lambda: len(subscribes(d)) >= 3, 12)        # 4 s granted: refreshed every 3.2 s
    a, b = subscribes(d)[0], subscribes(d)[1]
    assert a.call_id == b.call_id and a.from_tag == b.from_tag
    assert a.to_tag is None and b.to_tag == d.subscription["tag"]
    assert b.cseq[0] > a.cseq[0] and b.get("Event") == a.get("Event")
    assert gb.devices[dev].sub_state == "active"


def test_refused_489_noted_unsupported_and_catalog_queried_periodically(gb, fleet):
    dev = "51019910111320000103"
    d = device(gb, fleet, dev, channels=1, subscribe_status=489)
    assert wait_for(lambda: sub_row(gb, dev)["catalog_subscription"] == "unsupported")
    reason = sub_row(gb, dev)["catalog_subscription_reason"]
    assert "不支持目录订阅" in reason and "489" in reason
    assert gb.devices[dev].sub_state == "unsupported"
    # fallback: the catalog is queried again every catalog_query_interval_s (1.5 s here)
    assert wait_for(lambda: sum(1 for m in d.messages if m.cmd == "Catalog") >= 3, 10)
    assert len(subscribes(d)) == 1 and len(subscribes(d, "alarm")) == 1   # refused once: not asked again
    assert row(gb, "SELECT alarm_subscription AS s FROM gb_devices WHERE id = %s", dev)["s"] == "unsupported"


def test_unsubscribed_when_unregistered_and_when_offline(gb, fleet):
    dev = "51019910111320000104"
    d = device(gb, fleet, dev, channels=1)
    assert wait_for(lambda: d.subscription is not None)
    call_id = d.subscription["call_id"]
    assert fleet.run(d.register(expires=0)).status == 200
    assert wait_for(lambda: d.subscription is None)
    last = subscribes(d)[-1]
    assert last.call_id == call_id and last.get("Expires") == "0"
    assert subscribes(d, "alarm")[-1].get("Expires") == "0" and d.alarm_subscription is None
    assert wait_for(lambda: sub_row(gb, dev)["catalog_subscription"] == "none")
    assert sub_row(gb, dev)["catalog_subscription_reason"] == "设备注销"

    # registered again: a new subscription; then silent (no Keepalive) → offline → unsubscribed
    assert fleet.run(d.register()).status == 200
    assert wait_for(lambda: d.subscription is not None and d.subscription["call_id"] != call_id)
    fleet.loop.call_soon_threadsafe(d._keepalive.cancel)
    assert wait_for(lambda: d.subscription is None, 8)
    assert subscribes(d)[-1].get("Expires") == "0"
    assert wait_for(lambda: sub_row(gb, dev)["catalog_subscription_reason"] == "设备离线")


def test_notify_of_unknown_dialog_or_unregistered_device_481_audited(gb, fleet):
    dev = "51019910111320000105"
    d = device(gb, fleet, dev, channels=1)
    assert wait_for(lambda: d.subscription is not None)
    stray = chan(dev, 555, "不该出现")
    resp = fleet.run(d.notify_catalog([("ADD", stray)], call_id="not-a-dialog@127.0.0.1"))
    assert resp.status == 481
    assert row(gb, "SELECT 1 AS x FROM cameras WHERE id = %s", registry.camera_id(stray.channel_id)) is None
    q = """SELECT outcome, detail FROM audit_log WHERE action = 'gb28181.notify' AND actor = %s ORDER BY id DESC LIMIT 1"""
    assert wait_for(lambda: row(gb, q, dev) is not None)          # written just after the 481 is sent
    audit = row(gb, q, dev)
    assert audit["outcome"] == "denied" and audit["detail"]["reason"] == "unknown-dialog"
    assert "未知的订阅对话" in audit["detail"]["text"]

    other = "51019910111320000106"          # never registered
    o = SimDevice(other, "x", hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN)
    fleet.run(o.start())
    fleet.devices.append(o)
    assert fleet.run(o.notify_catalog([("ADD", chan(other, 556, "未注册"))])).status == 481
    assert wait_for(lambda: row(gb, q, other) is not None)
    audit = row(gb, q, other)
    assert audit["detail"]["reason"] == "unregistered" and "未注册" in audit["detail"]["text"]


def test_notify_with_bad_event_refused_400_nothing_applied(gb, fleet):
    dev = "51019910111320000107"
    d = device(gb, fleet, dev, channels=1)
    assert wait_for(lambda: d.subscription is not None)
    good, bad = chan(dev, 601, "好的"), chan(dev, 602, "坏的")
    resp = fleet.run(d.notify_catalog([("ADD", good), ("EXPLODE", bad)]))
    assert resp.status == 400 and "Event" in resp.phrase
    assert row(gb, "SELECT 1 AS x FROM cameras WHERE id = %s", registry.camera_id(good.channel_id)) is None


def test_catalog_notify_by_message_in_utf8_applied(gb, fleet):
    """Some devices send catalog changes as a MESSAGE (no dialog); a 2022 device in UTF-8."""
    dev = "51019910111320000108"
    d = device(gb, fleet, dev, channels=1, charset="UTF-8")
    assert wait_for(lambda: d.subscription is not None)
    new = chan(dev, 808, "二〇二二版设备通道")
    body = manscdp.catalog_notify_body(d.next_sn(), dev, [("ADD", new), ("VLOST", d.channels[0])], "UTF-8")
    assert b'encoding="UTF-8"' in body
    assert fleet.run(d.message(body)).status == 200
    cam = registry.camera_id(new.channel_id)
    assert wait_for(lambda: row(gb, "SELECT name FROM cameras WHERE id = %s", cam) is not None)
    assert row(gb, "SELECT name FROM cameras WHERE id = %s", cam)["name"] == "二〇二二版设备通道"
    first = registry.camera_id(d.channels[0].channel_id)
    assert row(gb, "SELECT status FROM gb_channels WHERE camera_id = %s", first)["status"] == "VLOST"


def test_notify_before_the_subscribe_200_is_taken(gb, fleet):
    """RFC 6665: the device may NOTIFY before its 200 reaches the hub; the dialog is known already."""
    dev = "51019910111320000109"
    with connect(gb.db_url) as conn:
        registry.admit(conn, dev, by="test")
    d = SimDevice(dev, gb.passwords.set(dev), hub=("127.0.0.1", gb.port), hub_id=HUB_ID, domain=DOMAIN,
                  keepalive_s=0.3, channels=1)
    early = chan(dev, 909, "订阅前通知的通道")
    d.notify_before_200 = [("ADD", early)]
    fleet.run(d.start())
    fleet.devices.append(d)
    assert fleet.run(d.register()).status == 200
    fleet.loop.call_soon_threadsafe(d.start_keepalive)
    assert wait_for(lambda: getattr(d, "early_notify", None) is not None)
    assert d.early_notify.status == 200
    assert wait_for(lambda: row(gb, "SELECT active FROM cameras WHERE id = %s", registry.camera_id(early.channel_id)))
    assert wait_for(lambda: gb.devices[dev].sub_state == "active")


def test_alarm_subscription_and_alarm_notify_become_events(gb, fleet):
    """报警订阅: SUBSCRIBE Event: presence with an Alarm query; alarms NOTIFYed in that dialog are events."""
    dev = "51019910111320000110"
    events = []
    gb.on_event = lambda cam, kind, payload: events.append((cam, kind, payload))
    try:
        d = device(gb, fleet, dev, channels=1)
        assert wait_for(lambda: d.alarm_subscription is not None)
        sub = subscribes(d, "alarm")[0]
        assert sub.get("Event") == "presence" and sub.get("Expires") == "3600"
        body = manscdp.parse(sub.body)
        assert (body.kind, body.cmd, body.text("StartAlarmPriority"), body.text("AlarmMethod")) == (
            "Query", "Alarm", "0", "0")
        assert wait_for(lambda: row(gb, "SELECT alarm_subscription AS s FROM gb_devices WHERE id = %s",
                                    dev)["s"] == "active")
        assert fleet.run(d.notify_alarm(alarm_type="2")).status == 200
        cam = registry.camera_id(d.channels[0].channel_id)
        assert wait_for(lambda: any(e[0] == cam for e in events))
        assert [e[1] for e in events if e[0] == cam] == ["camera.motion"]
    finally:
        gb.on_event = None


def test_empty_notify_answered_and_item_without_event_taken_as_update(gb, fleet):
    dev = "51019910111320000111"
    d = device(gb, fleet, dev, channels=1)
    assert wait_for(lambda: d.subscription is not None)
    assert fleet.run(d._notify("catalog", b"", 5.0, None)).status == 200       # RFC 6665 initial state, no body
    c = chan(dev, 701, "无事件字段的通道")
    body = manscdp.encode("Notify", manscdp.el("CmdType", "Catalog") + manscdp.el("SN", 9) + manscdp.el("DeviceID", dev)
                          + manscdp.el("SumNum", 1) + '<DeviceList Num="1">\r\n<Item>\r\n'
                          + manscdp.el("DeviceID", c.channel_id) + manscdp.el("Name", c.name) + "</Item>\r\n</DeviceList>\r\n")
    assert fleet.run(d._notify("catalog", body, 5.0, None)).status == 200
    assert wait_for(lambda: row(gb, "SELECT name FROM cameras WHERE id = %s", registry.camera_id(c.channel_id)))
    assert row(gb, "SELECT name FROM cameras WHERE id = %s", registry.camera_id(c.channel_id))["name"] == c.name
