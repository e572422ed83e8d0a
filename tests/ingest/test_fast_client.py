"""FastClient's own PUBLISH reader (ingest/worker.py) against a real Mosquitto: every
message arrives once, in order, byte for byte, whatever mix of QoS, sizes (bigger than
its 32 KiB read), retain flags and MQTT 5 properties it is sent; and packets cut at any
byte are left for paho to finish, not misread."""
from __future__ import annotations

import random
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.fastclient import FastClient, _BufferedSocket


def _publish_packet(topic: bytes, payload: bytes, qos: int, mid: int = 0, retain: bool = False,
                    props: bytes = b"\x00") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"") + props + payload
    length, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | (qos << 1) | int(retain)]) + length + body


class _Chunks:
    """A socket that hands out prepared chunks, then says 'nothing more now'."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)


def test_take_publishes_stops_at_anything_it_does_not_own():
    a = _publish_packet(b"xlhub/v1/door/d1/tele", b'{"a":1}', 1, mid=7)
    b = _publish_packet(b"xlhub/v1/door/d1/tele", b"x" * 300, 0, retain=True)       # two-byte length
    props = _publish_packet(b"t/p", b"p", 1, mid=8, props=b"\x05\x26\x00\x00\x00\x00")  # a user property
    ping = b"\xd0\x00"
    for stream in ([a + b + props + a], [a + b + ping + a]):
        sock = _BufferedSocket(_Chunks(stream))
        sock.recv(0)                                    # fills the buffer
        out: list = []
        sock.take_publishes(out)
        assert out == [(b"xlhub/v1/door/d1/tele", b'{"a":1}', 1, 7, 0),
                       (b"xlhub/v1/door/d1/tele", b"x" * 300, 0, 0, 1)]
        assert sock.recv(1) in (props[:1], ping[:1])    # the rest is still there for paho
    whole = a + b
    for cut in range(1, len(whole)):
        sock = _BufferedSocket(_Chunks([whole[:cut]]))
        sock.recv(0)
        out = []
        sock.take_publishes(out)
        assert len(out) == (1 if cut >= len(a) else 0) + (1 if cut == len(whole) else 0)
        assert sock._pos == (len(a) if cut >= len(a) else 0)
    bad = bytes([0x32, 3, 0, 9, 0])                     # topic longer than the packet
    sock = _BufferedSocket(_Chunks([bad]))
    sock.recv(0)
    out = []
    sock.take_publishes(out)
    assert out == [] and sock._pos == 0


def test_every_message_arrives_once_in_order(mqtt):
    tag = uuid.uuid4().hex[:8]
    rng = random.Random(tag)
    got: list = []
    lock = threading.Lock()
    acks: list[int] = []
    done = threading.Event()

    def sink(topic, payload, qos, mid, retain, received):
        with lock:
            got.append((bytes(topic), bytes(payload), qos))
            if qos:
                acks.append(mid)

    sub = FastClient(paho.CallbackAPIVersion.VERSION2, client_id=f"fast-{tag}", protocol=paho.MQTTv5,
                     manual_ack=True)
    sub.username_pw_set("xlhub-hub", mqtt.hub_password)
    sub.sink = sink
    # packets with properties take paho's own path, as in IngestWorker
    sub.on_message = lambda c, u, m: sink(m._topic, m.payload, m.qos, m.mid, m.retain, time.time())
    sub.on_subscribe = lambda *a: done.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"fast/{tag}/#", options=SubscribeOptions(qos=1))
    sub.connect("127.0.0.1", mqtt.port)
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fast-pub-{tag}", protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.username_pw_set("xlhub-hub", mqtt.hub_password)
    pub.connect("127.0.0.1", mqtt.port)
    pub.loop_start()
    try:
        assert done.wait(10)
        sent = []
        infos = []
        for i in range(3000):
            size = rng.choice([0, 1, 120, 200, 127, 128, 16383, 16384, 40000])
            qos = rng.choice([0, 1, 1])
            topic = f"fast/{tag}/{i % 7}"
            payload = rng.randbytes(size)
            props = None
            if i % 50 == 0:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("k", str(i))
            infos.append(pub.publish(topic, payload, qos=qos, properties=props))
            sent.append((topic.encode(), payload, qos))
        for info in infos:
            info.wait_for_publish(30)
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            with lock:
                mids, acks[:] = acks[:], []
            sub.ack_many(mids)
            time.sleep(0.02)
        # One publisher, one subscriber: the broker keeps the order of each QoS.
        assert len(got) == len(sent)
        for qos in (0, 1):
            assert [g for g in got if g[2] == qos] == [m for m in sent if m[2] == qos]
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
