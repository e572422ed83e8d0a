"""`xlhub run` on its embedded default serves people over HTTPS and devices over TLS with
the certificates it generated on first start, and `xlhub devices credentials` hands an
installer a bundle that works: password over TLS, client certificate over mutual TLS, and
a revocation that ends the device's live connection through the running supervisor."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time

import httpx
import paho.mqtt.client as paho
import pytest

from tests.hub.test_run import PROJECT_ROOT, Hub, passwords  # noqa: F401  (fixture re-exported)

DEVICE = "door-dsc"


def xlhub(hub: Hub, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hub.cli", *argv], cwd=PROJECT_ROOT, env=hub.env,
                          capture_output=True, text=True, timeout=120)


def tls_client(bundle: dict, tmp_path, *, cert: bool) -> tuple[paho.Client, threading.Event, threading.Event]:
    ca = tmp_path / "ca.crt"
    ca.write_text(bundle["ca_pem"])
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=bundle["mqtt"]["client_id"], protocol=paho.MQTTv5)
    if cert:
        (tmp_path / "c.crt").write_text(bundle["client_cert"]["cert_pem"])
        (tmp_path / "c.key").write_text(bundle["client_cert"]["key_pem"])
        c.tls_set(ca_certs=str(ca), certfile=str(tmp_path / "c.crt"), keyfile=str(tmp_path / "c.key"),
                  tls_version=ssl.PROTOCOL_TLS_CLIENT)
    else:
        c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.username_pw_set(bundle["mqtt"]["username"], bundle["mqtt"]["password"])
    up, down = threading.Event(), threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: up.set() if not rc.is_failure else down.set()
    c.on_disconnect = lambda cl, u, f, rc, p: down.set()
    return c, up, down


def test_https_and_device_tls_on_the_embedded_default(tmp_path, passwords):  # noqa: F811
    hub = Hub(tmp_path / "var", passwords, https=True)
    hub.start()
    try:
        hub.wait_ready()
        r = httpx.get(f"{hub.base}/healthz", verify=hub.verify)
        assert r.status_code == 200 and r.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{hub.ports['http']}/healthz", timeout=3)    # no plain HTTP beside it
        # the CA's key is encrypted at rest like every secret; no private key in clear under var/tls
        assert (hub.var_dir / "secrets" / "tls_ca_key").read_text().startswith("xlhub-secret:v1:")
        assert not [p for p in (hub.var_dir / "tls").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]

        out = xlhub(hub, "devices", "credentials", "rotate", DEVICE, "--client-cert", "--host", "127.0.0.1", "--json")
        assert out.returncode == 0, out.stderr
        bundle = json.loads(out.stdout)
        assert bundle["host"] == "127.0.0.1" and bundle["mqtt"]["tls_port"] == hub.ports["mqtt_tls"]
        assert bundle["mqtt"]["client_cert_port"] == hub.ports["mqtt_mtls"]
        assert f"xlhub/v1/door/{DEVICE}/cmd/#" in bundle["topics"]["subscribe"]
        assert "BEGIN CERTIFICATE" in bundle["ca_pem"] and "PRIVATE KEY" in bundle["client_cert"]["key_pem"]

        # password over TLS, with the bundle's CA: accepted
        pw, up, _ = tls_client(bundle, tmp_path, cert=False)
        pw.connect("127.0.0.1", bundle["mqtt"]["tls_port"])
        pw.loop_start()
        assert up.wait(10)
        pw.disconnect()
        pw.loop_stop()

        # client certificate over mutual TLS: accepted; revoked: dropped by the supervisor, refused after
        dev, up, down = tls_client(bundle, tmp_path, cert=True)
        dev.reconnect_delay_set(30, 30)
        dev.connect("127.0.0.1", bundle["client_cert"]["port"])
        dev.loop_start()
        try:
            assert up.wait(10)
            t0 = time.monotonic()
            out = xlhub(hub, "devices", "credentials", "revoke", DEVICE)
            assert out.returncode == 0 and "client certificates: 1" in out.stdout, out.stdout + out.stderr
            assert down.wait(15), "the revoked device is still connected"
            took = time.monotonic() - t0
        finally:
            dev.loop_stop()
        again, up2, down2 = tls_client(bundle, tmp_path, cert=True)
        try:
            again.connect("127.0.0.1", bundle["client_cert"]["port"])
            again.loop_start()
            assert down2.wait(10) and not up2.is_set()
        except (OSError, ssl.SSLError):
            pass                                      # refused in the handshake
        finally:
            again.loop_stop()
        assert took < 10, took
        assert f"device {DEVICE}: client certificate revoked" in hub.output()
    finally:
        hub.stop()
