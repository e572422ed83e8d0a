"""The audit chain verifies, and every kind of tampering is detected."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from store.audit import AuditEntry, record, verify
from store.db import connect
from tests.conftest import create_database


@pytest.fixture()
def audit_db(pg):
    url = create_database(pg)
    with connect(url) as conn:
        for i in range(20):
            record(conn, AuditEntry(actor=f"user{i % 3}", actor_kind="user", action="test.write", target=f"t{i}",
                                    detail={"n": i, "text": "村 ' ; DROP TABLE users; --"}))
    return url


def _superuser_edit(url: str, sql: str) -> None:
    """What an intruder with database superuser rights would do: silence the trigger and edit."""
    with connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # skips ordinary triggers
        conn.execute(sql)


def test_chain_verifies(audit_db):
    with connect(audit_db) as conn:
        report = verify(conn)
    assert report.ok and report.records == 20


def test_concurrent_writers_keep_one_valid_chain(audit_db):
    def write(n):
        with connect(audit_db) as conn:
            for i in range(10):
                record(conn, AuditEntry(actor=f"w{n}", actor_kind="system", action="test.concurrent", detail={"i": i}))
                conn.commit()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    with connect(audit_db) as conn:
        report = verify(conn)
    assert report.ok and report.records == 60


def test_modified_record_is_detected(audit_db):
    _superuser_edit(audit_db, "UPDATE audit_log SET outcome = 'denied' WHERE id = 7")
    with connect(audit_db) as conn:
        report = verify(conn)
    assert not report.ok and report.broken_at == 7 and "modified" in report.reason


def test_deleted_record_is_detected(audit_db):
    _superuser_edit(audit_db, "DELETE FROM audit_log WHERE id = 12")
    with connect(audit_db) as conn:
        report = verify(conn)
    assert not report.ok and report.broken_at == 13 and "removed" in report.reason


def test_rehashed_forgery_breaks_the_next_link(audit_db):
    # A forger who recomputes the edited row's own hash still breaks the following link.
    _superuser_edit(audit_db, "UPDATE audit_log a SET actor = 'nobody' WHERE id = 5; "
                              "UPDATE audit_log a SET hash = audit_digest(a) WHERE id = 5")
    with connect(audit_db) as conn:
        report = verify(conn)
    assert not report.ok and report.broken_at == 6


def test_cli_audit_verify_reports_tampering(audit_db, monkeypatch, capsys):
    from hub.cli import main

    monkeypatch.setenv("XLHUB_DATABASE_URL", audit_db)
    with pytest.raises(SystemExit) as ok:
        main(["audit", "verify"])
    assert ok.value.code == 0 and "OK: 20 records" in capsys.readouterr().out
    _superuser_edit(audit_db, "UPDATE audit_log SET detail = '{}' WHERE id = 3")
    with pytest.raises(SystemExit) as broken:
        main(["audit", "verify"])
    assert broken.value.code == 1 and "BROKEN at record 3" in capsys.readouterr().err
