"""The database goes away for 30 s while telemetry and events flow. The ingest worker (a
real child process) keeps every message unacknowledged — the broker holds them in its
persistent session — and says it is not ready; the API keeps answering: /healthz ok,
/readyz 503 with the reason, data endpoints 503 (never a 500). After PostgreSQL comes
back on the same port everything catches up: the accounting balances, no event twice."""
from __future__ import annotations

import threading
import time
import uuid

import httpx

from store.db import connect
from store import identity
from tests.api.conftest import ApiServer
from tests.conftest import create_database
from tests.faults.conftest import seed
from tests.faults.tools import IngestProcess, Publisher, Stream, scalar, settle, wait_until

OUTAGE_S = 30
PASSWORD = "Fault-pass-2026"


class Watcher:
    """Polls /readyz and a data endpoint every 0.5 s and keeps what they answered."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.samples: list[tuple[float, int, int]] = []     # (monotonic, readyz, /api/cameras)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=15, headers={"Authorization": f"Bearer {self.token}"}) as c:
            while not self._stop.wait(0.5):
                try:
                    ready = c.get("/readyz").status_code
                except httpx.HTTPError:
                    ready = -1
                try:
                    data = c.get("/api/cameras").status_code
                except httpx.HTTPError:
                    data = -1
                self.samples.append((time.monotonic(), ready, data))

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)


def test_database_outage_buffers_reports_not_ready_and_catches_up(own_pg, demo_site, mqtt, tmp_path, figures):
    db_url = seed(create_database(own_pg), demo_site)
    with connect(db_url) as conn:
        identity.create_user(conn, username="fault.admin", display_name="故障测试", role="admin",
                             node_code=demo_site.grid.code, password=PASSWORD)
    tag = f"db{uuid.uuid4().hex[:6]}"
    heartbeat = f"ingest-{tag}"
    ingest = IngestProcess(db_url, mqtt.url, tmp_path / "ingest.log", client_id=f"fault-ingest-{tag}",
                           heartbeat=heartbeat).start()
    pub = watcher = None
    try:
        ingest.wait_ready()
        with ApiServer(db_url, mqtt.url, expected_workers=[heartbeat]) as api:
            r = httpx.post(f"{api.base_url}/api/auth/login", json={"username": "fault.admin", "password": PASSWORD, "token": True})
            assert r.status_code == 200, r.text
            wait_until(lambda: httpx.get(f"{api.base_url}/readyz").status_code == 200, 20, "/readyz 200 before")
            pub = Publisher(mqtt.port, "xlhub-hub", mqtt.hub_password)
            stream = Stream(pub, tag, rate=300).start()
            wait_until(lambda: scalar(db_url, "SELECT count(*) FROM device_telemetry WHERE msg_id LIKE %s",
                                      (f"{tag}-t%",)) > 300, 30, "the stream to be stored")
            watcher = Watcher(api.base_url, r.json()["token"]).start()
            time.sleep(2)

            down = time.monotonic()
            own_pg.stop()                            # fast shutdown; the port stays ours
            time.sleep(3)
            during = httpx.get(f"{api.base_url}/readyz", timeout=15)
            assert during.status_code == 503
            assert during.json()["checks"]["database"]["ready"] is False
            assert httpx.get(f"{api.base_url}/healthz").status_code == 200
            time.sleep(OUTAGE_S - 3)
            own_pg.start()
            up = time.monotonic()
            wait_until(lambda: httpx.get(f"{api.base_url}/readyz", timeout=15).status_code == 200, 60,
                       "/readyz 200 after the database came back")
            ready_again = time.monotonic()
            time.sleep(3)
            stream.stop()
            acc = settle(db_url, pub, tag, timeout=120)
            caught_up = time.monotonic()
            watcher.stop()
            stats = ingest.heartbeat_detail() or {}
            outage = [s for s in watcher.samples if down + 1 < s[0] < up]
            after = [s for s in watcher.samples if s[0] > up]
            figures("database_outage", outage_s=round(up - down, 1),
                    readyz_ready_after_db_back_s=round(ready_again - up, 1),
                    caught_up_after_db_back_s=round(caught_up - up, 1),
                    published=stream.sent + stream.events, accounting=acc.line(),
                    lost=len(acc.lost_tele) + len(acc.lost_events), duplicate_events=acc.duplicate_events,
                    redelivered_telemetry=acc.duplicate_tele,
                    api_during_outage={str(k): sum(1 for s in outage if s[2] == k) for k in {s[2] for s in outage}},
                    readyz_during_outage={str(k): sum(1 for s in outage if s[1] == k) for k in {s[1] for s in outage}},
                    api_after={str(k): sum(1 for s in after if s[2] == k) for k in {s[2] for s in after}},
                    api_200_after_db_back_s=round(next((s[0] for s in after if s[2] == 200), up) - up, 1),
                    ingest_after=stats)
            assert acc.balanced(), acc.line() + "\n" + ingest.log()
            assert ingest.proc.poll() is None, "ingest died during the outage:\n" + ingest.log()
            # During the outage the API said so: readiness 503, data endpoints 503, nothing worse.
            assert outage and all(s[1] == 503 for s in outage), outage
            assert all(s[2] == 503 for s in outage), f"data endpoint during the outage: {outage}"
            # After it: 503 until the pool has reconnected (store.db.RECONNECT_TIMEOUT_S keeps its
            # attempts close together), then
            # 200 for good; never a 500 from a connection the pool kept from before the outage.
            first_ok = next(i for i, s in enumerate(after) if s[2] == 200)
            assert after[first_ok][0] - up < 10, f"data endpoint after the outage: {after}"
            assert all(s[2] == 503 for s in after[:first_ok]) and all(s[2] == 200 for s in after[first_ok:]), after
    finally:
        if watcher is not None:
            watcher.stop()
        if pub is not None:
            pub.close()
        ingest.stop()
        if not own_pg.running():
            own_pg.start()
