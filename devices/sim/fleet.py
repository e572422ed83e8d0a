"""Many simulated devices in one process (:class:`DeviceFleet`): their connections, one
scheduler thread, publishing, commands received, outages and load generation.

The scheduler thread drives every device: telemetry at the interval its behaviour
(devices.sim.behaviours) gives and the behaviour's events as Poisson processes, both
scaled by ``speed``, plus the delayed steps of commands (:meth:`DeviceFleet.later`,
:meth:`DeviceFleet.cancel`). Connections:

- per device (一机一帐号): a paho MQTT 5 client per device, username = device id, its
  own password, LWT = retained ``avail`` offline, retained ``avail`` online and ``state``
  on connect, subscribed to its own ``cmd/#``. Used when the device has a password.
- shared: one client under the hub's account publishes for every device without a
  password (thousands of devices, one TCP connection). No per-device LWT then: the fleet
  publishes ``avail`` offline for its devices when it stops.

Every message carries its device's envelope (devices.sim.device); a door's events also go
to the controller's own event log, network or not, for ``replay_events``. A received
command whose id was seen before (a redelivery) is carried out once; a body the contract
types (bus.commands) is checked as a device's firmware would, then the kind's behaviour
carries it out. ``cut(id)`` / ``restore(id)`` simulate a network outage (own-account
devices drop their connection: the broker publishes their Last Will).

For benchmarks :meth:`DeviceFleet.run_load` publishes telemetry of the shared devices
at a given aggregate rate (or flat out) through a lean batch-publish path
(devices.sim.publisher).
"""
from __future__ import annotations

import heapq
import json
import logging
import random
import threading
import time
from collections import OrderedDict, deque

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from bus.client import mqtt_client, start
from bus.commands import command_model, parse_command
from bus.envelope import ContractError
from bus.topics import TOPIC_ROOT
from devices.sim.behaviours import BEHAVIOURS, Command, Drone
from devices.sim.device import SimDevice, now_ms, offset
from devices.sim.publisher import BatchPublisher

log = logging.getLogger(__name__)

HOUR = 3600.0


def _avail(status: str) -> bytes:
    return json.dumps({"v": 1, "status": status, "ts": now_ms()}).encode()


# --------------------------------------------------------------------------- fleet
class DeviceFleet:
    """Many simulated devices in one process: one scheduler thread, one MQTT client per
    device that has a password, one shared client (hub account) for the others."""

    def __init__(self, devices: list[SimDevice], mqtt_url: str, *, speed: float = 1.0, events: bool = True,
                 qos_telemetry: int = 1, client_prefix: str = "xlhub-sim", announce: bool = True,
                 diag: bool = False, keys: dict[str, str | bytes] | None = None, fetch_audio: bool = False,
                 event_log: int = 1000) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.devices = {d.id: d for d in devices}
        self.mqtt_url = mqtt_url
        self.speed = speed
        self.events_enabled = events
        self.qos_telemetry = qos_telemetry
        self.client_prefix = client_prefix
        self.announce = announce     # shared client: publish retained avail online per device at connect
        self.diag = diag             # add the diagnostics real devices send (firmware, uptime, rssi, board temp)
        self._started = time.time()
        self.clients: dict[str, mqtt.Client] = {}       # device id → its own client
        self.shared: BatchPublisher | None = None
        self.published = {"tele": 0, "evt": 0, "res": 0, "avail": 0, "state": 0}
        self.commands_received = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heap: list[tuple[float, int, str, str]] = []
        self._heap_lock = threading.Lock()
        self._kick = threading.Event()
        self._calls: dict[int, object] = {}
        self._tie = 0
        # Command-signing keys (door unlock), as provisioned on each controller.
        self.keys = {k: (bytes.fromhex(v) if isinstance(v, str) else v) for k, v in (keys or {}).items()}
        self.fetch_audio = fetch_audio       # speakers download the audio they are told to play
        self.event_log = event_log           # events a door controller keeps for replay
        self._dev_locks = {d.id: threading.RLock() for d in devices}
        for d in devices:
            BEHAVIOURS[d.kind].init(d)

    @classmethod
    def from_site(cls, site, mqtt_url: str, passwords: dict[str, str] | None = None, *, speed: float = 1.0,
                  seed: int | None = None, only: set[str] | None = None, **kwargs) -> DeviceFleet:
        """The site file's devices (or ``only`` those ids); those with a password in
        ``passwords`` connect with their own account, the others share the ``mqtt_url``
        account. ``keys={id: hex}`` provisions command-signing keys."""
        passwords = passwords or {}
        rng = random.Random(seed)
        devices = []
        for dev in site.devices:
            if only is not None and dev.id not in only:
                continue
            kind = str(getattr(dev.kind, "value", dev.kind))
            pos = getattr(dev, "position", None)
            lat, lon = (pos.lat, pos.lon) if pos is not None else (30.0, 104.0)
            devices.append(SimDevice(dev.id, kind, lat, lon, passwords.get(dev.id),
                                     rng=random.Random(rng.random())))
        return cls(devices, mqtt_url, speed=speed, **kwargs)

    @classmethod
    def synthetic(cls, n: int, mqtt_url: str, *, kinds=("door", "speaker", "drone", "radio"),
                  centre=(30.60, 104.40), prefix: str = "sim", seed: int = 1, **kwargs) -> DeviceFleet:
        """``n`` devices of the given kinds spread over ~20 km around ``centre`` (no
        passwords: they share the URL's account)."""
        rng = random.Random(seed)
        devices = []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            lat, lon = offset(centre[0], centre[1], rng.uniform(-10000, 10000), rng.uniform(-10000, 10000))
            devices.append(SimDevice(f"{prefix}-{kind}-{i:05d}", kind, lat, lon, rng=random.Random(rng.random())))
        return cls(devices, mqtt_url, **kwargs)

    # -- connections -------------------------------------------------------------------
    def connect(self, timeout: float = 20.0) -> None:
        """Connect every client (per-device ones publish avail online + state)."""
        shared_ids = [d.id for d in self.devices.values() if not d.password]
        if shared_ids:
            client = mqtt_client(self.mqtt_url, f"{self.client_prefix}-shared-{id(self):x}", cls=BatchPublisher,
                                 max_inflight=100)
            client.on_connect = self._on_shared_connect
            client.on_message = self._on_command
            start(client, keepalive=30)
            self.shared = client
        for d in self.devices.values():
            if d.password:
                client = mqtt_client(self.mqtt_url, d.id, login=(d.id, d.password), max_inflight=100)
                client.will_set(f"{d.root}/avail", _avail("offline"), qos=1, retain=True)
                client.user_data_set(d)
                client.on_connect = self._on_device_connect
                client.on_message = self._on_command
                start(client, keepalive=30)
                self.clients[d.id] = client
        deadline = time.monotonic() + timeout
        for c in [*self.clients.values(), *([self.shared] if self.shared else [])]:
            while not c.is_connected():
                if time.monotonic() > deadline:
                    raise TimeoutError("simulated devices could not connect to the broker")
                time.sleep(0.02)

    def _on_device_connect(self, client, dev: SimDevice, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("device %s refused by the broker: %s", dev.id, reason_code)
            return
        client.subscribe(f"{dev.root}/cmd/#", qos=1)
        client.publish(f"{dev.root}/avail", _avail("online"), qos=1, retain=True)
        self._publish_state(dev)
        self._count("avail")

    def _on_shared_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("shared simulator client refused by the broker: %s", reason_code)
            return
        client.subscribe(f"{TOPIC_ROOT}/+/+/cmd/#", qos=1)
        for d in self.devices.values():
            if not d.password and self.announce:
                client.publish(f"{d.root}/avail", _avail("online"), qos=1, retain=True)
                self._count("avail")

    def _client_of(self, dev: SimDevice) -> mqtt.Client | None:
        return self.clients.get(dev.id) or self.shared

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.published[what] += n

    def _publish(self, dev: SimDevice, channel: str, body: dict, *, qos: int = 1, retain: bool = False,
                 properties: Properties | None = None) -> None:
        client = self._client_of(dev)
        if client is None:
            return
        env = dev.envelope()
        payload = json.dumps({**env, **body}, separators=(",", ":")).encode()
        topic = f"{dev.root}/{channel}"
        if dev.kind == "door" and channel.startswith("evt/"):
            # The controller's own event log: kept whether or not the network is up, so the
            # hub can fetch what it missed (cmd/replay_events).
            log_ = dev.state.setdefault("log", deque(maxlen=self.event_log))
            if len(log_) == log_.maxlen:
                dev.state["log_overflowed"] = True
            log_.append((env["seq"], topic, payload))
        if dev.state.get("cut"):
            return          # no network: lost (doors keep their events in the log above)
        client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self._count(channel.split("/")[0])

    def publish_raw(self, dev: SimDevice, topic: str, payload: bytes) -> None:
        """Send an already-built message again (replay keeps the original id, seq and time)."""
        client = self._client_of(dev)
        if client is not None and not dev.state.get("cut"):
            client.publish(topic, payload, qos=1)
            self._count("evt")

    def emit_events(self, dev: SimDevice, events: list[tuple[str, dict]]) -> None:
        for etype, ebody in events:
            self._publish(dev, f"evt/{etype}", ebody)

    def emit(self, dev_id: str, name: str) -> list[str]:
        """Fire one of a device's events now (``access_granted``, ``sos``, …): for tests.
        Returns the event types published."""
        dev = self.devices[dev_id]
        events = BEHAVIOURS[dev.kind].fire(dev, name, time.time())
        self.emit_events(dev, events)
        return [e for e, _ in events]

    def device_lock(self, dev: SimDevice) -> threading.RLock:
        return self._dev_locks[dev.id]

    # -- outages -----------------------------------------------------------------------
    def cut(self, dev_id: str) -> None:
        """The device loses its network: nothing it sends arrives. A device with its own
        connection drops it without DISCONNECT, so the broker publishes its Last Will."""
        dev = self.devices[dev_id]
        dev.state["cut"] = True
        client = self.clients.get(dev_id)
        if client is not None:
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                sock.close()

    def restore(self, dev_id: str) -> None:
        """The network is back: the device reconnects (avail online, state) and carries on."""
        dev = self.devices[dev_id]
        dev.state["cut"] = False
        client = self.clients.get(dev_id)
        if client is not None:
            client.reconnect()
            client.loop_start()

    def _publish_state(self, dev: SimDevice) -> None:
        body, _ = BEHAVIOURS[dev.kind].telemetry(dev, time.time())
        self._publish(dev, "state", body, retain=True)

    # -- commands ----------------------------------------------------------------------
    def _on_command(self, client, userdata, msg) -> None:
        try:
            parts = msg.topic.split("/")
            if len(parts) != 6 or parts[4] != "cmd":
                return
            dev = self.devices.get(parts[3])
            if dev is None or dev.kind != parts[2] or dev.state.get("cut"):
                return
            name = parts[5]
            try:
                body = json.loads(msg.payload)
                if not isinstance(body, dict):
                    body = {}
            except ValueError:
                body = {}
            cmd_id = str(body.get("id"))[:64] if body.get("id") else None
            if cmd_id is not None:
                # A redelivered command (same id) is carried out once.
                seen = dev.state.setdefault("seen_cmds", OrderedDict())
                if cmd_id in seen:
                    return
                seen[cmd_id] = True
                while len(seen) > 256:
                    seen.popitem(last=False)
            self.commands_received += 1
            props = msg.properties
            corr = getattr(props, "CorrelationData", None) if props else None
            response = getattr(props, "ResponseTopic", None) if props else None
            expiry = getattr(props, "MessageExpiryInterval", None) if props else None
            cmd = Command(self, dev, name, body, corr, response, expiry)
            if command_model(dev.kind, name) is not None:
                # The contract's own typed body, as a real device's firmware would check it.
                try:
                    parse_command(dev.kind, name, body)
                except ContractError as exc:
                    cmd.reply("rejected", exc.reason)
                    return
            BEHAVIOURS[dev.kind].command(self, dev, cmd)
        except Exception:
            log.exception("simulated device failed to handle a command on %s", msg.topic)

    # -- scheduling --------------------------------------------------------------------
    def _push(self, due: float, dev_id: str, what: str) -> int:
        with self._heap_lock:
            self._tie += 1
            heapq.heappush(self._heap, (due, self._tie, dev_id, what))
            tie = self._tie
        self._kick.set()
        return tie

    def later(self, delay: float, fn) -> int:
        """Run ``fn()`` in the scheduler thread after ``delay`` seconds; returns a handle
        for ``cancel``."""
        with self._heap_lock:
            self._tie += 1
            tie = self._tie
            self._calls[tie] = fn
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), tie, "", "call"))
        self._kick.set()
        return tie

    def cancel(self, handle: int | None) -> None:
        if handle is not None:
            self._calls.pop(handle, None)

    def _next_event_in(self, per_hour: float, dev: SimDevice) -> float:
        return dev.rng.expovariate(per_hour * self.speed / HOUR)

    def start(self) -> None:
        """Connect and run the scheduler thread."""
        self.connect()
        now = time.monotonic()
        for d in self.devices.values():
            # Spread first readings over the first interval, so a fleet does not pulse.
            _, interval = BEHAVIOURS[d.kind].telemetry(d, time.time())
            self._push(now + d.rng.uniform(0, interval / self.speed), d.id, "tele")
            if self.events_enabled:
                for name, rate in BEHAVIOURS[d.kind].EVENTS.items():
                    self._push(now + self._next_event_in(rate, d), d.id, "evt:" + name)
        self._thread = threading.Thread(target=self._run, name="device-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._heap_lock:
                head = self._heap[0] if self._heap else None
            if head is None:
                self._kick.wait(0.5)
                self._kick.clear()
                continue
            due = head[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._kick.wait(min(wait, 0.5))
                self._kick.clear()
                continue
            with self._heap_lock:
                _, tie, dev_id, what = heapq.heappop(self._heap)
            if what == "call":
                fn = self._calls.pop(tie, None)
                if fn is not None:
                    try:
                        fn()
                    except Exception:
                        log.exception("simulated device callback failed")
                continue
            dev = self.devices[dev_id]
            beh = BEHAVIOURS[dev.kind]
            try:
                if what == "tele":
                    body, interval = beh.telemetry(dev, time.time())
                    self._publish(dev, "tele", body, qos=self.qos_telemetry)
                    if isinstance(beh, Drone):
                        beh.settle(dev)
                        if self.events_enabled:
                            for etype, ebody in beh.pending_events(dev):
                                self._publish(dev, f"evt/{etype}", ebody)
                    self._push(due + interval / self.speed, dev_id, "tele")
                else:
                    name = what[4:]
                    for etype, ebody in beh.fire(dev, name, time.time()):
                        self._publish(dev, f"evt/{etype}", ebody)
                    self._push(due + self._next_event_in(beh.EVENTS[name], dev), dev_id, what)
            except Exception:
                log.exception("simulated device %s failed", dev_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing; per-device clients disconnect cleanly after saying offline
        (a killed process leaves it to the LWT)."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
        infos = []
        for d in self.devices.values():
            client = self._client_of(d)
            if client is not None and client.is_connected():
                infos.append(client.publish(f"{d.root}/avail", _avail("offline"), qos=1, retain=True))
        for info in infos:
            try:
                info.wait_for_publish(timeout)
            except (ValueError, RuntimeError):
                pass
        for c in [*self.clients.values(), *([self.shared] if self.shared else [])]:
            c.disconnect()
            c.loop_stop()

    # -- load generation ---------------------------------------------------------------
    def reading(self, dev: SimDevice) -> tuple[str, bytes]:
        """One telemetry message of ``dev`` (topic, payload)."""
        now = time.time()
        body, _ = BEHAVIOURS[dev.kind].telemetry(dev, now)
        env = dev.envelope()
        env.update(body)
        if self.diag:
            env.update(fw="3.2.17-cn", uptime_s=int(now - self._started) + 86400, rssi_dbm=dev.rng.randint(-95, -55),
                       board_temp_c=round(dev.rng.uniform(30, 45), 1))
        return f"{dev.root}/tele", json.dumps(env, separators=(",", ":")).encode()

    def run_load(self, rate: float, seconds: float, *, qos: int = 1, batch: int = 200,
                 stop: threading.Event | None = None, gate=None, on_sent=None) -> dict:
        """Publish telemetry of the shared devices round-robin at ``rate`` msg/s (0 = as
        fast as possible) for ``seconds``, through the batch path. Call after connect()
        (not together with start()). ``gate()``, if given, returns how many messages may
        be sent now (closed-loop load: the benchmark bounds the backlog with it);
        ``on_sent(n)`` is told after each batch. Returns counts and the achieved rate."""
        if self.shared is None:
            raise RuntimeError("run_load needs shared devices (devices without passwords) and connect()")
        devs = [d for d in self.devices.values() if not d.password]
        client = self.shared
        sent = 0
        i = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            now = time.monotonic()
            if now >= end or (stop is not None and stop.is_set()):
                break
            if rate > 0:
                due = int((now - t0) * rate)
                if due <= sent:
                    time.sleep(min(0.005, end - now))
                    continue
                n = min(batch, due - sent)
            else:
                n = batch
            if gate is not None:
                n = min(n, gate())
                if n <= 0:
                    time.sleep(0.001)
                    continue
            msgs = []
            for _ in range(n):
                msgs.append(self.reading(devs[i]))
                i = (i + 1) % len(devs)
            client.publish_many(msgs, qos=qos)
            sent += n
            if on_sent is not None:
                on_sent(n)
        elapsed = time.monotonic() - t0
        acked = client.wait_all_acked(60) if qos else True
        with self._lock:
            self.published["tele"] += sent
        return {"sent": sent, "seconds": elapsed, "rate": sent / elapsed if elapsed else 0.0,
                "all_acked": acked, "failed": client.raw_failed}
