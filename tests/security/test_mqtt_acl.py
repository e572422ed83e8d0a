"""一机一帐号 on a real Mosquitto with the hub's own generated password files and ACL: a
device account publishes and reads only under its own topics, cannot plant a Last Will
elsewhere, cannot log in to the hub's listener (however the broker is set up: there is no
shared-listener mode), and — on the device listener, where the client id is the account —
cannot take over another client's session (the ingest's, with the QoS 1 messages queued
in it, or another device's)."""
from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.embedded import HUB_MQTT_USER, EmbeddedMosquitto, device_account, free_port

PW = {"door-a": "Door-a-secret-1", "door-b": "Door-b-secret-2", "radio-c": "Radio-c-secret-3"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = EmbeddedMosquitto(tmp_path_factory.mktemp("acl-broker"), free_port(), device_port=free_port())
    b.set_accounts([device_account("door", "door-a", PW["door-a"]), device_account("door", "door-b", PW["door-b"]),
                    device_account("radio", "radio-c", PW["radio-c"])])
    b.start()
    yield b
    b.stop()


class Client:
    def __init__(self, port: int, username: str | None, password: str | None, client_id: str | None = None, *,
                 clean: bool = True, will: tuple[str, bytes] | None = None, expiry: int = 0) -> None:
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        if will:
            self.c.will_set(will[0], will[1], qos=1)
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.rc = None
        self.session_present = None
        self.subacks: list = []
        self.disconnects = 0
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append(rcs)
        self.c.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        self.c.loop_start()
        self.done.wait(10)

    def _on_connect(self, c, u, flags, rc, p):
        self.rc, self.session_present = rc, flags.session_present
        self.done.set()

    def _on_disconnect(self, c, u, flags, rc, p):
        self.disconnects += 1
        if self.rc is None:
            self.rc = rc
            self.done.set()

    def _on_message(self, c, u, msg):
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    @property
    def ok(self) -> bool:
        return self.rc is not None and not self.rc.is_failure and self.c.is_connected()

    def sub(self, *filters: str) -> None:
        for f in filters:
            self.c.subscribe(f, qos=1)
        time.sleep(0.3)

    def pub(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def hub(b: EmbeddedMosquitto, **kw) -> Client:
    return Client(b.port, HUB_MQTT_USER, b.hub_password, **kw)


def device(b: EmbeddedMosquitto, name: str, **kw) -> Client:
    return Client(b.device_port, name, PW[name], **kw)


def test_device_publishes_only_under_its_own_topics(broker):
    watcher = hub(broker)
    watcher.sub("#")
    a = device(broker, "door-a")
    assert a.ok
    try:
        foreign = ["xlhub/v1/door/door-b/tele", "xlhub/v1/door/door-b/evt/forced_open", "xlhub/v1/door/door-b/avail",
                   "xlhub/v1/door/door-b/state", "xlhub/v1/door/door-b/res", "xlhub/v1/door/door-b/cmd/unlock",
                   "xlhub/v1/door/door-a/cmd/unlock",          # a device may not command itself either
                   "xlhub/v1/radio/door-a/evt/sos",            # its own id under another kind
                   "xlhub/v1/camera/cam-dsc-01/evt/tamper.covered", "xlhub/_replies/xlhub-api-cmd-1",
                   "xlhub/v2/door/door-a/tele", "$SYS/broker/uptime", "other/topic", "xlhub/v1/door/door-a/tele/x",
                   "xlhub/v1/door/door-a"]
        for t in foreign:
            a.c.publish(t, b'{"spoof":1}', qos=1)
        own = ["xlhub/v1/door/door-a/tele", "xlhub/v1/door/door-a/evt/opened", "xlhub/v1/door/door-a/avail",
               "xlhub/v1/door/door-a/state", "xlhub/v1/door/door-a/res", "xlhub/v1/door/door-a/res/unlock"]
        for t in own:
            a.pub(t)
        time.sleep(1)
        seen = {t for t, _ in watcher.got}
        assert seen == set(own), f"delivered: {sorted(seen)}"
    finally:
        a.close()
        watcher.close()


def test_device_reads_only_its_own_commands(broker):
    sender = hub(broker)
    sender.pub("xlhub/v1/door/door-b/avail", b'{"retained":1}', retain=True)
    a = device(broker, "door-a")
    try:
        a.sub("#", "xlhub/v1/#", "xlhub/v1/door/door-b/cmd/#", "xlhub/v1/+/+/tele", "$SYS/#", "xlhub/_replies/#",
              "xlhub/v1/door/door-a/cmd/#")
        for t in ["xlhub/v1/door/door-b/cmd/unlock", "xlhub/v1/door/door-b/tele", "xlhub/v1/radio/radio-c/evt/sos",
                  "xlhub/_replies/xlhub-api-cmd-1", "xlhub/v1/door/door-a/cmd/unlock"]:
            sender.pub(t, b"x")
        time.sleep(1)
        topics = {t for t, _ in a.got}
        assert topics == {"xlhub/v1/door/door-a/cmd/unlock"}, f"door-a read: {sorted(topics)}"
    finally:
        sender.pub("xlhub/v1/door/door-b/avail", b"", retain=True)
        sender.close()
        a.close()


def test_last_will_cannot_speak_for_another_device(broker):
    watcher = hub(broker)
    watcher.sub("xlhub/v1/door/door-b/#", "xlhub/v1/door/door-a/#")
    a = device(broker, "door-a", will=("xlhub/v1/door/door-b/avail", b'{"v":1,"status":"offline","ts":0}'))
    try:
        a.c._sock.close()          # noqa: SLF001 - drop the link without DISCONNECT: the broker sends the will
        time.sleep(2)
        assert not [t for t, _ in watcher.got if "door-b" in t], watcher.got
    finally:
        a.c.loop_stop()
        watcher.close()


def test_accounts_and_listeners(broker):
    assert not Client(broker.device_port, "door-a", "wrong-password").ok
    assert not Client(broker.device_port, None, None).ok, "anonymous login accepted"
    assert not Client(broker.port, "door-a", PW["door-a"]).ok, "a device account logs in to the hub's listener"
    assert not Client(broker.device_port, HUB_MQTT_USER, broker.hub_password).ok, \
        "the hub's account is not for the device listener"
    assert not Client(broker.device_port, "door-a", PW["door-b"]).ok, "another device's password accepted"


def test_no_broker_without_the_device_listener(tmp_path):
    """Built without a device port (as the test and bench brokers are), the broker still
    gives devices a listener of their own: a device account is refused on the hub's."""
    b = EmbeddedMosquitto(tmp_path, free_port())
    b.set_accounts([device_account("door", "door-a", PW["door-a"])])
    b.start()
    try:
        assert b.device_port not in (None, b.port)
        assert not Client(b.port, "door-a", PW["door-a"]).ok, "a device account logs in to the hub's listener"
        dev = Client(b.device_port, "door-a", PW["door-a"])
        assert dev.ok
        dev.close()
        assert hub(b).ok
    finally:
        b.stop()


def test_device_cannot_take_over_the_ingest_session(broker):
    """A device connecting with the ingest's client id must not disconnect it nor take its
    persistent session (whose queued QoS 1 messages the impostor may not read: the broker
    would drop them)."""
    cid = f"xlhub-ingest-{uuid.uuid4().hex[:4]}"
    ingest = hub(broker, client_id=cid, clean=False, expiry=300)
    ingest.sub("xlhub/v1/#")
    ingest.close()                      # offline: the broker queues for it
    sender = hub(broker)
    for i in range(10):
        sender.pub("xlhub/v1/door/door-a/tele", f"queued-{i}".encode())
    impostor = device(broker, "door-a", client_id=cid, clean=False, expiry=300)
    time.sleep(1)
    impostor.close()
    back = hub(broker, client_id=cid, clean=False, expiry=300)
    try:
        deadline = time.monotonic() + 5
        while len(back.got) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert back.session_present, "the ingest's session was replaced"
        assert len(back.got) == 10, f"{10 - len(back.got)} queued messages lost to a device using the ingest's id"
    finally:
        back.close()
        sender.close()


def test_device_cannot_kick_another_device_off(broker):
    b = device(broker, "door-b", client_id="door-b")
    assert b.ok
    intruder = device(broker, "door-a", client_id="door-b")
    try:
        time.sleep(1)
        assert b.c.is_connected() and b.disconnects == 0, "door-a disconnected door-b by using its client id"
    finally:
        intruder.close()
        b.close()
