"""The devices worker: the hub's side of every field device, as one long-running process
(``DevicesWorker(settings).run(stop_event)``, heartbeat row ``devices``).

It keeps one MQTT connection (the hub's account) and one database connection, and does:
(as the hub's child process, ``run_devices``, the connection is a persistent session —
client id ``xlhub-devices``, kept ``SESSION_EXPIRY_S`` by the broker — so what devices say
while the service is away from the broker, a broker restart or its own, waits for it there:
a speaker's ``finished`` sent meanwhile is not lost and the receipt not reported unanswered)

- availability: online/offline from ``avail`` (Last Will) and from the heartbeat timeout
  (devices/availability.py, which decides and, called from here, stores); a hub-decided
  change is stored once as an event;
- commands: publishes what the API (or the service itself) queued in ``device_commands`` —
  QoS 1, MQTT 5 message expiry, response topic = the device's ``res``, correlation data =
  the command id — signs the ones that must be signed (door unlock), and follows the phases
  the devices answer with until finished | failed | rejected | preempted, or expires them
  (devices/answers.py);
- broadcasts: fans out due broadcasts (schedules) to the speakers under their targets and
  follows the per-speaker receipts to the report (devices/broadcast/, devices/answers.py);
- doors: after an outage asks the controller to replay its buffered events
  (``cmd/replay_events`` since the last seq the hub saw), so none are missing
  (devices/doors.py);
- radios: geofence enter/exit against the grid boundaries (devices/geofence.py,
  ``GeofenceRule``); drones: health warnings
  (battery, link lost while flying: devices/drones.py);
- decommissioned devices: clears their retained ``avail``/``state`` topics.

Ingest stays the only writer of what devices send; this service writes what the hub
decides (commands, receipts, availability, the events it raises itself).

One worker thread owns the database connection and handles MQTT messages and timers in
order, so there are no races between a device's answer and a timeout of the same command.

Nothing is lost when the worker dies (SIGKILL, a crash) with messages in hand: a QoS 1
message is acknowledged to the broker only after the transaction that handled it
committed (paho's manual ack; devices/acks.py keeps acknowledgements on the connection
they belong to), so the broker delivers the rest again from the persistent session. A
message can therefore come twice (killed between commit and acknowledgement, or a device
that sent it twice): the (device, message id) of everything handled is written in the
same transaction (``device_messages_handled``) and a copy changes nothing — no second
event, phase, receipt move, geofence crossing or door replay. A message the worker cannot
handle (a bug, a row the database refuses) goes to ``dead_letters`` with the reason, like
ingest's, and is acknowledged.

Deadlines (command expiry, a broadcast receipt's 超时未回执) are judged only on what the
worker could have heard: while it is connected, and after the broker has handed over
what it kept for the worker while it was away (a barrier message it sends itself after
connecting comes back behind that backlog). An answer that comes after the hub's
judgement all the same is kept on the receipt (devices/broadcast/service.py, late answers).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.subscribeoptions import SubscribeOptions
from psycopg.rows import dict_row

from bus.client import command_properties, mqtt_client, start, stop
from bus.commands import UnlockCommand
from bus.envelope import ContractError
from bus.topics import Topic, parse_topic, topic_for
from config.urls import redact_url
from config.vocabulary import DEVICE_KINDS
from devices import doors, drones, geofence, registry
from devices.acks import AckGate
from devices.answers import Answers
from devices.availability import AvailabilityTracker, Transition, store_liveness, store_transition
from devices.broadcast import service as broadcasts
from devices.commands import signing
from devices.commands import service as commands
from devices.credentials import DeviceSecrets
from devices.drones import DroneHealth
from devices.geofence import GeofenceRule
from devices.settings import DevicesSettings
from devices.undo import UndoLog
from store.backoff import DATABASE, Backoff
from store.listen import Listener
from store.workers import beat

log = logging.getLogger(__name__)

HEARTBEAT_NAME = "devices"
WAKE_CHANNEL = "xlhub_devices"     # NOTIFY'd when a command or broadcast is queued (devices/commands)
CLIENT_ID = "xlhub-devices"      # the hub's devices worker (XLHUB_DEVICES_CLIENT_ID to run two hubs on one broker)
SESSION_EXPIRY_S = 3600          # longer than any command's or broadcast's answer deadline
# A message can come again only while the broker keeps the session it was delivered in
# (plus a device's own resend): what was handled is remembered that long, and a margin.
HANDLED_KEEP_S = SESSION_EXPIRY_S + 600
# A broker that refuses the barrier (an external broker's ACL: SUBACK/PUBACK say so) or
# loses it must not hold deadlines for ever: judged without it then, logged. The wait is
# long because a long backlog (an hour of a county's telemetry) is a reason to be slow.
BARRIER_WAIT_S = 300.0
BATCH_MAX = 5000
SIGNED_COMMANDS = {(UnlockCommand.kind, UnlockCommand.name)}
# The event types this worker raises itself (labels and default severities: config/vocabulary.py):
# availability decided by the hub, grid crossings of tracked devices, drone health warnings.
EMITS = (*(f"{k}.{s}" for k in DEVICE_KINDS for s in ("online", "offline")),
         *geofence.EMITS, *drones.EMITS)


@dataclass
class _Msg:
    topic: str
    payload: bytes
    correlation: bytes | None
    retained: bool
    received: float
    mid: int = 0
    qos: int = 0
    gen: int = 0                        # the connection it came in on (devices/acks.py)
    # set by _prepare: what the message is about, if it is for us at all
    parsed: Topic | None = None
    dev: registry.DeviceRecord | None = None
    body: dict | None = None
    key: str | None = None              # its message id: a second copy changes nothing
    barrier: int | None = None          # our own barrier message: its connection generation


class DevicesWorker:
    """``settings``: config.settings.Settings (database_url, mqtt_url, var_dir, http_*);
    ``devices_settings``: DevicesSettings (defaults from ``XLHUB_DEVICES_*``)."""

    def __init__(self, settings, devices_settings: DevicesSettings | None = None, *, client_id: str | None = None,
                 heartbeat_name: str = HEARTBEAT_NAME, tick_s: float = 0.25, session_expiry_s: int = 0) -> None:
        if not settings.database_url or not settings.mqtt_url:
            raise ValueError("DevicesWorker needs database_url and mqtt_url")
        self.settings = settings
        self.cfg = devices_settings or DevicesSettings()
        self.db_url = settings.database_url
        self.mqtt_url = settings.mqtt_url
        self.secrets = DeviceSecrets.for_settings(settings)
        self.heartbeat_name = heartbeat_name
        self.tick_s = tick_s
        self.client_id = client_id or f"xlhub-devices-{os.getpid()}-{secrets.token_hex(3)}"
        # 0: a session that ends with the connection (tests run several services at once).
        self.session_expiry_s = session_expiry_s
        self.media_base_url = self.cfg.media_base_url or f"http://{settings.http_host}:{settings.http_port}"
        self.started_at = datetime.now(UTC)
        # What the trackers and the drone states learn from a batch stands only if the
        # batch's transaction commits (devices/undo.py): otherwise the messages come again
        # and must meet the memory as it was.
        self._undo = UndoLog()
        self.tracker = AvailabilityTracker(self.cfg, self.started_at, self._undo)
        self.devices: dict[str, registry.DeviceRecord] = {}
        # paho's thread appends, the worker takes; a reconnect that resumes the session drops
        # the QoS 1 messages the broker is about to send again.
        self._inbox: deque[_Msg] = deque()
        self._inbox_lock = threading.Lock()
        self._gate = AckGate()
        self._barrier_topic = f"xlhub/hub/devices/{self.client_id}/barrier"
        self._barrier_back = 0              # the generation whose barrier has come back
        self._barrier_refused = 0           # … or whose barrier the broker refused
        self._barrier_mids = (0, 0)         # (SUBSCRIBE, PUBLISH) packet ids of the current one
        self._connected_at = 0.0
        self._barrier_warned = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connected = threading.Event()
        self._seq = itertools.count(int(time.time() * 1000))
        self._last = {"registry": 0.0, "sweep": 0.0, "heartbeat": 0.0, "send": 0.0, "prune": 0.0}
        self.stats = {"messages": 0, "commands_sent": 0, "phases": 0, "receipts": 0, "late_answers": 0,
                      "events_raised": 0, "replays": 0, "errors": 0, "duplicates": 0, "dropped_on_reconnect": 0,
                      "stale_acks": 0, "dead_letters": 0}
        self.answers = Answers(self.stats)      # commands' phases, broadcasts' receipts
        self.geofences = GeofenceRule(self.cfg.geofence_confirm, self._undo, self.stats)
        self.drone_health = DroneHealth(self.cfg, self._undo, self.stats)
        self.ready = threading.Event()
        self._client = self._make_client()

    # ------------------------------------------------------------------ MQTT
    def _make_client(self) -> mqtt.Client:
        # manual_ack: paho would acknowledge each message as on_message returns, before it is
        # stored, and a worker killed with messages in hand would lose them (tests/faults).
        c = mqtt_client(self.mqtt_url, self.client_id, manual_ack=True, max_inflight=1000, max_queued=0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("devices worker: broker %s refused: %s", redact_url(self.mqtt_url), reason_code)
            return
        gen = self._gate.connected(bool(flags.session_present))
        if flags.session_present:
            # What we hold unacknowledged from the resumed session comes again: forget our copies.
            with self._inbox_lock:
                kept = deque(m for m in self._inbox if not (m.qos == 1 and self._gate.comes_again(m.gen)))
                self.stats["dropped_on_reconnect"] += len(self._inbox) - len(kept)
                self._inbox = kept
        self._connected_at = time.monotonic()
        # noLocal: our own commands do not come back to us.
        opts = SubscribeOptions(qos=1, noLocal=True)
        _, sub = client.subscribe([(f"xlhub/v1/{kind}/+/#", opts) for kind in DEVICE_KINDS]
                                  + [(self._barrier_topic, SubscribeOptions(qos=1))])
        # The broker sends what it kept for us (a resumed session) first and queues this
        # behind it: when it is back, the backlog is in and deadlines can be judged.
        pub = client.publish(self._barrier_topic, json.dumps({"gen": gen}), qos=1)
        self._barrier_mids = (sub, pub.mid)
        self._connected.set()
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._barrier_mids[0] and reason_codes and reason_codes[-1].is_failure:
            self._barrier_refused_now(f"subscription refused: {reason_codes[-1]}")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid == self._barrier_mids[1] and reason_code.is_failure:
            self._barrier_refused_now(f"publish refused: {reason_code}")

    def _barrier_refused_now(self, why: str) -> None:
        self._barrier_refused = self._gate.generation
        log.warning("devices worker: the broker refused our barrier on %s (%s; its ACL must let the hub's "
                    "account use it); deadlines are judged without waiting for the session's backlog",
                    self._barrier_topic, why)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._gate.disconnected()
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        m = _Msg(msg.topic, msg.payload, bytes(corr) if corr else None, bool(msg.retain), time.time(), msg.mid,
                 msg.qos, self._gate.generation)
        with self._inbox_lock:
            self._inbox.append(m)
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        start(self._client, session_expiry_s=self.session_expiry_s)
        for target, name in ((self._work, "devices-worker"), (self._listen, "devices-listen")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        stop(self._client)

    def run(self, stop_event: threading.Event) -> None:
        """Run until ``stop_event`` is set (the supervisor's child process entry point)."""
        self.start()
        stop_event.wait()
        self.stop()

    def wait_ready(self, timeout: float = 20.0) -> bool:
        return self.ready.wait(timeout)

    # ------------------------------------------------------------------ database wake-ups
    def _listen(self) -> None:
        """LISTEN xlhub_devices: a command or broadcast was queued, send it now."""
        Listener(self.db_url, [WAKE_CHANNEL], lambda channel, payload: self._wake.set(), name="xlhub-devices-listen",
                 on_connect=self._wake.set).run(self._stop)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        conn: psycopg.Connection | None = None
        backoff = Backoff(DATABASE)
        pending: deque[_Msg] = deque()
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row, connect_timeout=5,
                                           application_name="xlhub-devices")
                    self._load(conn)
                    backoff.reset()
                self._wake.wait(self.tick_s)
                self._wake.clear()
                self._take(pending)
                if pending:
                    batch = list(pending)
                    with self._undo.transaction(conn):
                        self._handle_batch(conn, batch)
                        self.answers.complete_touched(conn)
                    pending.clear()
                    self._committed(batch)
                self._timers(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # The batch stays in `pending`, unacknowledged, and is handled again once the
                # database is back (or by the next process: the broker still has it).
                delay = backoff.next()
                log.warning("devices worker: database unavailable (%s); retrying in %.1fs", type(exc).__name__,
                            delay)
                self.ready.clear()
                self.stats["errors"] += 1
                self.answers.touched.clear()
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                self._stop.wait(delay)
            except Exception:
                # A bug or a row the database refuses: handle the batch one message at a
                # time so one bad message cannot hold up the others, then go on.
                log.exception("devices worker: batch failed; retrying one by one")
                self.stats["errors"] += 1
                self.answers.touched.clear()
                try:
                    self._one_by_one(conn, pending)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    pass        # the rest stays pending: the next round finds the database gone
        if conn is not None:
            conn.close()

    def _take(self, pending: deque[_Msg]) -> None:
        with self._inbox_lock:
            inbox = self._inbox
            while inbox and len(pending) < BATCH_MAX:
                pending.append(inbox.popleft())
        if any(m.qos == 1 and self._gate.comes_again(m.gen) for m in pending):
            # Held over a reconnect that resumed the session (the database was away, say):
            # the broker is sending these again, handle those copies instead.
            kept = [m for m in pending if not (m.qos == 1 and self._gate.comes_again(m.gen))]
            self.stats["dropped_on_reconnect"] += len(pending) - len(kept)
            pending.clear()
            pending.extend(kept)

    def _handle_batch(self, conn: psycopg.Connection, batch: list[_Msg]) -> None:
        """Handle a batch in the caller's transaction, each message once: copies of one
        handled before (this batch included) are skipped, the rest recorded as handled."""
        for m in batch:
            self._prepare(conn, m)
        keyed = [m for m in batch if m.key is not None]
        seen = self._handled_before(conn, keyed)
        fresh = []
        for m in batch:
            if m.key is not None:
                k = (m.dev.id, m.key)
                if k in seen:
                    self.stats["duplicates"] += 1
                    continue
                seen.add(k)
                fresh.append(k)
            self._handle(conn, m)
        self._record_handled(conn, fresh)

    def _one_by_one(self, conn: psycopg.Connection, pending: deque[_Msg]) -> None:
        while pending:
            m = pending[0]
            try:
                with self._undo.transaction(conn):
                    self._handle_batch(conn, [m])
                    self.answers.complete_touched(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception as exc:
                self.answers.touched.clear()
                log.exception("devices worker: dropped a message on %s (kept in dead_letters)", m.topic)
                try:
                    with conn.transaction():
                        self._dead_letter(conn, m, exc)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception:
                    log.exception("devices worker: could not keep it in dead_letters either")
            pending.popleft()
            self._committed([m])

    def _dead_letter(self, conn: psycopg.Connection, m: _Msg, exc: Exception) -> None:
        """A message the worker could not act on: kept with the reason, as ingest keeps what
        it cannot store, and marked handled, so a copy does not fail (and file) again."""
        reason = f"devices worker: {type(exc).__name__}: {str(exc).strip()[:300]}"
        conn.execute("INSERT INTO dead_letters (time, topic, payload, reason, qos, retained) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     (datetime.fromtimestamp(m.received, UTC), m.topic, m.payload, reason, m.qos, m.retained))
        if m.key is not None and m.dev is not None:
            self._record_handled(conn, [(m.dev.id, m.key)])
        self.stats["dead_letters"] += 1

    def _handled_before(self, conn: psycopg.Connection, msgs: list[_Msg]) -> set[tuple[str, str]]:
        if not msgs:
            return set()
        rows = conn.execute(
            """SELECT h.device_id, h.msg_id FROM device_messages_handled h
               JOIN unnest(%s::text[], %s::text[]) AS k(device_id, msg_id)
                 ON h.device_id = k.device_id AND h.msg_id = k.msg_id""",
            ([m.dev.id for m in msgs], [m.key for m in msgs])).fetchall()
        return {(r["device_id"], r["msg_id"]) for r in rows}

    def _record_handled(self, conn: psycopg.Connection, keys: list[tuple[str, str]]) -> None:
        if keys:
            conn.execute("INSERT INTO device_messages_handled (device_id, msg_id) "
                         "SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                         ([d for d, _ in keys], [k for _, k in keys]))

    def _committed(self, batch: list[_Msg]) -> None:
        """After the commit: acknowledge (on the connection each came in on), and take note
        of our barrier coming back."""
        stale = self._gate.ack([(m.mid, m.qos, m.gen) for m in batch], self._send_acks)
        self.stats["stale_acks"] += stale
        for m in batch:
            if m.barrier is not None and m.barrier == self._gate.generation:
                self._barrier_back = m.barrier

    def _send_acks(self, mids: list[int]) -> None:
        for mid in mids:
            self._client.ack(mid, 1)

    def _load(self, conn: psycopg.Connection) -> None:
        """What the worker decided before (its last run, or before the database went away)
        from what is stored, not from memory: the grid each radio is in, the drones' open
        warnings (a battery warning raised before a restart is not raised again)."""
        self._refresh_registry(conn)
        self.geofences.load(conn)
        self.drone_health.load(conn)

    def _refresh_registry(self, conn: psycopg.Connection) -> None:
        devs = registry.active_devices(conn)
        self.devices = {d.id: d for d in devs}
        stored = {r["device_id"]: r for r in conn.execute("SELECT * FROM device_availability").fetchall()}
        self.tracker.sync([(d.id, d.kind, d.heartbeat_s) for d in devs], stored)
        nodes = conn.execute("SELECT code, name, path, boundary FROM grid_nodes WHERE retired_at IS NULL").fetchall()
        self.geofences.set_grid(nodes)
        self._last["registry"] = time.monotonic()

    def _timers(self, conn: psycopg.Connection) -> None:
        mono = time.monotonic()
        now = datetime.now(UTC)
        if mono - self._last["registry"] >= self.cfg.registry_refresh_s:
            self._refresh_registry(conn)
        if mono - self._last["sweep"] >= min(1.0, self.tick_s * 4):
            self._last["sweep"] = mono
            with self._undo.transaction(conn):
                for t in self.tracker.sweep(now):
                    self._transition(conn, t)
                self.drone_health.sweep(conn, now, self.devices)
                store_liveness(conn, self.tracker)
            if self._may_judge_deadlines(mono):
                with conn.transaction():
                    for cmd in commands.expire_overdue(conn, now):
                        self.answers.command_moved(conn, cmd, now)
                    self.answers.complete_touched(conn)
            self._clear_retained(conn)
        if mono - self._last["prune"] >= 60.0:
            self._last["prune"] = mono
            conn.execute("DELETE FROM device_messages_handled WHERE handled_at < now() - make_interval(secs => %s)",
                         (HANDLED_KEEP_S,))
        # Every round (cheap, partial indexes): a broadcast or command queued through the
        # API goes out as soon as the NOTIFY wakes us.
        with conn.transaction():
            broadcasts.dispatch_due(conn, now, self.tracker.online(), broadcasts.DispatchOptions(
                self.media_base_url, self.cfg.broadcast_answer_margin_s))
            self.answers.complete_touched(conn)
        self._send_pending(conn)
        if mono - self._last["heartbeat"] >= 3.0:
            self._last["heartbeat"] = mono
            self._heartbeat(conn)
            if self._connected.is_set():
                self.ready.set()

    def _may_judge_deadlines(self, mono: float) -> bool:
        """A device's answer missing at its deadline may still be waiting in the broker for
        us: only while connected, and once the backlog the broker kept for us is read (our
        barrier is back), is a missing answer really missing."""
        if not self._gate.is_connected:
            return False
        gen = self._gate.generation
        if gen in (self._barrier_back, self._barrier_refused):
            return True
        if mono - self._connected_at < BARRIER_WAIT_S:
            return False
        if not self._barrier_warned:
            self._barrier_warned = True
            log.warning("devices worker: our barrier message on %s did not come back within %.0fs; judging "
                        "deadlines without it", self._barrier_topic, BARRIER_WAIT_S)
        return True

    # ------------------------------------------------------------------ incoming
    def _prepare(self, conn: psycopg.Connection, m: _Msg) -> None:
        """What the message is about (device, body, message id), or nothing for us."""
        m.parsed = m.dev = m.body = m.key = m.barrier = None
        if m.topic == self._barrier_topic:
            try:
                gen = json.loads(m.payload).get("gen")
            except (ValueError, AttributeError):
                gen = None
            m.barrier = gen if isinstance(gen, int) else None
            return
        if m.retained:
            return      # a cache for newcomers, possibly days old: never evidence of life
        try:
            t = parse_topic(m.topic)
        except ContractError:
            return
        dev = self.devices.get(t.source_id)
        if dev is None and time.monotonic() - self._last["registry"] > 1.0:
            # Added through the API since the last refresh: look again (at most once a second).
            self._refresh_registry(conn)
            dev = self.devices.get(t.source_id)
        if dev is None or dev.kind != t.kind or t.channel == "cmd":
            return
        try:
            body = json.loads(m.payload) if m.payload else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return      # ingest dead-letters it; nothing to decide here
        m.parsed, m.dev, m.body = t, dev, body
        m.key = message_key(t, body)

    def _handle(self, conn: psycopg.Connection, m: _Msg) -> None:
        self.stats["messages"] += 1
        if m.parsed is None:
            return
        t, dev, body = m.parsed, m.dev, m.body
        at = datetime.fromtimestamp(m.received, UTC)
        seq = body.get("seq") if isinstance(body.get("seq"), int) and not isinstance(body.get("seq"), bool) else None
        if t.channel == "avail":
            trans = self.tracker.avail(dev.id, body.get("status"), at, seq)
            if trans is not None:
                self._transition(conn, trans)
            return
        trans = self.tracker.seen(dev.id, at, seq)
        if trans is not None:
            self._transition(conn, trans)
        if t.channel == "res":
            self.answers.on_result(conn, dev, m.correlation, body, at)
        elif t.channel == "evt" and t.kind == "speaker" and t.name == "playback":
            self.answers.on_playback(conn, dev, body, at)
        elif t.channel == "tele":
            if t.kind in self.cfg.geofence_kinds:
                self.geofences.on_fix(conn, dev, body, at)
            if t.kind == "drone":
                self.drone_health.on_telemetry(conn, dev, body, at)

    # ------------------------------------------------------------------ availability
    def _transition(self, conn, t: Transition) -> None:
        """A change of availability: stored (devices/availability.py); a door back from an
        outage asks for the events it buffered meanwhile (devices/doors.py)."""
        store_transition(conn, self.tracker, t, self.stats)
        if doors.replay_after(conn, t, self.cfg):
            self.stats["replays"] += 1
            self._wake.set()

    # ------------------------------------------------------------------ outgoing
    def _send_pending(self, conn: psycopg.Connection) -> None:
        if not self._connected.is_set():
            return
        while True:
            now = datetime.now(UTC)
            with conn.transaction():
                due = commands.due_for_sending(conn, now)
                if not due:
                    return
                sent = []
                for cmd in due:
                    if self._publish_command(cmd, now):
                        sent.append(cmd["id"])
                commands.mark_sent(conn, sent, now)
                broadcasts.on_commands_sent(conn, [c["id"] for c in due if c["broadcast_id"] and c["id"] in sent],
                                            now)
                self.stats["commands_sent"] += len(sent)
            if len(due) < 2000 or not sent:
                return

    def _publish_command(self, cmd: dict, now: datetime) -> bool:
        kind, dev_id = cmd["device_kind"], cmd["device_id"]
        body = {"v": 1, "id": cmd["id"], "ts": int(now.timestamp() * 1000), "seq": next(self._seq),
                **(cmd["body"] or {})}
        if cmd["signed"] or (kind, cmd["name"]) in SIGNED_COMMANDS:
            key = self.secrets.ensure_signing_key(dev_id)
            body.update(device=dev_id, exp=int(cmd["expires_at"].timestamp() * 1000))
            body = signing.sign(key, body)
        # A command that reaches a device late is worse than one that never arrives.
        props = command_properties(cmd["id"], response_topic=topic_for(kind, dev_id, "res"),
                                   expiry_s=(cmd["expires_at"] - now).total_seconds())
        info = self._client.publish(topic_for(kind, dev_id, "cmd", cmd["name"]),
                                    json.dumps(body, ensure_ascii=False, separators=(",", ":")), qos=1,
                                    properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _clear_retained(self, conn) -> None:
        todo = registry.retained_to_clear(conn)
        if not todo or not self._connected.is_set():
            return
        infos = []
        for kind, dev_id in todo:
            for channel in ("avail", "state"):
                # An empty retained message deletes the retained one (MQTT).
                infos.append(self._client.publish(topic_for(kind, dev_id, channel), b"", qos=1, retain=True))
        for info in infos:
            try:
                info.wait_for_publish(5)
            except (RuntimeError, ValueError):
                return
        if all(i.is_published() for i in infos):
            registry.mark_retained_cleared(conn, [d for _, d in todo])

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat(self, conn) -> None:
        open_cmds = conn.execute("SELECT count(*) AS n FROM device_commands WHERE state = ANY(%s)",
                                 (["pending", "sent", "accepted", "progress"],)).fetchone()["n"]
        online = sum(1 for v in self.tracker.online().values() if v)
        detail = {"ready": self._connected.is_set(), "broker": self._connected.is_set(), "devices": len(self.devices),
                  "online": online, "open_commands": open_cmds, **self.stats}
        beat(conn, self.heartbeat_name, "devices", self.started_at, detail)


def message_key(t: Topic, body: dict) -> str | None:
    """The (per device) id of a message, to know a copy of it: the envelope's ``id``; a
    Last Will has none, its status and device time name it (as ingest names its event)."""
    mid = body.get("id")
    if isinstance(mid, str) and 0 < len(mid) <= 128:
        return mid
    ts = body.get("ts")
    if t.channel == "avail" and isinstance(body.get("status"), str) and isinstance(ts, (int, str)) \
            and not isinstance(ts, bool):
        return f"avail-{body['status'][:16]}-{str(ts)[:40]}"
    return None


def run_devices(settings, stop_event: threading.Event) -> None:
    """Entry point for the supervisor's ``devices`` child process: the persistent session."""
    DevicesWorker(settings, client_id=os.environ.get("XLHUB_DEVICES_CLIENT_ID", CLIENT_ID),
                   session_expiry_s=SESSION_EXPIRY_S).run(stop_event)
