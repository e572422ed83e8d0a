"""Short-lived signed links: how a device fetches media from the hub (broadcast audio,
firmware) without a password in the URL and without the link being good forever.

    signer = LinkSigner.for_var_dir(var_dir, box)
    url = base_url + signer.sign("/api/broadcasts/01J…/audio", ttl_s=900)
    signer.verify(path, request.query_params)      # raises LinkError (expired / bad signature)

A link carries ``exp`` (Unix seconds) and ``sig`` = HMAC-SHA256 over the path and ``exp``
under a key generated once into var/secrets/media_link_key (encrypted like every secret).
The path is bound: a signature for one broadcast's audio does not open another's. A link
may also name whom it is for (``sub``: a speaker's id, ``user:<name>``): the MAC covers it,
so a link given to one speaker is refused for another and cannot be re-addressed."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import urlencode

from store.secrets import SecretBox, read_or_create_secret

KEY_FILE = "media_link_key"


class LinkError(ValueError):
    pass


class LinkSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_var_dir(cls, var_dir: Path, box: SecretBox | None = None) -> LinkSigner:
        box = box or SecretBox.for_var_dir(var_dir)
        return cls(read_or_create_secret(Path(var_dir) / "secrets" / KEY_FILE, box, nbytes=32).encode())

    def _mac(self, path: str, exp: int, sub: str | None = None) -> str:
        text = f"{path}\n{exp}" if sub is None else f"{path}\n{exp}\n{sub}"
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, path: str, ttl_s: float, *, sub: str | None = None, now: float | None = None) -> str:
        """``path?exp=…&sig=…`` (``&sub=…`` when the link is for someone)"""
        exp = int((now if now is not None else time.time()) + ttl_s)
        query = {"exp": exp} if sub is None else {"exp": exp, "sub": sub}
        return f"{path}?{urlencode({**query, 'sig': self._mac(path, exp, sub)})}"

    def verify(self, path: str, params, *, now: float | None = None) -> str | None:
        """Raise LinkError unless the link is good now; return whom it is for (``sub``) or None."""
        exp, sig, sub = params.get("exp"), params.get("sig"), params.get("sub")
        if not exp or not sig:
            raise LinkError("链接未签名 (unsigned link)")
        try:
            exp_i = int(exp)
        except ValueError:
            raise LinkError("链接格式错误 (bad exp)") from None
        if not hmac.compare_digest(self._mac(path, exp_i, sub), sig):
            raise LinkError("链接签名无效或已被篡改 (bad signature: the link was altered)")
        now = now if now is not None else time.time()
        if now > exp_i:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exp_i))
            raise LinkError(f"链接已过期 (the link expired at {when})")
        return sub
