"""Real peers for the devices layer: a database seeded with the demo county, the session's
Mosquitto with one account per simulated device, a DevicesWorker with short timeouts,
and simulated devices speaking the contract."""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest

from config.settings import Settings
from devices.credentials import DeviceSecrets
from devices.worker import DevicesWorker
from devices.settings import DevicesSettings
from devices.sim.fleet import DeviceFleet
from hub.embedded import device_account


@pytest.fixture(scope="module")
def devices_var(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("devices-var")


def fast_settings(**overrides) -> DevicesSettings:
    """Seconds instead of minutes, so timeouts happen within a test."""
    values = dict(heartbeat_factor=3.0, interval_door_s=20.0, interval_speaker_s=20.0, interval_drone_s=20.0,
                  interval_radio_s=20.0, registry_refresh_s=0.5, command_timeout_s=10.0, command_expiry_s=10.0,
                  broadcast_answer_margin_s=1.0, geofence_confirm=2, drone_link_lost_s=1.0)
    values.update(overrides)
    return DevicesSettings(**values)


def hub_settings(db: str, mqtt_url: str, var_dir: Path, http_port: int = 8080) -> Settings:
    # the in-process test API serves plain HTTP on loopback
    return Settings(database_url=db, mqtt_url=mqtt_url, var_dir=var_dir, http_port=http_port, https=False)


def start_service(db: str, mqtt, var_dir: Path, cfg: DevicesSettings | None = None,
                  http_port: int = 8080) -> DevicesWorker:
    svc = DevicesWorker(hub_settings(db, mqtt.url, var_dir, http_port), cfg or fast_settings(),
                         heartbeat_name=f"devices-test-{uuid.uuid4().hex[:6]}", tick_s=0.1)
    svc.start()
    assert svc.wait_ready(20), "devices worker did not become ready"
    return svc


def provision(mqtt, var_dir: Path, devices: dict[str, str]) -> dict[str, str]:
    """Broker accounts (and signing keys) for {device id: kind}; returns the passwords.
    Accounts of other tests are kept: the broker is shared by the session."""
    store = DeviceSecrets.for_var_dir(var_dir)
    passwords = {}
    for dev_id in devices:
        existing = store.passwords().get(dev_id)
        passwords[dev_id] = existing or store.issue(dev_id).password
    mqtt.set_accounts([*[a for a in mqtt.accounts.values() if a.username not in devices],
                       *[device_account(kind, d, passwords[d]) for d, kind in devices.items()]])
    mqtt.reload()
    time.sleep(0.5)
    return passwords


def start_fleet(site, mqtt, var_dir: Path, only: set[str], *, speed: float = 1.0, **kwargs) -> DeviceFleet:
    store = DeviceSecrets.for_var_dir(var_dir)
    # Every device of `only` has its own account (provision): they log in on the device listener.
    fleet = DeviceFleet.from_site(site, mqtt.device_url(), passwords=store.passwords(), keys=store.keys(), speed=speed,
                                  only=only, events=False, client_prefix=f"dev-sim-{uuid.uuid4().hex[:4]}", **kwargs)
    fleet.start()
    return fleet


def wait_for(db: str, sql: str, params=(), expect=lambda v: bool(v), timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    value = None
    with psycopg.connect(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql, params).fetchone()
            value = row[0] if row else None
            if expect(value):
                return value
            time.sleep(0.1)
    raise AssertionError(f"timed out waiting: {sql} {params} → {value!r}")


def query(db: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def mqtt_client(port: int, username: str, password: str) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    c.username_pw_set(username, password)
    connected = threading.Event()
    c.on_connect = lambda client, u, f, rc, p: connected.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert connected.wait(10), "test client could not connect"
    return c


@pytest.fixture
def hub_client(mqtt):
    """The hub's own MQTT account (what ingest, alerts and the API publish as)."""
    c = mqtt_client(mqtt.port, "xlhub-hub", mqtt.hub_password)
    yield c
    c.disconnect()
    c.loop_stop()


def try_connect(port: int, username: str, password: str, timeout: float = 5.0) -> bool:
    """Whether the broker accepts this username/password (CONNACK success)."""
    result: list = []
    done = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
    c.username_pw_set(username, password)

    def on_connect(client, u, f, rc, p):
        result.append(not rc.is_failure)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *a: done.set()
    try:
        c.connect("127.0.0.1", port)
    except OSError:
        return False
    c.loop_start()
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return bool(result and result[0])


def random_password() -> str:
    return secrets.token_urlsafe(12)
