"""A GB/T 28181 NVR for API and browser tests: what the gb28181 process runs (GbServer, the
device playback service, its heartbeat) with a simulated NVR registered, its channels made
cameras in 东山镇 (civil code 51019910 → grid 510199101201001), and records on its channels."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from cameras.gb28181 import manscdp, registry
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.playback import DevicePlayback
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from cameras.gb28181.sim.device import SimDevice, SimFleet, channel_ids
from config.gb28181 import GbPlacement, GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key
from store.workers import Heartbeat

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
GRID = "510199101201001"


@dataclass
class Nvr:
    server: GbServer
    device: SimDevice
    service: DevicePlayback
    channels: list[str]

    @property
    def cameras(self) -> list[str]:
        return [registry.camera_id(c) for c in self.channels]


@contextlib.contextmanager
def running_nvr(db_url: str, key: bytes, var: Path, device_id: str, records: list[manscdp.RecordItem], *,
                channels: int = 1, per_packet: int = 2):
    site = GbSite(sip_id=HUB_ID, domain=DOMAIN, placement=[GbPlacement(civil_code="51019910", grid=GRID)])
    pw = GbPasswords(var, SecretBox(derive_key("test-master-key-0123456789")))
    server = GbServer(site, GbSettings(host="127.0.0.1", port=0, catalog_timeout_s=5), db_url, pw,
                      root_code="510199000000")
    server.start()
    service = DevicePlayback(server, key).start()
    beat = Heartbeat(db_url, "gb28181", "gb28181", lambda: {"ready": True, "playback": service.address})
    beat.start()
    with connect(db_url) as conn:
        registry.admit(conn, device_id, by="test")
    chans = channel_ids(device_id, channels)
    fleet = SimFleet([])
    fleet.start()
    try:
        nvr = SimDevice(device_id, pw.set(device_id), hub=("127.0.0.1", server.port), hub_id=HUB_ID, domain=DOMAIN,
                        channels=channels, per_packet=per_packet, name="东山村NVR", records={c: records for c in chans})
        fleet.run(nvr.start())
        fleet.devices.append(nvr)
        assert fleet.run(nvr.register()).status == 200
        deadline = time.monotonic() + 15
        while device_id not in server.catalog_results and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device_id in server.catalog_results, "the NVR's catalog was read"
        time.sleep(1.5)                         # a first heartbeat
        yield Nvr(server, nvr, service, chans)
    finally:
        fleet.stop()
        beat.stop()
        service.stop()
        server.stop()
