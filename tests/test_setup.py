"""scripts/setup is idempotent: run again with everything present (make test ran it
just before), every step reports it was already satisfied and apt-get is never run."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup"
TSDB_VERSION = "2.19.3"
PG_LIB = Path("/usr/lib/postgresql/15/lib")
PG_EXT = Path("/usr/share/postgresql/15/extension")

SKIP_LINES = [
    "[setup] apt packages: already installed, skipping",
    f"[setup] timescaledb {TSDB_VERSION}: already installed, skipping",
    "[setup] venv: up to date, skipping",
]


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SETUP), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    took = time.monotonic() - t0
    print(f"scripts/setup {' '.join(args)}: exit {proc.returncode} in {took:.2f}s")
    print(proc.stdout)
    print(proc.stderr)
    return proc, took


def test_second_run_skips_everything_and_never_calls_apt_get(tmp_path):
    # A fake apt-get first on PATH: if setup called it at all, we'd see the marker.
    shim = tmp_path / "bin"
    shim.mkdir()
    marker = tmp_path / "apt-get-called"
    fake = shim / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 97\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")

    proc, took = _run([], env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for expected in SKIP_LINES:
        assert expected in lines, f"missing skip line {expected!r}"
    # every apt-get call is announced as "[setup] running apt-get ..."
    assert not [ln for ln in lines if ln.startswith("[setup] running apt-get")]
    assert not marker.exists(), f"apt-get was invoked: {marker.read_text()}"
    assert re.search(r"^\[setup\] done in [0-9.]+s$", proc.stdout, re.M)
    print(f"warm scripts/setup took {took:.2f}s")


def test_check_reports_nothing_missing():
    proc, _ = _run(["--check"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[setup] check: everything present" in proc.stdout
    assert "missing" not in proc.stdout


def test_timescaledb_2_19_3_installed():
    so = PG_LIB / f"timescaledb-{TSDB_VERSION}.so"
    sql = PG_EXT / f"timescaledb--{TSDB_VERSION}.sql"
    control = PG_EXT / "timescaledb.control"
    assert so.is_file() and so.stat().st_size > 0
    assert (PG_LIB / "timescaledb.so").is_file()  # the version-dispatching loader
    assert sql.is_file() and sql.stat().st_size > 0
    assert re.search(rf"^default_version\s*=\s*'{re.escape(TSDB_VERSION)}'", control.read_text(), re.M)
    # Apache-2 edition: the TSL module is not built
    assert not list(PG_LIB.glob(f"timescaledb-tsl-{TSDB_VERSION}.so"))
