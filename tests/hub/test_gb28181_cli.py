"""`xlhub gb28181 devices` and `xlhub gb28181 admit` against a real database and a real SIP
server, with a device that is not our code: SIPp (Debian's sip-tester) registers with its own
digest implementation. Refused before admission, it is listed under 未接入设备 with its
attempts; the CLI admits it onto a chosen grid node and prints the password once (audited
with the OS user as actor, as the other xlhub admin commands); SIPp registers with that
password and the list shows it 在线; bad input is refused with a clear message."""
from __future__ import annotations

import getpass
import os
import subprocess
import sys

import pytest

from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.settings import GbSettings
from config.gb28181 import GbSite
from config.settings import DEMO_SITE_FILE, Settings
from store.db import connect
from tests.cameras.gb28181.test_gb28181_sipp import DOMAIN, HERE, HUB_ID, SIPP, free_udp_port
from tests.faults.tools import PROJECT_ROOT

pytestmark = pytest.mark.timeout(240)

DEV = "51019910111320000061"
GRID = "510199101202001"          # 桃园村第一网格


def xlhub(*args: str, db_url: str, var: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "PYTHONPATH": str(PROJECT_ROOT),
           "XLHUB_SITE_FILE": str(DEMO_SITE_FILE), "XLHUB_VAR_DIR": var}
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def hub(site_db, tmp_path_factory):
    var = tmp_path_factory.mktemp("gb-cli-var")
    passwords = GbPasswords.for_settings(Settings(var_dir=var))        # the store the CLI writes
    server = GbServer(GbSite(sip_id=HUB_ID, domain=DOMAIN), GbSettings(host="127.0.0.1", port=0, tcp=False),
                      site_db, passwords, root_code="510199000000")

    async def no_queries(device_id):      # SIPp answers no DeviceInfo/Catalog query
        return None
    server._after_register = no_queries
    server.start()
    yield server, str(var)
    server.stop()


def register(server, password: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [SIPP, f"127.0.0.1:{server.port}", "-sf", str(HERE / "register_keepalive.xml"), "-i", "127.0.0.1",
         "-p", str(free_udp_port()), "-s", DEV, "-set", "hub", HUB_ID, "-set", "domain", DOMAIN, "-m", "1",
         "-timeout", "20s", "-timeout_error", "-nostdin", "-nd", "-au", DEV, "-ap", password],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(HERE.parent))
    out, _ = proc.communicate(timeout=40)
    return proc.returncode, out.decode(errors="replace")


def test_cli_lists_an_unknown_device_admits_it_and_it_registers(hub, site_db):
    server, var = hub
    code, _ = register(server, "guessed-password")
    assert code != 0, "no account yet: SIPp's REGISTER is refused"
    r = xlhub("gb28181", "devices", db_url=site_db, var=var)
    assert r.returncode == 0, r.stderr
    unknown = r.stdout.split("未接入设备", 1)[1]
    lines = [ln for ln in unknown.splitlines() if ln.startswith(DEV)]
    assert len(lines) == 1, r.stdout
    line = lines[0]
    assert "UDP 127.0.0.1:" in line and "设备未准入" in line
    assert line.split()[3] == "1", line                  # attempts
    assert DEV not in r.stdout.split("未接入设备", 1)[0]

    r = xlhub("gb28181", "admit", DEV, "--grid", GRID, "--name", "桃园村SIPp", db_url=site_db, var=var)
    assert r.returncode == 0, r.stderr
    assert f"grid {GRID}" in r.stdout
    (pw_line,) = [ln for ln in r.stdout.splitlines() if "shown once" in ln]
    password = pw_line.rsplit(": ", 1)[1].strip()
    assert len(password) >= 12

    code, out = register(server, password)
    assert code == 0, out[-2000:]
    r = xlhub("gb28181", "devices", db_url=site_db, var=var)
    assert r.returncode == 0, r.stderr
    known = r.stdout.split("未接入设备", 1)[0]
    (line,) = [ln for ln in known.splitlines() if ln.startswith(DEV)]
    assert "桃园村SIPp" in line and "在线" in line and "UDP 127.0.0.1:" in line, line
    assert password not in r.stdout                        # printed once, at admission
    with connect(site_db) as conn:
        rows = conn.execute("SELECT actor, actor_kind, detail FROM audit_log WHERE action = 'cli.gb28181.admit' "
                            "AND target = %s", (f"gb28181:{DEV}",)).fetchall()
        dev = conn.execute("SELECT admitted, grid_code, admitted_by FROM gb_devices WHERE id = %s", (DEV,)).fetchone()
    assert [(a["actor"], a["actor_kind"]) for a in rows] == [(getpass.getuser(), "system")]
    assert rows[0]["detail"] == {"name": "桃园村SIPp", "grid": GRID, "generated": True}
    assert dev["admitted"] and dev["grid_code"] == GRID and dev["admitted_by"] == getpass.getuser()


def test_cli_refuses_bad_input_by_name(hub, site_db):
    _server, var = hub
    r = xlhub("gb28181", "admit", "1234", db_url=site_db, var=var)
    assert r.returncode == 1 and "20 位数字" in r.stderr
    r = xlhub("gb28181", "admit", "51019910111320000062", "--grid", "999999", db_url=site_db, var=var)
    assert r.returncode == 1 and "网格 '999999' 不存在" in r.stderr
    with connect(site_db) as conn:
        assert conn.execute("SELECT 1 FROM gb_devices WHERE id = '51019910111320000062'").fetchone() is None
