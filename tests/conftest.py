"""Session-wide real peers: a private PostgreSQL+TimescaleDB cluster and a private
Mosquitto, each on a free loopback port, torn down at the end of the session.

Fixtures here are shared by every test package; tests that need a clean database take
`db` (a fresh database per test module, migrated) instead of the session one."""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from hub.embedded import RELOCATED_ROOT, EmbeddedMosquitto, EmbeddedPostgres, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT_ROOT / "artifacts"


@pytest.fixture(scope="session")
def var_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session")
def pg(var_dir):
    server = EmbeddedPostgres(var_dir, free_port())
    server.start()
    yield server
    server.stop(immediate=True)  # throwaway cluster: no shutdown checkpoint to wait for


@pytest.fixture(scope="session")
def mqtt(var_dir):
    broker = EmbeddedMosquitto(var_dir, free_port())
    broker.start()
    yield broker
    broker.stop()


def create_database(pg: EmbeddedPostgres, migrate: bool = True) -> str:
    """A new, empty (optionally migrated) database on the session cluster; returns its URL."""
    from store import migrate as migrations

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    if migrate:
        migrations.upgrade(url)
    return url


@pytest.fixture(scope="module")
def db_url(pg) -> str:
    return create_database(pg)


@pytest.fixture(scope="session")
def demo_site():
    from config.settings import DEMO_SITE_FILE
    from config.site import load_site

    return load_site(DEMO_SITE_FILE)


@pytest.fixture(scope="module")
def site_db(db_url, demo_site) -> str:
    """A module's database with the demo site's grid, cameras, devices and users in it."""
    from store.db import connect
    from store.registry import sync_site

    with connect(db_url) as conn:
        sync_site(conn, demo_site)
    return db_url


@pytest.fixture(scope="session")
def demo_passwords() -> dict[str, str]:
    """Passwords for the demo site's users, given through their password_env variables."""
    from config.settings import DEMO_SITE_FILE
    from config.site import load_site

    site = load_site(DEMO_SITE_FILE)
    out = {}
    for user in site.users:
        pw = "Pw-" + secrets.token_urlsafe(9)
        if user.password_env:
            os.environ[user.password_env] = pw
            out[user.username] = pw
    return out


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def logs():
    """Every log line of the test (DEBUG and up), formatted: to assert what is never logged."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


def pytest_sessionfinish(session, exitstatus) -> None:
    """The embedded servers of a var/ that PostgreSQL's or Mosquitto's user cannot reach keep
    their data in /var/lib/xlhub/<hash> (hub/embedded.service_dir), outside pytest's temporary
    directories: remove those of this session's var dirs, or every run leaves ~1 GB behind."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except Exception:                     # no temporary directory was made
        return
    for link in base.rglob("*"):
        if not link.is_symlink():
            continue
        target = Path(os.readlink(link))
        if target.is_absolute() and RELOCATED_ROOT in target.parents and target.parent.parent == RELOCATED_ROOT:
            shutil.rmtree(target.parent, ignore_errors=True)
