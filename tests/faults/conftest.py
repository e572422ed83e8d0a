"""Fixtures of the fault-injection tests: a database seeded with the demo site, and
private servers (broker, PostgreSQL) that a test may kill without disturbing the rest of
the session."""
from __future__ import annotations

import pytest

from hub.embedded import EmbeddedMosquitto, EmbeddedPostgres, free_port
from store.db import connect
from store.registry import sync_site
from tests.conftest import create_database


def seed(url: str, site) -> str:
    with connect(url) as conn:
        sync_site(conn, site)
    return url


@pytest.fixture(scope="module")
def fault_db(pg, demo_site) -> str:
    """A fresh migrated database on the session cluster with the demo site's registry."""
    return seed(create_database(pg), demo_site)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """A private Mosquitto (same config as the hub's embedded one) the test may kill."""
    broker = EmbeddedMosquitto(tmp_path_factory.mktemp("broker-var"), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory):
    """A private PostgreSQL+TimescaleDB cluster the test may stop and start."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg-var"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def figures(artifacts_dir):
    """Record measured figures: printed and kept in artifacts/reliability.json (docs/reliability.md
    quotes them)."""
    import json
    import time

    path = artifacts_dir / "reliability.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}

    def put(name: str, **values) -> None:
        values["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        data[name] = values
        print(f"\n[figures] {name}: {json.dumps(values, ensure_ascii=False)}")
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True))
    return put
