"""The process plumbing every long-running process shares (store/): reconnect schedules,
the LISTEN loop and heartbeats, against the real PostgreSQL of the session."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg

from store.backoff import CAMERA, DATABASE, Backoff, Schedule
from store.listen import Listener
from store.sources import SourceCache
from store.workers import beat, heartbeats


def test_schedules_and_backoff():
    assert DATABASE.steps == (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
    assert [CAMERA.delay(n) for n in range(0, 7)] == [1, 1, 5, 10, 60, 60, 60]
    b = Backoff(Schedule((1.0, 3.0)))
    assert [b.next(), b.next(), b.next()] == [1.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 1.0


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_listener_delivers_notifications_and_catches_up_after_losing_its_connection(db_url):
    got: list[tuple[str, str]] = []
    connects: list[float] = []
    lost: list[str] = []
    stop = threading.Event()
    listener = Listener(db_url, ["xlhub_test_a", "xlhub_test_b"], lambda ch, payload: got.append((ch, payload)),
                        name="xlhub-test-listen", on_connect=lambda: connects.append(time.monotonic()),
                        on_lost=lambda exc: lost.append(type(exc).__name__), poll_s=0.2)
    thread = listener.start(stop)
    try:
        assert listener.listening.wait(10) and len(connects) == 1
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('xlhub_test_a', 'one'), pg_notify('xlhub_test_b', 'two')")
            assert _wait(lambda: len(got) == 2), got
            assert sorted(got) == [("xlhub_test_a", "one"), ("xlhub_test_b", "two")]
            # The connection is killed under it: it says so, comes back, and runs on_connect
            # again (what was notified meanwhile is looked for by the caller then).
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'xlhub-test-listen'")
            assert _wait(lambda: len(connects) == 2), "no reconnect"
            assert lost and listener.listening.is_set()
            conn.execute("SELECT pg_notify('xlhub_test_a', 'three')")
            assert _wait(lambda: ("xlhub_test_a", "three") in got)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and not listener.listening.is_set()


def test_heartbeats_upsert_one_row_per_worker(db_url):
    started = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        beat(conn, "test-worker", "tests", started, {"ready": True, "n": 1})
        beat(conn, "test-worker", "tests", started, {"ready": False, "n": 2})
        rows = heartbeats(conn, "tests")
    assert len(rows) == 1 and rows[0]["detail"] == {"ready": False, "n": 2} and rows[0]["age_s"] < 5


def test_source_cache_reads_the_registry_with_current_grids(site_db):
    cache = SourceCache()
    with psycopg.connect(site_db) as conn:
        cache.refresh(conn)
    door = cache.get("door-dsc")
    cam = cache.get("cam-dsc-01")
    assert door.kind == "door" and door.active and door.grid_code == "510199101201001"
    assert door.grid_path[-1] == door.grid_code and door.grid_path[0] == "510199000000"   # the county
    assert cam.kind == "camera" and cam.name and cam.lat is not None
    assert cache.kind_of("nobody") is None and cache.kind_of("door-dsc") == "door"
