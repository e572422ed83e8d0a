"""Devices reach the embedded broker over TLS from another address (issue 15, item 1).

The test makes a network namespace and a veth pair (10.231.<n>.1 on the hub's side,
.2 inside), so the device process (paho-mqtt, tests/hub/tls_device.py) connects from a real
non-loopback address; no traffic leaves the machine. The broker is the hub's embedded
Mosquitto with the hub's CA and server certificate (store/certs.py). Refusals — another CA,
an expired or revoked certificate, plain text on the TLS port — are checked at the device
and in the hub's log line (hub/mqtt_refusals.py)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography.fernet import Fernet

from hub.embedded import BrokerTls, EmbeddedError, EmbeddedMosquitto, device_account, free_port
from hub.mqtt_refusals import RefusalFollower
from store.certs import HubPki
from store.secrets import SecretBox

ROOT = Path(__file__).resolve().parents[2]
DEVICE = Path(__file__).with_name("tls_device.py")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns():
    """(namespace, hub-side address, device-side address)."""
    n = os.getpid() % 200 + 20
    ns, host_if, dev_if = f"xlt{os.getpid()}", f"xlh{os.getpid()}", f"xld{os.getpid()}"
    hub_ip, dev_ip = f"10.231.{n}.1", f"10.231.{n}.2"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", dev_if)
        sh("ip", "link", "set", dev_if, "netns", ns)
        sh("ip", "addr", "add", f"{hub_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{dev_ip}/30", "dev", dev_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", dev_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, hub_ip, dev_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, netns):
    _, hub_ip, _ = netns
    var = tmp_path_factory.mktemp("tls-var")
    os.chmod(var, 0o755)
    box = SecretBox(Fernet.generate_key())
    pki = HubPki(var, box, server_names=["hub.test.example", hub_ip])
    broker = EmbeddedMosquitto(var, free_port(), device_port=free_port(), box=box,
                               tls=BrokerTls(pki, hub_ip, free_port(), free_port()))
    broker.set_accounts([device_account("door", "door-tls", "door-tls-password-1"),
                         device_account("door", "door-cert", "door-cert-password-1"),
                         device_account("door", "door-old", "door-old-password-1")])
    follower = RefusalFollower(broker.log_path, {broker.tls.port: "devices-tls", broker.tls.mtls_port: "devices-cert"})
    broker.start()
    yield broker, pki, follower, var
    broker.stop()


def device(netns, hub, tmp_path, *, port, cert=None, key=None, ca=None, user=None, password=None,
           client_id="door-x", topic=None, plain=False, hold=0.0) -> subprocess.Popen:
    ns, hub_ip, _ = netns
    broker, pki, _, _ = hub
    argv = ["ip", "netns", "exec", ns, sys.executable, str(DEVICE), "--host", hub_ip, "--port", str(port),
            "--ca", str(ca or pki.ca_path), "--client-id", client_id]
    for flag, value in (("--cert", cert), ("--key", key), ("--user", user), ("--password", password),
                        ("--topic", topic)):
        if value:
            argv += [flag, str(value)]
    if plain:
        argv.append("--plain")
    if hold:
        argv += ["--hold", str(hold)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(proc: subprocess.Popen, timeout: float = 30) -> list[dict]:
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, f"device printed nothing: {err[-2000:]}"
    return lines


def write_bundle(tmp_path: Path, bundle) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{bundle.device_id}-{bundle.serial}.crt", tmp_path / f"{bundle.device_id}.key"
    cert.write_text(bundle.cert_pem)
    key.write_text(bundle.key_pem)
    return cert, key


def hub_listener(broker: EmbeddedMosquitto, topic: str) -> tuple[paho.Client, list]:
    got, ready = [], threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}", protocol=paho.MQTTv5)
    c.username_pw_set("xlhub-hub", broker.hub_password)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda c, u, m: got.append(m.topic)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert ready.wait(5)
    return c, got


def refusal_line(hub, caplog, *words: str) -> str:
    """The hub's log line about a refused TLS connection that has all ``words``."""
    _, _, follower, _ = hub
    deadline = time.monotonic() + 5
    found = []
    while time.monotonic() < deadline:
        with caplog.at_level(logging.WARNING, logger="xlhub.mqtt_refusals"):
            follower.poll()
        found = [r.getMessage() for r in caplog.records if "refused a TLS connection" in r.getMessage()]
        for line in found:
            if all(w in line for w in words):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no log line with {words}: {found}")


def test_a_device_with_its_password_connects_over_tls_from_another_address(netns, hub, tmp_path):
    broker, pki, _, _ = hub
    listener, got = hub_listener(broker, "xlhub/v1/door/door-tls/#")
    try:
        ev = events(device(netns, hub, tmp_path, port=broker.tls.port, user="door-tls",
                           password="door-tls-password-1", client_id="door-tls", topic="xlhub/v1/door/door-tls/tele"))
        assert [e["event"] for e in ev] == ["connected", "published"], ev
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["xlhub/v1/door/door-tls/tele"]
    finally:
        listener.loop_stop()
        listener.disconnect()
    log = broker.log_path.read_text()
    assert f"New client connected from {netns[2]}:" in log and "u'door-tls'" in log


def test_a_device_with_a_client_certificate_connects_as_itself(netns, hub, tmp_path):
    broker, pki, _, _ = hub
    cert, key = write_bundle(tmp_path, pki.issue_client("door-cert"))
    listener, got = hub_listener(broker, "xlhub/v1/door/door-cert/#")
    try:
        # the certificate is the login: no password; the client id it asks for is replaced by the account
        ev = events(device(netns, hub, tmp_path, port=broker.tls.mtls_port, cert=cert, key=key,
                           client_id="anything", topic="xlhub/v1/door/door-cert/tele"))
        assert [e["event"] for e in ev] == ["connected", "published"], ev
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["xlhub/v1/door/door-cert/tele"]
        # and it writes only as itself: the ACL of the certificate's CN
        ev = events(device(netns, hub, tmp_path, port=broker.tls.mtls_port, cert=cert, key=key,
                           topic="xlhub/v1/door/door-tls/tele"))
        time.sleep(0.5)
        assert all("door-tls" not in t for t in got), got
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_a_certificate_from_another_ca_is_refused_with_a_clear_log_line(netns, hub, tmp_path, caplog):
    broker, _, _, _ = hub
    other = HubPki(tmp_path / "other", SecretBox(Fernet.generate_key()), server_names=["x"])
    cert, key = write_bundle(tmp_path, other.issue_client("door-cert"))
    ev = events(device(netns, hub, tmp_path, port=broker.tls.mtls_port, cert=cert, key=key))
    assert ev[0]["event"] == "refused", ev
    refusal_line(hub, caplog, netns[2], "客户端证书无效", "certificate verify failed")


def test_an_expired_certificate_is_refused(netns, hub, tmp_path, caplog):
    broker, pki, _, _ = hub
    now = datetime.now(UTC)
    cert, key = write_bundle(tmp_path, pki.issue_client("door-cert", not_before=now - timedelta(days=30),
                                                        not_after=now - timedelta(days=1)))
    ev = events(device(netns, hub, tmp_path, port=broker.tls.mtls_port, cert=cert, key=key))
    assert ev[0]["event"] == "refused", ev
    refusal_line(hub, caplog, netns[2], "客户端证书无效")


def test_a_device_that_does_not_trust_the_hub_is_told_so(netns, hub, tmp_path):
    """The device's side of a wrong CA: it refuses the hub (its installer forgot ca.crt)."""
    broker, _, _, _ = hub
    other = HubPki(tmp_path / "other2", SecretBox(Fernet.generate_key()), server_names=["x"])
    other.ensure_ca()
    ev = events(device(netns, hub, tmp_path, port=broker.tls.port, ca=other.ca_path, user="door-tls",
                       password="door-tls-password-1", client_id="door-tls"))
    assert ev[0]["event"] == "refused" and "CERTIFICATE_VERIFY_FAILED" in ev[0]["error"], ev


def test_plain_text_on_the_tls_port_is_refused_with_a_clear_log_line(netns, hub, tmp_path, caplog):
    broker, _, _, _ = hub
    ev = events(device(netns, hub, tmp_path, port=broker.tls.port, user="door-tls",
                       password="door-tls-password-1", client_id="door-tls", plain=True))
    assert ev[0]["event"] == "refused", ev
    # Mosquitto 2.0 logs no "New connection" line for a client that never spoke TLS: the line
    # names the address and the reason; the listener is named when the broker says it.
    refusal_line(hub, caplog, netns[2], "明文连接到了 TLS 端口")


def test_a_revoked_certificate_is_dropped_at_once_and_cannot_reconnect(netns, hub, tmp_path, caplog):
    broker, pki, _, _ = hub
    cert, key = write_bundle(tmp_path, pki.issue_client("door-old"))
    proc = device(netns, hub, tmp_path, port=broker.tls.mtls_port, cert=cert, key=key, hold=20)
    first = json.loads(proc.stdout.readline())
    assert first["event"] == "connected", (first, proc.stderr.read() if proc.poll() is not None else "")
    assert json.loads(proc.stdout.readline())["event"] == "holding"
    t0 = time.monotonic()
    pki.revoke_client("door-old")
    broker.reload()                           # what the supervisor does when it sees the revocation
    assert broker.drop("door-old")
    assert json.loads(proc.stdout.readline())["event"] == "dropped"
    took = time.monotonic() - t0
    rest = events(proc)
    assert [e["event"] for e in rest] == ["refused"], rest     # its reconnection
    assert took < 3, took
    refusal_line(hub, caplog, netns[2], "客户端证书无效")


def test_plain_text_devices_only_on_loopback_unless_allowed(tmp_path):
    box = SecretBox(Fernet.generate_key())
    with pytest.raises(EmbeddedError, match="plain-text device listener would listen on 0.0.0.0.*"
                                            "XLHUB_ALLOW_PLAIN_DEVICES"):
        EmbeddedMosquitto(tmp_path, free_port(), device_port=free_port(), box=box, device_host="0.0.0.0")
    EmbeddedMosquitto(tmp_path, free_port(), device_port=free_port(), box=box, device_host="0.0.0.0",
                      allow_plain_network=True)
