"""Cascade up, hub to hub: our own GbServer plays the upper platform (the same SIP code in its
other role — the independent peer is SIPp, test_cascade_sipp.py). The lower hub registers with
digest, is asked its catalog (the shared subtree as business group / virtual organisations
with its cameras, GB2312, several packets), DeviceInfo; the upper platform INVITEs one of the
lower hub's cameras and gets its packets as RTP/PS — the same bytes, not re-encoded —; an
unshared or unknown camera is refused 404; the lower hub's alarms arrive as the upper's events."""
from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from datetime import UTC, datetime

import av

import pytest

from cameras.gb28181 import manscdp, registry
from cameras.gb28181.cascade import Cascade
from cameras.gb28181.cascade_catalog import gb_id_for, shared_catalog
from cameras.gb28181.media import sender as snd
from cameras.gb28181.media.hub import MediaHub, MediaSettings, gb_url
from cameras.gb28181.media.loopback import LoopbackInviter
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.session import InviteFailed
from cameras.gb28181.settings import GbSettings
from cameras.evidence import PacketRing, Record, Segment
from cameras.tap import Fanout, TapServer, TapSettings, TapStream
from store.workers import beat
from config.gb28181 import GbPlacement, GbSite, GbUpstream
from store.db import connect
from store.registry import sync_site
from store.secrets import SecretBox, derive_key
from tests.cameras.gb28181.test_media import take
from tests.conftest import create_database

pytestmark = pytest.mark.timeout(180)

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
UP_ID, UP_DOMAIN = "51000000002000000001", "5100000000"
DEV, CH = "51019910111320000070", "51019910111320000071"      # a GB camera of the lower hub
KEY = b"c" * 32
SHARED = "510199101000"                                       # 东山: one township's subtree


@pytest.fixture(scope="module")
def upper_db(pg, demo_site):
    url = create_database(pg)
    with connect(url) as conn:
        sync_site(conn, demo_site)
    return url


def test_hub_cascades_to_an_upper_hub(site_db, upper_db, tmp_path):
    # the lower hub's GB camera, placed inside the shared subtree
    lower_gb = GbSite(sip_id=HUB_ID, domain=DOMAIN,
                      placement=[GbPlacement(channel=CH, grid="510199101201002")])
    with connect(site_db) as conn:
        registry.admit(conn, DEV, by="test")
        registry.sync_catalog(conn, DEV, [manscdp.Channel(CH, "东山路口国标")], lower_gb, "510199000000")
    media = MediaHub(LoopbackInviter({f"{DEV}/{CH}": snd.testsrc("h264", fps=25, gop=10)}), KEY,
                     settings=MediaSettings(transport="udp"), tap_settings=TapSettings(), domain_id=DOMAIN).start()

    def camera_tap(item):
        if item.url and item.url.startswith("gb28181://"):
            dev, ch = item.url[len("gb28181://"):].split("/")
            return media.address, f"{dev}/{ch}", "main", gb_url(dev, ch)
        return None

    try:
        with platforms(site_db, upper_db, tmp_path, lower_gb, camera_tap) as (upper, cascade, up, events, bodies):
            check_catalog_media_alarms(site_db, media, upper, cascade, up, events, bodies)
    finally:
        media.stop()
        media.inviter.stop_all()


class WorkerStandIn:
    """A camera worker's tap as cameras/worker.py serves it (Fanout + TapServer + heartbeat),
    fed by FFmpeg's H.264 (NUT demuxed by PyAV) in place of the RTSP reader."""

    def __init__(self, db_url: str, camera_id: str, url: str) -> None:
        self.fanout = Fanout(camera_id, PacketRing(10), url=url)
        self.server = TapServer(TapSettings(), KEY, {camera_id: self.fanout}.get).start()
        self.sent: list[bytes] = []
        self.stop = threading.Event()
        with connect(db_url) as conn:
            beat(conn, "cameras-test", "cameras", datetime.now(UTC),
                 {"ready": True, "tap": self.server.address, "shard": 0, "shards": 1})
        self.proc = subprocess.Popen([snd.FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin",
                                      *snd.testsrc("h264", size="352x288", fps=25, gop=10), "-f", "nut", "pipe:1"],
                                     stdout=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with av.open(self.proc.stdout, format="nut", options={"probesize": "32", "analyzeduration": "1"}) as c:
            st = c.streams.video[0]
            seg = Segment(1, st.codec_context.name, st.codec_context.width, st.codec_context.height, st.time_base,
                          bytes(st.codec_context.extradata) if st.codec_context.extradata else None, fps=25.0)
            self.fanout.opened(seg)
            for p in c.demux(st):
                if self.stop.is_set():
                    break
                if p.size:
                    self.sent.append(bytes(p))
                    self.fanout.append(Record(p, time.time(), p.is_keyframe, seg))

    def close(self) -> None:
        self.stop.set()
        self.proc.kill()
        self.proc.wait()
        self.server.stop()


@pytest.mark.parametrize("transport", ["tcp-passive", "tcp-active"])
def test_an_rtsp_camera_is_played_from_its_workers_tap_over_tcp(site_db, upper_db, demo_site, tmp_path, transport,
                                                                monkeypatch):
    monkeypatch.setenv("XLHUB_DEMO_CAMERA_PASSWORD", "demo-cam-pw")        # the workers' credentials, as they have
    from cameras.config import registry_specs
    from cameras.gb28181.process import _camera_tap
    from store.registry import camera_rows

    spec = next(s for s in registry_specs(camera_rows(connect(site_db)), demo_site)[0] if s.id == "cam-dsc-01")
    worker = WorkerStandIn(site_db, "cam-dsc-01", spec.url)
    lower_gb = GbSite(sip_id=HUB_ID, domain=DOMAIN)
    try:
        with platforms(site_db, upper_db, tmp_path, lower_gb,
                       lambda item: _camera_tap(site_db, demo_site, None, item)) as (upper, cascade, up, _, _b):
            with connect(site_db) as conn:
                gb_id = next(i.gb_id for i in shared_catalog(conn, DOMAIN, up) if i.camera_id == "cam-dsc-01")
            upper_media = MediaHub(upper, KEY, settings=MediaSettings(transport=transport),
                                   tap_settings=TapSettings(), domain_id=UP_DOMAIN).start()
            try:
                tap = TapStream(upper_media.address, KEY, f"{HUB_ID}/{gb_id}", "main", gb_url(HUB_ID, gb_id),
                                timeout_s=10).open()
                header, packets, _ = take(tap, 30, 20)
                tap.close()
                status = upper_media.status()["channels"][f"{HUB_ID}/{gb_id}"]
                session = status["session"]
                why = (status, cascade.status(), len(worker.sent))
            finally:
                upper_media.stop()
        assert header is not None and (header.codec, header.width, header.height) == ("h264", 352, 288), why
        assert len(packets) == 30 and session["transport"] == transport
        got = [bytes(p.packet) for p in packets if not p.key]
        assert got and all(b in worker.sent for b in got), "the worker's packets, not re-encoded"
        decoder = header.decoder()
        frames = [f for p in packets for f in decoder.decode(p.packet)]
        assert frames
    finally:
        worker.close()


@contextlib.contextmanager
def platforms(site_db, upper_db, tmp_path, lower_gb, camera_tap):
    # the upper platform: a GbServer with the lower hub admitted
    events: list[tuple[str, str, dict]] = []
    pw = GbPasswords(tmp_path, SecretBox(derive_key("test-master-key-0123456789")))
    upper = GbServer(GbSite(sip_id=UP_ID, domain=UP_DOMAIN), GbSettings(host="127.0.0.1", port=0, tcp=False),
                     upper_db, pw, root_code="510199000000", on_event=lambda *e: events.append(e))
    bodies: list[manscdp.Body] = []
    packet_of = upper._catalog_packet
    upper._catalog_packet = lambda device_id, body: (bodies.append(body), packet_of(device_id, body))
    upper.start()
    with connect(upper_db) as conn:
        registry.admit(conn, HUB_ID, by="test")
    pw.set(HUB_ID, "Up-Secret-2")

    up = GbUpstream(sip_id=UP_ID, domain=UP_DOMAIN, host="127.0.0.1", port=upper.port, credentials="upper",
                    keepalive_s=2, share=[SHARED])
    gb = lower_gb.model_copy(update={"upstream": [up]})

    cascade = Cascade(gb, GbSettings(host="127.0.0.1", cascade_port=0, cascade_media_bind="127.0.0.1"), site_db,
                      password_of=lambda up: (HUB_ID, "Up-Secret-2"), camera_tap=camera_tap, tap_key=KEY).start()
    try:
        deadline = time.monotonic() + 30
        while not isinstance(upper.catalog_results.get(HUB_ID), registry.CatalogChange) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert isinstance(upper.catalog_results.get(HUB_ID), registry.CatalogChange), (upper.catalog_results,
                                                                                      cascade.status())
        yield upper, cascade, up, events, bodies
    finally:
        cascade.stop()
        upper.stop()


def check_catalog_media_alarms(site_db, media, upper, cascade, up, events, bodies):
    upper_media = None
    try:
        # registered, then the upper platform read our catalog by itself (DeviceInfo, Catalog)
        assert cascade.status()["upstream"][UP_ID]["state"] == "registered"

        with connect(site_db) as conn:
            expected = shared_catalog(conn, DOMAIN, up)
        items = {}
        for body in bodies:
            assert body.charset == "GB2312", "answered in the encoding the upper platform asked in"
            assert body.text("SumNum") == str(len(expected))
            for it in body.root.find("DeviceList"):
                items[it.findtext("DeviceID")] = {k: it.findtext(k) for k in ("Name", "ParentID", "BusinessGroupID")}
        assert len(bodies) >= 2, "several packets"
        assert len(items) == len(expected) and len(expected) >= 9
        groups = [i for i in items if i[10:13] == "215"]
        assert len(groups) == 1
        group = groups[0]
        with connect(site_db) as conn:
            township = conn.execute("SELECT name FROM grid_nodes WHERE code = %s", (SHARED,)).fetchone()["name"]
        assert items[group]["Name"] == township and items[group]["ParentID"] is None
        orgs = {i: v for i, v in items.items() if i[10:13] == "216"}
        assert len(orgs) == 6 and all(v["BusinessGroupID"] == group for v in orgs.values())
        assert all(v["ParentID"] in orgs or v["ParentID"] == group for v in orgs.values())
        cams = {i: v for i, v in items.items() if manscdp.is_video_channel(i)}
        assert CH in cams and cams[CH]["Name"] == "东山路口国标", "a GB camera keeps its own ID; Chinese survives GB2312"
        assert all(v["ParentID"] in orgs for v in cams.values()) and len(cams) == 3
        assert all(i.startswith(DOMAIN) for i in items if i != CH), "our IDs are in our domain"
        # stable: asked again, the same IDs
        with connect(site_db) as conn:
            assert [i.gb_id for i in shared_catalog(conn, DOMAIN, up)] == [i.gb_id for i in expected]
        # only the shared subtree: a camera of another township is not there
        with connect(site_db) as conn:
            other = conn.execute("SELECT gb_id FROM gb_cascade_ids WHERE key = 'cam-xhc-01'").fetchone()
        assert other is None and {i.camera_id for i in expected if i.camera_id} == {"cam-dsc-01", "cam-tyc-01", f"gb-{CH}"}

        # INVITE from the upper platform: its MediaHub plays our GB camera through the cascade
        lower_tap = TapStream(media.address, KEY, f"{DEV}/{CH}", "main", gb_url(DEV, CH), timeout_s=10).open()
        lower: dict = {}
        t = threading.Thread(target=lambda: lower.update(zip(("h", "p", "s"), take(lower_tap, 150, 25))))
        t.start()
        upper_media = MediaHub(upper, KEY, settings=MediaSettings(transport="udp"), tap_settings=TapSettings(),
                               domain_id=UP_DOMAIN).start()
        up_tap = TapStream(upper_media.address, KEY, f"{HUB_ID}/{CH}", "main", gb_url(HUB_ID, CH), timeout_s=10).open()
        header, packets, _ = take(up_tap, 40, 20)
        up_tap.close()
        t.join(30)
        lower_tap.close()
        assert header is not None and (header.codec, header.width, header.height) == ("h264", 320, 240)
        assert len(packets) == 40 and packets[0].key
        decoder = header.decoder()
        frames = [f for p in packets for f in decoder.decode(p.packet)]
        assert len(frames) >= 35 and frames[0].width == 320
        # the same bitstream: every non-key packet the upper platform got is the camera's, byte for byte
        camera_bytes = [bytes(p.packet) for p in lower["p"]]
        got = [bytes(p.packet) for p in packets if not p.key]
        assert got and all(b in camera_bytes for b in got), "not re-encoded"
        start = camera_bytes.index(got[0])
        camera_nonkey = [b for b, p in zip(camera_bytes[start:], lower["p"][start:]) if not p.key]
        assert got == camera_nonkey[:len(got)], "in order, none missing"
        assert len(cascade.status()["plays"]) == 1
        upper_media.stop()
        upper_media = None
        deadline = time.monotonic() + 10
        while cascade.plays and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not cascade.plays, "BYE ended the play and released the tap"

        # an unknown camera, or one that has an ID (shared with some other platform) outside what
        # this platform is shared: refused 404 by us (the upper's own catalog check set aside)
        with connect(site_db) as conn:
            unshared = gb_id_for(conn, DOMAIN, "camera", "cam-xhc-01", "132")
        upper.devices[HUB_ID].channels.clear()
        for camera in ("51019900001320999999", unshared):
            with pytest.raises(InviteFailed) as refused:
                upper.play(HUB_ID, camera, upper_media_offer())
            assert refused.value.status == 404, camera

        # alarms upward: a GB camera's and an RTSP camera's
        cam_dsc = next(i for i in expected if i.camera_id == "cam-dsc-01")
        assert cascade.forward_alarm(f"gb-{CH}", "camera.motion", {"ts": int(time.time() * 1000)}) == 1
        assert cascade.forward_alarm("cam-dsc-01", "camera.intrusion.line", {"ts": int(time.time() * 1000)}) == 1
        assert cascade.forward_alarm("cam-xhc-01", "camera.motion", {}) == 0, "not shared: not forwarded"
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {(cam, et) for cam, et, _ in events} == {(f"gb-{CH}", "camera.motion"),
                                                        (f"gb-{cam_dsc.gb_id}", "camera.intrusion.line")}
    finally:
        if upper_media is not None:
            upper_media.stop()


def upper_media_offer():
    from cameras.gb28181.session import MediaOffer
    return MediaOffer("127.0.0.1", 40999, "udp", "0000000001")


def test_camera_events_on_the_bus_are_handed_to_the_cascade(mqtt):
    """The gb28181 process's bus subscription (real Mosquitto): every camera's event reaches
    ``forward_alarm`` with its camera, full event type and body; other kinds do not."""
    import json

    from bus.client import mqtt_client, start, stop
    from cameras.gb28181.process import _forward_alarms

    class Recorder:
        def __init__(self):
            self.got: list[tuple[str, str, dict]] = []

        def forward_alarm(self, camera_id, event_type, body):
            self.got.append((camera_id, event_type, body))
            return 1

    rec = Recorder()
    sub = _forward_alarms(mqtt.url, rec)
    pub = mqtt_client(mqtt.url, "test-cascade-pub")
    start(pub)
    try:
        body = {"v": 1, "id": "01J0000000000000000000000A", "ts": 1_800_000_000_000, "detail": {}, "evidence": []}
        deadline = time.monotonic() + 10
        while not rec.got and time.monotonic() < deadline:
            pub.publish("xlhub/v1/door/D1/evt/forced_open", json.dumps(body), qos=1)
            pub.publish("xlhub/v1/camera/cam-dsc-01/evt/intrusion.line", json.dumps(body), qos=1)
            time.sleep(0.5)
        time.sleep(0.5)
        assert rec.got and set((c, e) for c, e, _ in rec.got) == {("cam-dsc-01", "camera.intrusion.line")}
        assert rec.got[0][2] == body
    finally:
        stop(pub)
        stop(sub)


def test_the_gb28181_process_runs_the_cascade_from_the_site_file(site_db, upper_db, tmp_path, monkeypatch, mqtt):
    """run_gb28181 with a site file whose gb28181 section has an upstream: registered to the
    upper platform with the password from the credentials entry, and said so in its heartbeat;
    the catalog is answered in the encoding of the platform's query (GB2312, then UTF-8)."""
    import yaml

    from cameras.gb28181.process import run_gb28181
    from config.settings import DEMO_SITE_FILE, Settings
    from store.workers import heartbeats

    pw = GbPasswords(tmp_path / "upper", SecretBox(derive_key("test-master-key-0123456789")))
    upper = GbServer(GbSite(sip_id=UP_ID, domain=UP_DOMAIN), GbSettings(host="127.0.0.1", port=0, tcp=False),
                     upper_db, pw, root_code="510199000000")
    bodies: list[manscdp.Body] = []
    packet_of = upper._catalog_packet
    upper._catalog_packet = lambda device_id, body: (bodies.append(body), packet_of(device_id, body))
    upper.start()
    with connect(upper_db) as conn:
        registry.admit(conn, HUB_ID, by="test")
    pw.set(HUB_ID, "Up-Secret-3")
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    data["credentials"]["upper-sip"] = {"username": HUB_ID, "password_env": "XLHUB_TEST_UPPER_PASSWORD"}
    data["gb28181"] = {"sip_id": HUB_ID, "domain": DOMAIN, "upstream": [
        {"sip_id": UP_ID, "domain": UP_DOMAIN, "host": "127.0.0.1", "port": upper.port, "credentials": "upper-sip",
         "keepalive_s": 2, "share": [SHARED]}]}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(data, allow_unicode=True))
    monkeypatch.setenv("XLHUB_TEST_UPPER_PASSWORD", "Up-Secret-3")
    for k, v in {"HOST": "127.0.0.1", "PORT": "0", "CASCADE_PORT": "0"}.items():
        monkeypatch.setenv(f"XLHUB_GB28181_{k}", v)
    settings = Settings(var_dir=tmp_path, site_file=site_file, database_url=site_db, mqtt_url=mqtt.url)
    stop = threading.Event()
    proc = threading.Thread(target=run_gb28181, args=(settings, stop), daemon=True)
    proc.start()
    try:
        def cascade_state():
            with connect(site_db) as conn:
                beat = next((b for b in heartbeats(conn, "gb28181")), None)
            return ((beat or {}).get("detail") or {}).get("cascade", {}).get("upstream", {}).get(UP_ID, {})
        deadline = time.monotonic() + 30
        while cascade_state().get("state") != "registered" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cascade_state().get("state") == "registered", cascade_state()
        assert HUB_ID in upper.devices and upper.devices[HUB_ID].online
        while not isinstance(upper.catalog_results.get(HUB_ID), registry.CatalogChange) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bodies and {b.charset for b in bodies} == {"GB2312"}, "asked in GB2312 (before our first body)"
        bodies.clear()
        upper.devices[HUB_ID].charset = "UTF-8"            # the platform now asks in UTF-8
        upper.run(upper.query_catalog(HUB_ID))
        assert bodies and {b.charset for b in bodies} == {"UTF-8"}
        names = {it.findtext("Name") for b in bodies for it in b.root.find("DeviceList")}
        assert "东山村村口" in names
    finally:
        stop.set()
        proc.join(20)
        upper.stop()
