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
    assert tables == {"events", "device_telemetry", "device_positions", "camera_health", "dead_letters",
                      "recording_segments"}
    assert set(RETAINED_TABLES) <= tables
    # "one device, recent window" and "one grid, time range"
    assert {"device_telemetry_device", "device_telemetry_grid", "events_source", "events_grid",
            "recording_segments_seq"} <= indexes


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


def test_0005_moves_alert_broadcasts_to_the_devices_layer_and_back(pg):
    """Broadcasts alerts made before 0005 become device broadcasts with receipts, linked to
    their case; an unanswered delivery is closed, not left open for nobody to follow."""
    url = create_database(pg, migrate=False)
    migrate.upgrade(url, "0004")
    with connect(url) as conn:
        conn.execute("""INSERT INTO grid_nodes (code, name, level, parent_code, path) VALUES
                        ('c', '县', 'county', NULL, ARRAY['c']), ('t', '镇', 'township', 'c', ARRAY['c','t']),
                        ('v', '村', 'village', 't', ARRAY['c','t','v']), ('g', '网格', 'grid', 'v', ARRAY['c','t','v','g'])""")
        conn.execute("""INSERT INTO cases (id, number, title, category, urgency, channel, state, grid_code, grid_path,
                            owner_code, owner_path, created_at, created_by, sla, due_at)
                        VALUES ('case1', 'XL1', '预警', 'hazard', 'high', 'cap', 'registered', 't', ARRAY['c','t'], 't',
                                ARRAY['c','t'], now(), 'cap', '{}', now() + interval '1 day')""")
        conn.execute("""INSERT INTO broadcasts (id, case_id, requested_by, area_codes, area_path, kind, message, repeat,
                            status, reported_at, report)
                        VALUES ('b-done', 'case1', 'cap:x', ARRAY['t'], ARRAY['c','t'], 'emergency', '山洪预警', 2,
                                'done', now(), '{"status": "done"}'),
                               ('b-open', 'case1', 'system:rule:radio-sos', ARRAY['v'], ARRAY['c','t','v'], 'notice',
                                '注意', 1, 'sent', NULL, NULL)""")
        conn.execute("""INSERT INTO broadcast_deliveries (broadcast_id, speaker_id, grid_code, command_id, status, sent_at)
                        VALUES ('b-done', 's1', 'g', 'bc-1', 'finished', now()), ('b-done', 's2', 'g', 'bc-2', 'finished', now()),
                               ('b-open', 's1', 'g', 'bc-3', 'finished', now()), ('b-open', 's2', 'g', 'bc-4', 'sent', now())""")
        conn.execute("""INSERT INTO cap_alerts (id, sender, identifier, msg_type, status, sha256, xml, case_id,
                            broadcast_id, imported_by) VALUES ('cap1', 'w', 'x', 'Alert', 'Actual', 'h', '<alert/>',
                            'case1', 'b-done', 't')""")
        conn.commit()
    migrate.upgrade(url, "0005")
    with connect(url) as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM device_broadcasts ORDER BY id")}
        assert (rows["b-done"]["state"], rows["b-done"]["priority"], rows["b-done"]["text"]) == ("done", 9, "山洪预警")
        assert (rows["b-open"]["state"], rows["b-open"]["priority"], rows["b-open"]["targets"]) == ("partial", 5, ["v"])
        receipts = {(r["broadcast_id"], r["speaker_id"]): r for r in conn.execute("SELECT * FROM device_broadcast_receipts")}
        assert receipts[("b-open", "s2")]["status"] == "expired" and receipts[("b-open", "s1")]["status"] == "finished"
        assert receipts[("b-done", "s1")]["village_code"] == "v" and receipts[("b-done", "s1")]["grid_path"] == ["c", "t", "v", "g"]
        links = {r["broadcast_id"]: r for r in conn.execute("SELECT * FROM case_broadcasts")}
        assert links["b-done"]["case_id"] == "case1" and links["b-done"]["reported_at"] is not None
        assert links["b-open"]["reported_at"] is None               # its report is attached by the engine
        assert conn.execute("SELECT to_regclass('broadcasts') AS t").fetchone()["t"] is None
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("UPDATE cap_alerts SET broadcast_id = 'nope'")
        conn.rollback()
    migrate.downgrade(url, "0004")
    with connect(url) as conn:
        back = {r["id"]: r for r in conn.execute("SELECT * FROM broadcasts")}
        assert back["b-done"]["status"] == "done" and back["b-open"]["status"] == "partial"
        assert {r["status"] for r in conn.execute("SELECT status FROM broadcast_deliveries WHERE broadcast_id = 'b-open'")} \
            == {"finished", "no_answer"}
        assert conn.execute("SELECT broadcast_id FROM cap_alerts").fetchone()["broadcast_id"] == "b-done"
    migrate.upgrade(url)
