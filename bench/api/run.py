"""Benchmark: the cost of authentication, scoping and auditing on the API's hot paths.

In one run, against a private PostgreSQL+TimescaleDB and a real uvicorn server:
  - GET /healthz (no auth, no database)                      → baseline for HTTP overhead
  - GET /api/cameras as a township user (session lookup + subtree query)
  - POST /api/auth/logout-free mutating call (audited by middleware)
  - audit_log append (hash chain under lock) vs a plain INSERT into an equivalent table
Figures print as ratios against the baseline measured in the same run (machines are noisy).

    .venv/bin/python bench/api/run.py [--seconds 5] [--clients 8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config.settings import DEMO_SITE_FILE  # noqa: E402
from config.site import load_site  # noqa: E402
from hub.embedded import EmbeddedPostgres, free_port  # noqa: E402
from store import identity, migrate  # noqa: E402
from store.audit import AuditEntry, record  # noqa: E402
from store.db import connect  # noqa: E402
from store.registry import sync_site  # noqa: E402
from tests.api.conftest import ApiServer  # noqa: E402

PASSWORD = "Bench-pass-2026"


def hammer(url: str, seconds: float, clients: int, headers=None, method="GET", json=None) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker():
        local = []
        with httpx.Client(headers=headers or {}, timeout=10) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.request(method, url, json=json)
                local.append(time.perf_counter() - t)
                assert r.status_code < 500, r.text
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def audit_rates(url: str, n: int) -> tuple[float, float]:
    with connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_plain (LIKE audit_log INCLUDING DEFAULTS INCLUDING INDEXES)")
        conn.commit()
        t = time.perf_counter()
        for i in range(n):
            conn.execute("""INSERT INTO bench_plain (id, actor, actor_kind, action, outcome, detail, prev_hash, hash)
                            VALUES (%s, 'bench', 'system', 'bench.plain', 'ok', '{}', '', '')""", (i,))
            conn.commit()
        plain = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            record(conn, AuditEntry(actor="bench", actor_kind="system", action="bench.audit", detail={"i": i}))
            conn.commit()
        chained = n / (time.perf_counter() - t)
    return plain, chained


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--audit-rows", type=int, default=2000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "var", free_port())
        pg.start()
        try:
            migrate.upgrade(pg.url)
            site = load_site(DEMO_SITE_FILE)
            with connect(pg.url) as conn:
                sync_site(conn, site)
                for u in site.users:
                    identity.set_password(conn, u.username, PASSWORD)
            dispatcher = next(u.username for u in site.users if str(u.role) == "dispatcher")
            with ApiServer(pg.url, None) as api:
                token = httpx.post(f"{api.base_url}/api/auth/login",
                                   json={"username": dispatcher, "password": PASSWORD}).json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                base = hammer(f"{api.base_url}/healthz", args.seconds, args.clients)
                cams = hammer(f"{api.base_url}/api/cameras", args.seconds, args.clients, headers=auth)
                denied = hammer(f"{api.base_url}/api/users", args.seconds, args.clients, headers=auth, method="POST",
                                json={"username": "x1", "display_name": "x", "role": "admin", "node_code": "0"})
            plain, chained = audit_rates(pg.url, args.audit_rows)
        finally:
            pg.stop()

    print(f"{'path':<44}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'cost vs baseline':>18}")
    for name, r in (("GET /healthz (baseline)", base), ("GET /api/cameras (auth + scope)", cams),
                    ("POST /api/users denied (auth + audit)", denied)):
        print(f"{name:<44}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{base['rps'] / r['rps']:>17.2f}x")
    print(f"audit append (hash chain): {chained:.0f} rows/s vs plain insert {plain:.0f} rows/s "
          f"→ {plain / chained:.2f}x the cost")


if __name__ == "__main__":
    main()
