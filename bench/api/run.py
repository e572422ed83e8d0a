"""Benchmark: what a request costs the API, measured with a real HTTP load generator (wrk)
against the API as the hub runs it (``python -m hub.process api``: its own process, its own
uvicorn), beside a bare FastAPI/uvicorn app on the same machine in the same run.

    .venv/bin/python bench/api/run.py [--seconds 10] [--connections 32] [--threads 2]

Routes, in one run, one after the other:
  - a bare FastAPI app's GET /ping (uvicorn, nothing else)            → the machine's ceiling
  - GET /healthz (the hub's app: its middleware, no auth, no database) → the hub's baseline
  - GET /api/auth/me (authentication: the session looked up)
  - GET /api/cameras (authentication + a scoped query; its answer kept until the registry
    changes, as every caller of the same node shares it)
  - GET /api/camera-health (authentication + the wall's health query, its answer kept 1 s)
  - GET /api/device-state (authentication + a query on every request: nothing kept)
  - GET /api/alarms (authentication + a transaction on a pooled connection in the thread
    pool: the way most views still read)
Each prints requests/s, p50 and p99 latency (wrk --latency), and requests/s as a ratio of
/healthz and of the bare app. Goals (issue 19): authenticated reads ≥ 0.5× /healthz, /healthz
≥ 0.5× the bare app, p99 < 100 ms at 32 connections. Last, the audit log's append (hash chain
under a lock) against a plain INSERT into the same table shape.

wrk comes from Debian (scripts/setup installs it). Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench._hub import PASSWORD, demo_api, wait_http  # noqa: E402
from store.audit import AuditEntry, record  # noqa: E402
from store.db import connect  # noqa: E402
from hub.embedded import free_port  # noqa: E402

BARE_APP = textwrap.dedent("""
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}
""")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, seconds: float, connections: int, threads: int, headers: dict | None = None) -> dict:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "--timeout", "5s"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--audit-rows", type=int, default=2000)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (scripts/setup installs it)")

    procs: list[subprocess.Popen] = []
    with demo_api("xlhub-bench-api-") as hub:
        try:
            dispatcher = next(u.username for u in hub.site.users if str(u.role) == "dispatcher")
            bare_port = free_port()
            (hub.tmp / "bare.py").write_text(BARE_APP)
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "bare:app", "--host", "127.0.0.1",
                                           "--port", str(bare_port), "--log-level", "warning", "--no-access-log"],
                                          cwd=hub.tmp))
            api, bare = hub.base, f"http://127.0.0.1:{bare_port}"
            wait_http(f"{bare}/ping", procs[0])
            token = httpx.post(f"{api}/api/auth/login", json={"username": dispatcher, "password": PASSWORD, "token": True}).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            runs = [("bare FastAPI app GET /ping", f"{bare}/ping", None), ("GET /healthz", f"{api}/healthz", None),
                    ("GET /api/auth/me", f"{api}/api/auth/me", auth), ("GET /api/cameras", f"{api}/api/cameras", auth),
                    ("GET /api/camera-health", f"{api}/api/camera-health", auth),
                    ("GET /api/device-state", f"{api}/api/device-state", auth),
                    ("GET /api/alarms", f"{api}/api/alarms", auth)]
            results = {}
            for name, url, headers in runs:
                wrk(url, 2, args.connections, args.threads, headers)          # warm up
                results[name] = wrk(url, args.seconds, args.connections, args.threads, headers)
            plain, chained = audit_rates(hub.db_url, args.audit_rows)
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    health, ceiling = results["GET /healthz"]["rps"], results["bare FastAPI app GET /ping"]["rps"]
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:.0f}s, loopback")
    print(f"{'route':<30}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x /healthz':>12}{'x bare':>9}  errors")
    for name, r in results.items():
        bad = (f"{r['non_2xx']} non-2xx " if r["non_2xx"] else "") + r["socket_errors"]
        print(f"{name:<30}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['rps'] / health:>12.2f}"
              f"{r['rps'] / ceiling:>9.2f}  {bad}")
    print(f"audit append (hash chain): {chained:.0f} rows/s vs plain insert {plain:.0f} rows/s "
          f"→ {plain / chained:.2f}x the cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
