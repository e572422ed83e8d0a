"""SLA clocks with short test limits: a case warns at 80 %, turns overdue, is supervised
(督办) and escalated (上报) by the hub — one level per late stage, up to the county — and
the whole case turns overdue when its total limit passes; every mark is in the archive
and goes to the case system."""
from __future__ import annotations

import pytest

from alerts.actor import Actor
from alerts.cases import service as cases
from store.db import connect
from store.registry import sync_site
from tests.alerts.conftest import EngineRunner, Receiver, insert_event, one, query, wait_for, write_site

SHORT = {"warn_at": 0.8, "default": {"total": "72h"},
         "limits": [{"category": "治安防控", "urgency": "严重", "total": "4s", "auto_escalate": True,
                     "stages": {"accept": "1s", "dispatch": "1s"}}]}


@pytest.fixture(scope="module")
def setup(db_url, demo_site, mqtt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sla")
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
    receiver = Receiver(tmp).start()
    site = write_site(tmp / "site.yaml", receiver_url=receiver.url, sla=SHORT)
    try:
        with EngineRunner(db_url, mqtt.url, site, scan_interval_s=0.1):
            yield db_url, receiver
    finally:
        receiver.stop()


def test_late_case_is_supervised_escalated_and_overdue(setup):
    db, receiver = setup
    insert_event(db, "door-tyc", "door.forced_open")
    case = wait_for(lambda: one(db, "SELECT c.* FROM cases c JOIN alarms a ON a.id = c.alarm_id "
                                    "WHERE a.source_id = 'door-tyc'"), what="the case")
    assert case["owner_code"] == "510199101000" and case["stage"] == "accept"
    assert (case["due_at"] - case["created_at"]).total_seconds() == pytest.approx(4)
    # one second later the accept stage is late: supervised and escalated to the county
    escalated = wait_for(lambda: (c := one(db, "SELECT * FROM cases WHERE id = %s", (case["id"],)))["owner_code"]
                         == "510199000000" and c, timeout=5, what="the automatic escalation")
    assert escalated["escalations"] == 1 and escalated["supervisions"] >= 1 and escalated["state"] == "reported"
    # the county gets the stage afresh; late again it cannot go higher, and at 4 s the case is overdue
    late = wait_for(lambda: (c := one(db, "SELECT * FROM cases WHERE id = %s", (case["id"],)))["overdue"] and c,
                    timeout=8, what="the case overdue")
    assert late["owner_code"] == "510199000000" and late["escalations"] == 1 and late["overdue_at"] is not None
    records = [(r["action"], r["actor"], r["detail"].get("scope") or r["detail"].get("stage"))
               for r in query(db, "SELECT * FROM case_transitions WHERE case_id = %s ORDER BY id", (case["id"],))]
    assert records[:4] == [("create", "system:rule:door-forced", None), ("sla_warning", "system:sla", "stage"),
                           ("stage_overdue", "system:sla", "accept"), ("escalate", "system:sla", None)]
    assert ("sla_warning", "system:sla", "total") in records and ("overdue", "system:sla", None) in records
    assert [r for r in records if r[0] == "escalate"] == [("escalate", "system:sla", None)]
    with connect(db) as conn:
        assert [c["id"] for c in cases.list_cases(conn, Actor.system("test"), overdue=True)] == [case["id"]]

    def overdue_sent():
        return [d for d in receiver.deliveries() if d["case_id"] == case["id"] and d["event"] == "case.sla"
                and d["payload"]["transition"]["action"] == "overdue"]
    sent = wait_for(overdue_sent, what="the overdue mark at the case system")
    assert sent[0]["payload"]["case"]["overdue"] is True
