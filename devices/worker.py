"""The devices worker: the hub's side of every field device, as one long-running process
(``DevicesWorker(settings).run(stop_event)``, heartbeat row ``devices``).

It keeps one MQTT connection (the hub's account; the session, its acknowledgements, the
barrier and what is published: devices/session.py) and one database connection (this
module: the worker thread, its batches and timers), and does:

- availability: online/offline from ``avail`` (Last Will) and from the heartbeat timeout
  (devices/availability.py, which decides and, called from here, stores); a hub-decided
  change is stored once as an event;
- commands: publishes what the API (or the service itself) queued in ``device_commands``
  (devices/session.py signs the ones that must be signed: door unlock), and follows the
  phases the devices answer with until finished | failed | rejected | preempted, or
  expires them (devices/answers.py);
- broadcasts: fans out due broadcasts (schedules) to the speakers under their targets,
  tells them to stop at a broadcast's end time (a warning's ``<expires>``), and follows the
  per-speaker receipts to the report (devices/broadcast/, devices/answers.py);
- doors: after an outage asks the controller to replay its buffered events
  (``cmd/replay_events`` since the last seq the hub saw), so none are missing
  (devices/doors.py);
- radios: geofence enter/exit against the grid boundaries (devices/geofence.py,
  ``GeofenceRule``); drones: health warnings (battery, link lost while flying:
  devices/drones.py);
- decommissioned devices: clears their retained ``avail``/``state`` topics.

Ingest stays the only writer of what devices send; this service writes what the hub
decides (commands, receipts, availability, the events it raises itself).

One worker thread owns the database connection and handles MQTT messages and timers in
order, so there are no races between a device's answer and a timeout of the same command.

Nothing is lost when the worker dies (SIGKILL, a crash) with messages in hand: a QoS 1
message is acknowledged to the broker only after the transaction that handled it
committed (``DevicesSession.committed``), so the broker delivers the rest again from the
persistent session. A message can therefore come twice (killed between commit and
acknowledgement, or a device that sent it twice): the (device, message id) of everything
handled is written in the same transaction (``device_messages_handled``) and a copy
changes nothing — no second event, phase, receipt move, geofence crossing or door replay.
A message the worker cannot handle (a bug, a row the database refuses) goes to
``dead_letters`` with the reason, like ingest's, and is acknowledged.

What the rules learn in memory from a batch (the availability and geofence trackers, the
drones' states) stands only if the batch's transaction commits: they all tell the one
``UndoLog`` (devices/undo.py) that opens the transactions of batches and sweeps.

Deadlines (command expiry, a broadcast receipt's 超时未回执) are judged only on what the
worker could have heard: while it is connected, and once the backlog the broker kept for
it is read (``DevicesSession.may_judge_deadlines``, the barrier).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

from bus.envelope import ContractError
from bus.topics import Topic, parse_topic
from config.vocabulary import DEVICE_KINDS
from devices import doors, drones, geofence, registry
from devices.answers import Answers
from devices.availability import AvailabilityTracker, Transition, store_liveness, store_transition
from devices.broadcast import service as broadcasts
from devices.commands import service as commands
from devices.credentials import DeviceSecrets
from devices.drones import DroneHealth
from devices.geofence import GeofenceRule
from devices.session import CLIENT_ID, SESSION_EXPIRY_S, DevicesSession, Msg
from devices.settings import DevicesSettings
from devices.undo import UndoLog
from store.backoff import DATABASE, Backoff
from store.links import LinkSigner
from store.db import close_quietly
from store.listen import Listener
from store.secrets import SecretBox
from store.workers import beat

log = logging.getLogger(__name__)

HEARTBEAT_NAME = "devices"
WAKE_CHANNEL = "xlhub_devices"     # NOTIFY'd when a command or broadcast is queued (devices/commands)
# A message can come again only while the broker keeps the session it was delivered in
# (plus a device's own resend): what was handled is remembered that long, and a margin.
HANDLED_KEEP_S = SESSION_EXPIRY_S + 600
BATCH_MAX = 5000
# How often the worker's loop turns with nothing arriving (messages and notifications wake it
# at once): the availability sweep's and the command deadlines' resolution.
TICK_S = 1.0
# The longest queued commands and broadcasts wait unlooked-at (a NOTIFY lost while the listen
# connection was away, a publish the broker refused).
OUTBOUND_POLL_S = 10.0
# The event types this worker raises itself (labels and default severities: config/vocabulary.py):
# availability decided by the hub, grid crossings of tracked devices, drone health warnings.
EMITS = (*(f"{k}.{s}" for k in DEVICE_KINDS for s in ("online", "offline")), *geofence.EMITS, *drones.EMITS)


class DevicesWorker:
    """``settings``: config.settings.Settings (database_url, mqtt_url, var_dir, http_*);
    ``devices_settings``: DevicesSettings (defaults from ``XLHUB_DEVICES_*``)."""

    def __init__(self, settings, devices_settings: DevicesSettings | None = None, *, client_id: str | None = None,
                 heartbeat_name: str = HEARTBEAT_NAME, tick_s: float = TICK_S, session_expiry_s: int = 0) -> None:
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
        # Where speakers fetch hub media: the configured public base URL (settings.base_url),
        # with links signed for a short while (store/links.py).
        self.media_base_url = self.cfg.media_base_url or settings.base_url
        self.links = LinkSigner.for_var_dir(settings.var_dir, SecretBox.from_settings(settings))
        self.started_at = datetime.now(UTC)
        # What the trackers and the drone states learn from a batch stands only if the
        # batch's transaction commits (devices/undo.py): otherwise the messages come again
        # and must meet the memory as it was.
        self._undo = UndoLog()
        self.tracker = AvailabilityTracker(self.cfg, self.started_at, self._undo)
        self.devices: dict[str, registry.DeviceRecord] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Queued commands and broadcasts are looked at when the API notifies, when a new
        # connection can send what waited, when the next scheduled broadcast is due, and at
        # least every OUTBOUND_POLL_S: never on every tick.
        self._outbound = threading.Event()
        self._outbound_at = 0.0
        self._outbound_generation = -1
        self._open_commands = 1          # as the last heartbeat counted them (1: assume some until counted)
        self._threads: list[threading.Thread] = []
        self._last = {"registry": 0.0, "sweep": 0.0, "heartbeat": 0.0, "send": 0.0, "prune": 0.0}
        self.stats = {"messages": 0, "commands_sent": 0, "phases": 0, "receipts": 0, "late_answers": 0,
                      "events_raised": 0, "replays": 0, "errors": 0, "duplicates": 0, "dropped_on_reconnect": 0,
                      "stale_acks": 0, "dead_letters": 0}
        self.answers = Answers(self.stats)      # commands' phases, broadcasts' receipts
        self.geofences = GeofenceRule(self.cfg.geofence_confirm, self._undo, self.stats)
        self.drone_health = DroneHealth(self.cfg, self._undo, self.stats)
        self.ready = threading.Event()
        # 0: a session that ends with the connection (tests run several services at once).
        self.session = DevicesSession(self.mqtt_url, self.client_id, session_expiry_s=session_expiry_s,
                                      secrets=self.secrets, wake=self._wake, stats=self.stats)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.session.start()
        for target, name in ((self._work, "devices-worker"), (self._listen, "devices-listen")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self.session.stop()

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
        def look() -> None:
            self._outbound.set()
            self._open_commands = max(self._open_commands, 1)
            self._wake.set()

        Listener(self.db_url, [WAKE_CHANNEL], lambda channel, payload: look(), name="xlhub-devices-listen",
                 on_connect=look).run(self._stop)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        conn: psycopg.Connection | None = None
        backoff = Backoff(DATABASE)
        pending: deque[Msg] = deque()
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.db_url, autocommit=True, row_factory=dict_row, connect_timeout=5,
                                           application_name="xlhub-devices")
                    self._load(conn)
                    backoff.reset()
                self._wake.wait(self.tick_s)
                self._wake.clear()
                self.session.take(pending, BATCH_MAX)
                if pending:
                    batch = list(pending)
                    with self._undo.transaction(conn):
                        self._handle_batch(conn, batch)
                        self.answers.complete_touched(conn)
                    pending.clear()
                    self.session.committed(batch)
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
                close_quietly(conn)
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

    def _handle_batch(self, conn: psycopg.Connection, batch: list[Msg]) -> None:
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

    def _one_by_one(self, conn: psycopg.Connection, pending: deque[Msg]) -> None:
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
            self.session.committed([m])

    def _dead_letter(self, conn: psycopg.Connection, m: Msg, exc: Exception) -> None:
        """A message the worker could not act on: kept with the reason, as ingest keeps what
        it cannot store, and marked handled, so a copy does not fail (and file) again."""
        reason = f"devices worker: {type(exc).__name__}: {str(exc).strip()[:300]}"
        conn.execute("INSERT INTO dead_letters (time, topic, payload, reason, qos, retained) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     (datetime.fromtimestamp(m.received, UTC), m.topic, m.payload, reason, m.qos, m.retained))
        if m.key is not None and m.dev is not None:
            self._record_handled(conn, [(m.dev.id, m.key)])
        self.stats["dead_letters"] += 1

    def _handled_before(self, conn: psycopg.Connection, msgs: list[Msg]) -> set[tuple[str, str]]:
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
            self._clear_retained(conn)        # devices decommissioned since
        if mono - self._last["sweep"] >= min(1.0, self.tick_s * 4):
            self._last["sweep"] = mono
            with self._undo.transaction(conn):
                for t in self.tracker.sweep(now):
                    self._transition(conn, t)
                self.drone_health.sweep(conn, now, self.devices)
                store_liveness(conn, self.tracker)
            if self._open_commands and self.session.may_judge_deadlines(mono):
                with conn.transaction():
                    for cmd in commands.expire_overdue(conn, now):
                        self.answers.command_moved(conn, cmd, now)
                    self.answers.complete_touched(conn)
        if mono - self._last["prune"] >= 60.0:
            self._last["prune"] = mono
            conn.execute("DELETE FROM device_messages_handled WHERE handled_at < now() - make_interval(secs => %s)",
                         (HANDLED_KEEP_S,))
        # A broadcast or command queued through the API goes out as soon as the NOTIFY wakes us.
        generation = self.session.generation
        if self._outbound.is_set() or mono >= self._outbound_at or generation != self._outbound_generation:
            self._outbound.clear()
            self._outbound_generation = generation
            with conn.transaction():
                broadcasts.dispatch_due(conn, now, self.tracker.online(), broadcasts.DispatchOptions(
                    self.media_base_url, self.cfg.broadcast_answer_margin_s, sign=self.links.sign))
                broadcasts.stop_ended(conn, now)        # a warning's <expires>: the speakers are told to stop
                self.answers.complete_touched(conn)
            if self._send_pending(conn):
                self._open_commands = max(self._open_commands, 1)
            self._outbound_at = mono + self._next_outbound_in(conn)
        if mono - self._last["heartbeat"] >= 3.0:
            self._last["heartbeat"] = mono
            self._heartbeat(conn)
            if self.session.connected.is_set():
                self.ready.set()

    # ------------------------------------------------------------------ incoming
    def _prepare(self, conn: psycopg.Connection, m: Msg) -> None:
        """What the message is about (device, body, message id), or nothing for us."""
        m.parsed = m.dev = m.body = m.key = m.barrier = None
        if self.session.read_barrier(m):
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

    def _handle(self, conn: psycopg.Connection, m: Msg) -> None:
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
    def _next_outbound_in(self, conn: psycopg.Connection) -> float:
        """Seconds until the next scheduled broadcast is due, or a playing one's end time
        comes, at most OUTBOUND_POLL_S."""
        due = conn.execute(
            """SELECT extract(epoch FROM min(t) - now())::float8 AS s FROM (
                   SELECT min(coalesce(scheduled_at, requested_at)) AS t FROM device_broadcasts WHERE state = 'scheduled'
                   UNION ALL
                   SELECT min(ends_at) FROM device_broadcasts
                   WHERE state = 'playing' AND stop_requested_at IS NULL AND ends_at IS NOT NULL) x""").fetchone()["s"]
        return OUTBOUND_POLL_S if due is None else max(0.0, min(OUTBOUND_POLL_S, due))

    def _send_pending(self, conn: psycopg.Connection) -> int:
        """Publish the commands due for sending; how many went."""
        total = 0
        if not self.session.connected.is_set():
            return total
        while True:
            now = datetime.now(UTC)
            with conn.transaction():
                due = commands.due_for_sending(conn, now)
                if not due:
                    return total
                sent = []
                for cmd in due:
                    if self.session.publish_command(cmd, now):
                        sent.append(cmd["id"])
                commands.mark_sent(conn, sent, now)
                broadcasts.on_commands_sent(conn, [c["id"] for c in due if c["broadcast_id"] and c["id"] in sent],
                                            now)
                self.stats["commands_sent"] += len(sent)
                total += len(sent)
            if len(due) < 2000 or not sent:
                return total

    def _clear_retained(self, conn) -> None:
        todo = registry.retained_to_clear(conn)
        if not todo or not self.session.connected.is_set():
            return
        if self.session.clear_retained(todo):
            registry.mark_retained_cleared(conn, [d for _, d in todo])

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat(self, conn) -> None:
        open_cmds = conn.execute("SELECT count(*) AS n FROM device_commands WHERE state = ANY(%s)",
                                 (["pending", "sent", "accepted", "progress"],)).fetchone()["n"]
        online = sum(1 for v in self.tracker.online().values() if v)
        connected = self.session.connected.is_set()
        detail = {"ready": connected, "broker": connected, "devices": len(self.devices),
                  "online": online, "open_commands": open_cmds, **self.stats}
        self._open_commands = open_cmds
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
