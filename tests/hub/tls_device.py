"""A field device as the hub's installer would set one up: paho-mqtt over TLS with the CA
(and optionally the client certificate and key) from `xlhub devices credentials issue`.
Run inside the test's network namespace; prints one JSON line per thing that happens."""
from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as paho


def say(**kw) -> None:
    print(json.dumps(kw), flush=True)


def attempt(args) -> tuple[paho.Client | None, threading.Event]:
    gone = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv5)
    if args.user:
        client.username_pw_set(args.user, args.password)
    if not args.plain:
        client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    connected = threading.Event()
    result = {}

    def on_connect(c, u, flags, rc, props):
        result["rc"] = str(rc)
        if not rc.is_failure:
            connected.set()
        else:
            gone.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda c, u, f, rc, p: gone.set()
    try:
        client.connect(args.host, args.port, keepalive=5)
    except (OSError, ssl.SSLError) as exc:
        say(event="refused", error=f"{type(exc).__name__}: {exc}")
        return None, gone
    client.loop_start()
    deadline = time.monotonic() + 5
    while not (connected.is_set() or gone.is_set()) and time.monotonic() < deadline:
        time.sleep(0.02)
    if connected.is_set():
        say(event="connected")
        return client, gone
    client.loop_stop()
    say(event="refused", error=f"no CONNACK ({result.get('rc', 'connection closed')})")
    return None, gone


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("host", "ca", "cert", "key", "user", "password", "client-id", "topic"):
        p.add_argument(f"--{name}")
    p.add_argument("--port", type=int)
    p.add_argument("--plain", action="store_true", help="no TLS at all (plain text on a TLS port)")
    p.add_argument("--hold", type=float, default=0, help="stay connected this long, then try once more")
    args = p.parse_args()
    client, gone = attempt(args)
    if client is None:
        sys.exit(1)
    if args.topic:
        info = client.publish(args.topic, json.dumps({"v": 1, "ts": int(time.time() * 1000)}), qos=1)
        info.wait_for_publish(5)
        say(event="published", rc=info.rc)
    if args.hold:
        print(json.dumps({"event": "holding"}), flush=True)
        if gone.wait(args.hold):
            say(event="dropped")
            client.loop_stop()
            time.sleep(0.5)
            again, _ = attempt(args)
            if again is not None:
                again.disconnect()
        else:
            say(event="still connected")
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
