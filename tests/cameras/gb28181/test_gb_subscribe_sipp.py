"""Catalog subscription against a peer not written by us: SIPp (Debian's sip-tester) registers
with its own digest, then as the device's UAS takes the hub's SUBSCRIBE (Event: Catalog;id=…),
answers 200 and sends two NOTIFYs in GB2312 in the subscription's dialog — one ADDs a channel,
one DELetes it. The channel's camera appears in the registry, named from the GB2312 bytes, and
is then retired (kept, inactive)."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import time

from cameras.gb28181 import registry
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key
from tests.cameras.gb28181.test_gb28181_sipp import DEV, DOMAIN, HERE, HUB_ID, SIPP, admit_sipp_device, sipp

CHANNEL = "51019910111310000071"
CAM = registry.camera_id(CHANNEL)


def camera(db_url):
    with connect(db_url) as conn:
        return conn.execute(
            """SELECT c.name, c.active, c.tags, g.retired_at, g.status, m.grid_code FROM cameras c
               JOIN gb_channels g ON g.camera_id = c.id
               JOIN grid_membership m ON m.source_id = c.id WHERE c.id = %s""", (CAM,)).fetchone()


def test_sipp_device_subscribed_notifies_add_then_del(site_db, tmp_path):
    pw = GbPasswords(tmp_path, SecretBox(derive_key("test-master-key-0123456789")))
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, placement=[GbPlacement(civil_code="51019910", grid="510199101201001")])
    server = GbServer(site, GbSettings(host="127.0.0.1", port=0, tcp=False, catalog_subscribe_expires_s=600,
                                 alarm_subscribe_expires_s=0),
                      site_db, pw, root_code="510199000000")
    uas_ready = threading.Event()

    async def identify_after_uas(device_id):
        # this SIPp device answers no DeviceInfo/Catalog query; the hub's after-register path
        # goes on to SUBSCRIBE once SIPp listens as the device's UAS on the registered port
        while not uas_ready.is_set():
            await asyncio.sleep(0.05)
    server._identify = identify_after_uas
    server.start()
    uas = None
    try:
        password, port = admit_sipp_device(site_db, pw)
        uac = sipp("register_keepalive.xml", server.port, port, "-au", DEV, "-ap", password)
        out, _ = uac.communicate(timeout=30)
        assert uac.returncode == 0, out.decode(errors="replace")[-6000:]
        uas = subprocess.Popen(
            [SIPP, "-sf", str(HERE / "uas_subscribe_notify.xml"), "-i", "127.0.0.1", "-p", str(port), "-s", DEV,
             "-set", "hub", HUB_ID, "-set", "domain", DOMAIN, "-set", "channel", CHANNEL, "-m", "1",
             "-timeout", "20s", "-timeout_error", "-nostdin", "-nd"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        uas_ready.set()

        seen_added = None
        end = time.monotonic() + 15
        while time.monotonic() < end:
            row = camera(site_db)
            if row is not None and seen_added is None:
                seen_added = row
            if row is not None and not row["active"]:
                break
            time.sleep(0.05)
        out, _ = uas.communicate(timeout=25)
        assert uas.returncode == 0, out.decode(errors="replace")[-3000:]
        assert server.devices[DEV].sub_state == "active"
        assert seen_added is not None and seen_added["active"] is True
        assert seen_added["name"] == "村口球机（SIPp）"                    # read from GB2312
        assert "ptz" in seen_added["tags"] and seen_added["grid_code"] == "510199101201001"
        retired = camera(site_db)
        assert retired["active"] is False and retired["retired_at"] is not None    # retired, not deleted
        changes = server.subs.notify_results[DEV]
        assert [c.added for c in changes] == [[CAM], []] and [c.retired for c in changes] == [[], [CAM]]
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
        server.stop()
