"""The devices' SIP passwords (一机一帐号): one per admitted device, kept with the hub's other
device secrets in ``var/secrets/gb28181_devices.json``, encrypted (store/secrets.py), written
under the file's lock by the API (admit) and read by the gb28181 process (cached by the
file's modification time)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from store.secrets import SecretBox, exclusive, read_json, write_json

FILE = "gb28181_devices.json"


class GbPasswords:
    def __init__(self, var_dir: Path, box: SecretBox) -> None:
        self.path = Path(var_dir) / "secrets" / FILE
        self.box = box
        self._cache: tuple[int, dict[str, str]] | None = None

    @classmethod
    def for_settings(cls, settings) -> GbPasswords:
        return cls(settings.var_dir, SecretBox.from_settings(settings))

    def all(self) -> dict[str, str]:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, {k: str(v) for k, v in read_json(self.path, self.box).items()})
        return self._cache[1]

    def get(self, device_id: str) -> str | None:
        return self.all().get(device_id)

    def set(self, device_id: str, password: str | None = None) -> str:
        """Set (or generate) a device's password; returns it (shown once to the admin)."""
        password = password or secrets.token_urlsafe(12)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive(self.path.with_suffix(".lock")):
            data = read_json(self.path, self.box) if self.path.exists() else {}
            data[device_id] = password
            write_json(self.path, data, self.box)
        self._cache = None
        return password

    def revoke(self, device_id: str) -> None:
        if not self.path.exists():
            return
        with exclusive(self.path.with_suffix(".lock")):
            data = read_json(self.path, self.box)
            data.pop(device_id, None)
            write_json(self.path, data, self.box)
        self._cache = None
