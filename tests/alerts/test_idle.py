"""An idle alerts worker costs close to nothing: it sleeps until a notification or a
deadline wakes it. The outbox's statement-level trigger once notified on every UPDATE,
also the sender's zero-row claims, so the sender woke itself ~1,400 times a second."""
from __future__ import annotations

import time

import psycopg

from tests.alerts.conftest import EngineRunner, write_site


def _transactions(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                            "WHERE datname = current_database()").fetchone()[0]


def test_the_outbox_notifies_only_when_a_message_is_due(site_db):
    with psycopg.connect(site_db, autocommit=True) as listener, psycopg.connect(site_db, autocommit=True) as conn:
        listener.execute("LISTEN xlhub_outbox")
        # The sender's claim when nothing is due: an UPDATE that changes no row.
        conn.execute("UPDATE outbox SET status = 'delivering' WHERE id IN (SELECT id FROM outbox WHERE false)")
        conn.execute("UPDATE outbox SET attempts = attempts WHERE false")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        case = "idle-case"
        conn.execute(
            """INSERT INTO outbox (target, case_id, seq, event, idempotency_key, payload, give_up_at)
               VALUES ('x', %s, 1, 'case.created', 'idle-key', '{}', now() + interval '1 hour')""", (case,))
        assert [n.channel for n in listener.notifies(timeout=2, stop_after=1)] == ["xlhub_outbox"]
        # Delivered: the sender's own result does not wake it again.
        conn.execute("UPDATE outbox SET status = 'delivered', delivered_at = now() WHERE case_id = %s", (case,))
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_an_idle_alerts_worker_sleeps(site_db, mqtt, tmp_path):
    """Nothing to do for five seconds: a handful of statements (the heartbeat, one scan
    and sender look on start), where the busy loop made thousands."""
    with EngineRunner(site_db, mqtt.url, write_site(tmp_path / "site.yaml"), scan_interval_s=10.0):
        time.sleep(1.0)                         # the start-up scans and catch-up
        before = _transactions(site_db)
        time.sleep(5.0)
        made = _transactions(site_db) - before
    assert made < 40, f"{made} transactions in 5 s of an idle alerts worker"
