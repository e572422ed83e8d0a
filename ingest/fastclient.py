"""Ingest's paho client (ingest/worker.py uses it): a fast path for plain PUBLISH packets (no MQTT 5
properties: the usual case): it parses every whole one already received in one pass
instead of one per turn of paho's loop, and acknowledges a whole batch with one write.
Stock paho decodes a Properties object per packet and writes one PUBACK per syscall,
which caps a consumer near 20k msg/s on this class of machine; the fast path brings the
MQTT side of the consumer to about 3 µs of CPU per message. Anything else (packets with
properties, QoS 2) goes through paho's own code. The fast path depends on paho-mqtt 2.2 internals (pinned in pyproject.toml);
with another version it switches itself off."""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTErrorCode

_PUBACK = struct.Struct("!BBH")
_FAST_PATH_OK = paho.mqtt.__version__.startswith("2.2.")
_paho_time = getattr(mqtt, "time_func", time.monotonic)   # paho's clock for keepalive


class _BufferedSocket:
    """Serves paho's small reads (1 byte, then the rest of the packet) from one larger
    recv; ``pending()`` tells paho's loop that data is buffered so it does not block in
    select()."""

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data = self._sock.recv(32768)   # < the allocator's mmap threshold
            if len(data) <= n:
                self._buf, self._pos = b"", 0
                return data
            self._buf, self._pos = data, n
            return data[:n]
        end = pos + n
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0   # TLS keeps its own buffer
        return len(self._buf) - self._pos + inner

    def take_publishes(self, out: list) -> None:
        """Append (topic, payload, qos, mid, retain) of every whole plain PUBLISH at the
        head of the buffer to ``out`` and consume them. Stops, leaving the rest for paho, at
        anything else: another packet type, QoS 2, MQTT 5 properties, a packet not yet
        wholly received, or one that does not parse (paho then reports the error)."""
        buf, pos = self._buf, self._pos
        end = len(buf)
        while pos < end:
            header = buf[pos]
            qos = (header >> 1) & 3
            if header & 0xF0 != 0x30 or qos > 1:
                break
            p, length, shift = pos + 1, 0, 0
            while p < end and shift <= 21:
                b = buf[p]
                p += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            else:
                break                               # length incomplete (or malformed)
            body_end = p + length
            if length < 3 or body_end > end:
                break
            topic_end = p + 2 + ((buf[p] << 8) | buf[p + 1])
            q = topic_end + 2 * qos                 # the packet id of a QoS 1 message
            if q >= body_end or buf[q] != 0:        # malformed, or properties follow
                break
            mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
            out.append((buf[p + 2:topic_end], buf[q + 1:body_end], qos, mid, header & 0x01))
            pos = body_end
        self._pos = pos

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class FastClient(mqtt.Client):
    """paho 2.x client with a fast path for plain PUBLISH packets and batched PUBACKs.

    Set ``sink(topic: bytes, payload: bytes, qos, mid, retain, received_epoch)``; it is
    called in the network thread for every PUBLISH (also those taking paho's own path)."""

    sink: Callable[..., None] | None = None
    # Optional: sink_many([(topic, payload, qos, mid, retain), ...], received_epoch) for
    # the PUBLISHes taken from the buffer together (else sink is called for each).
    sink_many: Callable[[list, float], None] | None = None

    def _create_socket(self):
        sock = super()._create_socket()
        return _BufferedSocket(sock) if _FAST_PATH_OK and isinstance(sock, socket.socket) else sock

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self.sink
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if sink is None or qos == 2 or not _FAST_PATH_OK or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            pos = 2 + ((packet[0] << 8) | packet[1])
            topic = bytes(packet[2:pos])
            mid = 0
            if qos:
                mid = (packet[pos] << 8) | packet[pos + 1]
                pos += 2
            if packet[pos] != 0:          # has MQTT 5 properties: let paho decode them
                return super()._handle_publish()
            payload = bytes(packet[pos + 1:])
        except IndexError:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        sink(topic, payload, qos, mid, header & 0x01, time.time())
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho reads one packet per pass of its loop (a select() and a dozen calls each);
        # after that one, take every whole PUBLISH already buffered in one go.
        rc = super().loop_read(max_packets)
        sock, sink = self._sock, self.sink
        if rc or sink is None or not isinstance(sock, _BufferedSocket) or self._protocol != mqtt.MQTTv5 \
                or self._in_packet["command"] != 0:
            return rc
        msgs: list = []
        sock.take_publishes(msgs)
        if msgs:
            with self._msgtime_mutex:
                self._last_bytes_received = _paho_time()
            received = time.time()
            sink_many = self.sink_many
            if sink_many is not None:
                sink_many(msgs, received)
            else:
                for topic, payload, qos, mid, retain in msgs:
                    sink(topic, payload, qos, mid, retain, received)
        return rc

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK (success) for many QoS 1 messages, in order, in one write."""
        if not mids:
            return
        if not self._manual_ack:
            return
        data = b"".join([_PUBACK.pack(0x40, 2, m) for m in mids])
        self._packet_queue(0x40, data, 0, 0)
