"""The county's case system is down for hours while cases keep coming; the hub's alerts
worker (a real child process, ``python -m hub.process alerts``) and its delivery outbox
keep every message and retry it with backoff, then deliver everything when the receiver
(tests/alerts/webhook_receiver.py, a real HTTP server process) comes back — and once, the
worker is SIGKILLed in the middle of that delivery and started again.

Hours are compressed, not waited for: the test moves the outbox's clock instead of the
wall clock. ``advance(s)`` moves every scheduling time of the undelivered messages
(``next_attempt_at``, ``lease_until``, ``give_up_at``) back by ``s`` seconds, which is what
the sender would see had ``s`` seconds passed. The sender itself is untouched and runs with
the production retry settings (first 1 s, doubling, at most 1 h apart, give up after 24 h).

The accounting at the end: cases created, messages queued, distinct idempotency keys the
receiver got (= delivered), duplicates it saw (only messages it had answered for the killed
worker), dead letters (0), and per case the order of arrival."""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from alerts.actor import Actor
from alerts.cases import service as cases
from alerts.cases.models import NewCase
from alerts.config import load_config
from store.db import connect
from tests.alerts.conftest import SYSTEM, Receiver, write_site
from tests.faults.tools import Proc, query, scalar, wait_until

CASES = 40                       # × 3 messages each (created, accepted, registered)
OUTAGE_H = 8.0                   # simulated hours the case system is down
FIRST_S, MAX_S, GIVE_UP_S = 1.0, 3600.0, 24 * 3600.0     # config/alerting.py Retry defaults
WEBHOOK_WORKERS = 4              # alerts.worker.AlertsWorker(webhook_workers=4)
RECEIVER_DELAY_S = 0.1           # a slow case system: deliveries are in flight when the worker dies
HOTLINE = Actor(name="hotline", kind="user", role="hotline", node_code="510199000000",
                node_path=("510199000000",))
VILLAGES = ["510199101201001", "510199101202001", "510199201201001", "510199201001001"]


class AlertsProcess(Proc):
    """The hub's alerts worker as its own process (real signals, real crash)."""

    def __init__(self, db_url: str, site: Path, var_dir: Path, log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "hub.process", "alerts"],
                         {"XLHUB_DATABASE_URL": db_url, "XLHUB_SITE_FILE": str(site), "XLHUB_VAR_DIR": str(var_dir),
                          "XLHUB_LOG_LEVEL": "INFO"}, log_path)
        self.env.pop("XLHUB_MQTT_URL", None)          # no camera evidence requests in this test
        self.db_url = db_url

    def wait_ready(self, timeout: float = 40.0) -> None:
        def ready():
            assert self.proc.poll() is None, f"the alerts worker exited:\n{self.log()}"
            rows = query(self.db_url, "SELECT pid, detail FROM worker_heartbeats WHERE name = 'alerts'")
            return rows and rows[0][0] == self.proc.pid and rows[0][1].get("ready")
        wait_until(ready, timeout, "the alerts worker to be ready")


def advance(db: str, seconds: float) -> None:
    """``seconds`` pass for the outbox: its undelivered messages' times move back. Setting
    ``status`` (to itself) fires the outbox trigger, which wakes the sender as a due
    message would."""
    with connect(db) as conn:
        conn.execute(
            """UPDATE outbox SET status = status,
                   next_attempt_at = next_attempt_at - make_interval(secs => %(s)s),
                   lease_until = lease_until - make_interval(secs => %(s)s),
                   give_up_at = give_up_at - make_interval(secs => %(s)s)
               WHERE target = %(t)s AND status IN ('pending', 'delivering')""", {"s": seconds, "t": SYSTEM})


def heads(db: str) -> list[tuple]:
    """The message each case's delivery waits on: (id, status, attempts, seconds until the
    next attempt, seconds between the last attempt and the next)."""
    return query(db, """
        SELECT o.id, o.status, o.attempts, extract(epoch FROM o.next_attempt_at - clock_timestamp()),
               extract(epoch FROM o.next_attempt_at - (SELECT max(a.at) FROM outbox_attempts a
                                                       WHERE a.outbox_id = o.id))
        FROM outbox o
        WHERE o.target = %s AND o.status <> 'delivered'
          AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.target = o.target AND p.case_id = o.case_id
                          AND p.id < o.id AND p.status <> 'delivered')
        ORDER BY o.id""", (SYSTEM,))


def expected_delay(attempts: int) -> float:
    return min(FIRST_S * 2 ** (attempts - 1), MAX_S)


def create_cases(db: str, site: Path) -> list[str]:
    """Hotline intake as the API does it (case and outbox message in one transaction), each
    case then accepted and registered: three messages per case, in this order."""
    cfg = load_config(site)
    ids = []
    with connect(db) as conn:
        for i in range(CASES):
            with conn.transaction():
                case = cases.create_case(conn, cfg, NewCase(
                    title=f"村道路灯不亮 {i}", category="city", urgency="low", channel="hotline",
                    grid_code=VILLAGES[i % len(VILLAGES)], description="热线来电"), HOTLINE)
            for action in ("accept", "register"):
                with conn.transaction():
                    cases.apply(conn, cfg, case["id"], action, HOTLINE)
            ids.append(case["id"])
    return ids


@pytest.fixture
def parts(fault_db, tmp_path):
    receiver = Receiver(tmp_path, delay=RECEIVER_DELAY_S)

    def production_retry(data):
        data["case_systems"][0].pop("retry")        # the defaults: 1 s doubling to 1 h, give up after 24 h
    site = write_site(tmp_path / "site.yaml", receiver_url=receiver.url, mutate=production_retry)
    alerts = AlertsProcess(fault_db, site, tmp_path / "var", tmp_path / "alerts.log")
    yield receiver, site, alerts
    alerts.stop()
    receiver.stop()


def test_case_system_down_for_hours_then_worker_killed_mid_delivery(fault_db, parts, figures):
    receiver, site, alerts = parts
    assert load_config(site).case_systems[SYSTEM].retry.max_interval == timedelta(seconds=MAX_S)
    alerts.start().wait_ready()
    # The case system is down (nothing listens on its port) while the cases come in.
    case_ids = create_cases(fault_db, site)
    keys = {r[0] for r in query(fault_db, "SELECT idempotency_key FROM outbox WHERE target = %s", (SYSTEM,))}
    assert len(keys) == CASES * 3

    # ---- hours of outage, compressed: each round jumps to the moment every waiting message is due
    wait_until(lambda: all(h[2] >= 1 and h[1] == "pending" for h in heads(fault_db)), 30,
               "a first attempt at every case")
    schedule: dict[int, dict[int, float]] = {}            # message → {attempts: seconds to the next}
    simulated = 0.0
    t0 = time.monotonic()
    while simulated < OUTAGE_H * 3600:
        hs = heads(fault_db)
        for mid, _, attempts, _, gap in hs:
            schedule.setdefault(mid, {})[attempts] = float(gap)
        before = {h[0]: h[2] for h in hs}
        step = max(float(h[3]) for h in hs) + 0.05
        advance(fault_db, step)
        simulated += step
        wait_until(lambda before=before: all(h[1] == "pending" and h[2] > before[h[0]] and h[3] > 0
                                             for h in heads(fault_db)),
                   30, f"every case retried after {simulated / 3600:.2f} simulated hours")
    outage_wall_s = time.monotonic() - t0

    hs = heads(fault_db)
    assert len(hs) == CASES and all(h[1] == "pending" for h in hs), "a case's delivery stopped waiting"
    assert scalar(fault_db, "SELECT count(*) FROM outbox WHERE status = 'dead'") == 0, "gave up within 24 h"
    # Later messages of each case wait behind its first, untried: order per case.
    assert scalar(fault_db, "SELECT count(*) FROM outbox WHERE target = %s AND seq > 1 AND attempts > 0",
                  (SYSTEM,)) == 0
    # The schedule: doubling from 1 s, ±10 % jitter, then every hour, never more.
    for mid, gaps in schedule.items():
        for attempts, gap in gaps.items():
            want = expected_delay(attempts)
            assert want * 0.9 - 0.1 <= gap <= want * 1.1 + 0.1, (mid, attempts, gap, want)
    # 1 + 2 + … + 2048 s is 1.1 h; the rest of the outage is spent at the hourly step.
    attempts = sorted(h[2] for h in hs)
    hourly = int((OUTAGE_H * 3600 - 4095 * 1.1) // (MAX_S * 1.1))
    assert attempts[0] >= 12 + hourly, attempts
    assert all(sum(1 for n in schedule[h[0]] if n >= 13) >= hourly for h in hs), "never reached the hourly step"
    long_steps = [g for gaps in schedule.values() for n, g in gaps.items() if n >= 13]
    assert not receiver.deliveries()

    # ---- the case system is back: the next hourly attempt delivers, then each case's backlog follows
    receiver.start()
    back_after = max(float(h[3]) for h in heads(fault_db)) + 0.05
    advance(fault_db, back_after)
    delivered = lambda: scalar(fault_db, "SELECT count(*) FROM outbox WHERE target = %s AND status = 'delivered'",
                               (SYSTEM,))
    # ---- SIGKILL the worker while a delivery is in flight: the receiver has just recorded a
    # message it answers only 0.1 s later (each case's first is delivered, the sender is
    # working through the second ones)
    def posting_now():
        got = receiver.deliveries()
        return len(got) >= CASES + 8 and time.time() - got[-1]["received_at"] < RECEIVER_DELAY_S / 2
    wait_until(posting_now, 30, "the delivery to be under way", interval=0.01)
    alerts.kill()
    in_flight = {r[0] for r in query(fault_db, "SELECT idempotency_key FROM outbox WHERE target = %s "
                                               "AND status = 'delivering'", (SYSTEM,))}
    delivered_at_kill = delivered()
    time.sleep(RECEIVER_DELAY_S * 5)                 # what the receiver was answering is in its log now
    received_before_restart = {d["key"] for d in receiver.deliveries()}
    answered_for_the_dead = in_flight & received_before_restart
    assert delivered_at_kill < len(keys), "the kill came after the delivery"
    assert answered_for_the_dead, "nothing was being delivered at the kill"
    # The dead worker strands only what it was posting (one per webhook worker), for no
    # longer than the case system's timeout (2 s) + the sender's margin (30 s).
    assert len(in_flight) <= WEBHOOK_WORKERS, f"{len(in_flight)} messages held by the dead worker"
    lease_s = max(float(r[0]) for r in query(
        fault_db, "SELECT extract(epoch FROM lease_until - clock_timestamp()) FROM outbox "
                  "WHERE target = %s AND status = 'delivering'", (SYSTEM,)))
    assert lease_s <= 2 + 30, f"stranded for {lease_s:.0f} s"
    alerts.start().wait_ready()
    # What the dead worker had claimed waits for its lease to run out (compressed as well).
    advance(fault_db, lease_s + 0.05)
    t1 = time.monotonic()
    wait_until(lambda: delivered() == len(keys), 60, "every message delivered after the restart")
    drain_s = time.monotonic() - t1
    time.sleep(RECEIVER_DELAY_S * 5)                 # a late duplicate would show now

    # ---- accounting
    got = receiver.deliveries()
    first = [d for d in got if not d["duplicate"]]
    duplicates = [d["key"] for d in got if d["duplicate"]]
    dead = scalar(fault_db, "SELECT count(*) FROM outbox WHERE status = 'dead'")
    figures("case_system_down", cases_created=len(case_ids), messages=len(keys),
            simulated_outage_h=round(simulated / 3600, 2), outage_wall_s=round(outage_wall_s, 1),
            attempts_per_first_message=[attempts[0], attempts[-1]],
            longest_interval_s=round(max(long_steps), 1), redelivered_after_receiver_back_s=round(back_after, 1),
            in_flight_at_kill=len(in_flight), answered_for_the_killed_worker=len(answered_for_the_dead),
            lease_wait_after_kill_s=round(lease_s, 1), drain_after_restart_s=round(drain_s, 1),
            delivered_distinct=len({d["key"] for d in first}), duplicates_at_receiver=len(duplicates),
            dead_letters=dead)
    assert {d["key"] for d in first} == keys and len(first) == len(keys), "lost or doubled by key"
    assert sorted(duplicates) == sorted(answered_for_the_dead), \
        "a duplicate other than a message the killed worker had in flight"
    assert dead == 0
    for case_id in case_ids:
        seqs = [d["seq"] for d in got if d["case_id"] == case_id]
        assert seqs == sorted(seqs) and sorted(set(seqs)) == [1, 2, 3], (case_id, seqs)     # in order per case
    events = [d["event"] for d in first if d["case_id"] == case_ids[0]]
    assert events == ["case.created", "case.transition", "case.transition"]
    assert alerts.proc.poll() is None, alerts.log()
