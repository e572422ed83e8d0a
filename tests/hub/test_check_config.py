"""`xlhub check-config` names every problem and exits non-zero; the hub refuses to start."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from config.settings import DEMO_SITE_FILE


def xlhub(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_site_is_valid():
    res = xlhub("check-config", str(DEMO_SITE_FILE))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout and "4 cameras" in res.stdout


def broken_site(tmp_path):
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    data["grid"]["children"][1]["code"] = data["grid"]["children"][0]["code"]      # duplicate grid code
    data["cameras"][0]["grid"] = "999999999999"                                      # unknown grid
    data["cameras"][1]["rtsp_url"] = "http://"                                       # bad URL
    data["cameras"][2]["rtsp_url"] = "rtsp://admin:Secret-pw-1@127.0.0.1/x"         # password in URL
    data["devices"][0]["kind"] = "toaster"                                           # unknown kind
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_broken_site_names_every_problem(tmp_path):
    path = broken_site(tmp_path)
    res = xlhub("check-config", str(path))
    assert res.returncode == 1
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    text = res.stdout
    assert "duplicate" in text and "999999999999" in text and "cameras[1].rtsp_url" in text
    assert "cameras[2].rtsp_url" in text and "devices[0].kind" in text
    assert "Secret-pw-1" not in text + res.stderr
    assert all(line.startswith(f"{path}:") for line in lines)
    assert "problem(s)" in res.stderr


def test_hub_refuses_to_start_on_an_invalid_site_file(tmp_path):
    path = broken_site(tmp_path)
    res = xlhub("run", "--site", str(path), env={"XLHUB_VAR_DIR": str(tmp_path / "var")})
    assert res.returncode == 2
    assert "refusing to start" in res.stderr and "999999999999" in res.stderr
    assert not (tmp_path / "var" / "pg").exists(), "nothing was started"


def test_cameras_discover_probes_and_reports(tmp_path):
    # On loopback-only machines nothing answers; the command must still finish, show its
    # progress and say so, rather than hang or crash.
    res = xlhub("cameras", "discover", "--timeout", "1", timeout=30)
    assert res.returncode == 0, res.stderr
    assert "ONVIF" in res.stdout
