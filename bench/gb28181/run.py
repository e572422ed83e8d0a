"""GB/T 28181 registration storm (issue 14): N devices × C channels register with digest and
answer DeviceInfo and Catalog (GB2312, packets of 4) against the hub's SIP server on an
embedded PostgreSQL; time until every device's catalog is in the registry (goal < 60 s for
1,000 × 10 on 2 cores), then the steady keepalive load (every device every 60 s) as CPU % of
one core of the server's process.

Baseline in the same run: the same devices doing a bare SIP round trip (OPTIONS, no auth,
no database) — the ratio says what digest, MANSCDP and the registry cost over the transport.
The devices run in a child process, so the server's CPU is its own.

    .venv/bin/python bench/gb28181/run.py [--devices 1000] [--channels 10] [--keepalive-s 30]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HUB_ID, DOMAIN = "51019900002000000001", "5101990000"


def device_ids(n: int) -> list[str]:
    return [f"5101991011132{i:07d}" for i in range(n)]


def fleet_main(port: int, n: int, channels: int, passwords: dict, q, go, keepalive_s: float) -> None:
    from cameras.gb28181.sim.device import SimDevice
    from cameras.gb28181.sip import message as sipm

    async def main():
        devs = [SimDevice(d, passwords[d], hub=("127.0.0.1", port), hub_id=HUB_ID, domain=DOMAIN, channels=channels,
                          per_packet=4) for d in device_ids(n)]
        for d in devs:
            await d.start()
        sem = asyncio.Semaphore(200)

        async def options(d):
            async with sem:
                req = d._req("OPTIONS")
                r = await d.send_raw(sipm.Request(method="OPTIONS", uri=req.uri, headers=req.headers), timeout=20)
                return r.status

        q.put("ready")
        await asyncio.get_running_loop().run_in_executor(None, go.wait)   # never block the devices' loop
        t0 = time.perf_counter()
        codes = await asyncio.gather(*(options(d) for d in devs))
        go.clear()                     # before the answer: the parent sets it again once it has read it
        q.put(("options", time.perf_counter() - t0, sum(1 for c in codes if c == 200)))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)   # never block the devices' loop

        async def reg(d):
            async with sem:
                for _ in range(3):
                    try:
                        return (await d.register(timeout=20)).status
                    except TimeoutError:
                        continue
                return 0

        codes = await asyncio.gather(*(reg(d) for d in devs))
        go.clear()
        q.put(("registered", sum(1 for c in codes if c == 200)))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)   # never block the devices' loop
        # steady keepalive: each device once per keepalive_s, spread evenly
        gap = keepalive_s / n
        end = time.monotonic() + keepalive_s
        i = 0
        while time.monotonic() < end:
            asyncio.ensure_future(devs[i % n].keepalive())
            i += 1
            await asyncio.sleep(gap)
        q.put(("keepalives", i))
        await asyncio.sleep(1)

    asyncio.run(main())


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--keepalive-s", type=float, default=60.0,
                    help="seconds of steady keepalive measured (each device once: the GB/T 28181 period)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cameras.gb28181.passwords import GbPasswords
    from cameras.gb28181.server import GbServer
    from cameras.gb28181.settings import GbSettings
    from config.gb28181 import GbSite
    from config.settings import DEMO_SITE_FILE
    from config.site import load_site
    from hub.embedded import EmbeddedPostgres, free_port
    from store import migrate
    from store.db import connect
    from store.registry import sync_site
    from store.secrets import SecretBox, derive_key

    tmp = Path(tempfile.mkdtemp(prefix="xlhub-bench-gb28181-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp, free_port())
    pg.start()
    try:
        migrate.upgrade(pg.url)
        site = load_site(DEMO_SITE_FILE)
        ids = device_ids(args.devices)
        pw = GbPasswords(tmp, SecretBox(derive_key("bench-master-key-0123456789")))
        passwords = {d: f"pw-{d[-7:]}" for d in ids}
        from store.secrets import write_json
        (tmp / "secrets").mkdir(exist_ok=True)
        write_json(pw.path, passwords, pw.box)
        with connect(pg.url) as conn:
            sync_site(conn, site)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO gb_devices (id, admitted) VALUES (%s, true)", [(d,) for d in ids])
        server = GbServer(GbSite(sip_id=HUB_ID, domain=DOMAIN), GbSettings(host="127.0.0.1", port=0, tcp=False,
                          keepalive_interval_s=60, keepalive_misses=10, catalog_timeout_s=120), pg.url, pw, root_code=site.grid.code)
        server.start()
        ctx = mp.get_context("spawn")     # a fresh interpreter: a forked child held copies of the server's sockets
        q, go = ctx.Queue(), ctx.Event()
        child = ctx.Process(target=fleet_main, args=(server.port, args.devices, args.channels,
                                                                         passwords, q, go, args.keepalive_s))
        child.start()
        assert q.get(timeout=120) == "ready"
        go.set()
        _, t_options, ok_options = q.get(timeout=120)
        go.set()
        t0 = time.perf_counter()
        c0 = cpu_s()
        while len(server.catalog_results) < args.devices and time.perf_counter() - t0 < 300:
            time.sleep(0.1)
        t_all = time.perf_counter() - t0
        c_storm = cpu_s() - c0
        registered = q.get(timeout=60)[1]
        go.set()
        with connect(pg.url) as conn:
            cams = conn.execute("SELECT count(*) AS n FROM cameras WHERE origin = 'gb28181' AND active").fetchone()["n"]
        # steady keepalive
        k0, w0 = cpu_s(), time.perf_counter()
        kinfo = q.get(timeout=args.keepalive_s + 60)
        k_cpu, k_wall = cpu_s() - k0, time.perf_counter() - w0
        child.join(10)
        server.stop()
        print(f"gb28181 registration storm: {args.devices} devices × {args.channels} channels")
        print(f"  baseline (bare OPTIONS round trips, no auth/db): {t_options:.2f} s, {ok_options} answered")
        print(f"  registered {registered}/{args.devices}; catalogs in the registry: {len(server.catalog_results)}; "
              f"cameras: {cams}")
        print(f"  time until all online with catalog: {t_all:.1f} s (goal < 60 s) — "
              f"{t_all / max(t_options, 1e-6):.1f}× the bare round trips; server CPU {c_storm:.1f} s")
        print(f"  steady keepalive: {kinfo[1]} keepalives in {k_wall:.1f} s ({kinfo[1] / k_wall:.1f}/s, "
              f"{args.devices} devices once per {args.keepalive_s:g} s); server CPU "
              f"{100 * k_cpu / k_wall:.1f} % of one core")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
