"""The batching paho client the simulators use for load generation.

:class:`BatchPublisher` is a paho 2.x ``mqtt.Client`` that can also publish many QoS 1
messages in one socket write (:meth:`BatchPublisher.publish_many`), keeping its own count
of outstanding PUBACKs instead of paho's per-message bookkeeping (which costs more than the
rest of a simulated device). Messages sent that way are not retransmitted after a
reconnect: it is for benchmarks (``DeviceFleet.run_load``), not for
messages that must arrive. The fast path needs paho 2.2's PUBACK handling; with another
paho version ``publish_many`` falls back to ordinary ``publish`` calls.
"""
from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterable

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTErrorCode

_PUBACK_FAST = paho.mqtt.__version__.startswith("2.2.")


class BatchPublisher(mqtt.Client):
    """paho 2.x client that can also publish many QoS 1 messages in one write, keeping
    its own count of outstanding PUBACKs (for load generation; paho's per-message
    bookkeeping costs more than the rest of a simulated device). Messages sent this way
    are not retransmitted after a reconnect."""

    def __init__(self, *args, window: int = 20000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window = window
        self._raw: set[int] = set()
        self._raw_cv = threading.Condition()
        self.raw_acked = 0
        self.raw_failed = 0

    def _handle_pubackcomp(self, cmd):
        if cmd == "PUBACK" and _PUBACK_FAST:
            pkt = self._in_packet["packet"]
            mid = (pkt[0] << 8) | pkt[1]
            with self._raw_cv:
                if mid in self._raw:
                    self._raw.discard(mid)
                    if len(pkt) > 2 and pkt[2] >= 0x80:
                        self.raw_failed += 1
                    else:
                        self.raw_acked += 1
                    if len(self._raw) <= self.window // 2:
                        self._raw_cv.notify_all()
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def publish_many(self, messages: Iterable[tuple[str, bytes]], qos: int = 1, timeout: float = 30.0) -> int:
        """Queue PUBLISH packets for (topic, payload) pairs in one write; blocks while
        more than ``window`` are unacknowledged. Returns how many were queued."""
        if not _PUBACK_FAST:
            n = 0
            for topic, payload in messages:
                self.publish(topic, payload, qos=qos)
                n += 1
            return n
        chunks: list[bytes] = []
        n = 0
        pack_h = struct.Struct("!H").pack
        for topic, payload in messages:
            t = topic.encode()
            if qos:
                with self._raw_cv:
                    deadline = time.monotonic() + timeout
                    while len(self._raw) >= self.window:
                        if not self._raw_cv.wait(max(0.0, deadline - time.monotonic())):
                            raise TimeoutError("broker stopped acknowledging")
                    mid = self._mid_generate()
                    self._raw.add(mid)
                var = pack_h(len(t)) + t + pack_h(mid) + b"\x00"
            else:
                var = pack_h(len(t)) + t + b"\x00"
            remaining = len(var) + len(payload)
            hdr = bytearray([0x30 | (qos << 1)])
            while True:
                byte = remaining % 128
                remaining //= 128
                hdr.append(byte | 0x80 if remaining else byte)
                if not remaining:
                    break
            chunks.append(bytes(hdr) + var + payload)
            n += 1
        if chunks:
            # command 0: not treated as a single PUBLISH by paho's writer (no on_publish, no info)
            self._packet_queue(0, b"".join(chunks), 0, 0)
        return n

    @property
    def outstanding(self) -> int:
        return len(self._raw)

    def wait_all_acked(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._raw_cv:
            while self._raw:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._raw_cv.wait(min(left, 0.1))
        return True
