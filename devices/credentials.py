"""Per-device secrets (一机一帐号): each device's broker password and its command-signing
key, kept in ``var/secrets`` as two JSON maps encrypted with the hub's master key
(store/secrets.py), readable by the hub's user only (0600, in a 0700 directory), written
atomically under a lock (the supervisor, the CLI and the API may touch them).  A secret is
printed once, when issued or rotated, and never logged.

- ``mqtt_devices.json``: ``{device id: broker password}`` (also read by the supervisor to
  write Mosquitto's password file and ACL, and by the simulators).
- ``device_keys.json``: ``{device id: hex key}`` for HMAC-signed commands (door unlock).

A map an older hub wrote in plain JSON is read as such and rewritten encrypted, under the
lock, the first time it is read.

Reloading the broker is the caller's: the supervisor watches these files and the registry
and reloads its embedded Mosquitto when a device's account changes (decommissioned,
rotated, issued); the CLI also reloads it itself. On reload (SIGHUP) Mosquitto re-reads the
password file and ACL, disconnects a client whose account is gone or whose password
changed, and refuses it from then on."""
from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from store.files import private_dir
from store.secrets import SecretBox, exclusive, is_encrypted, read_json, write_json

PASSWORDS_FILE = "mqtt_devices.json"
KEYS_FILE = "device_keys.json"


class CredentialsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Issued:
    device_id: str
    password: str
    signing_key: str | None       # hex; only when issued or rotated in this call


class DeviceSecrets:
    def __init__(self, secrets_dir: Path, box: SecretBox | None = None) -> None:
        self.dir = Path(secrets_dir)
        # Without a box: the one the hub's processes use for this var dir (XLHUB_SECRET_KEY
        # from the environment, else the generated key file next to the secrets).
        self.box = box or SecretBox.for_var_dir(self.dir.parent)

    @classmethod
    def for_var_dir(cls, var_dir: Path, box: SecretBox | None = None) -> DeviceSecrets:
        return cls(Path(var_dir) / "secrets", box)

    @classmethod
    def for_settings(cls, settings) -> DeviceSecrets:
        return cls.for_var_dir(settings.var_dir, SecretBox.from_settings(settings))

    @property
    def passwords_path(self) -> Path:
        return self.dir / PASSWORDS_FILE

    @property
    def keys_path(self) -> Path:
        return self.dir / KEYS_FILE

    # -- reading ---------------------------------------------------------------------
    def _load(self, path: Path) -> dict[str, str]:
        # A wrong master key raises SecretError (naming the file): the CLI and `xlhub run`
        # report it as such.
        try:
            return read_json(path, self.box, migrate=False)
        except ValueError:
            raise CredentialsError(f"{path}: not valid JSON") from None

    def _read(self, path: Path) -> dict[str, str]:
        data = self._load(path)
        if path.exists() and not is_encrypted(path):
            # Migrated under the lock: a plain rewrite racing an issue() would undo it.
            with self._locked():
                data = self._load(path)
                if path.exists() and not is_encrypted(path):
                    self._write(path, data)
        return data

    def passwords(self) -> dict[str, str]:
        return self._read(self.passwords_path)

    def keys(self) -> dict[str, str]:
        return self._read(self.keys_path)

    def signing_key(self, device_id: str) -> bytes | None:
        value = self.keys().get(device_id)
        return bytes.fromhex(value) if value else None

    def check_password(self, device_id: str, password: str) -> bool:
        """Constant-time check of a device's password (device HTTP endpoints)."""
        expected = self.passwords().get(device_id)
        if not expected or not password:
            # compare anyway: the answer time does not tell which ids exist
            hmac.compare_digest("x" * 24, password or "")
            return False
        return hmac.compare_digest(expected.encode(), password.encode())

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.dir)
        with exclusive(self.dir / ".devices.lock"):
            yield

    def _write(self, path: Path, data: dict[str, str]) -> None:
        write_json(path, data, self.box)

    def issue(self, device_id: str, *, rotate: bool = False, signing_key: bool = True) -> Issued:
        """A new broker password for a device (and a signing key if it has none, or if
        ``rotate`` and ``signing_key``). ``issue`` refuses a device that already has one:
        rotate it instead, so nobody replaces a working password by mistake."""
        with self._locked():
            passwords, keys = self._load(self.passwords_path), self._load(self.keys_path)
            if device_id in passwords and not rotate:
                raise CredentialsError(f"device {device_id} already has credentials; use 'rotate' to replace them")
            if device_id not in passwords and rotate:
                raise CredentialsError(f"device {device_id} has no credentials yet; use 'issue'")
            passwords[device_id] = secrets.token_urlsafe(18)
            new_key = None
            if signing_key and (device_id not in keys or rotate):
                keys[device_id] = new_key = secrets.token_hex(32)
                self._write(self.keys_path, keys)
            self._write(self.passwords_path, passwords)
            return Issued(device_id, passwords[device_id], new_key)

    def ensure_signing_key(self, device_id: str) -> bytes:
        """The device's signing key, created on first use (the demo's doors get theirs this way)."""
        key = self.signing_key(device_id)
        if key is not None:
            return key
        with self._locked():
            keys = self._load(self.keys_path)
            if device_id not in keys:
                keys[device_id] = secrets.token_hex(32)
                self._write(self.keys_path, keys)
            return bytes.fromhex(keys[device_id])

    def revoke(self, device_id: str) -> bool:
        """Forget a device's secrets (decommissioned): it can no longer log in once the
        broker is reloaded (the supervisor does that when it sees the change)."""
        with self._locked():
            passwords, keys = self._load(self.passwords_path), self._load(self.keys_path)
            found = passwords.pop(device_id, None) is not None
            if keys.pop(device_id, None) is not None:
                self._write(self.keys_path, keys)
            if found:
                self._write(self.passwords_path, passwords)
            return found


def broker_accounts(secrets_store: DeviceSecrets, kinds: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, device id, password) for every device that has a password and a known kind
    (active devices of the registry): what the broker's password file and ACL must hold."""
    passwords = secrets_store.passwords()
    return [(kinds[d], d, pw) for d, pw in sorted(passwords.items()) if d in kinds]


def find_broker_pid(conf_path: Path) -> int | None:
    """The pid of the Mosquitto running with exactly this configuration file (the embedded
    broker the supervisor started), found in /proc; None if it is not running."""
    target = str(Path(conf_path).resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and Path(args[0]).name == "mosquitto" and "-c" in args:
            i = args.index("-c")
            if i + 1 < len(args) and str(Path(args[i + 1]).resolve()) == target:
                return int(entry.name)
    return None


def signal_broker_reload(conf_path: Path) -> int | None:
    """SIGHUP the broker running with ``conf_path`` (re-reads password file and ACL)."""
    pid = find_broker_pid(conf_path)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return pid


BrokerReload = Callable[[list[tuple[str, str, str]]], str]
