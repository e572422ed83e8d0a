"""The ingest worker: the hub's one MQTT subscriber and the only writer of telemetry
and events.

Flow: broker → (paho loop thread) → bounded in-memory queue → (prepare thread) normalise
→ (writer thread) binary COPY + commit → PUBACK every message of the batch; the two
writer threads work on consecutive batches at once. A message is acknowledged
only after the transaction holding it committed, so a crash (even SIGKILL) never loses
an acknowledged message: the broker keeps the rest in our persistent session
(clean_start=False, fixed client id, session expiry 1 day) and delivers it again.

Overload and outages:
- QoS 1 messages are never shed. The consumer tells the broker how many unacknowledged
  messages it may have in flight (MQTT 5 Receive Maximum); past that the broker keeps
  them queued in our session. The in-memory queue is larger than that window, so it can
  always take them: the broker's queue is the overload buffer, and no QoS 1 message is
  ever dropped or acknowledged unstored. (Shedding an unacknowledged QoS 1 message
  would only park it in the broker until the next reconnect while holding a flow-control
  slot, so it would slow everything and still not be gone.)
- QoS 0 messages carry no promise; when the queue is above ``shed_at`` (80 %) QoS 0
  telemetry is shed, and QoS 0 events only when the queue is full. Every shed message is
  counted (``xlhub_ingest_shed_total``).
- Database unreachable: the batch is kept, retried with backoff (0.5 s → 10 s), nothing
  is acked, the heartbeat says not ready; the broker stops sending at Receive Maximum.
- Broker gone: paho reconnects with backoff (1 s → 5 s: the broker is local, and a longer
  cap left ingest deaf for up to 30 s after the broker came back). On a reconnect that finds the
  session, queued QoS 1 messages of the old connection are dropped from memory (the broker
  sends them again); acks of a batch begun on an old connection are not sent.
- Bad input of any kind goes to dead_letters; the process never dies of it.

The paho client used here (ingest/fastclient.py) takes a fast path for plain PUBLISH packets.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter, Gauge, Histogram

from bus.client import mqtt_client, start
from config.urls import redact_url
from ingest.fastclient import FastClient
from ingest.writer import (
    Prepared,
    WriteResult,
    is_connection_error,
    open_writer_connection,
    prepare,
    write_one_by_one,
    write_prepared,
)
from store.backoff import DATABASE, Backoff
from store.db import close_quietly
from store.sources import SourceCache
from store.workers import Heartbeat

log = logging.getLogger(__name__)

SUBSCRIPTION = "xlhub/v1/#"
CLIENT_ID = "xlhub-ingest"
# Longest wait between reconnect attempts. The broker is on the same host or LAN; with 30 s
# (paho's usual cap) ingest stayed away up to 30 s after a broker restart (tests/faults).
RECONNECT_MAX_S = 5

# --------------------------------------------------------------------------- metrics
# Module-level: one set per process (several services in one test process share them).
M_RECEIVED = Counter("xlhub_ingest_received_total", "MQTT messages received by ingest", ["qos"])
M_STORED = Counter("xlhub_ingest_stored_total", "rows committed by ingest", ["table"])
M_DEAD = Counter("xlhub_ingest_dead_letters_total", "messages stored as dead letters")
M_DUP = Counter("xlhub_ingest_duplicate_events_total", "redelivered events recognised and not stored again")
M_SHED = Counter("xlhub_ingest_shed_total", "QoS 0 messages dropped under overload", ["class"])
M_SKEW = Counter("xlhub_ingest_clock_skew_total", "messages whose device time is >5 min off the hub's")
M_DB_ERRORS = Counter("xlhub_ingest_db_errors_total", "failed batch writes (retried)")
M_BATCH = Histogram("xlhub_ingest_batch_seconds", "receive of the oldest message to commit, per batch",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
M_QUEUE = Gauge("xlhub_ingest_queue_depth", "messages received and not yet committed",
                multiprocess_mode="livesum")

# How long an event may wait for others to share its commit (the telemetry window is longer).
EVENT_FLUSH_S = 0.005
# How long the preparing thread sleeps when nothing arrives (a message wakes it at once).
IDLE_S = 1.0


@dataclass
class IngestStats:
    received: int = 0
    stored_telemetry: int = 0
    stored_positions: int = 0
    stored_camera_health: int = 0
    stored_events: int = 0
    duplicate_events: int = 0
    dead_letters: int = 0
    ignored: int = 0
    shed_telemetry: int = 0
    shed_events: int = 0
    stale_acks_skipped: int = 0
    dropped_on_reconnect: int = 0
    batches: int = 0
    db_errors: int = 0
    last_batch_s: float = 0.0
    max_batch_s: float = 0.0


class IngestWorker:
    """MQTT → TimescaleDB. ``start()`` returns at once (threads do the work); ``stop()``
    flushes what is queued (commit, then ack) and disconnects; ``stats()`` is a dict.

    ``on_commit(prepared, result, committed_at)`` is called after each commit (tests and
    the benchmark use it; keep it cheap)."""

    def __init__(self, db_url: str, mqtt_url: str, *, client_id: str = CLIENT_ID,
                 subscription: str = SUBSCRIPTION, batch_size: int = 5000, batch_ms: float = 100,
                 receive_maximum: int = 30000, queue_max: int = 100_000, shed_fraction: float = 0.8,
                 session_expiry_s: int = 86400, heartbeat_name: str | None = "ingest",
                 heartbeat_s: float = 3.0, registry_refresh_s: float = 5.0,
                 on_commit: Callable[[Prepared, WriteResult, float], None] | None = None,
                 probe_times: bool = False) -> None:
        if not 1 <= receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535")
        if queue_max < receive_maximum * 2:
            raise ValueError("queue_max must be at least twice receive_maximum (QoS 1 is never shed)")
        self.db_url, self.mqtt_url = db_url, mqtt_url
        self.client_id, self.subscription = client_id, subscription
        self.batch_size, self.batch_s = batch_size, batch_ms / 1000.0
        self._urgent_at: float | None = None   # receive time of the first event waiting
        self.receive_maximum, self.queue_max = receive_maximum, queue_max
        self.shed_at = int(queue_max * shed_fraction)
        self.session_expiry_s = session_expiry_s
        self.registry = SourceCache(refresh_s=registry_refresh_s)
        self.on_commit = on_commit
        self.probe_times = probe_times
        self._stats = IngestStats()
        self._queue: deque = deque()
        self._cv = threading.Condition(threading.Lock())
        self._gen = 0
        self._redelivered_below = 0     # QoS 1 items of older generations come again
        self._connected = False
        # The database as each writer thread last found it: ready needs both.
        self._registry_ok = False   # the preparer's registry reads
        self._writer_ok = False     # the committer's connection and writes
        self._subscribed = False
        self._last_error: str | None = None
        self._stopping = threading.Event()
        self._intake_closed = False
        self._client: FastClient | None = None
        self._writer: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._conn = None          # the committer's
        self._reg_conn = None      # the preparer's (registry reads)
        self._handoff: deque = deque()      # (items, prepared) ready to be written: at most one
        self._hcv = threading.Condition(threading.Lock())
        self._prepare_done = False
        self._committer_gone = False
        self._heartbeat = Heartbeat(db_url, heartbeat_name, "ingest", self._heartbeat_detail,
                                    interval=heartbeat_s) if heartbeat_name else None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        client = mqtt_client(self.mqtt_url, self.client_id, cls=FastClient, manual_ack=True,
                             reconnect=(1, RECONNECT_MAX_S))
        client.sink = self._sink
        client.sink_many = self._sink_many
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.receive_maximum
        start(client, session_expiry_s=self.session_expiry_s, clean_start=False, properties=props, loop=False)
        self._client = client
        # What exists now (modules, schemas, compiled validators) lives as long as the
        # process. Out of the collector's sight, the occasional full collection that the
        # message churn still sets off scans only what came later: ~7 ms instead of ~35 ms
        # of CPU with every ingest thread stopped. (Only cyclic collection is affected.)
        gc.freeze()
        # The in-flight messages (~10^4 tuples, none in a cycle) kept the default threshold
        # (700 net allocations) crossed all the time: ~1 µs of collector CPU per message,
        # 5 % of this process, for cycles that ingest does not make. 20,000 leaves it idle
        # under load and still bounds what a cycle could hold.
        gen0, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(max(gen0, 20_000), gen1, gen2)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._preparer = threading.Thread(target=self._prepare_loop, name="ingest-prepare", daemon=True)
        self._writer.start()
        self._preparer.start()
        client.loop_start()
        if self._heartbeat:
            self._heartbeat.start()
        log.info("ingest started: %s → %s", redact_url(self.mqtt_url), redact_url(self.db_url))

    def stop(self, timeout: float = 15.0) -> None:
        """Flush the queue (commit then ack), then disconnect. Messages that arrive while
        flushing stay unacked and come again on the next start."""
        with self._cv:
            self._intake_closed = True     # what arrives from now on is not acked: it comes again
            self._stopping.set()
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in (self._preparer, self._writer):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        client = self._client
        if client is not None:
            deadline = time.monotonic() + 2
            while client.want_write() and time.monotonic() < deadline:   # let the last PUBACKs out
                time.sleep(0.01)
            client.disconnect()
            client.loop_stop()
        if self._heartbeat:
            self._heartbeat.stop()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            time.sleep(0.05)
        return False

    @property
    def _db_ok(self) -> bool:
        return self._registry_ok and self._writer_ok

    @property
    def ready(self) -> bool:
        return self._connected and self._subscribed and self._db_ok

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {**s.__dict__, "queue": len(self._queue), "connected": self._connected,
                "subscribed": self._subscribed, "db_ok": self._db_ok, "ready": self.ready,
                "last_error": self._last_error}

    def _heartbeat_detail(self) -> dict:
        s = self._stats
        return {"ready": self.ready, "broker": self._connected, "database": self._db_ok,
                "queue": len(self._queue), "received": s.received, "dead_letters": s.dead_letters,
                "stored": s.stored_telemetry + s.stored_positions + s.stored_camera_health + s.stored_events,
                "shed": s.shed_telemetry + s.shed_events, "last_batch_ms": round(s.last_batch_s * 1000, 1),
                "error": self._last_error}

    # -- network thread ----------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._last_error = f"broker refused: {reason_code}"
            log.warning("broker refused the connection: %s", reason_code)
            return
        with self._cv:
            self._gen += 1
            gen = self._gen
            if flags.session_present:
                # Unacked QoS 1 messages of the old connection come again: forget our copies
                # (those already taken for a batch are left out before it is written).
                self._redelivered_below = gen
                kept = deque(i for i in self._queue if i[2] == 0)
                self._stats.dropped_on_reconnect += len(self._queue) - len(kept)
                self._queue = kept
            self._connected = True
        log.info("connected to broker (session %s, generation %d)",
                 "resumed" if flags.session_present else "new", gen)
        # retainAsPublished: a device that publishes telemetry or an event retained is seen as
        # doing so (ingest/writer.py NOT_RETAINED refuses it and clears the broker's copy).
        client.subscribe(self.subscription, options=SubscribeOptions(qos=1, retainHandling=1, retainAsPublished=True))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        self._subscribed = not failed
        if failed:
            self._last_error = f"subscription refused: {failed[0]}"
            log.error("subscription to %s refused: %s", self.subscription, failed[0])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        self._subscribed = False
        if not self._stopping.is_set():
            self._last_error = f"broker connection lost: {reason_code}"
            log.warning("broker connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        # paho's own path (packets with properties): same treatment.
        self._sink(msg._topic, msg.payload, msg.qos, msg.mid, msg.retain, time.time())

    def _sink(self, topic: bytes, payload: bytes, qos: int, mid: int, retain: int, received: float) -> None:
        self._sink_many([(topic, payload, qos, mid, retain)], received)

    def _sink_many(self, msgs: list, received: float) -> None:
        with self._cv:
            if self._intake_closed:
                return
            q = self._queue
            before = len(q)
            gen, shed_at = self._gen, self.shed_at
            urgent = self._urgent_at is not None
            for topic, payload, qos, mid, retain in msgs:
                if qos == 0 and len(q) >= shed_at:
                    if b"/evt/" not in topic:
                        self._stats.shed_telemetry += 1
                        M_SHED.labels("telemetry").inc()
                        continue
                    if len(q) >= self.queue_max:
                        self._stats.shed_events += 1
                        M_SHED.labels("event").inc()
                        continue
                q.append((topic, payload, qos, mid, retain, received, gen))
                if not urgent and b"/evt/" in topic:
                    # An event (a forced door, an SOS) should not sit out the telemetry window.
                    urgent = True
                    self._urgent_at = received
                    self._cv.notify()
            if before < self.batch_size <= len(q) or (before == 0 and q):
                self._cv.notify()

    # -- writer threads ----------------------------------------------------------------
    def _take(self) -> list:
        with self._cv:
            if len(self._queue) < self.batch_size and not self._stopping.is_set():
                if not self._queue:
                    # Nothing in: sleep until the first message arrives (its arrival wakes
                    # us), at most IDLE_S — the registry's refresh and readiness need a turn.
                    self._cv.wait(IDLE_S)
                # Wait until the oldest message is batch_s old or the batch is full. Receive
                # times are wall-clock; the wait is also capped on the monotonic clock, so a
                # wall clock stepped back (NTP, an operator) cannot hold a batch for the hour.
                limit = time.monotonic() + self.batch_s
                while self._queue and len(self._queue) < self.batch_size and not self._stopping.is_set():
                    due = self._queue[0][5] + self.batch_s
                    if self._urgent_at is not None:
                        # a few ms still coalesce a burst of events into one commit
                        due = min(due, self._urgent_at + EVENT_FLUSH_S)
                    left = min(due - time.time(), limit - time.monotonic())
                    if left <= 0:
                        break
                    self._cv.wait(left)
            self._urgent_at = None
            q = self._queue
            n = min(len(q), self.batch_size)
            return [q.popleft() for _ in range(n)]

    # The writer is two threads: one prepares a batch (parse and validate: Python, holding
    # the GIL) while the other has PostgreSQL store the batch before it (the GIL released
    # while the server works). One after the other, the server sat idle while Python
    # parsed and the reverse, and under sustained load the writer, not the CPU, set the
    # pace. One prepared batch at most waits between them, so at most three batches are
    # out of the queue; commits and acks stay in receive order (one committer).
    def _prepare_loop(self) -> None:
        try:
            while True:
                items = self._take()
                if not items:
                    if self._stopping.is_set():
                        break
                    self._idle_refresh()
                    continue
                prepared = self._prepare(items)
                if prepared is None:          # stopping while the database is away
                    log.warning("stopping with %d messages unstored; the broker keeps them", len(items))
                    break
                with self._hcv:
                    while self._handoff and not self._committer_gone:
                        self._hcv.wait()
                    if self._committer_gone:
                        break
                    self._handoff.append((items, prepared))
                    self._hcv.notify_all()
        finally:
            with self._hcv:
                self._prepare_done = True
                self._hcv.notify_all()
            self._close_registry_conn()

    def _registry_conn(self):
        if self._reg_conn is None or self._reg_conn.closed:
            self._reg_conn = psycopg.connect(self.db_url, connect_timeout=5, autocommit=True,
                                             application_name="xlhub-ingest-registry")
        return self._reg_conn

    def _close_registry_conn(self) -> None:
        close_quietly(self._reg_conn)
        self._reg_conn = None

    def _prepare(self, items: list) -> Prepared | None:
        """Normalise a batch against a fresh enough registry. The registry must be readable
        (else every source would look unknown and be dead-lettered): on a database error
        this waits and tries again, and gives up (None) only when stopping."""
        backoff = Backoff(DATABASE)
        while True:
            try:
                conn = self._read_registry()
                prepared = prepare(items, self.registry, probe_times=self.probe_times)
                if prepared.retry_unknown and \
                        self.registry.loaded_at < time.monotonic() - self.registry.miss_refresh_s:
                    # A source we do not know: maybe just registered. Look again once.
                    self.registry.refresh(conn)
                    prepared = prepare(items, self.registry, probe_times=self.probe_times)
                return prepared
            except Exception as exc:
                self._registry_ok = False
                delay = backoff.next()
                self._db_failed(exc, len(items), delay)
                self._close_registry_conn()
                if self._stopping.wait(delay):
                    return None

    def _read_registry(self):
        """Refresh the registry when due, or at once after a failed read (which also tells
        whether the database is back); raises on a database error. Returns the connection."""
        conn = self._registry_conn()
        if self._registry_ok:
            self.registry.maybe_refresh(conn)
        else:
            self.registry.refresh(conn)
            self._registry_ok = True
        return conn

    def _db_failed(self, exc: BaseException, n: int, delay: float) -> None:
        self._stats.db_errors += 1
        M_DB_ERRORS.inc()
        self._last_error = f"database: {type(exc).__name__}: {str(exc).strip()[:200]}"
        log.warning("batch of %d not stored (%s); retrying in %.1fs", n, self._last_error, delay)

    def _drop_redelivered(self, items: list, prepared: Prepared) -> tuple[list, Prepared]:
        """QoS 1 messages read before a reconnect that resumed our session are coming again
        (they were never acked): a batch prepared before the reconnect leaves them out, as
        the queue did, so they are not stored twice."""
        with self._cv:
            below = self._redelivered_below
        if not any(i[2] == 1 and i[6] < below for i in items):
            return items, prepared
        kept = [i for i in items if not (i[2] == 1 and i[6] < below)]
        self._stats.dropped_on_reconnect += len(items) - len(kept)
        return kept, prepare(kept, self.registry, probe_times=self.probe_times)

    def _ensure_conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = open_writer_connection(self.db_url)
        return self._conn

    def _connect_idle(self) -> None:
        """Between batches, (re)open a lost connection, so that readiness says whether
        writing would work (and the next batch does not wait for it)."""
        if self._conn is not None and not self._conn.closed:
            return
        try:
            self._ensure_conn()
            self._writer_ok = True
        except Exception as exc:
            self._writer_ok = False
            self._last_error = f"database: {type(exc).__name__}"

    def _write_loop(self) -> None:
        backoff = Backoff(DATABASE)
        try:
            while True:
                self._connect_idle()
                with self._hcv:
                    if not self._handoff and not self._prepare_done:
                        self._hcv.wait(1.0)
                    if not self._handoff:
                        if self._prepare_done:
                            break
                        continue
                    work = self._handoff.popleft()
                    self._hcv.notify_all()
                items, prepared = work
                M_QUEUE.set(len(self._queue) + len(items))
                while True:
                    # (again before each retry: the broker may have come back meanwhile)
                    items, prepared = self._drop_redelivered(items, prepared)
                    if not items:
                        result = None
                        break
                    try:
                        result = self._write(items, prepared)
                        self._writer_ok = True
                        self._last_error = None
                        backoff.reset()
                        break
                    except Exception as exc:
                        self._writer_ok = False
                        delay = backoff.next()
                        self._db_failed(exc, len(items), delay)
                        close_quietly(self._conn)
                        self._conn = None
                        if self._stopping.wait(delay):
                            log.warning("stopping with %d messages unstored; the broker keeps them", len(items))
                            return
                if result is None:
                    continue
                committed = time.time()
                self._ack(items)
                self._clear_retained(prepared.retained)
                self._account(items, prepared, result, committed)
                if self.on_commit is not None:
                    try:
                        self.on_commit(prepared, result, committed)
                    except Exception:
                        log.exception("on_commit hook failed")
        finally:
            with self._hcv:
                self._committer_gone = True
                self._hcv.notify_all()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _idle_refresh(self) -> None:
        try:
            self._read_registry()
        except Exception as exc:
            self._registry_ok = False
            self._last_error = f"database: {type(exc).__name__}"
            self._close_registry_conn()
            self._stopping.wait(0.5)

    def _write(self, items: list, prepared: Prepared) -> WriteResult:
        conn = self._ensure_conn()
        try:
            return write_prepared(conn, prepared)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            log.warning("database refused a batch of %d (%s: %s); storing one by one", len(items),
                        type(exc).__name__, str(exc).strip()[:200])
            return write_one_by_one(conn, items, self.registry)

    def _ack(self, items: list) -> None:
        client = self._client
        with self._cv:
            gen, connected = self._gen, self._connected
        mids = [i[3] for i in items if i[2] == 1 and i[6] == gen]
        stale = sum(1 for i in items if i[2] == 1 and i[6] != gen)
        if stale:
            self._stats.stale_acks_skipped += stale
        if client is not None and connected and mids:
            client.ack_many(mids)

    def _clear_retained(self, topics: list[bytes]) -> None:
        """Clear the broker's retained copy of refused retained telemetry/events (an empty
        retained message), once the dead letters saying why are stored."""
        client = self._client
        if client is None or not topics:
            return
        for topic in dict.fromkeys(topics):
            client.publish(topic.decode("utf-8", errors="replace"), b"", qos=1, retain=True)
            log.warning("retained message on %s refused and cleared", topic[:200].decode("utf-8", errors="replace"))

    def _account(self, items: list, p: Prepared, r: WriteResult, committed: float) -> None:
        s = self._stats
        s.received += len(items)
        s.batches += 1
        s.stored_telemetry += r.telemetry
        s.stored_positions += r.positions
        s.stored_camera_health += r.camera_health
        s.stored_events += r.events
        s.duplicate_events += r.events_duplicate
        s.dead_letters += r.dead_letters
        s.ignored += p.ignored
        latency = committed - items[0][5]
        s.last_batch_s = latency
        s.max_batch_s = max(s.max_batch_s, latency)
        q1 = sum(1 for i in items if i[2])
        if q1:
            M_RECEIVED.labels("1").inc(q1)
        if len(items) - q1:
            M_RECEIVED.labels("0").inc(len(items) - q1)
        for table, n in (("device_telemetry", r.telemetry), ("device_positions", r.positions),
                         ("camera_health", r.camera_health), ("events", r.events)):
            if n:
                M_STORED.labels(table).inc(n)
        if r.dead_letters:
            M_DEAD.inc(r.dead_letters)
        if r.events_duplicate:
            M_DUP.inc(r.events_duplicate)
        if p.skewed:
            M_SKEW.inc(p.skewed)
        M_BATCH.observe(latency)
        M_QUEUE.set(len(self._queue))


def run_ingest(settings_or_urls, stop_event: threading.Event, **kwargs) -> None:
    """Run the ingest service until ``stop_event`` is set. ``settings_or_urls`` is a
    config.settings.Settings (database_url, mqtt_url) or a (db_url, mqtt_url) pair."""
    if isinstance(settings_or_urls, (tuple, list)):
        db_url, mqtt_url = settings_or_urls
    else:
        db_url, mqtt_url = settings_or_urls.database_url, settings_or_urls.mqtt_url
    if not db_url or not mqtt_url:
        raise ValueError("ingest needs both a database URL and an MQTT URL")
    service = IngestWorker(db_url, mqtt_url, **kwargs)
    service.start()
    try:
        stop_event.wait()
    finally:
        service.stop()


def main() -> None:
    """``python -m ingest.worker``: run ingest from XLHUB_DATABASE_URL / XLHUB_MQTT_URL
    until SIGTERM/SIGINT (the supervisor uses hub.process; this is for tests and tools)."""
    import signal

    logging.basicConfig(level=os.environ.get("XLHUB_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_ingest((os.environ["XLHUB_DATABASE_URL"], os.environ["XLHUB_MQTT_URL"]), stop,
               client_id=os.environ.get("XLHUB_INGEST_CLIENT_ID", CLIENT_ID),
               heartbeat_name=os.environ.get("XLHUB_INGEST_HEARTBEAT", "ingest"))


if __name__ == "__main__":
    main()
