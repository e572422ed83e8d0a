"""The schema: migrations apply on a real TimescaleDB, the hypertables exist, retention
drops only old chunks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from config.settings import RetentionSettings
from store import migrate
from store.db import connect, timescaledb_info
from store.retention import RETAINED_TABLES, apply_retention
from tests.conftest import create_database


def test_timescaledb_is_the_apache_build_of_2_19_3(db_url):
    with connect(db_url) as conn:
        info = timescaledb_info(conn)
    assert info == {"version": "2.19.3", "license": "apache"}


def test_upgrade_creates_hypertables_with_their_indexes(db_url):
    with connect(db_url) as conn:
        tables = {r["hypertable_name"] for r in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        indexes = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert tables == {"events", "device_telemetry", "device_positions", "camera_health", "dead_letters"}
    assert set(RETAINED_TABLES) <= tables
    # "one device, recent window" and "one grid, time range"
    assert {"device_telemetry_device", "device_telemetry_grid", "events_source", "events_grid"} <= indexes


def test_upgrade_is_idempotent_and_downgrade_round_trips(pg):
    url = create_database(pg)
    assert migrate.current_revision(url) == migrate.head_revision()
    migrate.upgrade(url)  # nothing to do, no error
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    with connect(url) as conn:
        assert conn.execute("SELECT to_regclass('events') AS t").fetchone()["t"] is None
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_migration_failure_names_the_database_without_its_password(pg):
    bad = pg.url.replace(pg.password, "not-the-password")
    with pytest.raises(Exception) as err:
        migrate.upgrade(bad)
    assert "not-the-password" not in str(err.value)


def test_retention_drops_old_chunks_and_keeps_recent_rows(db_url):
    now = datetime.now(timezone.utc)
    with connect(db_url) as conn:
        for age_days in (100, 40, 1):
            conn.execute(
                "INSERT INTO device_telemetry (time, device_id, kind, data) VALUES (%s, 'door-x', 'door', '{}')",
                (now - timedelta(days=age_days),))
            conn.execute(
                "INSERT INTO events (time, id, source_kind, source_id, type) VALUES (%s, %s, 'device', 'door-x', 'door.opened')",
                (now - timedelta(days=age_days), f"ev{age_days}"))
        conn.commit()
        dropped = {d.table: d for d in apply_retention(conn, RetentionSettings(device_telemetry_days=30, events_days=365))}
        conn.commit()
        remaining = [r["age"] for r in conn.execute(
            "SELECT extract(day FROM now() - time)::int AS age FROM device_telemetry ORDER BY time")]
        events = conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]
    assert len(dropped["device_telemetry"].chunks) == 2
    assert remaining == [1]
    assert events == 3 and dropped["events"].chunks == []


def test_audit_log_refuses_update_delete_and_truncate(db_url):
    from store.audit import AuditEntry, record

    with connect(db_url) as conn:
        record(conn, AuditEntry(actor="t", actor_kind="system", action="test.append"))
        conn.commit()
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
            conn.rollback()
