"""Shared tools of the fault-injection tests: a publisher that knows what the broker
acknowledged, the end-of-run accounting, the ingest worker as a real child process, and
per-process resource figures read from /proc.

Everything here talks to real servers on loopback; every wait has a deadline."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import psycopg

from tests.processes import stop as stop_process

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Demo-site devices used as sources (their registry rows come from the demo site file).
TELEMETRY_SOURCES = [("radio", "radio-dsc"), ("radio", "radio-xhc"), ("door", "door-tyc"), ("drone", "drone-lls")]
EVENT_SOURCES = [("door", "door-dsc", "access_granted"), ("radio", "radio-tyc", "ptt_start"),
                 ("door", "door-xhc", "exit_button")]


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def query(db_url: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(db_url: str, sql: str, params=()):
    return query(db_url, sql, params)[0][0]


# --------------------------------------------------------------------------- publishing
def body(msg_id: str, seq: int, ts_ms: int | None = None, **fields) -> bytes:
    return json.dumps({"v": 1, "id": msg_id, "ts": int(time.time() * 1000) if ts_ms is None else ts_ms,
                       "seq": seq, **fields}, separators=(",", ":")).encode()


TELEMETRY_BODY = {
    "radio": lambda: {"lat": 30.65, "lon": 104.48, "battery_pct": 80.0, "signal_dbm": -70.0},
    "door": lambda: {"door_open": False, "locked": True, "battery_pct": 90.0},
    "drone": lambda: {"lat": 30.55, "lon": 104.41, "alt_m": 80.0, "heading_deg": 90.0, "speed_mps": 7.0,
                      "battery_pct": 70.0, "mode": "mission"},
}
EVENT_BODY = {
    "access_granted": lambda: {"card_id": "C1001", "direction": "in"},
    "ptt_start": lambda: {"talk_group": "tg-1"},
    "exit_button": lambda: {},
}


class Publisher:
    """QoS 1 publisher (MQTT 5) that keeps every message's MQTTMessageInfo, so the
    accounting knows exactly which messages the broker acknowledged (those are the hub's
    responsibility from then on). While the broker is away paho keeps the messages and
    sends them again after reconnecting, as a device would."""

    def __init__(self, port: int, username: str, password: str, *, client_id: str | None = None,
                 inflight: int = 200) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"fault-pub-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)            # unbounded: a device buffers while offline
        self.client.reconnect_delay_set(min_delay=0.5, max_delay=2)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.messages: list[tuple[str, str, paho.MQTTMessageInfo]] = []   # (kind, msg id, info)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "publisher could not connect"

    def publish(self, kind: str, msg_id: str, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        self.messages.append((kind, msg_id, info))

    # MQTTMessageInfo.is_published() raises for a message published while disconnected
    # (rc NO_CONN) although paho keeps it and sends it after reconnecting; ``_published``
    # is set by the PUBACK whatever happened before.
    def acked(self, kind: str | None = None) -> set[str]:
        return {m for k, m, info in self.messages if (kind is None or k == kind) and info._published}

    def all_acked(self) -> bool:
        return all(info._published for _, _, info in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Stream:
    """Steady telemetry and events from demo devices, published from a thread at a fixed
    rate until stopped. Message ids carry ``tag`` so the accounting finds exactly them."""

    publisher: Publisher
    tag: str
    rate: float = 300.0               # telemetry msg/s
    event_every: int = 10             # one event per this many telemetry messages
    sent: int = 0
    events: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            if due <= self.sent:
                time.sleep(0.005)
                continue
            for _ in range(min(due - self.sent, 200)):
                self.one()

    def one(self) -> None:
        i = self.sent
        kind, dev = TELEMETRY_SOURCES[i % len(TELEMETRY_SOURCES)]
        mid = f"{self.tag}-t{i}"
        self.publisher.publish("tele", mid, f"xlhub/v1/{kind}/{dev}/tele", body(mid, i, **TELEMETRY_BODY[kind]()))
        self.sent += 1
        if i % self.event_every == 0:
            j = self.events
            kind, dev, etype = EVENT_SOURCES[j % len(EVENT_SOURCES)]
            mid = f"{self.tag}-e{j}"
            self.publisher.publish("evt", mid, f"xlhub/v1/{kind}/{dev}/evt/{etype}", body(mid, j, **EVENT_BODY[etype]()))
            self.events += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


# --------------------------------------------------------------------------- accounting
@dataclass
class Accounting:
    """Published (acknowledged by the broker) against stored, for one tagged stream."""

    published_tele: int
    published_events: int
    stored_tele_rows: int
    stored_tele_distinct: int
    stored_events_rows: int
    stored_events_distinct: int
    dead_letters: int
    lost_tele: list[str]
    lost_events: list[str]

    @property
    def duplicate_events(self) -> int:
        return self.stored_events_rows - self.stored_events_distinct

    @property
    def duplicate_tele(self) -> int:
        return self.stored_tele_rows - self.stored_tele_distinct

    def balanced(self) -> bool:
        return not self.lost_tele and not self.lost_events and self.duplicate_events == 0 and self.dead_letters == 0

    def line(self) -> str:
        return (f"telemetry published {self.published_tele}, stored {self.stored_tele_distinct} "
                f"(+{self.duplicate_tele} redelivered copies), lost {len(self.lost_tele)}; events published "
                f"{self.published_events}, stored {self.stored_events_distinct}, duplicated {self.duplicate_events}, "
                f"lost {len(self.lost_events)}; dead letters {self.dead_letters}")


def stored_ids(db_url: str, tag: str) -> tuple[list[str], list[str], int]:
    tele = [r[0] for r in query(db_url, "SELECT msg_id FROM device_telemetry WHERE msg_id LIKE %s", (f"{tag}-t%",))]
    evts = [r[0] for r in query(db_url, "SELECT msg_id FROM events WHERE msg_id LIKE %s", (f"{tag}-e%",))]
    dead = scalar(db_url, "SELECT count(*) FROM dead_letters WHERE position(convert_to(%s, 'UTF8') IN payload) > 0",
                  (f'"{tag}-',))
    return tele, evts, dead


def account(db_url: str, publisher: Publisher, tag: str) -> Accounting:
    tele, evts, dead = stored_ids(db_url, tag)
    pub_t, pub_e = publisher.acked("tele"), publisher.acked("evt")
    st, se = set(tele), set(evts)
    return Accounting(len(pub_t), len(pub_e), len(tele), len(st), len(evts), len(se), dead,
                      sorted(pub_t - st)[:20] + ([f"… {len(pub_t - st)} in all"] if len(pub_t - st) > 20 else []),
                      sorted(pub_e - se)[:20] + ([f"… {len(pub_e - se)} in all"] if len(pub_e - se) > 20 else []))


def settle(db_url: str, publisher: Publisher, tag: str, timeout: float = 120.0) -> Accounting:
    """Wait until the publisher's messages are all acknowledged by the broker and every
    acknowledged message is stored (or the deadline passes), then account."""
    wait_until(publisher.all_acked, timeout, "the broker to acknowledge every published message")
    deadline = time.monotonic() + timeout
    acc = account(db_url, publisher, tag)
    while time.monotonic() < deadline and (acc.lost_tele or acc.lost_events):
        time.sleep(0.5)
        acc = account(db_url, publisher, tag)
    time.sleep(0.5)      # one more batch window: a late duplicate would show now
    return account(db_url, publisher, tag)


# --------------------------------------------------------------------------- processes
class Proc:
    """A hub worker (or simulated device) as its own process: real signals, real crash."""

    def __init__(self, argv: list[str], env: dict, log_path: Path) -> None:
        self.argv, self.env, self.log_path = argv, {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env}, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(PROJECT_ROOT), stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, 20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


class IngestProcess:
    """``python -m ingest.worker`` as a child process (real signals, real crash)."""

    def __init__(self, db_url: str, mqtt_url: str, log_path: Path, *, client_id: str, heartbeat: str,
                 extra_env: dict[str, str] | None = None, argv: list[str] | None = None) -> None:
        self.env = {**os.environ, "XLHUB_DATABASE_URL": db_url, "XLHUB_MQTT_URL": mqtt_url,
                    "XLHUB_INGEST_CLIENT_ID": client_id, "XLHUB_INGEST_HEARTBEAT": heartbeat,
                    "PYTHONPATH": str(PROJECT_ROOT), "XLHUB_LOG_LEVEL": "INFO", **(extra_env or {})}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.argv = argv or [sys.executable, "-m", "ingest.worker"]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.heartbeat = heartbeat
        self.db_url = db_url

    def start(self) -> IngestProcess:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(PROJECT_ROOT),
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    def heartbeat_detail(self) -> dict | None:
        try:
            rows = query(self.db_url, "SELECT detail, pid, extract(epoch FROM now() - seen_at) FROM worker_heartbeats "
                                      "WHERE name = %s", (self.heartbeat,))
        except psycopg.OperationalError:
            return None
        if not rows or rows[0][1] != self.proc.pid or rows[0][2] > 5:
            return None
        return rows[0][0]

    def wait_ready(self, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (d := self.heartbeat_detail()) and d.get("ready") and d, timeout,
                          f"ingest {self.heartbeat} to be ready")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc/<pid>/task/*/children)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
