"""Drone health warnings, raised by the devices worker as ``drone.health`` events:
``battery_low``, ``battery_critical`` while flying; ``link_lost`` when a flying drone is
silent ``drone_link_lost_s``; ``link_restored`` when it is heard again.

Each is raised once per episode (below): the open ones are stored in ``device_open_warnings``
(migration 0008) in the transaction that raised them and read back when the worker starts
(``DroneHealth.load``), so a restart raises none again.

What a batch teaches the drones' states stands only if the batch's transaction commits:
every change of a drone's entry is told to the worker's ``UndoLog`` first (devices/undo.py)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime

import psycopg

from devices import registry
from devices.settings import DevicesSettings
from devices.undo import UndoLog

EMITS = ("drone.health",)       # labels and default severities: config/vocabulary.py
# A drone's warnings raised once per episode, open until it ends (device_open_warnings):
# battery ones until it lands or the battery is back above the threshold (plus
# drone_battery_rearm_pct), link_lost until it is heard again.
BATTERY_WARNINGS = frozenset({"battery_low", "battery_critical"})
DRONE_EPISODE_WARNINGS = BATTERY_WARNINGS | {"link_lost"}
LABELS = {"battery_low": "无人机电量低", "battery_critical": "无人机电量严重不足",
          "link_lost": "无人机飞行中失去联系", "link_restored": "无人机恢复联系"}


class DroneHealth:
    """``stats``: the worker's counters (``events_raised``)."""

    def __init__(self, cfg: DevicesSettings, undo: UndoLog, stats: dict) -> None:
        self.cfg = cfg
        self._undo = undo
        self.stats = stats
        # per drone: last (monotonic), flying, open (its open episode warnings, as stored)
        self.drones: dict[str, dict] = {}

    def load(self, conn: psycopg.Connection) -> None:
        """The drones' open warnings as stored (a battery warning raised before a restart is
        not raised again)."""
        stored: dict[str, set[str]] = {}
        for row in conn.execute("SELECT device_id, warning FROM device_open_warnings WHERE warning = ANY(%s)",
                                (sorted(DRONE_EPISODE_WARNINGS),)).fetchall():
            stored.setdefault(row["device_id"], set()).add(row["warning"])
        for dev_id in set(self.drones) | set(stored):
            st = self._state(dev_id)
            st["open"] = stored.get(dev_id, set())
            if st["open"] and st["last"] is None:
                st["flying"] = True         # it was when they were raised; its next message tells

    def _state(self, dev_id: str) -> dict:
        self._undo.keep(self.drones, dev_id)
        return self.drones.setdefault(dev_id, {"open": set(), "last": None, "flying": False})

    def on_telemetry(self, conn, dev, body: dict, at: datetime) -> None:
        st = self._state(dev.id)
        before = set(st["open"])
        mode, battery = body.get("mode"), body.get("battery_pct")
        st["last"] = time.monotonic()
        st["flying"] = mode not in (None, "idle")
        if "link_lost" in st["open"]:
            st["open"].discard("link_lost")
            self._warning(conn, dev, "link_restored", "info", body, at)
        if not st["flying"]:
            st["open"] -= BATTERY_WARNINGS          # landed: the episode is over
        elif isinstance(battery, (int, float)):
            # Back above a threshold (with a margin, so readings around it do not flap):
            # that warning's episode is over, a new drop warns again.
            rearm = self.cfg.drone_battery_rearm_pct
            if battery >= self.cfg.drone_battery_critical_pct + rearm:
                st["open"].discard("battery_critical")
            if battery >= self.cfg.drone_battery_warn_pct + rearm:
                st["open"].discard("battery_low")
            if battery < self.cfg.drone_battery_critical_pct and "battery_critical" not in st["open"]:
                st["open"].update({"battery_critical", "battery_low"})
                self._warning(conn, dev, "battery_critical", "major", body, at)
            elif battery < self.cfg.drone_battery_warn_pct and "battery_low" not in st["open"]:
                st["open"].add("battery_low")
                self._warning(conn, dev, "battery_low", "minor", body, at)
        self._store_open(conn, dev.id, before, st["open"], at)

    def sweep(self, conn, now: datetime, devices: Mapping[str, registry.DeviceRecord]) -> None:
        """Flying drones silent ``drone_link_lost_s``: link_lost (once per episode)."""
        mono = time.monotonic()
        for dev_id, st in list(self.drones.items()):
            if st["flying"] and "link_lost" not in st["open"] and st["last"] and \
                    mono - st["last"] > self.cfg.drone_link_lost_s:
                dev = devices.get(dev_id)
                if dev is None:
                    continue
                st = self._state(dev_id)
                st["open"].add("link_lost")
                self._warning(conn, dev, "link_lost", "major", {"lost_s": round(mono - st["last"], 1)}, now)
                self._store_open(conn, dev_id, st["open"] - {"link_lost"}, st["open"], now)

    def _store_open(self, conn, dev_id: str, before: set[str], after: set[str], at: datetime) -> None:
        """The open episode warnings as stored, in the transaction that raised or ended
        them: a restarted worker starts from them (``load``)."""
        if after - before:
            conn.execute("INSERT INTO device_open_warnings (device_id, warning, raised_at) "
                         "SELECT %s, w, %s FROM unnest(%s::text[]) AS w ON CONFLICT DO NOTHING",
                         (dev_id, at, sorted(after - before)))
        if before - after:
            conn.execute("DELETE FROM device_open_warnings WHERE device_id = %s AND warning = ANY(%s)",
                         (dev_id, sorted(before - after)))

    def _warning(self, conn, dev, warning: str, severity: str, body: dict, at: datetime) -> None:
        payload = {"warning": warning, "label": LABELS[warning]}
        for k in ("battery_pct", "mode", "alt_m", "lost_s"):
            if k in body:
                payload[k] = body[k]
        lat, lon = body.get("lat"), body.get("lon")
        registry.store_event(conn, device_id=dev.id, kind="drone", type="drone.health", severity=severity,
                             payload=payload, lat=lat if isinstance(lat, (int, float)) else None,
                             lon=lon if isinstance(lon, (int, float)) else None, at=at)
        self.stats["events_raised"] += 1
