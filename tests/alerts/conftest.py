"""Real peers for the alerts tests: a site file derived from the demo (with a case system
and test time limits), the alerts worker running in a thread, a webhook receiver process,
and events inserted as ingest inserts them (or published over MQTT through the real
ingest service)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml
from ulid import ULID

from config.settings import DEMO_SITE_FILE, Settings
from hub.embedded import free_port
from store.db import connect

HERE = Path(__file__).resolve().parent
SECRET_ENV = "XLHUB_TEST_CASE_SYSTEM_SECRET"
TOKEN_ENV = "XLHUB_TEST_CASE_SYSTEM_TOKEN"
SYSTEM = "county-platform"
TOKEN_NAME = "county-platform-inbound"

os.environ.setdefault(SECRET_ENV, "whsec-" + secrets.token_hex(16))


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def demo_data() -> dict:
    return yaml.safe_load(DEMO_SITE_FILE.read_text(encoding="utf-8"))


def write_site(path: Path, *, receiver_url: str | None = None, sla: dict | None = None,
               mutate: Callable[[dict], None] | None = None) -> Path:
    data = demo_data()
    if receiver_url:
        data["case_systems"] = [{
            "name": SYSTEM, "url": f"{receiver_url}/hook", "secret_env": SECRET_ENV, "inbound_token": TOKEN_NAME,
            "timeout": "2s", "retry": {"first": "200ms", "max_interval": "1s", "give_up_after": "1h"}}]
    if sla is not None:
        data["sla"] = sla
    if mutate:
        mutate(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class EngineRunner:
    """AlertsWorker.run(stop) in a thread, as hub.process runs it in its child."""

    def __init__(self, db_url: str, mqtt_url: str | None, site_file: Path, *, var_dir: Path | None = None,
                 **kwargs) -> None:
        kwargs.setdefault("scan_interval_s", 0.2)
        # Broadcast speech is synthesised under var_dir: a throwaway one unless given.
        self._tmp = tempfile.TemporaryDirectory(prefix="xlhub-alerts-var-") if var_dir is None else None
        var_dir = var_dir or Path(self._tmp.name)
        self._settings = Settings(database_url=db_url, mqtt_url=mqtt_url, site_file=site_file, var_dir=var_dir)
        self._kwargs = kwargs
        self._new_worker()

    def _new_worker(self) -> None:
        from alerts.worker import AlertsWorker

        self.engine = AlertsWorker(self._settings, **self._kwargs)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.engine.run, args=(self.stop,), name="alerts-engine", daemon=True)

    def __enter__(self) -> EngineRunner:
        self.thread.start()
        wait_for(self.engine.ready.is_set, 30, what="the alerts worker to start")
        wait_for(lambda: self.engine.listening, 10, what="the alerts worker to listen")
        return self

    def halt(self) -> None:
        """Stop the worker as a killed child stops: what arrives now waits in the queue."""
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the alerts worker did not stop"

    def restart(self) -> EngineRunner:
        """A fresh worker on the same database and site, as the supervisor restarts one."""
        self.halt()
        self._new_worker()
        return self.__enter__()

    def __exit__(self, *exc) -> None:
        self.halt()
        if self._tmp is not None:
            self._tmp.cleanup()


class Receiver:
    """tests/alerts/webhook_receiver.py as a process: start, stop (the case system is
    down) and start again on the same port and log."""

    def __init__(self, tmp: Path, hub_url: str | None = None, delay: float = 0.0) -> None:
        self.port = free_port()
        self.delay = delay
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"receiver-{self.port}.jsonl"
        self.hub_url = hub_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> Receiver:
        argv = [sys.executable, str(HERE / "webhook_receiver.py"), "--port", str(self.port),
                "--secret-env", SECRET_ENV, "--log", str(self.log)]
        if self.hub_url:
            argv += ["--hub", self.hub_url, "--token-env", TOKEN_ENV]
        if self.delay:
            argv += ["--delay", str(self.delay)]
        self.proc = subprocess.Popen(argv, env=dict(os.environ))
        wait_for(self._up, 15, what="the webhook receiver to listen")
        return self

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def deliveries(self) -> list[dict]:
        if not self.log.exists():
            return []
        # The receiver appends a line per delivery as it answers: read whole lines only (a
        # line cut mid-write can end inside a Chinese character).
        data = self.log.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]

    def post_status(self, **body) -> dict:
        r = httpx.post(f"{self.url}/status", json={"system": SYSTEM, **body}, timeout=15)
        r.raise_for_status()
        return r.json()


def source_of(db_url: str, source_id: str) -> dict:
    with connect(db_url) as conn:
        row = conn.execute(
            """SELECT m.source_kind, m.grid_code, n.path, coalesce(d.kind, 'camera') AS kind,
                      coalesce(d.lat, c.lat) AS lat, coalesce(d.lon, c.lon) AS lon
               FROM grid_membership m JOIN grid_nodes n ON n.code = m.grid_code
               LEFT JOIN devices d ON d.id = m.source_id LEFT JOIN cameras c ON c.id = m.source_id
               WHERE m.source_id = %s AND m.valid_to IS NULL""", (source_id,)).fetchone()
    assert row is not None, f"unknown source {source_id}"
    return row


def insert_event(db_url: str, source_id: str, event_type: str, *, payload: dict | None = None,
                 evidence: list[dict] | None = None, severity: str | None = None, at: datetime | None = None) -> str:
    """One event row as the ingest writer stores it (the trigger queues it for alerts)."""
    src = source_of(db_url, source_id)
    at = at or datetime.now(UTC)
    event_id = str(ULID())
    with connect(db_url) as conn:
        conn.execute(
            """INSERT INTO events (time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity,
                   msg_id, payload, evidence)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (at, event_id, at, src["kind"], source_id, event_type, src["grid_code"], src["path"], severity or "major",
             f"m-{event_id}", json.dumps(payload or {}), json.dumps(evidence or [])))
    return event_id


def insert_evidence(db_url: str, camera_id: str, media_type: str, at: datetime | None = None,
                    content: bytes | None = None, root: Path | None = None) -> dict:
    """An evidence file as a camera worker stores it (file + row with its SHA-256)."""
    import hashlib
    at = at or datetime.now(UTC)
    evidence_id = str(ULID())
    content = content or secrets.token_bytes(256)
    ext = "jpg" if media_type == "image/jpeg" else "mp4"
    relative = f"{camera_id}/{at:%Y%m%d}/{evidence_id}.{ext}"
    if root is not None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    with connect(db_url) as conn:
        conn.execute(
            """INSERT INTO evidence (id, sha256, path, media_type, bytes, source_kind, source_id, captured_at)
               VALUES (%s, %s, %s, %s, %s, 'camera', %s, %s)""",
            (evidence_id, digest, relative, media_type, len(content), camera_id, at))
    return {"id": evidence_id, "sha256": digest, "path": relative, "media_type": media_type}


def query(db_url: str, sql: str, params=()) -> list[dict]:
    with connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def one(db_url: str, sql: str, params=()) -> dict | None:
    rows = query(db_url, sql, params)
    return rows[0] if rows else None
