"""设备管理 applied live (issue 17), on the supervisor's real embedded Mosquitto: a device
added through the API and given credentials there (password, or a client certificate, shown
once) logs in within seconds without a restart; a second issue is refused (rotation is its own
choice); a decommissioned device's live connection is dropped and its login refused; the
audit records say before and after."""
from __future__ import annotations

import ssl
import threading
import time

import paho.mqtt.client as paho
import pytest

from hub.supervisor import Supervisor
from store.db import connect
from tests.api.conftest import ApiServer
from tests.conftest import create_database
from tests.devices.conftest import try_connect
from tests.hub.test_broker_accounts import Device, _settings

GRID = "510199101201001"


def wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


@pytest.fixture
def live_hub(pg, tmp_path, demo_passwords):
    sup = Supervisor(_settings(create_database(pg, migrate=False), tmp_path / "var"))
    sup.prepare()
    accounts = threading.Thread(target=sup._broker_accounts_loop, name="test-broker-accounts", daemon=True)
    accounts.start()          # what `xlhub run` runs beside its children
    try:
        with ApiServer(sup.db_url, sup.mqtt_url, var_dir=sup.settings.var_dir,
                       embedded_mqtt_device_tls_port=sup.settings.embedded_mqtt_device_tls_port,
                       embedded_mqtt_device_mtls_port=sup.settings.embedded_mqtt_device_mtls_port) as api:
            yield sup, api, demo_passwords["admin"]
    finally:
        sup.stopping.set()
        accounts.join(5)
        sup.shutdown()


def test_device_added_in_the_api_connects_at_once_and_decommission_drops_it(live_hub, tmp_path):
    sup, api, admin_pw = live_hub
    port = sup.broker.device_port
    with api.client("admin", admin_pw) as c:
        r = c.post("/api/devices", json={"id": "door-new", "kind": "door", "name": "新装门禁", "grid": GRID})
        assert r.status_code == 201, r.text
        bad = c.post("/api/devices", json={"id": "door-bad", "kind": "door", "name": "坏门禁", "grid": "999"})
        assert bad.status_code == 404
        r = c.post("/api/devices/door-new/credentials", json={})
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        bundle = r.json()
        password = bundle["mqtt"]["password"]
        assert bundle["mqtt"]["username"] == "door-new" and bundle["command_signing_key"]
        assert wait(lambda: try_connect(port, "door-new", password)), "the new device cannot log in"
        assert c.post("/api/devices/door-new/credentials", json={}).status_code == 409, "issued twice"

        # a client certificate (一机一证): the certificate is the login on the mTLS port
        r = c.post("/api/devices/door-new/credentials", json={"rotate": True, "client_certificate": True})
        assert r.status_code == 201, r.text
        cert = r.json()["client_cert"]
        assert cert["cert_pem"].startswith("-----BEGIN CERTIFICATE")
        assert wait(lambda: try_connect(port, "door-new", r.json()["mqtt"]["password"]))
        assert not try_connect(port, "door-new", password), "the rotated-out password still works"
        (tmp_path / "ca.pem").write_text(r.json()["ca_pem"])
        (tmp_path / "c.crt").write_text(cert["cert_pem"])
        (tmp_path / "c.key").write_text(cert["key_pem"])
        assert _mtls_connect(sup.settings.embedded_mqtt_device_mtls_port, tmp_path), "certificate refused"

        device = Device(port, "door-new", r.json()["mqtt"]["password"])
        try:
            r = c.delete("/api/devices/door-new")
            assert r.status_code == 200, r.text
            assert device.dropped.wait(10), "the decommissioned device stayed connected"
            assert not try_connect(port, "door-new", r.json().get("password", "x")), "still logs in"
        finally:
            device.close()
        assert wait(lambda: not _mtls_connect(sup.settings.embedded_mqtt_device_mtls_port, tmp_path)), \
            "the decommissioned device's certificate still logs in"

    with connect(sup.db_url) as conn:
        rows = {r["action"]: r["detail"] for r in conn.execute(
            "SELECT action, detail FROM audit_log WHERE target = 'door-new' AND outcome = 'ok' ORDER BY id")}
    assert rows["device.add"]["before"] is None and rows["device.add"]["after"]["grid_code"] == GRID
    assert rows["device.decommission"]["before"]["active"] is True
    assert rows["device.decommission"]["after"]["active"] is False
    assert "password" not in str(rows["device.credentials.issue"]).lower()


def _mtls_connect(port: int, files, timeout: float = 5.0) -> bool:
    ok, done = [], threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="door-new", protocol=paho.MQTTv5)
    c.tls_set(ca_certs=str(files / "ca.pem"), certfile=str(files / "c.crt"), keyfile=str(files / "c.key"),
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.tls_insecure_set(True)
    c.on_connect = lambda cl, u, f, rc, p: (ok.append(not rc.is_failure), done.set())
    c.on_disconnect = lambda *a: done.set()
    try:
        c.connect("127.0.0.1", port, keepalive=5)
    except (OSError, ssl.SSLError):
        return False
    c.loop_start()
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return bool(ok and ok[0])
