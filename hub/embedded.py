"""The embedded default: a private PostgreSQL+TimescaleDB cluster and a private Mosquitto,
created under var/ on first start, bound to loopback, supervised and stopped cleanly.

Both servers refuse to run as root, so when the hub runs as root they run as Debian's
service users (postgres, mosquitto).  Those users must be able to reach their data
directory; a checkout under a private directory (mktemp -d is 0700) is not reachable,
so the data then lives under /var/lib/xlhub/<hash> and var/<name> is a symlink to it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from store.files import private_dir
from store.secrets import SecretBox, exclusive, read_or_create_secret

log = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RELOCATED_ROOT = Path("/var/lib/xlhub")
HUB_MQTT_USER = "xlhub-hub"


class EmbeddedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect_host(bind: str) -> str:
    """Where a local client reaches a listener bound to ``bind`` (any address: loopback)."""
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, host: str = "127.0.0.1") -> None:
    host = connect_host(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise EmbeddedError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def _stop(proc: subprocess.Popen | None, sig: signal.Signals, timeout: float) -> None:
    """Ask a server to stop with ``sig``; SIGKILL it when it has not within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The account a server runs as: its Debian service user when we are root, else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedError(f"running as root but the service user {name!r} does not exist "
                            f"(run scripts/setup)") from None


def _as_user(user: pwd.struct_passwd | None) -> dict:
    """Popen arguments that run the child itself as the service user (no runuser in
    between, so our signals reach the server directly)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}}


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    return subprocess.run(["test", "-x", str(path)], capture_output=True, cwd="/", **_as_user(user)).returncode == 0


def service_dir(var_dir: Path, name: str, user: pwd.struct_passwd | None) -> Path:
    """var/<name>, owned by the service user, relocated when that user cannot reach var/."""
    var_dir.mkdir(parents=True, exist_ok=True)
    link = var_dir / name
    if user is None:
        return private_dir(link)
    if link.is_symlink() or (not link.exists() and not _reachable_by(user, var_dir)):
        target = RELOCATED_ROOT / hashlib.sha256(str(var_dir.resolve()).encode()).hexdigest()[:16] / name
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        if not link.is_symlink():
            link.symlink_to(target)
        path = target
    else:
        link.mkdir(exist_ok=True)
        path = link
    for p in [path, *path.rglob("*")]:
        os.lchown(p, user.pw_uid, user.pw_gid)
    return private_dir(path)              # the service user's alone (its parent stays traversable)


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL 15 cluster with timescaledb preloaded, on 127.0.0.1:port."""

    var_dir: Path
    port: int
    database: str = "xlhub"
    user: str = "xlhub"
    # How var/secrets is encrypted: the supervisor passes the one from its settings.
    box: SecretBox | None = field(default=None, repr=False)
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.var_dir = Path(self.var_dir).resolve()
        self._os_user = _service_user("postgres")
        self.box = self.box or SecretBox.for_var_dir(self.var_dir)
        self.password = read_or_create_secret(self.var_dir / "secrets" / "pg_password", self.box)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{self.database}"

    @property
    def base(self) -> Path:
        return service_dir(self.var_dir, "pg", self._os_user)

    def _run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, capture_output=True, text=True, cwd="/", **_as_user(self._os_user), **kw)
        if res.returncode != 0:
            raise EmbeddedError(f"{Path(argv[0]).name} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        return res

    def init(self) -> bool:
        """Create the cluster if it does not exist yet. Returns True when it was created."""
        base = self.base
        data = base / "data"
        if (data / "PG_VERSION").exists():
            self._write_conf(data)
            return False
        if not (PG_BIN / "initdb").exists():
            raise EmbeddedError(f"{PG_BIN}/initdb not found: PostgreSQL 15 is not installed (run scripts/setup)")
        pwfile = base / ".initpw"
        pwfile.write_text(self.password + "\n")
        if self._os_user:
            os.chown(pwfile, self._os_user.pw_uid, self._os_user.pw_gid)
        os.chmod(pwfile, 0o600)
        try:
            self._run([str(PG_BIN / "initdb"), "-D", str(data), "-U", self.user, "--pwfile", str(pwfile),
                       "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"])
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_conf(data)
        return True

    def _write_conf(self, data: Path) -> None:
        run = self.base / "run"
        run.mkdir(exist_ok=True)
        if self._os_user:
            os.chown(run, self._os_user.pw_uid, self._os_user.pw_gid)
        conf = f"""# Written by xlhub on every start; edit postgresql.conf for local changes.
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{run}'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 128MB
wal_compression = on
max_wal_size = 2GB
checkpoint_timeout = 15min
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""
        path = data / "xlhub.conf"
        path.write_text(conf)
        if self._os_user:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)
        main = data / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'xlhub.conf'" not in text:
            main.write_text(text + "\ninclude_if_exists = 'xlhub.conf'\n")

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        data = self.base / "data"
        log_path = self.base / "postgres.log"
        logf = open(log_path, "ab")
        self.proc = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(data)], cwd="/",
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     **_as_user(self._os_user))
        logf.close()
        try:
            _wait_port(self.port, timeout, self.proc)
            self._wait_accepting(timeout)
        except EmbeddedError as exc:
            tail = log_path.read_text(errors="replace")[-1500:]
            self.stop()
            raise EmbeddedError(f"embedded PostgreSQL did not start: {exc}\n{tail}") from None
        self._ensure_database()

    def _wait_accepting(self, timeout: float) -> None:
        import psycopg
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"not accepting connections: {exc}") from None
                time.sleep(0.2)

    def _ensure_database(self) -> None:
        import psycopg
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT): active transactions roll back, everything committed stays.
        Immediate (SIGQUIT) skips the shutdown checkpoint: for throwaway test clusters."""
        _stop(self.proc, signal.SIGQUIT if immediate else signal.SIGINT, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class MqttAccount:
    username: str
    password: str
    # Topic filters this account may write and read (一机一帐号: a device only its own).
    write: list[str]
    read: list[str]


def device_account(kind: str, device_id: str, password: str, vendor: tuple[list[str], list[str]] = ([], [])
                   ) -> MqttAccount:
    """A device's account: its own hub topics, and (``vendor``: write, read) the exact topics
    of its vendor dialect (devices/dialects/bridge.py ``vendor_topics``)."""
    root = f"xlhub/v1/{kind}/{device_id}"
    return MqttAccount(
        username=device_id, password=password,
        write=[f"{root}/avail", f"{root}/state", f"{root}/tele", f"{root}/evt/#", f"{root}/res", f"{root}/res/#",
               *vendor[0]],
        read=[f"{root}/cmd/#", *vendor[1]],
    )


@dataclass
class BrokerTls:
    """The device listeners that cross the network: MQTT over TLS with the hub's server
    certificate (store/certs.py), on ``host`` (the LAN address; any by default).

    - ``port`` (8883): TLS, then the device's broker password, as on the plain listener;
    - ``mtls_port`` (8884): TLS with a client certificate the hub issued (一机一证):
      ``require_certificate`` and ``use_identity_as_username``, so the certificate's CN is
      the account and the ACL is the device's, no password. Revoked certificates are in the
      CRL (``crlfile``), which Mosquitto re-reads on SIGHUP: a revoked device's next
      handshake fails. Its live connection does not (Mosquitto 2.0 re-checks passwords on
      reload, not certificates), so :meth:`EmbeddedMosquitto.drop` ends it.

    Why a CRL and not a password beside the certificate: the certificate then is the
    credential, bound to the account by its CN; a password beside it would let a device
    present any hub-issued certificate with another device's password."""

    pki: object                  # store.certs.HubPki
    host: str = "0.0.0.0"
    port: int = 8883
    mtls_port: int = 8884


@dataclass
class EmbeddedMosquitto:
    """A private Mosquitto 2 broker on 127.0.0.1 with two listeners, each with its own
    password file and ACL (``per_listener_settings``): ``port`` for the hub's own processes
    (one account, ``xlhub-hub``) and ``device_port`` for the devices (one account each,
    一机一帐号), picked free when not given.

    A device account exists only on the device listener, and there the client id is forced
    to the username. Were devices on the hub's listener, any device account could connect
    with another client's id — the ingest's ``xlhub-ingest`` or another device's — which
    disconnects that client and takes its persistent session, dropping the QoS 1 messages
    queued in it (tests/security/test_mqtt_acl.py). So there is no shared-listener mode."""

    var_dir: Path
    port: int
    device_port: int | None = None
    box: SecretBox | None = field(default=None, repr=False)
    # the plain-text device listener's address: loopback unless allow_plain_network
    device_host: str = "127.0.0.1"
    allow_plain_network: bool = False
    tls: BrokerTls | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from config.urls import is_loopback_host

        self.var_dir = Path(self.var_dir).resolve()
        if self.device_port is None:
            self.device_port = free_port()
        if self.device_port == self.port:
            raise EmbeddedError("the device listener needs a port of its own")
        if not is_loopback_host(self.device_host) and not self.allow_plain_network:
            raise EmbeddedError(
                f"refusing to start: the plain-text device listener would listen on {self.device_host}:"
                f"{self.device_port}, where device passwords cross the network in clear. Devices on the network "
                f"connect over TLS (XLHUB_EMBEDDED_MQTT_DEVICE_TLS_PORT, 8883); keep "
                f"XLHUB_EMBEDDED_MQTT_DEVICE_PLAIN_HOST on 127.0.0.1, or set XLHUB_ALLOW_PLAIN_DEVICES=true "
                f"to accept plain text on purpose")
        if self.tls is not None:
            ports = [p for p in (self.tls.port, self.tls.mtls_port) if p]
            if len(set(ports)) != len(ports) or set(ports) & {self.port, self.device_port}:
                raise EmbeddedError(f"the TLS device listeners need ports of their own (got {ports})")
        self._os_user = _service_user("mosquitto")
        self.box = self.box or SecretBox.for_var_dir(self.var_dir)
        self.hub_password = read_or_create_secret(self.var_dir / "secrets" / "mqtt_hub_password", self.box)
        self.accounts: dict[str, MqttAccount] = {}

    @property
    def url(self) -> str:
        return f"mqtt://{HUB_MQTT_USER}:{quote(self.hub_password, safe='')}@127.0.0.1:{self.port}"

    def device_url(self, username: str | None = None, password: str | None = None) -> str:
        """Where devices connect (the device listener); without a username, the bare
        address for clients that bring each device's own account (the simulators)."""
        host = connect_host(self.device_host)
        if username is None:
            return f"mqtt://{host}:{self.device_port}"
        return f"mqtt://{quote(username, safe='')}:{quote(password or '', safe='')}@{host}:{self.device_port}"

    def set_accounts(self, accounts: list[MqttAccount]) -> None:
        self.accounts = {a.username: a for a in accounts}

    @property
    def log_path(self) -> Path:
        """Where the broker logs (its stderr, appended across restarts)."""
        return service_dir(self.var_dir, "mosquitto", self._os_user) / "mosquitto.log"

    def write_config(self) -> Path:
        base = service_dir(self.var_dir, "mosquitto", self._os_user)
        (base / "data").mkdir(exist_ok=True)
        hub_acl = [f"user {HUB_MQTT_USER}", "topic readwrite #", ""]
        device_acl = []
        for a in self.accounts.values():
            device_acl.append(f"user {a.username}")
            device_acl += [f"topic write {t}" for t in a.write]
            device_acl += [f"topic read {t}" for t in a.read]
            device_acl.append("")
        passwd, acl = base / "passwd", base / "acl"
        dev_passwd, dev_acl = base / "passwd-devices", base / "acl-devices"
        conf = base / "mosquitto.conf"
        # The supervisor, `xlhub devices credentials` and a restart may write at once: one
        # writer at a time, and every file replaced whole so the broker never reads half of one.
        with exclusive(base / ".config.lock"):
            _write_passwords(passwd, [f"{HUB_MQTT_USER}:{self.hub_password}"], self._os_user)
            _write_file(acl, "\n".join(hub_acl), self._os_user)
            _write_passwords(dev_passwd, [f"{a.username}:{a.password}" for a in self.accounts.values()],
                             self._os_user)
            _write_file(dev_acl, "\n".join(device_acl) or "# no devices\n", self._os_user)
            tls_conf = self._tls_conf(base, dev_passwd, dev_acl)
            _write_file(conf, f"""# Written by xlhub on every start.
per_listener_settings true
# the hub's own processes
listener {self.port} 127.0.0.1
allow_anonymous false
password_file {passwd}
acl_file {acl}
# devices: one account each, and the client id is the account (no session takeover)
listener {self.device_port} {self.device_host}
allow_anonymous false
password_file {dev_passwd}
acl_file {dev_acl}
use_username_as_clientid true
{tls_conf}
persistence true
persistence_location {base / 'data'}/
autosave_interval 10
# QoS 1 messages queue for a disconnected persistent session instead of being dropped.
max_queued_messages 1000000
max_inflight_messages 0
max_packet_size 1048576
# stderr, not stdout: stdout into a file is block-buffered, so lines would reach the log
# only kilobytes or an exit later; stderr is written line by line as it happens
log_dest stderr
log_type error
log_type warning
log_type notice
# every connection and refusal: hub/mqtt_refusals.py records the refused ones
connection_messages true
{"user " + self._os_user.pw_name if self._os_user else ""}
""", self._os_user)
        if self._os_user:
            for p in [base, *base.rglob("*")]:
                os.lchown(p, self._os_user.pw_uid, self._os_user.pw_gid)
        return conf

    @classmethod
    def from_settings(cls, settings, box: SecretBox, pki=None) -> EmbeddedMosquitto:
        """The hub's broker as its settings describe it: the supervisor starts it, the CLI
        rewrites its config (whole: the same listeners, or a reload would lose some)."""
        s = settings
        tls = None
        if s.embedded_mqtt_device_tls_port or s.embedded_mqtt_device_mtls_port:
            if pki is None:
                from store.certs import HubPki

                pki = HubPki.from_settings(s, box)
            tls = BrokerTls(pki, s.embedded_mqtt_device_host, s.embedded_mqtt_device_tls_port,
                            s.embedded_mqtt_device_mtls_port)
        return cls(s.var_dir, s.embedded_mqtt_port, device_port=s.embedded_mqtt_device_port, box=box,
                   device_host=s.embedded_mqtt_device_plain_host, allow_plain_network=s.allow_plain_devices, tls=tls)

    def _tls_conf(self, base: Path, dev_passwd: Path, dev_acl: Path) -> str:
        """The TLS device listeners (see BrokerTls), their certificate files and the CRL."""
        if self.tls is None:
            return ""
        owner = (self._os_user.pw_uid, self._os_user.pw_gid) if self._os_user else None
        files = self.tls.pki.server_files(base / "tls", owner=owner)
        crl = self.tls.pki.write_crl(base / "tls" / "crl.pem", owner=owner)
        common = f"""cafile {files.ca}
certfile {files.cert}
keyfile {files.key}
tls_version tlsv1.2
allow_anonymous false
acl_file {dev_acl}
use_username_as_clientid true"""
        out = []
        if self.tls.port:
            out.append(f"""# devices over TLS, with their password
listener {self.tls.port} {self.tls.host}
{common}
password_file {dev_passwd}""")
        if self.tls.mtls_port:
            out.append(f"""# devices over TLS with a client certificate the hub issued (一机一证): the CN is the account
listener {self.tls.mtls_port} {self.tls.host}
{common}
require_certificate true
use_identity_as_username true
crlfile {crl}""")
        return "\n".join(out)

    def tls_ports(self) -> list[int]:
        return [p for p in ((self.tls.port, self.tls.mtls_port) if self.tls else ()) if p]

    def drop(self, device_id: str, timeout: float = 5.0) -> bool:
        """End the live certificate-authenticated connection of ``device_id`` (after its
        certificates were revoked and the broker reloaded): connect once as that device with
        a certificate issued for this alone, which makes the broker close the device's
        connection (same client id: session takeover), then revoke that certificate too.
        True when the broker accepted the takeover."""
        if self.tls is None or not self.tls.mtls_port or not self.running():
            return False
        import tempfile
        import threading

        from bus.client import mqtt_client

        pki = self.tls.pki
        bundle = pki.issue_client(device_id, days=1)
        connected = threading.Event()
        try:
            with tempfile.TemporaryDirectory(prefix="xlhub-drop-") as tmp:
                cert, key = Path(tmp) / "c.crt", Path(tmp) / "c.key"
                cert.write_text(bundle.cert_pem)
                key.write_text(bundle.key_pem)
                client = mqtt_client(f"mqtt://{connect_host(self.tls.host)}:{self.tls.mtls_port}", device_id)
                client.tls_set(ca_certs=str(pki.ca_path), certfile=str(cert), keyfile=str(key))
                client.tls_insecure_set(True)     # we dial an address, not the certificate's name
                client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
                try:
                    client.connect(connect_host(self.tls.host), self.tls.mtls_port, keepalive=10)
                    client.loop_start()
                    connected.wait(timeout)
                    client.disconnect()
                finally:
                    client.loop_stop()
        except OSError as exc:
            log.warning("could not drop %s's connection: %s", device_id, exc)
        finally:
            pki.revoke_client(device_id)
            self.reload()
        return connected.is_set()

    def start(self, timeout: float = 20.0) -> None:
        if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
            raise EmbeddedError("mosquitto is not installed (run scripts/setup)")
        conf = self.write_config()
        log_path = conf.parent / "mosquitto.log"
        logf = open(log_path, "ab")
        self.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        try:
            _wait_port(self.port, timeout, self.proc)
            _wait_port(self.device_port, timeout, self.proc, self.device_host)
            for port in self.tls_ports():
                _wait_port(port, timeout, self.proc, self.tls.host)
        except EmbeddedError as exc:
            tail = log_path.read_text(errors="replace")[-1500:]
            self.stop()
            raise EmbeddedError(f"embedded Mosquitto did not start: {exc}\n{tail}") from None

    def reload(self) -> None:
        """Rewrite the password files and ACLs and make the broker re-read them (SIGHUP).
        Mosquitto 2 then disconnects every client whose account is gone or whose password
        changed, and refuses it from then on; the others stay connected."""
        self.write_config()
        if self.running():
            self.proc.send_signal(signal.SIGHUP)

    def refresh(self, accounts: list[MqttAccount]) -> bool:
        """Apply a new set of device accounts if it differs (reload); True when it did."""
        wanted = {a.username: a for a in accounts}
        if wanted == self.accounts:
            return False
        previous, self.accounts = self.accounts, wanted
        try:
            self.reload()
        except BaseException:
            self.accounts = previous         # not applied: the next refresh tries again
            raise
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None




def _write_file(path: Path, text: str, owner: pwd.struct_passwd | None, *, hashed: bool = False) -> None:
    """Replace ``path`` whole: a 0600 temporary file (created so before anything is written,
    so plain passwords never sit in a readable file), hashed in place with mosquitto_passwd
    when ``hashed``, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if hashed:
            subprocess.run(["mosquitto_passwd", "-U", str(tmp)], check=True, capture_output=True)
        os.chmod(tmp, 0o600)
        if owner:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_passwords(path: Path, entries: list[str], owner: pwd.struct_passwd | None) -> None:
    """A Mosquitto password file (hashed; empty when there are no accounts)."""
    _write_file(path, "\n".join(entries) + "\n" if entries else "", owner, hashed=bool(entries))
