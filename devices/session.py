"""The devices worker's MQTT session: one connection on the hub's account (``noLocal``),
what comes in on it, what goes out, and when what came in may be acknowledged.

As the hub's child process (``run_devices``) the connection is a persistent session —
client id ``xlhub-devices``, kept ``SESSION_EXPIRY_S`` by the broker — so what devices say
while the service is away from the broker, a broker restart or its own, waits for it there:
a speaker's ``finished`` sent meanwhile is not lost and the receipt not reported unanswered.
Constructed directly (tests) the session ends with the connection (``session_expiry_s=0``).

Nothing is lost when the worker dies (SIGKILL, a crash) with messages in hand: a QoS 1
message is acknowledged to the broker only after the transaction that handled it
committed (paho's manual ack; devices/acks.py keeps acknowledgements on the connection
they belong to), so the broker delivers the rest again from the persistent session. The
worker calls ``committed`` after each commit; each message in the inbox carries the
generation of the connection it came in on, and a reconnect that resumes the session
drops the copies in memory the broker is about to send again.

Deadlines (command expiry, a broadcast receipt's 超时未回执) are judged only on what the
worker could have heard: while it is connected, and after the broker has handed over
what it kept for the worker while it was away (a barrier message it sends itself after
connecting comes back behind that backlog: ``may_judge_deadlines``). An answer that comes
after the hub's judgement all the same is kept on the receipt (devices/broadcast/service.py,
late answers).

Going out: commands (QoS 1, MQTT 5 message expiry, response topic = the device's ``res``,
correlation data = the command id; signed when they must be: door unlock) and the empty
retained messages that clear a decommissioned device's ``avail``/``state``. Which commands
are due, and what is stored about them, is the worker's (its database loop)."""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from bus.client import Connection, command_properties
from bus.commands import UnlockCommand
from bus.topics import Topic, topic_for
from config.vocabulary import DEVICE_KINDS
from devices.acks import AckGate
from devices.commands import signing

if TYPE_CHECKING:
    from devices.credentials import DeviceSecrets
    from devices.registry import DeviceRecord

log = logging.getLogger(__name__)

CLIENT_ID = "xlhub-devices"      # the hub's devices worker (XLHUB_DEVICES_CLIENT_ID to run two hubs on one broker)
SESSION_EXPIRY_S = 3600          # longer than any command's or broadcast's answer deadline
# A broker that refuses the barrier (an external broker's ACL: SUBACK/PUBACK say so) or
# loses it must not hold deadlines for ever: judged without it then, logged. The wait is
# long because a long backlog (an hour of a county's telemetry) is a reason to be slow.
BARRIER_WAIT_S = 300.0
SIGNED_COMMANDS = {(UnlockCommand.kind, UnlockCommand.name)}


@dataclass
class Msg:
    topic: str
    payload: bytes
    correlation: bytes | None
    retained: bool
    received: float
    mid: int = 0
    qos: int = 0
    gen: int = 0                        # the connection it came in on (devices/acks.py)
    # set by the worker's _prepare: what the message is about, if it is for us at all
    parsed: Topic | None = None
    dev: DeviceRecord | None = None
    body: dict | None = None
    key: str | None = None              # its message id: a second copy changes nothing
    barrier: int | None = None          # our own barrier message: its connection generation


class DevicesSession(Connection):
    """The paho client and what hangs on it. Its callbacks run on paho's network thread;
    ``take``, ``committed``, ``publish_command`` and ``clear_retained`` on the worker's.
    ``wake`` is set when there is something for the worker (a message, a connection);
    ``stats`` is the worker's counters (``dropped_on_reconnect``, ``stale_acks``)."""

    name = "devices worker"

    def __init__(self, mqtt_url: str, client_id: str, *, session_expiry_s: int, secrets: DeviceSecrets,
                 wake: threading.Event, stats: dict) -> None:
        # manual_ack: paho would acknowledge each message as on_message returns, before it is
        # stored, and a worker killed with messages in hand would lose them (tests/faults).
        super().__init__(mqtt_url, client_id, manual_ack=True, max_inflight=1000, max_queued=0)
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        # 0: a session that ends with the connection (tests run several services at once).
        self.session_expiry_s = session_expiry_s
        self.secrets = secrets
        self.stats = stats
        self._wake = wake
        # paho's thread appends, the worker takes; a reconnect that resumes the session drops
        # the QoS 1 messages the broker is about to send again.
        self._inbox: deque[Msg] = deque()
        self._inbox_lock = threading.Lock()
        self._gate = AckGate()
        self.barrier_topic = f"xlhub/hub/devices/{self.client_id}/barrier"
        self._barrier_back = 0              # the generation whose barrier has come back
        self._barrier_refused = 0           # … or whose barrier the broker refused
        self._barrier_mids = (0, 0)         # (SUBSCRIBE, PUBLISH) packet ids of the current one
        self._connected_at = 0.0
        self._barrier_warned = False
        self._seq = itertools.count(int(time.time() * 1000))
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # ------------------------------------------------------------------ connection
    def start(self) -> None:
        super().start(session_expiry_s=self.session_expiry_s)

    @property
    def generation(self) -> int:
        """Counts the connections so far: a new one means what waited for the broker can go."""
        return self._gate.generation

    def on_connected(self, client, flags) -> None:
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
                                  + [(self.barrier_topic, SubscribeOptions(qos=1))])
        # The broker sends what it kept for us (a resumed session) first and queues this
        # behind it: when it is back, the backlog is in and deadlines can be judged.
        pub = client.publish(self.barrier_topic, json.dumps({"gen": gen}), qos=1)
        self._barrier_mids = (sub, pub.mid)
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
                    self.barrier_topic, why)

    def on_lost(self, reason_code) -> None:
        self._gate.disconnected()

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        m = Msg(msg.topic, msg.payload, bytes(corr) if corr else None, bool(msg.retain), time.time(), msg.mid,
                msg.qos, self._gate.generation)
        with self._inbox_lock:
            self._inbox.append(m)
        self._wake.set()

    # ------------------------------------------------------------------ incoming
    def take(self, pending: deque[Msg], limit: int) -> None:
        """Move what came in to ``pending`` (up to ``limit`` held in all)."""
        with self._inbox_lock:
            inbox = self._inbox
            while inbox and len(pending) < limit:
                pending.append(inbox.popleft())
        if any(m.qos == 1 and self._gate.comes_again(m.gen) for m in pending):
            # Held over a reconnect that resumed the session (the database was away, say):
            # the broker is sending these again, handle those copies instead.
            kept = [m for m in pending if not (m.qos == 1 and self._gate.comes_again(m.gen))]
            self.stats["dropped_on_reconnect"] += len(pending) - len(kept)
            pending.clear()
            pending.extend(kept)

    def read_barrier(self, m: Msg) -> bool:
        """Whether ``m`` is our own barrier message (its generation then in ``m.barrier``)."""
        if m.topic != self.barrier_topic:
            return False
        try:
            gen = json.loads(m.payload).get("gen")
        except (ValueError, AttributeError):
            gen = None
        m.barrier = gen if isinstance(gen, int) else None
        return True

    def committed(self, batch: list[Msg]) -> None:
        """After the commit: acknowledge (on the connection each came in on), and take note
        of our barrier coming back."""
        stale = self._gate.ack([(m.mid, m.qos, m.gen) for m in batch], self._send_acks)
        self.stats["stale_acks"] += stale
        for m in batch:
            if m.barrier is not None and m.barrier == self._gate.generation:
                self._barrier_back = m.barrier

    def _send_acks(self, mids: list[int]) -> None:
        for mid in mids:
            self.client.ack(mid, 1)

    def may_judge_deadlines(self, mono: float) -> bool:
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
                        "deadlines without it", self.barrier_topic, BARRIER_WAIT_S)
        return True

    # ------------------------------------------------------------------ outgoing
    def publish_command(self, cmd: dict, now: datetime) -> bool:
        """One ``device_commands`` row as the device's ``cmd/<name>``; whether paho took it."""
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
        info = self.client.publish(topic_for(kind, dev_id, "cmd", cmd["name"]),
                                    json.dumps(body, ensure_ascii=False, separators=(",", ":")), qos=1,
                                    properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def clear_retained(self, devices: list[tuple[str, str]]) -> bool:
        """Clear the retained ``avail``/``state`` of these (kind, id) devices; whether the
        broker has taken every clearing (then they can be stamped cleared)."""
        infos = []
        for kind, dev_id in devices:
            for channel in ("avail", "state"):
                # An empty retained message deletes the retained one (MQTT).
                infos.append(self.client.publish(topic_for(kind, dev_id, channel), b"", qos=1, retain=True))
        for info in infos:
            try:
                info.wait_for_publish(5)
            except (RuntimeError, ValueError):
                return False
        return all(i.is_published() for i in infos)
