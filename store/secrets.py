"""Secrets at rest: the small values the hub keeps under ``var/secrets`` (the database and
broker passwords, device broker passwords and command-signing keys, webhook keys) stored
encrypted, so a copy of ``var/`` — a backup, a disk image, a support bundle — does not
hand them out.

Encryption is Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) under the hub's
master key:

- ``Settings.secret_key`` (``XLHUB_SECRET_KEY``) when set: any string, stretched with
  HKDF-SHA256 into the Fernet key. Keep it outside ``var/`` (the service's environment,
  a root-only file read by systemd): then ``var/`` alone discloses nothing.
- otherwise a generated key in ``var/secrets/master.key`` (0600 in a 0700 directory). That
  protects against a careless copy of the secrets files, not against a copy of the whole
  directory; set ``XLHUB_SECRET_KEY`` in production.

Files: one line ``xlhub-secret:v1:<Fernet token>``; JSON maps (``mqtt_devices.json``,
``device_keys.json``) are encrypted whole. A file without the prefix is a secret written by
an older hub in plain text: it is read as such and, with ``migrate=True``, rewritten
encrypted. Every file is written 0600, atomically (temp file + rename, fsync).

    box = SecretBox.from_settings(settings)
    password = read_or_create_secret(var / "secrets" / "pg_password", box)
    passwords = read_json(var / "secrets" / "mqtt_devices.json", box)
    write_json(var / "secrets" / "mqtt_devices.json", passwords, box)

Key rotation: ``SecretBox(new_key, previous=[old_key])`` reads both and writes with the
new one; ``rewrite(path, box)`` re-encrypts a file in place.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store.files import private_dir

PREFIX = "xlhub-secret:v1:"
KEY_FILE = "master.key"
_HKDF_INFO = b"xlhub secrets at rest v1"


class SecretError(RuntimeError):
    """A secret that cannot be read: wrong master key, damaged file. The message names the
    file, never the value."""


def derive_key(secret_key: str | bytes) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) from any master secret string."""
    raw = secret_key.encode() if isinstance(secret_key, str) else secret_key
    if len(raw) < 16:
        raise SecretError("the master secret key must be at least 16 characters")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(raw)
    return base64.urlsafe_b64encode(key)


class SecretBox:
    """Encrypts and decrypts small secrets under the master key (and reads older keys)."""

    def __init__(self, key: bytes, previous: list[bytes] | None = None) -> None:
        self._fernet = MultiFernet([Fernet(key), *[Fernet(k) for k in previous or []]])

    @classmethod
    def from_settings(cls, settings) -> SecretBox:
        """The hub's box: XLHUB_SECRET_KEY if set, else var/secrets/master.key (created once)."""
        secret = getattr(settings, "secret_key", None)
        if secret is not None:
            value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
            return cls(derive_key(value))
        return cls(load_or_create_key_file(Path(settings.var_dir) / "secrets" / KEY_FILE))

    @classmethod
    def for_var_dir(cls, var_dir: Path) -> SecretBox:
        """The box every hub process uses for ``var_dir`` when it is given no settings: the
        same XLHUB_SECRET_KEY (environment or .env) the supervisor and its children read."""
        from config.settings import Settings

        return cls.from_settings(Settings(var_dir=Path(var_dir)))

    def encrypt(self, value: str | bytes) -> str:
        data = value.encode() if isinstance(value, str) else value
        return PREFIX + self._fernet.encrypt(data).decode()

    def decrypt(self, token: str) -> bytes:
        if not token.startswith(PREFIX):
            raise SecretError("not an encrypted secret")
        try:
            return self._fernet.decrypt(token[len(PREFIX):].encode())
        except InvalidToken:
            raise SecretError("cannot decrypt: wrong master key (XLHUB_SECRET_KEY) or a damaged file") from None

    def rotate(self, token: str) -> str:
        """The same secret under the newest key."""
        return PREFIX + self._fernet.rotate(token[len(PREFIX):].encode()).decode()


def load_or_create_key_file(path: Path) -> bytes:
    """The generated master key (created 0600 in a 0700 directory on first use)."""
    private_dir(path.parent)
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        pass
    else:
        # A copy restored from a backup may have lost its mode: the key stays the hub's alone.
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        _check_key(path, key)
        return key
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:                      # another process made it meanwhile
        return _wait_for_key(path)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def _wait_for_key(path: Path, timeout: float = 5.0) -> bytes:
    """The key another process has just created (O_EXCL won; it may not have written yet)."""
    deadline = time.monotonic() + timeout
    while True:
        key = path.read_bytes().strip()
        if key or time.monotonic() > deadline:
            _check_key(path, key)
            return key
        time.sleep(0.01)


def _check_key(path: Path, key: bytes) -> None:
    try:
        Fernet(key)
    except ValueError:
        raise SecretError(f"{path}: not a master key (damaged file?)") from None


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``: the supervisor and the CLI may both rewrite
    the same secret files, and a half-merged file would lock a device out."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomic(path: Path, text: str, *, create: bool = False) -> bool:
    """Write ``text`` to ``path`` through a 0600 temporary file. With ``create``, only if
    ``path`` does not exist yet (returns False when another process made it first)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if create:
            try:
                os.link(tmp, path)           # unlike a rename, fails when the file exists
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)
    return True


def is_encrypted(path: Path) -> bool:
    try:
        return path.read_text().startswith(PREFIX)
    except FileNotFoundError:
        return False


def write_secret(path: Path, value: str, box: SecretBox) -> None:
    _write_atomic(Path(path), box.encrypt(value) + "\n")


def read_secret(path: Path, box: SecretBox, *, migrate: bool = True) -> str:
    """A secret file's value. Legacy plain text is returned as is and, with ``migrate``,
    rewritten encrypted."""
    path = Path(path)
    text = path.read_text()
    if text.startswith(PREFIX):
        try:
            return box.decrypt(text.strip()).decode()
        except SecretError as exc:
            raise SecretError(f"{path}: {exc}") from None
    value = text.strip()
    if migrate:
        write_secret(path, value, box)
    return value


def read_or_create_secret(path: Path, box: SecretBox, nbytes: int = 24) -> str:
    """A generated secret (the database and broker passwords), created encrypted on first use."""
    path = Path(path)
    if path.exists():
        return read_secret(path, box)
    value = secrets.token_urlsafe(nbytes)
    if not _write_atomic(path, box.encrypt(value) + "\n", create=True):
        return read_secret(path, box)          # two processes started at once: the first one's
    return value


def read_json(path: Path, box: SecretBox, *, migrate: bool = True) -> dict[str, Any]:
    """An encrypted JSON map (``{}`` when the file does not exist); legacy plain JSON is
    read and, with ``migrate``, rewritten encrypted."""
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_text()
    if text.startswith(PREFIX):
        try:
            data = json.loads(box.decrypt(text.strip()))
        except SecretError as exc:
            raise SecretError(f"{path}: {exc}") from None
    else:
        data = json.loads(text) if text.strip() else {}
        if migrate:
            write_json(path, data, box)
    if not isinstance(data, dict):
        raise SecretError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any], box: SecretBox) -> None:
    _write_atomic(Path(path), box.encrypt(json.dumps(data, sort_keys=True, separators=(",", ":"))) + "\n")


def rewrite(path: Path, box: SecretBox) -> None:
    """Re-encrypt a file under the box's newest key (after a key rotation)."""
    path = Path(path)
    text = path.read_text().strip()
    if text.startswith(PREFIX):
        _write_atomic(path, box.rotate(text) + "\n")
    else:
        _write_atomic(path, box.encrypt(text) + "\n")
