"""The alerts worker: the process (``python -m hub.process alerts``) that turns events into
alarms and cases, keeps the SLA clocks and delivers the outbox.  Broadcasts that rules ask
for are devices-layer broadcasts (the devices worker sends them); the engine puts their
reports on the cases.

    engine = AlertsWorker(settings)        # settings.database_url, mqtt_url, site_file
    engine.run(stop_event)                 # blocks until stop_event is set

Threads, each with its own pooled connections:
- listener: LISTEN xlhub_alert_events / xlhub_outbox, wakes the others
  (and wakes everyone after a reconnect: a notification sent while it was away is not lost
  because every worker reads its table, the notification only says "look now");
- events (the caller's thread): drains alert_event_queue in batches — one transaction per
  batch removes the queued events and writes everything they cause, a savepoint per event
  keeps one bad event from blocking the rest (it is kept in alert_event_failures);
- sender: the outbox webhook sender (alerts.delivery.sender);
- scanner: when something is due (the nearest deadline in the tables; a finished broadcast
  or a late answer notifies it), at least every ``scan_interval_s``: SLA clocks, quiet
  alarms, unacknowledged alarms that become cases, finished broadcasts whose report goes on
  their case, speakers' answers after that report (late receipts) as notes on the case;
- commands: publishes camera evidence requests after their batch commits (best effort);
- cap-feeds: polls the site file's CAP feeds and imports their new alerts
  (alerts.cap.feeds; asleep until a feed or a failed entry is due);
- heartbeat: worker_heartbeats row "alerts" every 5 s, read by /readyz.
"""
from __future__ import annotations

import logging
import os
from collections import deque
import threading
import time
from datetime import UTC, datetime


from alerts import actions, feed
from alerts.alarms import service as alarms
from alerts.alarms.models import Event
from alerts.cap.feeds import FeedPoller
from alerts.cases import service as cases
from alerts.config import AlertsConfig, load_config
from alerts.delivery import outbox
from alerts.delivery.sender import WebhookSender
from alerts.mqtt import CommandPublisher
from alerts.processing import Processor
from alerts.registry import RegistryView
from bus.commands import Command
from config.settings import Settings
from config.site import SiteError
from devices.broadcast import Voice
from devices.broadcast.service import DONE_CHANNEL
from devices.settings import DevicesSettings
from store.db import open_pool, wait_for_database
from store.listen import Listener
from store.workers import beat

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "xlhub_alert_events"
OUTBOX_CHANNEL = "xlhub_outbox"
ALERTING_CHANNEL = "xlhub_alerting"      # store/sitedoc.py: the rules or SLA limits changed in the UI
MAX_PENDING_COMMANDS = 1000
# How long a loop sleeps with nothing to do: long while the listener hears notifications (they
# wake it for work), short while it does not (then the loops poll).
IDLE_LISTENING_S = 30.0
IDLE_POLLING_S = 1.0
# The longest the clock scan sleeps when nothing is due (it wakes earlier for what is).
SCAN_MAX_S = 10.0
NEXT_DUE = """
SELECT extract(epoch FROM least(
    (SELECT min(sla_check_at) FROM cases),
    (SELECT min(clear_due_at) FROM alarms WHERE state <> 'cleared'),
    (SELECT min(case_due_at) FROM alarms WHERE case_id IS NULL AND state = 'active')) - now())::float8 AS s
"""

TAKE_BATCH = """
DELETE FROM alert_event_queue q
WHERE q.event_id IN (SELECT event_id FROM alert_event_queue ORDER BY enqueued_at, event_id
                     LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING q.event_id, q.event_time, q.enqueued_at
"""
LOAD_EVENTS = """
SELECT e.* FROM events e JOIN unnest(%s::text[], %s::timestamptz[]) AS k(id, time) ON e.id = k.id AND e.time = k.time
ORDER BY e.time, e.id
"""


class AlertsWorker:
    def __init__(self, settings: Settings, *, name: str = "alerts", scan_interval_s: float = SCAN_MAX_S,
                 batch: int = 200, webhook_workers: int = 4, heartbeat_s: float = 5.0) -> None:
        if not settings.database_url:
            raise ValueError("the alerts worker needs settings.database_url")
        self.settings = settings
        self.name = name
        self.db_url = settings.database_url
        self.mqtt_url = settings.mqtt_url
        self.site_file = settings.site_file
        self.scan_interval_s = scan_interval_s
        self.batch = batch
        self.webhook_workers = webhook_workers
        self.heartbeat_s = heartbeat_s
        self.registry = RegistryView()
        # Broadcast text is synthesised where the API synthesises it and serves it from.
        self.voice = Voice.from_settings(DevicesSettings(), settings.var_dir)
        self.processor = Processor(self.registry, self.voice)
        self.events_wake = threading.Event()
        self.scan_wake = threading.Event()
        self.commands_wake = threading.Event()
        self.ready = threading.Event()
        self.counters = {"events": 0, "alarms": 0, "cases": 0, "correlated": 0, "failed": 0, "disarmed": 0}
        self.pool = None
        self.sender: WebhookSender | None = None
        self.feeds: FeedPoller | None = None
        self.mqtt: CommandPublisher | None = None
        self.listening = False
        self._cfg: AlertsConfig | None = None
        # The alerting sections edited in the UI (store/sitedoc.py): re-read on xlhub_alerting.
        self.sections_changed = threading.Event()
        self.sections_changed.set()
        self._sections: dict | None = None
        self._bad_mtime: float | None = None
        self._pending_commands: list[tuple[str, Command]] = []
        self._commands_lock = threading.Lock()
        self._started_at = datetime.now(UTC)
        self._last_prune = 0.0
        self.queue_waits: deque[float] = deque(maxlen=1000)

    # -- configuration ----------------------------------------------------------------------
    def config(self) -> AlertsConfig:
        """The site file's alerting configuration; a broken edit keeps the last good one."""
        if self.sections_changed.is_set():
            self._read_sections()
        try:
            self._cfg = load_config(self.site_file, self._sections)
        except (SiteError, OSError) as exc:
            mtime = _mtime(self.site_file)
            if self._cfg is None:
                raise
            if mtime != self._bad_mtime:
                self._bad_mtime = mtime
                log.error("site file %s has problems; keeping the rules loaded before:\n%s", self.site_file, exc)
        return self._cfg

    def _read_sections(self) -> None:
        """The registry's alerting sections (rules, schedules, arming, SLA limits as edited in
        the UI), replacing the site file's; kept as they were when the database cannot say."""
        from store import sitedoc
        self.sections_changed.clear()
        try:
            if self.pool is not None:
                with self.pool.connection() as conn:
                    found = sitedoc.sections(conn)
            else:
                from store.db import connect
                with connect(self.db_url) as conn:
                    found = sitedoc.sections(conn)
        except Exception as exc:        # noqa: BLE001 — the database is away: retry on the next call
            log.warning("alerting sections cannot be read (%s); keeping those loaded before", exc)
            self.sections_changed.set()
            return
        if found != self._sections:
            if self._sections is not None:
                log.info("alerting configuration changed in the registry: %s reloaded", ", ".join(sorted(found)))
            self._sections = found or None

    # -- lifecycle --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        wait_for_database(self.db_url, timeout=120)
        self.config()
        self.pool = open_pool(self.db_url, min_size=2, max_size=4 + self.webhook_workers, name="xlhub-alerts")
        self.pool.wait(timeout=30)
        with self.pool.connection() as conn:
            self.registry.refresh(conn)
        if self.mqtt_url:
            self.mqtt = CommandPublisher(self.mqtt_url)
            self.mqtt.start()
        self.sender = WebhookSender(self.pool, self.config, workers=self.webhook_workers)
        self.feeds = FeedPoller(self.pool, self.config, self.registry, self.voice)
        threads = [threading.Thread(target=fn, args=(stop,), name=f"alerts-{label}", daemon=True)
                   for label, fn in (("listen", self._listen), ("sender", self.sender.run), ("scan", self._scan_loop),
                                     ("commands", self._commands_loop), ("cap-feeds", self.feeds.run),
                                     ("heartbeat", self._heartbeat_loop),
                                     ("stop", self._wake_all_on))]
        for t in threads:
            t.start()
        self.ready.set()
        log.info("alerts worker running: %d rules, %d case systems", len(self._cfg.rules.rules),
                 len(self._cfg.case_systems))
        try:
            self._events_loop(stop)
        finally:
            stop.set()
            self.events_wake.set()
            self.commands_wake.set()
            self.sender.wake.set()
            for t in threads:
                t.join(10)
            if self.mqtt is not None:
                self.mqtt.stop()
            self.pool.close()
            log.info("alerts worker stopped")

    def _wake_all_on(self, stop: threading.Event) -> None:
        """The loops sleep long on their own events: a stop wakes every one of them."""
        stop.wait()
        for wake in (self.events_wake, self.scan_wake, self.commands_wake, self.sender.wake, self.feeds.wake):
            wake.set()

    # -- listener ---------------------------------------------------------------------------
    def _listen(self, stop: threading.Event) -> None:
        wakes = {EVENTS_CHANNEL: self.events_wake, OUTBOX_CHANNEL: self.sender.wake, DONE_CHANNEL: self.scan_wake,
                 ALERTING_CHANNEL: self.sections_changed}

        def connected() -> None:
            # While notifications come, the loops sleep long: they are woken for work.
            self.listening = True
            self.sender.max_idle_s = IDLE_LISTENING_S
            for wake in wakes.values():         # catch up on what arrived while away
                wake.set()
            self.events_wake.set()

        def lost(exc: BaseException) -> None:
            self.listening = False
            self.sender.max_idle_s = IDLE_POLLING_S

        Listener(self.db_url, tuple(wakes), lambda channel, payload: wakes[channel].set(), name="xlhub-alerts-listen",
                 on_connect=connected, on_lost=lost, poll_s=0.5).run(stop)
        self.listening = False
        self.sender.max_idle_s = IDLE_POLLING_S

    # -- events -----------------------------------------------------------------------------
    def _events_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                n = self.drain_once()
            except Exception:
                log.exception("alert event batch failed; retrying")
                n = 0
                stop.wait(1.0)
            if n == 0:
                self.events_wake.wait(IDLE_LISTENING_S if self.listening else IDLE_POLLING_S)
                self.events_wake.clear()

    def drain_once(self) -> int:
        """Process one batch of queued events; returns how many were taken."""
        cfg = self.config()
        commands: list[tuple[str, Command]] = []
        wake_sender = False
        with self.pool.connection(timeout=10) as conn:
            self.registry.maybe_refresh(conn)
            with conn.transaction():
                keys = conn.execute(TAKE_BATCH, (self.batch,)).fetchall()
                if not keys:
                    return 0
                rows = conn.execute(LOAD_EVENTS, ([k["event_id"] for k in keys],
                                                  [k["event_time"] for k in keys])).fetchall()
                now = datetime.now(UTC)
                # How long events waited between their insert (ingest's transaction) and
                # this batch: the hand-off latency, in the heartbeat for /readyz.
                self.queue_waits.extend((now - k["enqueued_at"]).total_seconds() * 1000 for k in keys)
                for row in rows:
                    ev = Event.from_row(row)
                    if ev.source_id not in self.registry.sources:
                        self.registry.maybe_refresh(conn, missing=ev.source_id)
                    try:
                        with conn.transaction():
                            out = self.processor.process(conn, cfg, ev, now)
                    except Exception as exc:
                        self.counters["failed"] += 1
                        log.exception("event %s (%s from %s) could not be processed", ev.id, ev.type, ev.source_id)
                        conn.execute("INSERT INTO alert_event_failures (event_id, event_time, error) VALUES (%s, %s, %s) "
                                     "ON CONFLICT (event_id) DO UPDATE SET error = EXCLUDED.error, failed_at = now()",
                                     (ev.id, ev.time, f"{type(exc).__name__}: {exc}"[:2000]))
                        continue
                    self.counters["events"] += 1
                    self.counters["alarms"] += int(out.created_alarm)
                    self.counters["cases"] += int(out.case_id is not None)
                    self.counters["correlated"] += int(bool(out.correlated_to))
                    self.counters["disarmed"] += int(bool(out.disarmed) and out.alarm_id is None)
                    commands += out.commands
                    wake_sender = wake_sender or out.case_id is not None or bool(out.correlated_to)
        self.scan_wake.set()     # the events may have set new deadlines (clear_after, unacknowledged_for)
        # committed: now the outside world may hear of it
        if wake_sender or cfg.case_systems:
            self.sender.wake.set()
        if commands and self.mqtt is not None:
            with self._commands_lock:
                # Best effort: while the broker is away, keep the latest requests only.
                self._pending_commands = (self._pending_commands + commands)[-MAX_PENDING_COMMANDS:]
            self.commands_wake.set()
        return len(keys)

    # -- clocks -----------------------------------------------------------------------------
    def _scan_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.scan_wake.wait(self.next_scan_in())
            self.scan_wake.clear()
            if stop.is_set():
                break
            try:
                self.scan_once()
            except Exception:
                log.exception("alerts scan failed")

    def next_scan_in(self) -> float:
        """Seconds until the scan has something to do: the nearest SLA check, quiet alarm to
        clear or unacknowledged alarm to turn into a case, at most ``scan_interval_s`` (a
        finished broadcast or a late answer wakes it at once, through DONE_CHANNEL)."""
        try:
            with self.pool.connection(timeout=5) as conn:
                row = conn.execute(NEXT_DUE).fetchone()
        except Exception:
            return min(self.scan_interval_s, IDLE_POLLING_S)
        due = row["s"] if row else None
        return self.scan_interval_s if due is None else max(0.01, min(self.scan_interval_s, float(due)))

    def scan_once(self, now: datetime | None = None) -> dict[str, int]:
        cfg = self.config()
        now = now or datetime.now(UTC)
        done = {"sla": 0, "cleared": 0, "cases": 0, "reports": 0, "late_receipts": 0}
        with self.pool.connection(timeout=10) as conn:
            due = cases.sla_due(conn, now)
        for case_id in due:
            try:
                with self.pool.connection(timeout=10) as conn:
                    done["sla"] += len(cases.sla_check(conn, cfg, case_id, now))
            except Exception:
                log.exception("SLA check of case %s failed", case_id)
        with self.pool.connection(timeout=10) as conn:
            done["cleared"] = alarms.clear_quiet(conn, now)
        with self.pool.connection(timeout=10) as conn:
            for alarm in alarms.due_for_case(conn, now):
                rule = cfg.rules.by_id.get(alarm["rule_id"])
                if rule is None or rule.case is None:
                    # the rule is gone or no longer makes cases: stop asking
                    conn.execute("UPDATE alarms SET case_due_at = NULL WHERE id = %s", (alarm["id"],))
                    continue
                self.processor.open_case(conn, cfg, rule, alarm, None, now)
                done["cases"] += 1
        with self.pool.connection(timeout=10) as conn:
            done["reports"] = actions.attach_reports(conn, cfg, now)
        with self.pool.connection(timeout=10) as conn:
            done["late_receipts"] = actions.note_late_receipts(conn, cfg, now)
        if time.monotonic() - self._last_prune > 3600:
            with self.pool.connection(timeout=10) as conn:
                feed.prune(conn)
            self._last_prune = time.monotonic()
        if done["sla"] or done["cases"] or done["reports"] or done["late_receipts"]:
            self.sender.wake.set()
        return done

    # -- commands ---------------------------------------------------------------------------
    def _commands_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.publish_commands()
            except Exception:
                log.exception("publishing commands failed")
            with self._commands_lock:
                waiting = bool(self._pending_commands)
            # Woken when a batch queues commands; while some wait for the broker, retried.
            self.commands_wake.wait(2.0 if waiting else 60.0)
            self.commands_wake.clear()

    def publish_commands(self) -> int:
        """Camera evidence requests of the batches committed since (best effort: the
        correlation window collects what comes)."""
        if self.mqtt is None or not self.mqtt.connected.is_set():
            return 0
        with self._commands_lock:
            commands, self._pending_commands = self._pending_commands, []
        for source_id, command in commands:
            self.mqtt.command(source_id, command)
        return len(commands)

    # -- heartbeat ------------------------------------------------------------------------------
    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with self.pool.connection(timeout=5) as conn:
                    queued = conn.execute("SELECT count(*) AS n FROM alert_event_queue").fetchone()["n"]
                    waits = sorted(self.queue_waits)
                    detail = {"ready": self.ready.is_set() and self.listening, "queued_events": queued,
                              "queue_wait_ms": {"p50": round(waits[len(waits) // 2], 1) if waits else None,
                                                "max": round(waits[-1], 1) if waits else None},
                              "outbox": outbox.counts(conn), "mqtt": bool(self.mqtt and self.mqtt.connected.is_set()),
                              "delivery": dict(self.sender.stats) if self.sender else {},
                              "cap_feeds": dict(self.feeds.stats) if self.feeds else {}, **self.counters}
                    beat(conn, self.name, "alerts", self._started_at, detail)
            except Exception as exc:
                log.debug("alerts heartbeat failed: %s", type(exc).__name__)
            stop.wait(self.heartbeat_s)


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
