"""The supervisor keeps the embedded broker's device accounts in step with the registry and
var/secrets (一机一帐号), on a real Mosquitto: a decommissioned device — through the API's
steps, or dropped from the site file — is disconnected and refused from then on, a rotated
password replaces the old one, and the other devices stay connected throughout."""
from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as paho
import pytest
import yaml

from config.settings import DEMO_SITE_FILE, Settings
from devices import registry
from hub.embedded import free_port
from hub.supervisor import Supervisor
from store.db import connect
from store.secrets import is_encrypted
from tests.conftest import create_database
from tests.devices.conftest import try_connect


class Device:
    """A device's own connection, that notices when the broker drops it."""

    def __init__(self, port: int, device_id: str, password: str) -> None:
        self.connected, self.dropped = threading.Event(), threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv5)
        self.c.username_pw_set(device_id, password)
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.c.on_disconnect = lambda *a: self.dropped.set()
        self.c.reconnect_delay_set(60, 60)          # a drop must stay visible, not be papered over
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{device_id} could not connect"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _settings(db: str, var, site=DEMO_SITE_FILE) -> Settings:
    return Settings(database_url=db, var_dir=var, site_file=site, embedded_mqtt_port=free_port(),
                    embedded_mqtt_device_port=free_port(), embedded_mqtt_device_host="127.0.0.1",
                    embedded_mqtt_device_tls_port=free_port(), embedded_mqtt_device_mtls_port=free_port())


@pytest.fixture
def supervisor(pg, tmp_path, demo_passwords):
    sup = Supervisor(_settings(create_database(pg, migrate=False), tmp_path / "var"))
    sup.prepare()
    yield sup
    sup.shutdown()


def test_decommission_and_rotation_reach_the_broker(supervisor):
    sup, store = supervisor, supervisor.device_secrets
    port = sup.broker.device_port
    passwords = store.passwords()
    assert is_encrypted(store.passwords_path) and is_encrypted(store.keys_path)
    dsc = Device(port, "door-dsc", passwords["door-dsc"])
    radio = Device(port, "radio-dsc", passwords["radio-dsc"])
    try:
        with connect(sup.db_url, autocommit=True) as conn:
            assert not sup.sync_broker_accounts(conn), "nothing changed, yet the broker was reloaded"
            # what DELETE /api/devices/door-dsc does: registry, then the device's secrets
            registry.decommission_device(conn, "door-dsc", "test")
            store.revoke("door-dsc")
            assert sup.sync_broker_accounts(conn)
        assert dsc.dropped.wait(5), "the decommissioned device stayed connected"
        assert not try_connect(port, "door-dsc", passwords["door-dsc"]), "decommissioned device still logs in"
        assert "door-dsc" not in (sup.broker.var_dir / "mosquitto" / "passwd-devices").read_text()

        old = passwords["radio-tyc"]
        new = store.issue("radio-tyc", rotate=True, signing_key=False).password
        with connect(sup.db_url, autocommit=True) as conn:
            assert sup.sync_broker_accounts(conn)
        assert not try_connect(port, "radio-tyc", old), "the rotated-out password still works"
        assert try_connect(port, "radio-tyc", new)

        assert radio.connected.is_set() and not radio.dropped.is_set(), "an unchanged device was disconnected"
    finally:
        dsc.close()
        radio.close()


def test_device_dropped_from_the_site_file_loses_its_login(pg, tmp_path, demo_passwords):
    db, var = create_database(pg, migrate=False), tmp_path / "var"
    first = Supervisor(_settings(db, var))
    first.prepare()
    password = first.device_secrets.passwords()["speaker-xhc"]
    first.shutdown()

    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    data["devices"] = [d for d in data["devices"] if d["id"] != "speaker-xhc"]
    smaller = tmp_path / "site.yaml"
    smaller.write_text(yaml.safe_dump(data, allow_unicode=True))
    second = Supervisor(_settings(db, var, smaller))
    second.prepare()
    try:
        assert "speaker-xhc" not in second.device_secrets.passwords(), "the dropped device kept its credentials"
        assert not try_connect(second.broker.device_port, "speaker-xhc", password)
        other = second.device_secrets.passwords()["speaker-dsc"]
        assert try_connect(second.broker.device_port, "speaker-dsc", other)
    finally:
        second.shutdown()


def test_external_broker_decommission_is_a_loud_warning(pg, tmp_path, demo_passwords, caplog):
    """The hub manages no account on a broker it does not run: it says what to remove."""
    db = create_database(pg, migrate=False)
    settings = _settings(db, tmp_path / "var")
    settings.mqtt_url = f"mqtt://xlhub-hub:Ext-broker-pw-{uuid.uuid4().hex[:6]}@127.0.0.1:1"
    sup = Supervisor(settings)
    store = sup.device_secrets
    store.issue("drone-lls")          # issued by hand for the external broker (the CLI's `issue`)
    sup.prepare()
    try:
        assert set(store.passwords()) == {"drone-lls"}, "site devices got accounts no broker knows"
        with connect(db, autocommit=True) as conn:
            registry.decommission_device(conn, "drone-lls", "test")
            store.revoke("drone-lls")
            with caplog.at_level("WARNING", logger="xlhub.supervisor"):
                sup.sync_broker_accounts(conn)
        warned = [r.getMessage() for r in caplog.records if "drone-lls" in r.getMessage()]
        assert warned and "external broker" in warned[0] and "Ext-broker-pw" not in warned[0], warned
    finally:
        sup.shutdown()
