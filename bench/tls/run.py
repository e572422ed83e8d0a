"""TLS benchmark: what MQTT over TLS costs the devices' path, as ratios in one run.

    .venv/bin/python bench/tls/run.py [--devices 40] [--seconds 20] [--storm 1000]

Starts its own embedded PostgreSQL+TimescaleDB and Mosquitto (hub.embedded) in a temp dir,
the broker with the hub's certificates (store/certs.py) on a TLS device listener beside
the plain-text one, and the ingest worker in its own process. Then:

1. ingest over plain text, then over TLS: ``--devices`` devices, each its own connection
   and broker account (as real devices are), split over two publisher processes, publish
   QoS 1 telemetry as fast as their in-flight window allows for ``--seconds``; the figure
   is rows stored in device_telemetry per second, until the last one is stored. The goal:
   TLS ≥ 0.8× plain text.
2. connection storm: ``--storm`` devices (own accounts) connect at once, over plain text
   and then over TLS; the figure is the time until every one has its CONNACK.

Nothing is left behind."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

KINDS = ("door", "speaker", "drone", "radio")


def _devices(n: int, prefix: str):
    from devices.sim.fleet import DeviceFleet

    return DeviceFleet.synthetic(n, "mqtt://x@127.0.0.1:1", kinds=KINDS, prefix=prefix, seed=7)


def _client(dev_id: str, password: str, ca: str | None):
    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=dev_id, protocol=paho.MQTTv5)
    c.username_pw_set(dev_id, password)
    if ca:
        c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.tls_insecure_set(True)        # the bench dials 127.0.0.1 whatever the certificate's names
    c.max_inflight_messages_set(50)
    return c


def _publisher(ids: list[str], passwords: dict, port: int, ca: str | None, seconds: float, go, out) -> None:
    """Each device its own connection, publishing QoS 1 readings back to back."""
    fleet = _devices(len(ids) * 4 + 64, "bench")           # same ids as registered
    devs = [fleet.devices[i] for i in ids]
    clients = []
    for d in devs:
        c = _client(d.id, passwords[d.id], ca)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    go.wait()
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for d, c in zip(devs, clients):
            topic, payload = fleet.reading(d)
            info = c.publish(topic, payload, qos=1)
            sent += 1
            if sent % 50 == 0:
                info.wait_for_publish(5)
    for c in clients:
        c.disconnect()
        c.loop_stop()
    out.put(sent)


def _connect_packet(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, username and password, keepalive 60 s)."""
    def field(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    body = field("MQTT") + bytes([4, 0b11000010]) + (60).to_bytes(2, "big") + field(client_id) + field(username) \
        + field(password)
    length, n = b"", len(body)
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


def _storm(ids: list[str], passwords: dict, port: int, ca: str | None, go, out) -> None:
    """Every device at once, as a device's stack does it: TCP, TLS handshake (verifying the
    hub against its CA), CONNECT, CONNACK; one asyncio loop (a thread per client would
    measure Python's threads, not the broker). The connections stay open until all are in."""
    import asyncio

    async def one(dev_id: str, ctx):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="127.0.0.1" if ctx else None)
        writer.write(_connect_packet(dev_id, dev_id, passwords[dev_id]))
        await writer.drain()
        ack = await reader.readexactly(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"{dev_id}: CONNACK {ack.hex()}")
        return writer

    async def run():
        ctx = ssl.create_default_context(cafile=ca) if ca else None
        go.wait()
        t0 = time.monotonic()
        results = await asyncio.gather(*(one(d, ctx) for d in ids), return_exceptions=True)
        took = time.monotonic() - t0
        writers = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        for w in writers:
            w.close()
        out.put((took if not errors else None, len(writers), repr(errors[0]) if errors else None))

    asyncio.run(run())


def _ingest(db_url: str, mqtt_url: str, stop) -> None:
    from ingest.worker import IngestWorker

    svc = IngestWorker(db_url, mqtt_url, client_id="bench-ingest", heartbeat_name="ingest-bench")
    svc.start()
    stop.wait()
    svc.stop()


def _rows(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM device_telemetry").fetchone()[0]


def _ingest_phase(name: str, ids: list[str], passwords: dict, port: int, ca: str | None, seconds: float,
                  db_url: str) -> float:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    halves = [ids[0::2], ids[1::2]]
    procs = [ctx.Process(target=_publisher, args=(h, passwords, port, ca, seconds, go, out)) for h in halves]
    for p in procs:
        p.start()
    time.sleep(3)                       # connected
    before = _rows(db_url)
    t0 = time.monotonic()
    go.set()
    sent = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join(30)
    want = before + sent
    deadline = time.monotonic() + 120
    while (now := _rows(db_url)) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    took = time.monotonic() - t0
    stored = now - before
    rate = stored / took
    print(f"[bench] {name}: {stored}/{sent} stored in {took:.1f}s = {rate:,.0f} msg/s", flush=True)
    return rate


def _storm_phase(name: str, ids: list[str], passwords: dict, port: int, ca: str | None) -> float | None:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    halves = [ids[0::2], ids[1::2]]
    procs = [ctx.Process(target=_storm, args=(h, passwords, port, ca, go, out)) for h in halves]
    for p in procs:
        p.start()
    time.sleep(3)                       # processes up
    go.set()
    results = [out.get(timeout=400) for _ in procs]
    for p in procs:
        p.join(60)
    times = [t for t, _, _ in results]
    online = sum(n for _, n, _ in results)
    for _, _, error in results:
        if error:
            print(f"[bench] storm {name}: first failure {error}", flush=True)
    took = max(times) if all(t is not None for t in times) else None
    print(f"[bench] storm {name}: {online}/{len(ids)} online"
          + (f" in {took:.2f}s" if took is not None else " (not all within 300 s)"), flush=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=40, help="publishing devices, one connection each (default 40)")
    ap.add_argument("--seconds", type=float, default=20.0, help="publishing time per phase (default 20)")
    ap.add_argument("--storm", type=int, default=1000, help="devices in the connection storm (default 1000)")
    args = ap.parse_args()

    import logging

    from cryptography.fernet import Fernet

    from bench.ingest.run import _register
    from hub.embedded import BrokerTls, EmbeddedMosquitto, EmbeddedPostgres, device_account, free_port
    from store import migrate
    from store.certs import HubPki
    from store.secrets import SecretBox

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-tls-"))
    os.chmod(tmp, 0o755)
    box = SecretBox(Fernet.generate_key())
    pki = HubPki(tmp, box, server_names=["127.0.0.1"])
    pg = EmbeddedPostgres(tmp, free_port(), box=box)
    broker = EmbeddedMosquitto(tmp, free_port(), device_port=free_port(), box=box,
                               tls=BrokerTls(pki, "127.0.0.1", free_port(), 0))
    n_reg = args.devices * 4 + 64
    fleet = _devices(n_reg, "bench")
    ids = list(fleet.devices)[:args.devices]
    storm_ids = [f"storm-{i:05d}" for i in range(args.storm)]
    passwords = {d: f"pw-{d}" for d in [*ids, *storm_ids]}
    broker.set_accounts([device_account(fleet.devices[d].kind, d, passwords[d]) for d in ids]
                        + [device_account("door", d, passwords[d]) for d in storm_ids])
    stop = mp.get_context("spawn").Event()
    ingest = None
    try:
        pg.start()
        broker.start()
        migrate.upgrade(pg.url)
        _register(pg.url, n_reg)
        ingest = mp.get_context("spawn").Process(target=_ingest, args=(pg.url, broker.url, stop))
        ingest.start()
        time.sleep(3)
        ca = str(pki.ca_path)
        print(f"[bench] {args.devices} publishing devices (own connections), {args.seconds:.0f}s per phase; "
              f"storm of {args.storm}; {os.cpu_count()} CPUs", flush=True)
        plain = _ingest_phase("plain text", ids, passwords, broker.device_port, None, args.seconds, pg.url)
        tls = _ingest_phase("TLS", ids, passwords, broker.tls.port, ca, args.seconds, pg.url)
        print(f"[bench] stored msg/s over TLS / plain text: {tls / plain:.2f}× (goal ≥ 0.8×)", flush=True)
        s_plain = _storm_phase("plain text", storm_ids, passwords, broker.device_port, None)
        s_tls = _storm_phase("TLS", storm_ids, passwords, broker.tls.port, ca)
        if s_plain and s_tls:
            print(f"[bench] connection storm, {args.storm} devices: TLS {s_tls:.2f}s, plain text {s_plain:.2f}s "
                  f"({s_tls / s_plain:.2f}×)", flush=True)
    finally:
        stop.set()
        if ingest is not None:
            ingest.join(30)
        broker.stop()
        pg.stop(immediate=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
