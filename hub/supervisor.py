"""`xlhub run`: start the embedded servers (unless external ones are configured), apply
the schema, sync the site file into the registry, then start and watch the hub's
processes — API, ingest, camera workers and (for the demo site) the simulators —
restarting any that dies, and stopping everything cleanly on SIGINT/SIGTERM.

While it runs it also keeps the broker's device accounts in step with the registry and
var/secrets: a device decommissioned (through the API, or dropped from the site file) or
whose password was rotated loses its old login within about a second. And it follows the
embedded broker's log: every login the broker refuses is an audit record, a burst of them
from one address a security event (hub/mqtt_refusals.py)."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from config.settings import Settings
from config.site import Site, load_site
from config.urls import redact_url
from hub.embedded import EmbeddedMosquitto, EmbeddedPostgres, MqttAccount, device_account
from hub.mqtt_refusals import RefusalFollower
from store.backoff import CHILD_RESTART
from store.secrets import SecretBox, read_or_create_secret

log = logging.getLogger("xlhub.supervisor")

# How often the broker's device accounts are compared with the registry and var/secrets:
# the longest a decommissioned device can still log in.
BROKER_ACCOUNTS_CHECK_S = 1.0


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_worker: bool            # counted by /readyz
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0


@dataclass
class Supervisor:
    settings: Settings
    site: Site | None = None
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedMosquitto | None = None
    db_url: str = ""
    mqtt_url: str = ""
    children: list[Child] = field(default_factory=list)
    # records the embedded broker's refused logins (audit, and a security event on a burst)
    refusals: RefusalFollower | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    # (active device kinds, passwords file stamp) the broker's accounts were last made from
    _accounts_basis: tuple | None = field(default=None, init=False, repr=False)
    _account_ids: set[str] = field(default_factory=set, init=False, repr=False)
    # revoked client-certificate serials the broker's CRL was last written with
    _revoked: set[int] = field(default_factory=set, init=False, repr=False)
    _broker_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @cached_property
    def box(self) -> SecretBox:
        """Encrypts var/secrets (XLHUB_SECRET_KEY, else var/secrets/master.key)."""
        return SecretBox.from_settings(self.settings)

    @cached_property
    def pki(self):
        """The hub's CA and certificates (store/certs.py)."""
        from store.certs import HubPki

        return HubPki.from_settings(self.settings, self.box)

    @cached_property
    def device_secrets(self):
        from devices.credentials import DeviceSecrets

        return DeviceSecrets.for_var_dir(self.settings.var_dir, self.box)

    # -- start-up -------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything before the hub's own processes: servers, schema, registry."""
        from store import migrate, workers
        from store.db import connect, wait_for_database
        from config.site.loader import read_site_document
        from store import sitedoc
        from store.registry import SyncReport

        s = self.settings
        check_plain_http(s)
        self.site = load_site(s.site_file)  # raises SiteError listing every problem
        s.var_dir.mkdir(parents=True, exist_ok=True)
        if s.database_url:
            self.db_url = s.database_url
        else:
            self.pg = EmbeddedPostgres(s.var_dir, s.embedded_pg_port, box=self.box)
            created = self.pg.init()
            log.info("%s embedded PostgreSQL on 127.0.0.1:%d", "created" if created else "starting", s.embedded_pg_port)
            self.pg.start()
            self.db_url = self.pg.url
        wait_for_database(self.db_url, timeout=120)
        migrate.upgrade(self.db_url)
        with connect(self.db_url) as conn:
            # The registry is the live truth: the site file is applied only when it differs
            # from the one applied last (then it wins for what it names); otherwise the
            # registry as edited in the UI stands (docs/architecture.md, "Site file and UI").
            if sitedoc.file_changed(conn, s.site_file):
                data, _root, _ = read_site_document(s.site_file)
                report = sitedoc.apply_site(conn, self.site, data, file=s.site_file, by="site file")
                log.info("site file %s applied to the registry (changed since the last one applied)", s.site_file)
            else:
                report = SyncReport()
                log.info("site file %s unchanged since applied: the registry as edited in the UI stands", s.site_file)
            workers.forget_all(conn)
            kinds = self._active_kinds(conn)
        log.info("site %s: %d grid nodes, %d cameras, %d devices", self.site.name, report.nodes, report.cameras,
                 report.devices)
        for device_id in report.deactivated:
            # Dropped from the site file: decommissioned, so its credentials go too.
            self.device_secrets.revoke(device_id)
            self.pki.revoke_client(device_id)
            log.info("device %s is no longer in the site file: decommissioned, broker credentials revoked", device_id)
        # The broker starts after the registry: its password file and ACL come from it.
        if s.mqtt_url:
            self.mqtt_url = s.mqtt_url
            if report.deactivated:
                self._warn_external(report.deactivated, "decommissioned")
            accounts = self._device_accounts(kinds, issue=False)
        else:
            # Devices log in on a listener of their own, where the client id is bound to the
            # account: on a shared one a device could take over the ingest's session.
            self.broker = EmbeddedMosquitto.from_settings(s, self.box, self.pki)
            accounts = self._device_accounts(kinds)
            self.broker.set_accounts(accounts)
            # from the log's end as it is before this start: what the broker logs from now on
            self.refusals = RefusalFollower(self.broker.log_path, {
                s.embedded_mqtt_port: "hub", self.broker.device_port: "devices",
                s.embedded_mqtt_device_tls_port: "devices-tls", s.embedded_mqtt_device_mtls_port: "devices-cert"})
            self.broker.start()
            self.mqtt_url = self.broker.url
            self._revoked = set(self.pki.revoked_serials())
            log.info("embedded Mosquitto on 127.0.0.1:%d (devices: plain %s:%d, TLS %s:%s, client certificates :%s)",
                     s.embedded_mqtt_port, s.embedded_mqtt_device_plain_host, self.broker.device_port,
                     s.embedded_mqtt_device_host, s.embedded_mqtt_device_tls_port or "off",
                     s.embedded_mqtt_device_mtls_port or "off")
        self._account_ids = {a.username for a in accounts}
        self._accounts_basis = (kinds, _stamp(self.device_secrets.passwords_path))
        for source, old, new in report.moved:
            if old is not None:
                log.info("%s moved from grid %s to %s (history kept)", source, old, new)
        for username, password in report.created_users:
            if password:
                # Shown once, on the console of whoever started the hub; stored only as a hash.
                print(f"[xlhub] created user {username} with initial password: {password}", flush=True)

    @staticmethod
    def _active_kinds(conn) -> dict[str, str]:
        return {r["id"]: str(r["kind"]) for r in conn.execute("SELECT id, kind FROM devices WHERE active")}

    def _device_accounts(self, kinds: dict[str, str], issue: bool = True) -> list[MqttAccount]:
        """一机一帐号: one broker account per active device. Site devices get theirs on
        first start (doors also a command-signing key) when the broker is the embedded one;
        API-added devices through `xlhub devices credentials issue`."""
        from devices.credentials import broker_accounts

        secrets_store = self.device_secrets
        known = secrets_store.passwords()
        for dev in self.site.devices if issue else ():
            if dev.id not in known:
                secrets_store.issue(dev.id, signing_key=str(dev.kind) == "door")
        return [device_account(kind, device_id, password, self._vendor_topics(device_id))
                for kind, device_id, password in broker_accounts(secrets_store, kinds)]

    def _vendor_topics(self, device_id: str) -> tuple[list[str], list[str]]:
        """The vendor topics a dialect device's account may use (devices/dialects)."""
        from devices.dialects.bridge import vendor_topics

        return vendor_topics(self.site, device_id)

    def sync_broker_accounts(self, conn) -> bool:
        """Bring the broker's device accounts in line with the registry and var/secrets when
        either changed since the last time: the embedded broker is rewritten and reloaded
        (Mosquitto then drops and refuses a removed or re-passworded account); of an external
        broker the hub manages nothing, so it says loudly what its operator must do.
        Returns True when the accounts changed."""
        from devices.credentials import broker_accounts

        kinds = self._active_kinds(conn)
        self.sync_revocations()
        basis = (kinds, _stamp(self.device_secrets.passwords_path))
        if basis == self._accounts_basis:
            return False
        wanted = {dev: pw for _, dev, pw in broker_accounts(self.device_secrets, kinds)}
        accounts = [device_account(kinds[dev], dev, pw, self._vendor_topics(dev)) for dev, pw in wanted.items()]
        removed = sorted(self._account_ids - set(wanted))
        if self.broker is not None:
            with self._broker_lock:
                before = {u: a.password for u, a in self.broker.accounts.items()}
                changed = self.broker.refresh(accounts)
            if changed:
                added = sorted(set(wanted) - set(before))
                new_password = sorted(d for d in wanted if d in before and before[d] != wanted[d])
                log.info("broker device accounts reloaded (%d): removed %s, added %s, new password %s",
                         len(accounts), removed or "-", added or "-", new_password or "-")
        else:
            changed = bool(removed)
            if removed:
                self._warn_external(removed, "decommissioned or its credentials revoked")
        for device_id in removed:
            self.pki.revoke_client(device_id)       # its certificates too: dropped at the next look
        self._account_ids = set(wanted)
        self._accounts_basis = basis
        return changed

    def sync_revocations(self) -> list[str]:
        """Certificates revoked since the last look (`xlhub devices credentials revoke`, a
        decommissioned device): the broker re-reads its CRL, so they fail their next
        handshake, and each such device's live connection is dropped. Returns the devices."""
        if self.broker is None or self.broker.tls is None:
            return []
        revoked = set(self.pki.revoked_serials())
        new = revoked - self._revoked
        if not new:
            return []
        clients = self.pki.revoked_devices(new)
        with self._broker_lock:
            self.broker.reload()
            for device_id in clients:
                dropped = self.broker.drop(device_id)
                log.info("device %s: client certificate revoked, broker CRL reloaded%s", device_id,
                         ", its connection dropped" if dropped else "")
        self._revoked = set(self.pki.revoked_serials())     # with the serials drop() used and revoked
        return clients

    def _warn_external(self, device_ids: list[str], why: str) -> None:
        for device_id in device_ids:
            log.warning("device %s %s: the hub does not manage the external broker (%s); remove the "
                        "account %s there yourself, until then the device can still log in",
                        device_id, why, redact_url(self.mqtt_url or ""), device_id)

    def _broker_accounts_loop(self) -> None:
        from store.db import connect

        conn = None
        while not self.stopping.wait(BROKER_ACCOUNTS_CHECK_S):
            try:
                if conn is None or conn.closed:
                    conn = connect(self.db_url, autocommit=True)
                self.sync_broker_accounts(conn)
            except Exception as exc:  # the database or the broker away: try again next round
                log.warning("broker accounts check failed (will retry): %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def plan_children(self) -> None:
        py = [sys.executable, "-m", "hub.process"]
        s = self.settings
        self.children = [
            Child("ingest", [*py, "ingest"], True),
            Child("alerts", [*py, "alerts"], True),
            Child("devices", [*py, "devices"], True),
            Child("dialects", [*py, "dialects"], True),
            *[Child(f"cameras-{i}", [*py, "cameras", "--shard", str(i), "--of", str(s.camera_workers)], True)
              for i in range(s.camera_workers)],
            Child("api", [*py, "api"], False),
        ]
        if self.site is not None and self.site.gb28181 is not None:
            # GB/T 28181 devices register to the hub (cameras/gb28181); its heartbeat counts for /readyz
            self.children.insert(-1, Child("gb28181", [*py, "gb28181"], True))
        if s.demo_enabled:
            self.children += [Child("demo-cameras", [*py, "demo-cameras"], False),
                              Child("demo-devices", [*py, "demo-devices"], False)]
            if self.site is not None and self.site.gb28181 is not None:
                self.children.append(Child("demo-gb28181", [*py, "demo-gb28181"], False))

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "XLHUB_DATABASE_URL": self.db_url,
            "XLHUB_MQTT_URL": self.mqtt_url,
            "XLHUB_SITE_FILE": str(self.settings.site_file),
            "XLHUB_VAR_DIR": str(self.settings.var_dir),
            "XLHUB_MQTT_DEVICE_URL": self.broker.device_url() if self.broker else self.mqtt_url,
            "XLHUB_EXPECTED_WORKERS": ",".join(c.name for c in self.children if c.ready_worker),
            "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir()),
            "PYTHONUNBUFFERED": "1",
        })
        if self.settings.demo_enabled:
            env.setdefault("XLHUB_DEMO_CAMERA_PASSWORD",
                           read_or_create_secret(self.settings.var_dir / "secrets" / "demo_camera_password", self.box))
        return env

    def _metrics_dir(self) -> Path:
        return self.settings.var_dir / "run" / "prometheus"

    # -- running --------------------------------------------------------------------
    def start_child(self, child: Child, env: dict[str, str]) -> None:
        child.proc = subprocess.Popen(child.argv, env=env, cwd=str(Path(__file__).resolve().parent.parent))
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self.prepare()
        except BaseException:
            self.shutdown()
            raise
        metrics = self._metrics_dir()
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir(parents=True)
        self.plan_children()
        env = self.child_env()
        for child in self.children:
            self.start_child(child, env)
        retention = threading.Thread(target=self._retention_loop, name="retention", daemon=True)
        retention.start()
        threading.Thread(target=self._broker_accounts_loop, name="broker-accounts", daemon=True).start()
        if self.refusals is not None:
            self.refusals.start(self.db_url)
        s = self.settings
        print(f"[xlhub] hub running: web UI and API {'https' if s.https else 'http'}://{s.http_host}:{s.http_port}/ "
              f"(API docs /docs, readiness /readyz); Ctrl-C stops it", flush=True)
        while not self.stopping.wait(0.5):
            self._watch(env)
        self.shutdown()
        return 0

    def _watch(self, env: dict[str, str]) -> None:
        now = time.monotonic()
        for server, name in ((self.pg, "PostgreSQL"), (self.broker, "Mosquitto")):
            if server is not None and not server.running() and not self.stopping.is_set():
                log.error("embedded %s died; restarting it", name)
                try:
                    # not while the accounts thread rewrites the broker's config
                    with self._broker_lock if server is self.broker else contextlib.nullcontext():
                        server.start()
                except Exception as exc:  # keep supervising; try again next round
                    log.error("embedded %s restart failed: %s", name, exc)
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    self.start_child(child, env)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > 60:
                    child.restarts = 0  # it stayed up: forget old crashes
                continue
            delay = CHILD_RESTART.delay(child.restarts + 1)
            log.error("%s exited with code %s; restarting in %ds", child.name, code, delay)
            child.proc = None
            child.restarts += 1
            child.next_start = now + delay

    def _retention_loop(self) -> None:
        from store.db import connect
        from store.retention import apply_retention

        while not self.stopping.wait(self.settings.retention.interval_seconds):
            try:
                with connect(self.db_url) as conn:
                    apply_retention(conn, self.settings.retention)
            except Exception as exc:
                log.warning("retention run failed (will retry): %s", exc)

    def _install_signal_handlers(self) -> None:
        def stop(signum, frame):
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stopping.set()
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def shutdown(self) -> None:
        self.stopping.set()
        for child in reversed(self.children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + 15
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
            child.proc = None
        if self.broker is not None:
            self.broker.stop()
        if self.refusals is not None:
            self.refusals.stop()          # its last refusals, while the database is still up
        if self.pg is not None:
            self.pg.stop()
        log.info("hub stopped")


def check_plain_http(settings: Settings) -> None:
    """Plain HTTP only on loopback, or when the operator says so (a TLS-terminating reverse
    proxy in front): otherwise passwords and session cookies would cross the LAN in clear."""
    from config.urls import is_loopback_host
    from hub.embedded import EmbeddedError

    if not settings.https and not settings.allow_plain_http and not is_loopback_host(settings.http_host):
        raise EmbeddedError(
            f"refusing to start: the API would serve plain HTTP on {settings.http_host}:{settings.http_port}, where "
            f"passwords and session cookies cross the network in clear. Leave XLHUB_HTTPS on (the default), "
            f"bind XLHUB_HTTP_HOST to 127.0.0.1 behind a reverse proxy, or set XLHUB_ALLOW_PLAIN_HTTP=true when "
            f"a TLS-terminating proxy on another machine forwards to it (docs/security.md)")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is rewritten (every write replaces it: a new inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def describe_targets(settings: Settings) -> str:
    db = redact_url(settings.database_url) if settings.database_url else f"embedded PostgreSQL under {settings.var_dir}"
    mq = redact_url(settings.mqtt_url) if settings.mqtt_url else f"embedded Mosquitto under {settings.var_dir}"
    return f"database: {db}; broker: {mq}"
