"""HTTP digest authentication for SIP REGISTER (RFC 2617, MD5, as GB/T 28181 devices do it;
with or without ``qop=auth``), server and client sides.

Nonces are stateless to issue and checked for freshness: ``<unix time>.<random>.<HMAC>``
under a key of the process, so a nonce the hub did not make, or one older than
``max_age_s``, is refused (stale). Replays are refused: without qop a nonce serves one
REGISTER; with qop each ``nc`` must be higher than the last one seen for that nonce."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)\s*,?')


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()   # noqa: S324  (RFC 2617 is MD5)


def parse_params(header: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` → ("Digest", {"a": "b", "c": "d"})."""
    scheme, _, rest = header.strip().partition(" ")
    out: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise ValueError(f"malformed digest parameters near {rest[pos:pos + 30]!r}")
        value = m[2]
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        out[m[1].lower()] = value
        pos = m.end()
    return scheme, out


def response_digest(*, username: str, realm: str, password: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: str | None = None, cnonce: str | None = None) -> str:
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: str, *, username: str, password: str, method: str, uri: str,
                  nc: int = 1, cnonce: str | None = None) -> str:
    """The client side (the simulator, the cascade): answer a WWW-Authenticate."""
    _, p = parse_params(challenge)
    qop = "auth" if "auth" in [q.strip() for q in p.get("qop", "").split(",")] else None
    cnonce = cnonce or secrets.token_hex(8)
    ncs = f"{nc:08x}"
    resp = response_digest(username=username, realm=p["realm"], password=password, method=method, uri=uri,
                           nonce=p["nonce"], qop=qop, nc=ncs, cnonce=cnonce)
    out = (f'Digest username="{username}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
           f'response="{resp}", algorithm=MD5')
    if qop:
        out += f', qop={qop}, nc={ncs}, cnonce="{cnonce}"'
    if "opaque" in p:
        out += f', opaque="{p["opaque"]}"'
    return out


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""          # English, for logs and the audit record: bad-password, stale-nonce, replayed-nonce …
    stale: bool = False       # answer 401 with stale=true (the password was right, the nonce was not)


class DigestServer:
    def __init__(self, realm: str, *, max_age_s: float = 300.0, qop: bool = True) -> None:
        self.realm, self.max_age_s, self.qop = realm, max_age_s, qop
        self._key = secrets.token_bytes(32)
        self._seen: dict[str, int] = {}         # nonce → highest nc used (0: used without qop)
        self._swept = time.monotonic()

    def nonce(self, now: float | None = None) -> str:
        ts = str(int(now if now is not None else time.time()))
        rand = secrets.token_hex(8)
        mac = hmac.new(self._key, f"{ts}.{rand}".encode(), hashlib.sha256).hexdigest()[:16]
        return f"{ts}.{rand}.{mac}"

    def challenge(self, *, stale: bool = False) -> str:
        out = f'Digest realm="{self.realm}", nonce="{self.nonce()}", algorithm=MD5'
        if self.qop:
            out += ', qop="auth"'
        if stale:
            out += ", stale=true"
        return out

    def _fresh(self, nonce: str, now: float) -> str | None:
        parts = nonce.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return "unknown-nonce"
        mac = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).hexdigest()[:16]
        if not hmac.compare_digest(mac, parts[2]):
            return "unknown-nonce"
        if now - int(parts[0]) > self.max_age_s:
            return "stale-nonce"
        return None

    def verify(self, header: str, *, method: str, password: str | None, username: str,
               now: float | None = None) -> Verdict:
        """Check an Authorization header for ``username`` (the device's ID). ``password``
        None: the device has no account here (unknown or not admitted)."""
        now = time.time() if now is None else now
        try:
            scheme, p = parse_params(header)
        except ValueError as exc:
            return Verdict(False, f"malformed-authorization: {exc}")
        if scheme.lower() != "digest":
            return Verdict(False, f"unsupported-scheme {scheme}")
        for need in ("username", "realm", "nonce", "uri", "response"):
            if need not in p:
                return Verdict(False, f"missing-{need}")
        if p["username"] != username:
            return Verdict(False, "username-mismatch")
        if p.get("algorithm", "MD5").upper() != "MD5":
            return Verdict(False, f"unsupported-algorithm {p['algorithm']}")
        if p["realm"] != self.realm:
            return Verdict(False, "wrong-realm")
        if password is None:
            return Verdict(False, "no-account")
        problem = self._fresh(p["nonce"], now)
        if problem == "unknown-nonce":
            return Verdict(False, problem, stale=True)
        qop = p.get("qop")
        expected = response_digest(username=p["username"], realm=p["realm"], password=password, method=method,
                                    uri=p["uri"], nonce=p["nonce"], qop=qop, nc=p.get("nc"), cnonce=p.get("cnonce"))
        if not hmac.compare_digest(expected, p["response"].lower()):
            return Verdict(False, "bad-password")
        if problem:
            return Verdict(False, problem, stale=True)
        nc = int(p["nc"], 16) if qop and p.get("nc", "").strip() else 0
        last = self._seen.get(p["nonce"])
        if last is not None and (not qop or nc <= last):
            return Verdict(False, "replayed-nonce", stale=True)
        self._seen[p["nonce"]] = nc
        self._sweep(now)
        return Verdict(True)

    def _sweep(self, now: float) -> None:
        if time.monotonic() - self._swept < 60:
            return
        self._swept = time.monotonic()
        limit = now - self.max_age_s
        self._seen = {n: c for n, c in self._seen.items() if int(n.split(".")[0]) >= limit}
