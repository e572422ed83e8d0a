"""`xlhub run` on its embedded default with the demo site: reaches ready with the real
database, broker and workers, moves demo data end to end, and stops everything cleanly
on SIGTERM and SIGINT; a second start reuses what the first created."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from psycopg.rows import dict_row

from config.settings import DEMO_SITE_FILE, Settings
from config.site import load_site
from hub.embedded import free_port
from store.secrets import SecretBox, read_secret

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def assert_private(var_dir: Path) -> None:
    """Everything the hub keeps under var/ (evidence, secrets, the database, the broker's
    store, logs) is its account's alone (issue 18: snapshots hold faces and plates): no file
    or directory is readable, writable or enterable by group or others. The database and
    broker directories may live elsewhere (hub/embedded.service_dir): followed."""
    checked, loose = 0, []
    tops = [var_dir] + [p.resolve() for p in var_dir.iterdir() if p.is_symlink()]
    for top in tops:
        for p in [top, *top.rglob("*")]:
            if p.is_symlink() or p.is_socket():
                continue
            checked += 1
            if p.stat().st_mode & 0o077:
                loose.append(f"{p} {oct(p.stat().st_mode & 0o777)}")
    assert checked > 50 and any(var_dir.glob("evidence/*/*/*.jpg")), checked
    assert not loose, "readable beyond the hub's account:\n" + "\n".join(loose[:30])


GB_CAMERA = "gb-51019910111310000001"      # the demo GB/T 28181 camera's channel (cameras/gb28181/sim/demo.py)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Hub:
    def __init__(self, var_dir: Path, passwords: dict[str, str], *, https: bool = False):
        """``https``: as the embedded default serves (the hub's certificate); the other tests
        talk plain HTTP on loopback, which the hub allows there."""
        self.var_dir = var_dir
        self.ports = {"http": free_port(), "pg": free_port(), "mqtt": free_port(), "mqtt_devices": free_port(),
                      "mqtt_tls": free_port(), "mqtt_mtls": free_port(), "sip": free_port()}
        self.env = {**os.environ, **passwords,
                    "XLHUB_VAR_DIR": str(var_dir), "XLHUB_HTTP_PORT": str(self.ports["http"]),
                    "XLHUB_EMBEDDED_PG_PORT": str(self.ports["pg"]), "XLHUB_EMBEDDED_MQTT_PORT": str(self.ports["mqtt"]),
                    "XLHUB_EMBEDDED_MQTT_DEVICE_PORT": str(self.ports["mqtt_devices"]),
                    # the TLS device listeners on loopback and free ports: tests may run side by side
                    "XLHUB_EMBEDDED_MQTT_DEVICE_HOST": "127.0.0.1",
                    "XLHUB_EMBEDDED_MQTT_DEVICE_TLS_PORT": str(self.ports["mqtt_tls"]),
                    "XLHUB_EMBEDDED_MQTT_DEVICE_MTLS_PORT": str(self.ports["mqtt_mtls"]),
                    # the demo site's GB/T 28181 server (and its demo device) on loopback, a free port
                    "XLHUB_GB28181_HOST": "127.0.0.1", "XLHUB_GB28181_PORT": str(self.ports["sip"]),
                    "XLHUB_HTTPS": "true" if https else "false",
                    "XLHUB_TLS_SERVER_NAMES": '["127.0.0.1"]'}
        for key in ("XLHUB_DATABASE_URL", "XLHUB_MQTT_URL", "XLHUB_SITE_FILE", "PROMETHEUS_MULTIPROC_DIR"):
            self.env.pop(key, None)
        self.proc: subprocess.Popen | None = None
        self.base = f"{'https' if https else 'http'}://127.0.0.1:{self.ports['http']}"
        self.https = https

    @property
    def verify(self) -> str | bool:
        """The hub's CA (var/tls/ca.crt) for HTTPS; True (the default) otherwise."""
        return str(self.var_dir / "tls" / "ca.crt") if self.https else True

    def start(self) -> None:
        self.log = open(self.var_dir.parent / f"hub-{time.time():.0f}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run"], cwd=PROJECT_ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hub exited with {self.proc.returncode}:\n{self.output()}"
            if self.https and not (self.var_dir / "tls" / "ca.crt").exists():
                time.sleep(0.5)                   # the CA comes before the API
                continue
            try:
                r = httpx.get(f"{self.base}/readyz", timeout=3, verify=self.verify)
                assert r.status_code in (200, 503), r.text
                last = r.json()
                if r.status_code == 200:
                    return last
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready after {timeout}s: {last}\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-6000:]

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def secret(self, name: str) -> str:
        """A secret the hub keeps encrypted under var/secrets, read with the hub's key."""
        box = SecretBox.from_settings(Settings(var_dir=self.var_dir))
        return read_secret(self.var_dir / "secrets" / name, box, migrate=False)

    def db_url(self) -> str:
        return f"postgresql://xlhub:{quote(self.secret('pg_password'), safe='')}@127.0.0.1:{self.ports['pg']}/xlhub"


REFUSED_FROM = "127.0.0.77"


def mqtt_login(port: int, username: str, password: str, source: str) -> bool:
    """One login with paho from ``source``; True when the broker accepted it."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"run-test-{time.time_ns()}", protocol=paho.MQTTv5)
    c.username_pw_set(username, password)
    answered, codes = threading.Event(), []
    c.on_connect = lambda client, userdata, flags, rc, props: (codes.append(rc), answered.set())
    c.connect("127.0.0.1", port, bind_address=source)
    c.loop_start()
    try:
        assert answered.wait(10), "the broker did not answer"
        return not codes[0].is_failure
    finally:
        c.disconnect()
        c.loop_stop()


def refused_logins(hub: Hub) -> list[dict]:
    with psycopg.connect(hub.db_url(), row_factory=dict_row) as conn:
        return conn.execute("SELECT action, outcome, detail FROM audit_log WHERE source_ip = %s",
                            (REFUSED_FROM,)).fetchall()


@pytest.fixture(scope="module")
def passwords():
    site = load_site(DEMO_SITE_FILE)
    return {u.password_env: f"Run-test-{i}-pw" for i, u in enumerate(site.users) if u.password_env}


def test_run_reaches_ready_moves_demo_data_and_stops_cleanly(tmp_path, passwords):
    hub = Hub(tmp_path / "var", passwords)
    started = time.monotonic()
    hub.start()
    try:
        ready = hub.wait_ready()
        print(f"first start ready in {time.monotonic() - started:.1f}s")
        db = ready["checks"]["database"]
        assert (db["timescaledb"], db["license"]) == ("2.19.3", "apache")
        assert ready["checks"]["broker"]["ready"]
        workers = ready["checks"]["workers"]["workers"]
        assert {"ingest", "alerts", "devices", "cameras-0", "gb28181"} <= set(workers) and all(w["ready"] for w in workers.values())

        site = load_site(DEMO_SITE_FILE)
        admin = next(u for u in site.users if str(u.role) == "admin")
        r = httpx.post(f"{hub.base}/api/auth/login", json={"username": admin.username,
                                                           "password": passwords[admin.password_env], "token": True})
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        # the site's cameras, and (once its catalog is in) the demo GB/T 28181 device's channel
        listed = {c["id"] for c in httpx.get(f"{hub.base}/api/cameras", headers=auth).json()}
        assert {c.id for c in site.cameras} <= listed and listed - {c.id for c in site.cameras} <= {GB_CAMERA}
        assert "xlhub_" in httpx.get(f"{hub.base}/metrics").text or httpx.get(f"{hub.base}/metrics").status_code == 200

        # demo devices → broker → ingest → TimescaleDB, and camera health from the RTSP demo cameras
        # and from the demo GB/T 28181 camera (demo-gb28181 → the gb28181 process → cameras-0)
        deadline = time.monotonic() + 60
        counts = {}
        while time.monotonic() < deadline:
            with psycopg.connect(hub.db_url()) as conn:
                counts = dict(zip(("telemetry", "positions", "camera_health", "gb_camera"), conn.execute(
                    """SELECT (SELECT count(*) FROM device_telemetry), (SELECT count(*) FROM device_positions),
                              (SELECT count(*) FROM camera_health WHERE state = 'online'),
                              (SELECT count(*) FROM camera_health WHERE state = 'online' AND camera_id = %s)""",
                    (GB_CAMERA,)).fetchone()))
            if all(counts.values()):
                break
            time.sleep(1)
        assert all(counts.values()), counts

        # a supervisor's flag stores a snapshot: evidence on disk, with faces and plates in it
        camera = site.cameras[0].id
        r = httpx.post(f"{hub.base}/api/cameras/{camera}/flags", headers=auth, timeout=60,
                       json={"frame_time": datetime.now(UTC).isoformat(), "category": "治安防控"})
        assert r.status_code == 201, r.text
        assert r.json()["evidence"], r.json()

        # 摄像机管理 applied live: a camera added through the API is read by the running
        # cameras-0 process and reported online, without a restart; retired, it is dropped
        with psycopg.connect(hub.db_url()) as conn:
            url = conn.execute("SELECT rtsp_url FROM cameras WHERE id = %s", (site.cameras[1].id,)).fetchone()[0]
        added = time.monotonic()
        r = httpx.post(f"{hub.base}/api/cameras", headers=auth, timeout=30, json={
            "id": "cam-run-added", "name": "运行中新增摄像机", "grid": site.cameras[1].grid, "rtsp_url": url,
            "credentials": site.cameras[1].credentials})
        assert r.status_code == 201, r.text

        def reported(state: str) -> bool:
            with psycopg.connect(hub.db_url()) as conn:
                return bool(conn.execute("SELECT 1 FROM camera_health WHERE camera_id = 'cam-run-added' AND state = %s",
                                         (state,)).fetchone())
        deadline = time.monotonic() + 45
        while not reported("online") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert reported("online"), "a camera added through the API never came online in the running hub"
        print(f"camera added through the API online in the running hub after {time.monotonic() - added:.1f}s")
        assert httpx.delete(f"{hub.base}/api/cameras/cam-run-added", headers=auth, timeout=30).status_code == 200

        def worker_cameras() -> int:
            with psycopg.connect(hub.db_url()) as conn:
                return conn.execute("SELECT detail->'cameras' FROM worker_heartbeats WHERE name = 'cameras-0'"
                                    ).fetchone()[0]
        deadline = time.monotonic() + 20
        while worker_cameras() != len(site.cameras) + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker_cameras() == len(site.cameras) + 1, "the retired camera is still run by cameras-0"

        # a refused broker login is on record (the supervisor follows the broker's log)
        assert not mqtt_login(hub.ports["mqtt_devices"], "door-dsc", "not-its-password", source=REFUSED_FROM)
        deadline = time.monotonic() + 15
        while not refused_logins(hub) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [(r["action"], r["outcome"], r["detail"]["listener"]) for r in refused_logins(hub)] == \
            [("mqtt.refused", "denied", "devices")]
    finally:
        code = hub.stop(signal.SIGTERM)
    assert code == 0, hub.output()
    assert_private(hub.var_dir)
    assert not [name for name, p in hub.ports.items() if port_open(p)], "a server outlived the hub"
    assert "hub stopped" in hub.output()

    # second start: cluster and broker config already exist
    again = time.monotonic()
    hub.start()
    try:
        hub.wait_ready()
        print(f"second start ready in {time.monotonic() - again:.1f}s")
        assert "created embedded PostgreSQL" not in hub.output().split("hub stopped")[-1]
        assert "initial password" not in hub.output().split("hub stopped")[-1]
        time.sleep(2)                                   # two polls of the broker's log at least
        assert len(refused_logins(hub)) == 1            # the old log is not recorded again
    finally:
        assert hub.stop(signal.SIGINT) == 0
    assert not any(port_open(p) for p in hub.ports.values())
