"""The hub as the benchmarks run it: an embedded PostgreSQL with the demo site (every demo
user's password set to one known to the bench: ``start_demo_db``, shared by bench/api,
bench/ui, bench/playback and bench/recording_frame), and ``python -m hub.process api`` in its
own process, as `xlhub run` starts it (``demo_api``: bench/api and bench/ui)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.settings import DEMO_SITE_FILE  # noqa: E402
from config.site import load_site  # noqa: E402
from hub.embedded import EmbeddedPostgres, free_port  # noqa: E402
from store import identity, migrate  # noqa: E402
from store.db import connect  # noqa: E402
from store.registry import sync_site  # noqa: E402

PASSWORD = "Bench-pass-2026"


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until ``url`` answers below 500; the server's exit or the timeout ends the bench."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def start_demo_db(var_dir: Path) -> tuple[EmbeddedPostgres, object]:
    """A started embedded PostgreSQL (the caller stops it), migrated, with the demo site and
    every demo user's password PASSWORD; and the demo site."""
    pg = EmbeddedPostgres(var_dir, free_port())
    pg.start()
    migrate.upgrade(pg.url)
    site = load_site(DEMO_SITE_FILE)
    with connect(pg.url) as conn:
        sync_site(conn, site)
        for u in site.users:
            identity.set_password(conn, u.username, PASSWORD)
            conn.execute("UPDATE users SET must_change_password = false WHERE username = %s", (u.username,))
    return pg, site


@dataclass
class DemoApi:
    base: str              # http://127.0.0.1:PORT
    db_url: str
    site: object           # config.site.Site of the demo
    tmp: Path              # removed afterwards: other servers of the bench may live here


@contextmanager
def demo_api(prefix: str, env_extra: dict[str, str] | None = None) -> Iterator[DemoApi]:
    """The API on plain HTTP on loopback (a secure context for a browser all the same: the
    figures are the API's and the UI's, not TLS's — bench/tls measures that)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    pg = None
    proc = None
    try:
        pg, site = start_demo_db(tmp / "var")
        port = free_port()
        (tmp / "metrics").mkdir()
        env = {**os.environ, "XLHUB_DATABASE_URL": pg.url, "XLHUB_HTTP_PORT": str(port), "XLHUB_HTTPS": "false",
               "XLHUB_VAR_DIR": str(tmp / "var"), "XLHUB_LOG_LEVEL": "WARNING",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"), **(env_extra or {})}
        env.pop("XLHUB_MQTT_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "hub.process", "api"], cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", proc)
        yield DemoApi(base=base, db_url=pg.url, site=site, tmp=tmp)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.stop(immediate=True)
        shutil.rmtree(tmp, ignore_errors=True)
