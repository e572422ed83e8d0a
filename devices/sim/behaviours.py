"""How each kind of simulated device behaves, and how it answers the hub's commands.

Four kinds, each a small state machine that produces realistic telemetry and events:

- door (门禁): telemetry every 30 s; access granted a few times an hour (then opened,
  closed), denied about once an hour, exit button, rarely held open, very rarely forced open.
- speaker (村村响): telemetry every 60 s; playback receipts when told to ``play``.
- drone (无人机): idle on its pad (telemetry every 30 s), then missions: 1 Hz telemetry
  while flying a loop around its base, battery draining, return home, landing.
- radio (对讲机): telemetry every 5 s while its holder walks around; push-to-talk a few
  times an hour; SOS very rarely.

Every interval is divided, and every event rate multiplied, by the fleet's ``speed``
(tests and benchmarks use speed 10..1000). :data:`BEHAVIOURS` maps each kind to its
behaviour; a :class:`~devices.sim.fleet.DeviceFleet` schedules them and publishes what
they produce.

Commands follow the hub's semantics (devices/commands): a received command is a
:class:`Command`, answered with ``res`` on the response topic the hub gave, echoing the
MQTT 5 correlation data: ``accepted`` (or ``rejected``) at once, ``progress`` while
working, then ``finished`` | ``failed`` | ``preempted`` (``expired`` for a queued play that
outlived its message expiry). Speakers play for the command's ``duration_s`` × ``repeat``
(scaled by speed), and a strictly higher priority tier interrupts the current play
(receipt ``preempted``); ``stop`` ends a broadcast's play, playing or queued (``stopped``,
and a play of it arriving later is answered ``stopped`` too); with the fleet's ``fetch_audio`` they first download the audio
with their own credentials and check its SHA-256 (:func:`fetch_audio`). Door controllers
check the HMAC signature of ``unlock`` with their key, keep a log of their last
``event_log`` events and republish them on ``replay_events`` (``since_seq``); drones fly
``mission`` and ``return_home`` and finish when landed.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.commands.signing import verify as verify_signature
from devices.sim.device import EARTH_M_PER_DEG, SimDevice, offset

if TYPE_CHECKING:
    from devices.sim.fleet import DeviceFleet


# --------------------------------------------------------------------------- commands
class Command:
    """One command a simulated device received: its body and how to answer it (``res``
    on the response topic the hub gave, echoing the MQTT 5 correlation data)."""

    def __init__(self, fleet: DeviceFleet, dev: SimDevice, name: str, body: dict, correlation: bytes | None,
                 response_topic: str | None, expiry_s: float | None) -> None:
        self.fleet, self.dev, self.name, self.body = fleet, dev, name, body
        self.id = str(body["id"])[:64] if body.get("id") else None
        self.expiry_s = expiry_s
        self.phases: list[str] = []
        self._props = None
        if correlation is not None:
            self._props = Properties(PacketTypes.PUBLISH)
            self._props.CorrelationData = correlation
        # Only our own res topic: the broker would refuse any other (一机一帐号).
        own = f"{dev.root}/res"
        self._channel = response_topic[len(dev.root) + 1:] if response_topic and (
            response_topic == own or response_topic.startswith(own + "/")) else "res"

    def reply(self, phase: str, detail: str | None = None, progress_pct: float | None = None) -> None:
        self.phases.append(phase)
        res = {"cmd": self.name[:128], "phase": phase}
        if self.id:
            res["cmd_id"] = self.id
        if detail:
            res["detail"] = detail[:1024]
        if progress_pct is not None:
            res["progress_pct"] = progress_pct
        self.fleet._publish(self.dev, self._channel, res, properties=self._props)


def fetch_audio(body: dict, dev: SimDevice) -> str | None:
    """Fetch the broadcast's audio as a speaker would (its own credentials), check its
    SHA-256; None when fine, else what went wrong."""
    import hashlib

    import httpx
    try:
        r = httpx.get(body["audio_url"], auth=(dev.id, dev.password or ""), timeout=10)
    except httpx.HTTPError as exc:
        return f"audio download failed: {type(exc).__name__}"
    if r.status_code != 200:
        return f"audio download failed: HTTP {r.status_code}"
    want = body.get("audio_sha256")
    if want and hashlib.sha256(r.content).hexdigest() != want:
        return "audio checksum mismatch"
    return None




# --------------------------------------------------------------------------- behaviours
class Behaviour:
    """Kind-specific behaviour. ``telemetry(dev, now)`` returns the body and the seconds
    until the next reading (before speed scaling); ``EVENTS`` are Poisson processes
    (events per hour) whose ``fire`` returns [(event type without kind, body), ...]."""

    kind = ""
    EVENTS: dict[str, float] = {}

    def init(self, dev: SimDevice) -> None:
        pass

    def telemetry(self, dev: SimDevice, now: float) -> tuple[dict, float]:
        raise NotImplementedError

    def fire(self, dev: SimDevice, name: str, now: float) -> list[tuple[str, dict]]:
        return [(name, {})]

    def command(self, fleet: DeviceFleet, dev: SimDevice, cmd: Command) -> None:
        """Carry out a command, answering with ``cmd.reply(phase, detail)``: at least
        ``accepted`` or ``rejected`` at once, then ``progress`` and a final phase."""
        cmd.reply("rejected", f"unknown command {cmd.name!r}")


class Door(Behaviour):
    kind = "door"
    EVENTS = {"access_granted": 4.0, "access_denied": 1.0, "exit_button": 1.0, "held_open": 0.2,
              "forced_open": 0.02, "tamper": 0.01}

    def init(self, dev):
        dev.state.update(door_open=False, locked=True, battery=dev.rng.uniform(60, 100))

    def telemetry(self, dev, now):
        s = dev.state
        s["battery"] = max(5.0, s["battery"] - 0.001)
        return {"door_open": s["door_open"], "locked": s["locked"], "battery_pct": round(s["battery"], 1)}, 30.0

    def fire(self, dev, name, now):
        rng = dev.rng
        if name in ("access_granted", "access_denied"):
            who = {"card_id": f"C{rng.randint(1000, 1099)}"} if rng.random() < 0.8 else {"user_id": f"u{rng.randint(1, 40)}"}
            body = {**who, "direction": rng.choice(["in", "in", "out"])}
            if name == "access_denied":
                body["reason"] = rng.choice(["unknown_card", "expired", "outside_schedule"])
                return [(name, body)]
            return [(name, body), ("opened", {}), ("closed", {})]
        if name == "exit_button":
            return [("exit_button", {}), ("opened", {}), ("closed", {})]
        if name == "held_open":
            return [("opened", {}), ("held_open", {"held_s": round(rng.uniform(60, 300))}), ("closed", {})]
        if name == "forced_open":
            return [("forced_open", {}), ("closed", {})]
        return [(name, {})]

    def command(self, fleet, dev, cmd):
        if cmd.name == "unlock":
            self._unlock(fleet, dev, cmd)
        elif cmd.name == "replay_events":
            self._replay(fleet, dev, cmd)
        else:
            super().command(fleet, dev, cmd)

    def _unlock(self, fleet, dev, cmd):
        # A real controller checks the hub's signature with its own key: the broker's ACL
        # alone would let anyone holding the hub's account open every door.
        key = fleet.keys.get(dev.id)
        if key is None:
            cmd.reply("rejected", "no signing key configured on this controller")
            return
        problem = verify_signature(key, cmd.body, dev.id)
        if problem:
            dev.state["rejected_unlocks"] = dev.state.get("rejected_unlocks", 0) + 1
            cmd.reply("rejected", problem)
            return
        duration = cmd.body.get("duration_s", 5)
        duration = duration if isinstance(duration, (int, float)) and 0 < duration <= 300 else 5
        cmd.reply("accepted")
        dev.state.update(locked=False, door_open=True)
        operator = str(cmd.body.get("operator") or "hub")[:128]
        fleet.emit_events(dev, [("access_granted", {"user_id": operator, "direction": "in", "method": "remote",
                                                    "cmd_id": cmd.id}), ("opened", {})])
        cmd.reply("progress", f"unlocked for {duration:g}s")

        def relock():
            dev.state.update(locked=True, door_open=False)
            fleet.emit_events(dev, [("closed", {})])
            cmd.reply("finished", "relocked")
        fleet.later(duration / fleet.speed, relock)

    def _replay(self, fleet, dev, cmd):
        since = cmd.body.get("since_seq")
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            cmd.reply("rejected", "since_seq must be a non-negative integer")
            return
        cmd.reply("accepted")
        entries = [e for e in dev.state.get("log", ()) if e[0] > since]
        oldest = dev.state["log"][0][0] if dev.state.get("log") else None
        if oldest is not None and oldest > since + 1 and dev.state.get("log_overflowed"):
            cmd.reply("progress", f"buffer starts at seq {oldest}: events {since + 1}..{oldest - 1} were overwritten")
        for _, topic, payload in entries:
            fleet.publish_raw(dev, topic, payload)
        cmd.reply("finished", f"replayed {len(entries)} events since seq {since}")


class Speaker(Behaviour):
    kind = "speaker"

    def init(self, dev):
        dev.state.update(volume=60, playing=False, temp=dev.rng.uniform(25, 32))

    def telemetry(self, dev, now):
        s = dev.state
        target = 45.0 if s["playing"] else 28.0
        s["temp"] += (target - s["temp"]) * 0.2 + dev.rng.uniform(-0.3, 0.3)
        return {"volume": s["volume"], "playing": s["playing"], "amp_temp_c": round(s["temp"], 1)}, 60.0

    # Seconds a play lasts when the command does not say (scaled by the fleet's speed).
    NOMINAL_PLAY_S = 1.0

    def command(self, fleet, dev, cmd):
        body = cmd.body
        if cmd.name == "volume":
            if isinstance(body.get("volume"), int) and 0 <= body["volume"] <= 100:
                dev.state["volume"] = body["volume"]
                cmd.reply("accepted")
                cmd.reply("finished")
            else:
                cmd.reply("rejected", "volume must be an integer 0..100")
            return
        if cmd.name == "stop":
            self._stop(fleet, dev, cmd)
            return
        if cmd.name not in ("play", "broadcast"):
            super().command(fleet, dev, cmd)
            return
        bid = str(body.get("broadcast_id") or cmd.id or "unknown")[:128]
        if bid in dev.state.setdefault("stopped", set()):
            cmd.reply("stopped", f"broadcast {bid} was stopped before it played")
            return
        priority = body.get("priority", 5)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 9:
            cmd.reply("rejected", "priority must be an integer 1..9")
            return
        if isinstance(body.get("volume"), int) and 0 <= body["volume"] <= 100:
            dev.state["volume"] = body["volume"]
        duration = body.get("duration_s")
        duration = duration if isinstance(duration, (int, float)) and duration > 0 else self.NOMINAL_PLAY_S
        repeat = body.get("repeat") if isinstance(body.get("repeat"), int) and 1 <= body["repeat"] <= 10 else 1
        item = {"cmd": cmd, "bid": bid, "priority": priority,
                "seconds": duration * repeat / fleet.speed, "timer": None,
                "expires": time.monotonic() + cmd.expiry_s / fleet.speed if cmd.expiry_s else None,
                "live": body.get("live") is True and bool(body.get("audio_url"))}
        cmd.reply("accepted")
        if fleet.fetch_audio and body.get("audio_url") and dev.password and not item["live"]:
            threading.Thread(target=self._fetch_then_queue, args=(fleet, dev, item), daemon=True).start()
        else:
            self._queue(fleet, dev, item)

    def _fetch_then_queue(self, fleet, dev, item):
        problem = fetch_audio(item["cmd"].body, dev)
        if problem:
            item["cmd"].reply("failed", problem)
            fleet.emit_events(dev, [("playback", {"broadcast_id": item["bid"], "phase": "failed", "detail": problem})])
            return
        self._queue(fleet, dev, item)

    def _queue(self, fleet, dev, item):
        with fleet.device_lock(dev):
            if item["bid"] in dev.state.setdefault("stopped", set()):      # stopped while its audio downloaded
                item["cmd"].reply("stopped", f"broadcast {item['bid']} was stopped before it played")
                return
            current = dev.state.get("current")
            if current is not None and item["priority"] <= current["priority"]:
                # Equal or lower tier waits its turn (a notice never cuts a notice).
                dev.state.setdefault("queue", []).append(item)
                dev.state["queue"].sort(key=lambda x: -x["priority"])
                item["cmd"].reply("progress", f"queued behind broadcast {current['bid']}")
                return
            if current is not None:
                fleet.cancel(current["timer"])
                if current.get("listener") is not None:
                    current["listener"].stop()          # a live stream: hang up
                fleet.emit_events(dev, [("playback", {"broadcast_id": current["bid"], "phase": "preempted",
                                                      "detail": f"interrupted by priority {item['priority']}"})])
                current["cmd"].reply("preempted", f"interrupted by broadcast {item['bid']} (priority {item['priority']})")
            self._start(fleet, dev, item)

    def _start(self, fleet, dev, item):
        dev.state["current"] = item
        dev.state["playing"] = True
        fleet.emit_events(dev, [("playback", {"broadcast_id": item["bid"], "phase": "started"})])
        item["cmd"].reply("progress", "playing")
        if item["live"]:
            # 实时喊话: play the stream as it comes until the hub ends it (devices/sim/live.py)
            from devices.sim.live import LiveListener
            item["listener"] = LiveListener(item["cmd"].body["audio_url"], (dev.id, dev.password or ""),
                                            lambda problem: self._live_ended(fleet, dev, item, problem))
            dev.state.setdefault("live", {})[item["bid"]] = item["listener"].start()
            return
        item["timer"] = fleet.later(item["seconds"], lambda: self._finish(fleet, dev, item))

    def _live_ended(self, fleet, dev, item, problem):
        if problem is None:
            self._finish(fleet, dev, item)
            return
        with fleet.device_lock(dev):
            if dev.state.get("current") is not item:
                return
            fleet.emit_events(dev, [("playback", {"broadcast_id": item["bid"], "phase": "failed", "detail": problem})])
            item["cmd"].reply("failed", problem)
            self._next(fleet, dev)

    def _finish(self, fleet, dev, item):
        with fleet.device_lock(dev):
            if dev.state.get("current") is not item:
                return          # preempted meanwhile
            fleet.emit_events(dev, [("playback", {"broadcast_id": item["bid"], "phase": "finished"})])
            item["cmd"].reply("finished")
            self._next(fleet, dev)

    def _next(self, fleet, dev):
        """Nothing playing now: the next queued play that has not expired starts (under the device lock)."""
        dev.state["current"] = None
        dev.state["playing"] = False
        queue = dev.state.get("queue") or []
        while queue:
            nxt = queue.pop(0)
            if nxt["expires"] is not None and time.monotonic() > nxt["expires"]:
                nxt["cmd"].reply("expired", "waited in the queue past its expiry")
                continue
            self._start(fleet, dev, nxt)
            break

    def _stop(self, fleet, dev, cmd):
        """``stop``: the broadcast's play ends now, whether playing or queued."""
        bid = cmd.body.get("broadcast_id")
        if not isinstance(bid, str) or not bid:
            cmd.reply("rejected", "broadcast_id is required")
            return
        bid = bid[:128]
        reason = str(cmd.body.get("reason") or "stopped by the hub")[:500]
        cmd.reply("accepted")
        with fleet.device_lock(dev):
            dev.state.setdefault("stopped", set()).add(bid)
            stopped = 0
            queue = dev.state.get("queue") or []
            for item in [q for q in queue if q["bid"] == bid]:
                queue.remove(item)
                item["cmd"].reply("stopped", reason)
                fleet.emit_events(dev, [("playback", {"broadcast_id": bid, "phase": "stopped", "detail": reason})])
                stopped += 1
            current = dev.state.get("current")
            if current is not None and current["bid"] == bid:
                fleet.cancel(current["timer"])
                if current.get("listener") is not None:
                    current["listener"].stop()          # a live stream: hang up
                fleet.emit_events(dev, [("playback", {"broadcast_id": bid, "phase": "stopped", "detail": reason})])
                current["cmd"].reply("stopped", reason)
                stopped += 1
                self._next(fleet, dev)
        cmd.reply("finished", f"stopped broadcast {bid}" if stopped else f"not playing broadcast {bid}")


class Drone(Behaviour):
    kind = "drone"
    # A mission about every 40 minutes (scaled by speed), while idle.
    EVENTS = {"mission": 1.5}

    def init(self, dev):
        dev.state.update(mode="idle", battery=100.0, angle=0.0, radius=dev.rng.uniform(300, 800), alt=0.0,
                         low_sent=False, lat=dev.lat, lon=dev.lon, heading=0.0, speed=0.0, t_mode=0.0)

    def telemetry(self, dev, now):
        s, rng = dev.state, dev.rng
        mode = s["mode"]
        if mode == "idle":
            s["battery"] = min(100.0, s["battery"] + 0.5)
            s.update(alt=0.0, speed=0.0, lat=dev.lat, lon=dev.lon)
            interval = 30.0
        else:
            interval = 1.0
            s["battery"] = max(0.0, s["battery"] - 0.03)
            if mode == "mission":
                s["alt"] = min(120.0, s["alt"] + 3.0)
                s["angle"] = (s["angle"] + 8.0 / s["radius"]) % (2 * math.pi)
                north, east = s["radius"] * math.cos(s["angle"]), s["radius"] * math.sin(s["angle"])
                s["lat"], s["lon"] = offset(dev.lat, dev.lon, north, east)
                s["heading"] = (math.degrees(s["angle"]) + 90.0) % 360.0
                s["speed"] = 8.0 + rng.uniform(-0.5, 0.5)
                if s["battery"] < 30.0 or s["t_mode"] > 600:
                    s["mode"], s["t_mode"] = "return_home", 0.0
            elif mode == "return_home":
                s["lat"] += (dev.lat - s["lat"]) * 0.1
                s["lon"] += (dev.lon - s["lon"]) * 0.1
                s["speed"] = 6.0
                if abs(s["lat"] - dev.lat) < 1e-5 and abs(s["lon"] - dev.lon) < 1e-5:
                    s["mode"], s["t_mode"] = "landing", 0.0
            elif mode == "landing":
                s["alt"] = max(0.0, s["alt"] - 4.0)
                s["speed"] = 0.0
                if s["alt"] <= 0.0:
                    s["mode"], s["t_mode"], s["low_sent"] = "idle", 0.0, False
            s["t_mode"] += 1.0
        body = {"lat": round(s["lat"], 6), "lon": round(s["lon"], 6), "alt_m": round(s["alt"], 1),
                "heading_deg": round(s["heading"], 1), "speed_mps": round(s["speed"], 1),
                "battery_pct": round(s["battery"], 1), "mode": s["mode"]}
        return body, interval

    def pending_events(self, dev) -> list[tuple[str, dict]]:
        s = dev.state
        if s["mode"] != "idle" and s["battery"] < 20.0 and not s["low_sent"]:
            s["low_sent"] = True
            return [("low_battery", {"battery_pct": round(s["battery"], 1), "lat": round(s["lat"], 6),
                                     "lon": round(s["lon"], 6)})]
        return []

    def fire(self, dev, name, now):
        if name == "mission" and dev.state["mode"] == "idle":
            dev.state.update(mode="mission", t_mode=0.0)
        return []

    def command(self, fleet, dev, cmd):
        s = dev.state
        if cmd.name == "mission":
            if s["mode"] != "idle":
                cmd.reply("rejected", f"not on the pad (mode {s['mode']})")
            elif s["battery"] < 40.0:
                cmd.reply("rejected", f"battery {s['battery']:.0f}% too low for a mission")
            else:
                cmd.reply("accepted")
                s.update(mode="mission", t_mode=0.0)
                s["awaiting"] = ("idle", cmd)          # finished once it has flown and landed
                cmd.reply("progress", "taking off")
        elif cmd.name == "return_home":
            if s["mode"] not in ("mission", "manual"):
                cmd.reply("rejected", f"not flying a mission (mode {s['mode']})")
            else:
                cmd.reply("accepted")
                previous = s.get("awaiting")
                if previous is not None:
                    previous[1].reply("preempted", "recalled: return home")
                s.update(mode="return_home", t_mode=0.0)
                s["awaiting"] = ("idle", cmd)
                cmd.reply("progress", "returning home")
        else:
            super().command(fleet, dev, cmd)

    def settle(self, dev) -> None:
        """Answer a command waiting for a mode (called after each telemetry step)."""
        waiting = dev.state.get("awaiting")
        if waiting is not None and dev.state["mode"] == waiting[0]:
            dev.state["awaiting"] = None
            waiting[1].reply("finished", "landed")


class Radio(Behaviour):
    kind = "radio"
    EVENTS = {"ptt": 6.0, "sos": 0.002}

    def init(self, dev):
        dev.state.update(lat=dev.lat, lon=dev.lon, battery=dev.rng.uniform(50, 100), heading=dev.rng.uniform(0, 360))

    def telemetry(self, dev, now):
        s, rng = dev.state, dev.rng
        s["heading"] = (s["heading"] + rng.uniform(-40, 40)) % 360
        step = 1.4 * 5.0 * rng.uniform(0, 1)
        north, east = step * math.cos(math.radians(s["heading"])), step * math.sin(math.radians(s["heading"]))
        # A spring back home keeps the walk within a few hundred metres.
        north += (dev.lat - s["lat"]) * EARTH_M_PER_DEG * 0.02
        east += (dev.lon - s["lon"]) * EARTH_M_PER_DEG * math.cos(math.radians(dev.lat)) * 0.02
        s["lat"], s["lon"] = offset(s["lat"], s["lon"], north, east)
        s["battery"] = max(1.0, s["battery"] - 0.005)
        return {"lat": round(s["lat"], 6), "lon": round(s["lon"], 6), "battery_pct": round(s["battery"], 1),
                "signal_dbm": round(rng.uniform(-95, -60), 1)}, 5.0

    def fire(self, dev, name, now):
        s = dev.state
        where = {"lat": round(s["lat"], 6), "lon": round(s["lon"], 6)}
        if name == "sos":
            return [("sos", where)]
        tg = f"tg-{dev.id.split('-')[-1]}"
        return [("ptt_start", {"talk_group": tg, **where}),
                ("ptt_stop", {"talk_group": tg, "duration_s": round(dev.rng.uniform(2, 20), 1), **where})]


BEHAVIOURS: dict[str, Behaviour] = {b.kind: b for b in (Door(), Speaker(), Drone(), Radio())}
