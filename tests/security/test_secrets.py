"""Secrets (camera credentials, device passwords and signing keys, the database and broker
passwords, people's passwords) are never printed — not in the hub's logs, not in the CLI's
output or errors, not in any API answer, not on a process command line — and are kept at
rest as designed: 0600 files in a 0700 directory, hashed where only a check is needed, and
encrypted with store/secrets.py (Fernet under the master key); the plain files an older hub
left are encrypted at the first start and keep working. A decommissioned device's broker
login ends within seconds, without a restart."""
from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from config.settings import DEMO_SITE_FILE, Settings
from config.site import load_site
from store.secrets import (
    PREFIX,
    SecretBox,
    SecretError,
    derive_key,
    is_encrypted,
    read_json,
    read_or_create_secret,
    read_secret,
    rewrite,
    write_json,
)
from tests.devices.conftest import try_connect
from tests.faults.tools import children, cmdline
from tests.hub.test_run import PROJECT_ROOT, Hub

CAMERA_PASSWORD = "Cam-Secret-7f3a9c"
# What an older hub left in var/secrets: plain 0600 files (made unique per run so a match
# in a log cannot come from anywhere else).
LEGACY = {"pg_password": f"Legacy-pg-{secrets.token_hex(6)}", "door-dsc": f"Legacy-door-{secrets.token_hex(6)}",
          "door-dsc-key": secrets.token_hex(32)}


# --------------------------------------------------------------------------- store/secrets.py
def test_secret_box_round_trip_and_files(tmp_path):
    box = SecretBox.from_settings(Settings(var_dir=tmp_path / "var"))
    secrets_dir = tmp_path / "var" / "secrets"
    value = read_or_create_secret(secrets_dir / "pg_password", box)
    assert read_or_create_secret(secrets_dir / "pg_password", box) == value
    text = (secrets_dir / "pg_password").read_text()
    assert text.startswith(PREFIX) and value not in text
    assert stat.S_IMODE(os.stat(secrets_dir / "pg_password").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(secrets_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(secrets_dir / "master.key").st_mode) == 0o600
    write_json(secrets_dir / "mqtt_devices.json", {"door-dsc": "Door-pw-123"}, box)
    assert read_json(secrets_dir / "mqtt_devices.json", box) == {"door-dsc": "Door-pw-123"}
    assert "Door-pw-123" not in (secrets_dir / "mqtt_devices.json").read_text()
    assert not list(secrets_dir.glob(".*.tmp")), "temporary files left behind"


def test_secret_box_key_from_settings_wrong_key_and_rotation(tmp_path):
    s1 = Settings(var_dir=tmp_path / "var", secret_key=SecretStr("a long master secret for the county hub"))
    s2 = Settings(var_dir=tmp_path / "var", secret_key=SecretStr("another master secret, not the same"))
    box1, box2 = SecretBox.from_settings(s1), SecretBox.from_settings(s2)
    path = tmp_path / "var" / "secrets" / "hook"
    read_or_create_secret(path, box1)
    assert not (tmp_path / "var" / "secrets" / "master.key").exists(), "no key file when the key is configured"
    with pytest.raises(SecretError) as wrong:
        read_secret(path, box2)
    assert "wrong master key" in str(wrong.value) and str(path) in str(wrong.value)
    value = read_secret(path, box1)
    rotated = SecretBox(derive_key("another master secret, not the same"),
                        previous=[derive_key("a long master secret for the county hub")])
    rewrite(path, rotated)
    assert read_secret(path, box2) == value
    with pytest.raises(SecretError):
        derive_key("short")


def test_legacy_plain_files_are_migrated(tmp_path):
    box = SecretBox.from_settings(Settings(var_dir=tmp_path / "var"))
    d = tmp_path / "var" / "secrets"
    (d / "pg_password").write_text("legacy-plain-password\n")
    (d / "mqtt_devices.json").write_text(json.dumps({"door-dsc": "legacy-door-pw"}))
    assert read_secret(d / "pg_password", box) == "legacy-plain-password"
    assert read_json(d / "mqtt_devices.json", box) == {"door-dsc": "legacy-door-pw"}
    assert is_encrypted(d / "pg_password") and is_encrypted(d / "mqtt_devices.json")
    assert "legacy" not in (d / "pg_password").read_text() + (d / "mqtt_devices.json").read_text()


# --------------------------------------------------------------------------- the running hub
def _admin_get_everything(hub: Hub, token: str) -> list[str]:
    """Every GET of the OpenAPI document with the demo's ids, plus a few error answers."""
    out = []
    h = {"Authorization": f"Bearer {token}"}
    spec = httpx.get(f"{hub.base}/openapi.json").json()
    ids = {"camera_id": "cam-dsc-01", "device_id": "door-dsc", "source_id": "cam-dsc-01", "code": "510199101201001",
           "event_id": "x", "evidence_id": "x", "command_id": "x", "broadcast_id": "x", "alarm_id": "x", "case_id": "x",
           "evidence_row": "1", "service_code": "public_order", "service_request_id": "x"}
    with httpx.Client(base_url=hub.base, timeout=20, headers=h) as c:
        for path, ops in spec["paths"].items():
            if "get" not in ops or path.endswith("/feed"):
                continue
            url = path
            for name, value in ids.items():
                url = url.replace("{" + name + "}", value)
            r = c.get(url)
            out.append(f"GET {url} {r.status_code} {dict(r.headers)} {r.text}")
        for path in ("/metrics", "/readyz", "/openapi.json", "/docs"):
            r = c.get(path)
            out.append(r.text)
        out.append(httpx.post(f"{hub.base}/api/auth/login", json={"username": "admin", "password": "wrong-1-pass", "token": True}).text)
        out.append(c.post("/api/auth/password", json={"old_password": "bad-old-1", "new_password": "short"}).text)
        out.append(c.post("/api/users", json={"username": "sec.user", "display_name": "x", "role": "grid_worker",
                                              "node_code": "510199101201"}).text)
    return out


@pytest.fixture(scope="module")
def running_hub(tmp_path_factory):
    site = load_site(DEMO_SITE_FILE)
    passwords = {u.password_env: f"Person-Secret-{i}-q9" for i, u in enumerate(site.users) if u.password_env}
    hub = Hub(tmp_path_factory.mktemp("sec-hub") / "var", passwords)
    hub.env["XLHUB_DEMO_CAMERA_PASSWORD"] = CAMERA_PASSWORD
    old = hub.var_dir / "secrets"
    old.mkdir(parents=True, mode=0o700)
    for name, text in (("pg_password", LEGACY["pg_password"] + "\n"),
                       ("mqtt_devices.json", json.dumps({"door-dsc": LEGACY["door-dsc"]}, indent=1)),
                       ("device_keys.json", json.dumps({"door-dsc": LEGACY["door-dsc-key"]}, indent=1))):
        (old / name).write_text(text)
        os.chmod(old / name, 0o600)
    hub.start()
    try:
        hub.wait_ready(180)
        time.sleep(3)                  # let the demo run: cameras connect, devices publish, workers log
        admin = next(u for u in site.users if str(u.role) == "admin")
        token = httpx.post(f"{hub.base}/api/auth/login",
                           json={"username": admin.username, "password": passwords[admin.password_env], "token": True}).json()["token"]
        answers = _admin_get_everything(hub, token)
        cmdlines = [" ".join(cmdline(p)) for p in [hub.proc.pid, *children(hub.proc.pid)]]
        for p in children(hub.proc.pid):
            cmdlines += [" ".join(cmdline(c)) for c in children(p)]
        yield {"hub": hub, "passwords": passwords, "answers": answers, "cmdlines": cmdlines, "token": token}
    finally:
        hub.stop(signal.SIGTERM)


def _secret_values(var: Path, passwords: dict[str, str]) -> dict[str, str]:
    """Every secret the hub holds, by name (read with the hub's own box when encrypted)."""
    box = SecretBox.from_settings(Settings(var_dir=var))
    d = var / "secrets"
    found = {f"person:{k}": v for k, v in passwords.items()}
    found["camera"] = CAMERA_PASSWORD
    for name in ("pg_password", "mqtt_hub_password"):
        found[name] = read_secret(d / name, box, migrate=False)
    for name in ("mqtt_devices.json", "device_keys.json"):
        if (d / name).exists():
            for dev, value in read_json(d / name, box, migrate=False).items():
                found[f"{name}:{dev}"] = value
    return found


def test_no_secret_in_logs_answers_or_command_lines(running_hub):
    hub = running_hub["hub"]
    secrets_ = _secret_values(hub.var_dir, running_hub["passwords"])
    assert any(k.startswith("mqtt_devices.json") for k in secrets_), "no device passwords issued?"
    hub.log.flush()
    texts = {"hub log (every process)": Path(hub.log.name).read_text(errors="replace"),
             "API answers": "\n".join(running_hub["answers"]),
             "process command lines": "\n".join(running_hub["cmdlines"])}
    for log in [*hub.var_dir.rglob("*.log")]:
        texts[str(log.relative_to(hub.var_dir))] = log.read_text(errors="replace")
    leaks = [f"{name} in {where}" for where, text in texts.items() for name, value in secrets_.items()
             if value and value in text]
    assert not leaks, leaks
    assert "initial password" not in texts["hub log (every process)"], "the demo printed passwords it was given"


def test_secret_files_and_broker_passwords_at_rest(running_hub):
    var = running_hub["hub"].var_dir
    d = var / "secrets"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in d.iterdir():
        if f.is_file():
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    mosq = var / "mosquitto"
    secrets_ = _secret_values(var, running_hub["passwords"])
    for f in mosq.glob("passwd*"):
        text = f.read_text()
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        assert not [n for n, v in secrets_.items() if v in text], f"plain password in {f.name}"
        assert all("$7$" in line for line in text.splitlines() if line.strip()), f"{f.name} not hashed"
    conf = (mosq / "mosquitto.conf").read_text()
    assert "use_username_as_clientid true" in conf, "devices share the hub's listener"


def test_secrets_are_encrypted_at_rest(running_hub):
    var = running_hub["hub"].var_dir
    secrets_ = _secret_values(var, running_hub["passwords"])
    plain = []
    for f in (var / "secrets").iterdir():
        if f.is_file() and f.name != "master.key":
            text = f.read_text(errors="replace")
            plain += [f"{n} in secrets/{f.name}" for n, v in secrets_.items() if v in text]
    assert not plain, plain


def test_plain_secrets_of_an_older_hub_are_encrypted_and_still_used(running_hub):
    hub = running_hub["hub"]
    d = hub.var_dir / "secrets"
    box = SecretBox.from_settings(Settings(var_dir=hub.var_dir))
    assert all(is_encrypted(d / n) for n in ("pg_password", "mqtt_devices.json", "device_keys.json"))
    assert read_secret(d / "pg_password", box) == LEGACY["pg_password"]
    assert read_json(d / "mqtt_devices.json", box)["door-dsc"] == LEGACY["door-dsc"]
    assert read_json(d / "device_keys.json", box)["door-dsc"] == LEGACY["door-dsc-key"]
    assert len(read_json(d / "mqtt_devices.json", box)) > 1, "the other site devices got no credentials"
    # the database was created with the old password, the broker knows the old device password
    assert hub.secret("pg_password") == LEGACY["pg_password"]
    assert try_connect(hub.ports["mqtt_devices"], "door-dsc", LEGACY["door-dsc"])
    key = d / "master.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert not [f.name for f in d.iterdir() if f.is_file() and key.read_text().strip() in f.read_text(errors="replace")
                and f != key], "the master key is copied into a secrets file"


def test_cli_output_holds_no_secret(running_hub):
    """The CLI against the running hub's embedded database, then with a wrong master key:
    answers and errors name files and causes, never values."""
    hub = running_hub["hub"]
    secrets_ = _secret_values(hub.var_dir, running_hub["passwords"])
    env = dict(hub.env)

    def xlhub(*argv: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hub.cli", *argv], cwd=PROJECT_ROOT, env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    runs = {" ".join(a): xlhub(*a) for a in (["migrate"], ["user", "list"], ["audit", "verify"])}
    for name, out in runs.items():
        assert out.returncode == 0, f"xlhub {name}: {out.stderr[-2000:]}"
    assert "schema at revision" in runs["migrate"].stdout and "admin" in runs["user list"].stdout
    wrong = xlhub("migrate", XLHUB_SECRET_KEY="not the key this hub was started with")
    assert wrong.returncode == 1
    assert "wrong master key" in wrong.stderr and "pg_password" in wrong.stderr and "Traceback" not in wrong.stderr
    texts = {f"xlhub {n}": out.stdout + out.stderr for n, out in runs.items()}
    texts["xlhub migrate (wrong key)"] = wrong.stdout + wrong.stderr
    leaks = [f"{name} in {where}" for where, text in texts.items() for name, value in secrets_.items()
             if value and value in text]
    assert not leaks, leaks


def test_decommissioned_device_is_refused_by_the_broker(running_hub):
    """DELETE /api/devices/{id} through the running hub: the supervisor reloads the broker,
    the device's credentials stop working (no restart), the other devices' keep working."""
    hub = running_hub["hub"]
    port = hub.ports["mqtt_devices"]
    box = SecretBox.from_settings(Settings(var_dir=hub.var_dir))
    passwords = read_json(hub.var_dir / "secrets" / "mqtt_devices.json", box, migrate=False)
    gone, kept = passwords["radio-xhc"], passwords["radio-tyc"]
    assert try_connect(port, "radio-xhc", gone)
    r = httpx.delete(f"{hub.base}/api/devices/radio-xhc", headers={"Authorization": f"Bearer {running_hub['token']}"},
                     timeout=20)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 15
    while try_connect(port, "radio-xhc", gone):
        assert time.monotonic() < deadline, "the decommissioned device still logs in to the broker"
        time.sleep(0.5)
    assert "radio-xhc" not in read_json(hub.var_dir / "secrets" / "mqtt_devices.json", box, migrate=False)
    assert try_connect(port, "radio-tyc", kept)
    assert hub.proc.poll() is None
