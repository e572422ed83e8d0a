"""Operability: liveness, readiness (database, broker, workers) and Prometheus metrics."""
from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from api.health import recording
from api.health.workers import heartbeats, not_alive
from store.db import timescaledb_info

router = APIRouter(tags=["health 运行状态"])

@router.get("/healthz")
async def healthz() -> dict:
    """The API process is up (says nothing about its dependencies)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready when the database (with TimescaleDB), the broker and every expected worker are.
    ``checks.recording`` shows each recorded camera's state, bytes written, oldest footage
    and the recordings' disk (never a reason to be unready: api/health/recording.py)."""
    state = request.app.state
    checks: dict[str, dict] = {}
    started = time.monotonic()
    try:
        with state.pool.connection(timeout=3) as conn:
            info = timescaledb_info(conn)
            beats = heartbeats(conn)
        checks["database"] = {"ready": info["version"] is not None, "timescaledb": info["version"],
                              "license": info["license"], "latency_ms": round((time.monotonic() - started) * 1000, 1)}
    except Exception as exc:  # any failure here means "not ready", with the reason
        checks["database"] = {"ready": False, "error": type(exc).__name__}
        beats = []
    checks["broker"] = {"ready": state.mqtt_status.ready, **state.mqtt_status.describe()}
    seen = {b["name"]: b for b in beats}
    workers = {}
    for name in state.expected_workers:
        beat = seen.get(name)
        why = not_alive(beat) if beat is not None else None
        workers[name] = {"ready": beat is not None and why is None,
                         "last_seen_s": None if beat is None else round(beat["age_s"], 1),
                         **({"error": why} if why else {}),
                         **({"detail": beat["detail"]} if beat else {})}
    checks["workers"] = {"ready": all(w["ready"] for w in workers.values()), "workers": workers}
    if any((b["detail"] or {}).get("recording") for b in beats):
        checks["recording"] = recording.readiness([b for b in beats if b["kind"] == "cameras"])
    ready = all(c["ready"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of every hub process (multiprocess mode when the supervisor runs)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = DEFAULT_REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
