"""Cascade up against a peer that is not our code: SIPp (Debian's sip-tester) plays the upper
platform — it challenges the hub's REGISTER and checks the digest with its own code, then takes
Keepalive MESSAGEs; with a wrong password it refuses (403) and expects the hub to try again."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cameras.gb28181.cascade import Cascade
from cameras.gb28181.settings import GbSettings
from config.gb28181 import GbSite, GbUpstream
from tests.cameras.gb28181.test_gb28181_sipp import free_udp_port

HERE = Path(__file__).parent / "sipp"
HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
UP_ID, UP_DOMAIN = "51000000002000000001", "5100000000"
SIPP = shutil.which("sipp")
# scripts/setup installs Debian's sip-tester: without it this is a broken set-up, not a skip
assert SIPP, "sipp not found: run scripts/setup (it installs Debian's sip-tester)"


def upper(tmp_path, port: int, password: str) -> subprocess.Popen:
    scenario = tmp_path / "upper_register.xml"
    scenario.write_text((HERE / "upper_register.xml").read_text().replace("UPUSER", HUB_ID).replace("UPPASS", password))
    return subprocess.Popen(
        [SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-s", UP_ID, "-m", "1",
         "-timeout", "25s", "-timeout_error", "-nostdin", "-nd"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(tmp_path))


def cascade(db_url: str, port: int, password: str) -> Cascade:
    up = GbUpstream(sip_id=UP_ID, domain=UP_DOMAIN, host="127.0.0.1", port=port, credentials="upper",
                    keepalive_s=2, keepalive_misses=2, share=["510199000000"])
    gb = GbSite(sip_id=HUB_ID, domain=DOMAIN, upstream=[up])
    settings = GbSettings(host="127.0.0.1", cascade_port=0, cascade_backoff_s=[0.5, 1.0, 2.0], invite_timeout_s=2)
    return Cascade(gb, settings, db_url, password_of=lambda up: (HUB_ID, password), camera_tap=lambda item: None,
                   tap_key=b"k" * 32)


def wait(cond, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    return cond()


def test_registers_with_sipp_digest_keeps_alive_and_notices_the_platform_gone(site_db, tmp_path):
    port = free_udp_port()
    peer = upper(tmp_path, port, "Up-Secret-1")
    time.sleep(0.5)
    c = cascade(site_db, port, "Up-Secret-1").start()
    try:
        t0 = time.monotonic()
        out, _ = peer.communicate(timeout=30)
        assert peer.returncode == 0, out.decode(errors="replace")[-2000:]
        assert time.monotonic() - t0 < 8, "refreshed before the 5 s registration expired"
        st = c.status()["upstream"][UP_ID]
        assert st["registered_at"] is not None and st["last_keepalive_ok"] is not None
        # SIPp is gone: two keepalives unanswered → lost, reason shown, registering again
        lost = wait(lambda: c.status()["upstream"][UP_ID]["reason"], 25)
        assert lost and "心跳未应答" in lost, c.status()
    finally:
        c.stop()


def test_refused_password_shows_the_reason_and_retries_with_backoff(site_db, tmp_path):
    port = free_udp_port()
    peer = upper(tmp_path, port, "Up-Secret-1")
    time.sleep(0.5)
    c = cascade(site_db, port, "wrong-password").start()
    try:
        # SIPp ends its scenario only after a second round (challenge, refusal) came after the first
        out, _ = peer.communicate(timeout=30)
        assert peer.returncode == 0, out.decode(errors="replace")[-2000:]
        st = wait(lambda: (s := c.status()["upstream"][UP_ID])["failures"] >= 2 and s)
        assert st["state"] == "failed" and st["registered_at"] is None
        assert "禁止注册" in st["reason"] and "403" in st["reason"], st
    finally:
        c.stop()
