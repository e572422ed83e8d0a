"""`xlhub run` as a whole (a real supervisor with its real children): the ingest child,
the API child and the embedded Mosquitto are each SIGKILLed while telemetry and events
flow; the supervisor restarts each, /readyz comes back to ready, and the accounting over
the whole run balances."""
from __future__ import annotations

import os
import signal
import time
import uuid

import httpx

from config.settings import Settings
from store.secrets import SecretBox, read_secret

from tests.faults.tools import Publisher, Stream, children, cmdline, scalar, settle, wait_until
from tests.hub.test_run import Hub


def child_pid(hub: Hub, name: str) -> int | None:
    for pid in children(hub.proc.pid):
        argv = cmdline(pid)
        if "hub.process" in argv and name in argv:
            return pid
        if name == "mosquitto" and argv and argv[0].endswith("/mosquitto"):
            return pid
    return None


def ready(hub: Hub) -> bool:
    try:
        return httpx.get(f"{hub.base}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def test_supervisor_restarts_killed_children(tmp_path, figures):
    hub = Hub(tmp_path / "var", {})
    hub.env.update({"XLHUB_DEMO": "false", "XLHUB_CAMERA_WORKERS": "0", "XLHUB_LOG_LEVEL": "INFO"})
    hub.start()
    pub = None
    measured = {}
    try:
        hub.wait_ready(180)
        password = read_secret(hub.var_dir / "secrets" / "mqtt_hub_password",
                               SecretBox.from_settings(Settings(var_dir=hub.var_dir)), migrate=False)
        tag = f"sup{uuid.uuid4().hex[:6]}"
        pub = Publisher(hub.ports["mqtt"], "xlhub-hub", password)
        stream = Stream(pub, tag, rate=200).start()
        time.sleep(2)
        # The ingest session must be in Mosquitto's snapshot before the broker is killed, as
        # it is on a hub that has run for more than one autosave (10 s): ask for one now.
        os.kill(child_pid(hub, "mosquitto"), signal.SIGUSR1)
        time.sleep(1)

        for name in ("ingest", "api", "mosquitto"):
            pid = wait_until(lambda: child_pid(hub, name), 30, f"the {name} child")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            new = wait_until(lambda: (p := child_pid(hub, name)) and p != pid and p, 60,
                             f"the supervisor to restart {name}")
            restarted = time.monotonic() - t0
            if name == "ingest":
                # Ready again means the new process, not a fresh row of the old: wait for its heartbeat.
                wait_until(lambda: scalar(hub.db_url(), "SELECT pid = %s AND (detail->>'ready')::bool FROM "
                                          "worker_heartbeats WHERE name = 'ingest'", (new,)), 60,
                           "the new ingest's heartbeat")
            wait_until(lambda: ready(hub), 60, f"/readyz ready after {name} was killed")
            measured[name] = {"restarted_after_s": round(restarted, 1),
                              "ready_after_s": round(time.monotonic() - t0, 1), "old_pid": pid, "new_pid": new}
            time.sleep(1)
        stream.stop()
        acc = settle(hub.db_url(), pub, tag, timeout=120)
        figures("supervisor_restarts", **measured, published=stream.sent + stream.events, accounting=acc.line(),
                lost=len(acc.lost_tele) + len(acc.lost_events), duplicate_events=acc.duplicate_events)
        assert acc.balanced(), acc.line() + "\n" + hub.output()
        log = hub.output()
        assert "ingest exited with code -9; restarting" in log and "api exited with code -9; restarting" in log
        assert "embedded Mosquitto died; restarting it" in log
    finally:
        if pub is not None:
            pub.close()
        assert hub.stop(signal.SIGTERM) == 0, hub.output()
