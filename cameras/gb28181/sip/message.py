"""SIP messages (RFC 3261 §7, §20), strict and small: what GB/T 28181 devices and platforms
send. Written here rather than taken from PyPI: see ../README.md (sipmessage's URI grammar
refuses the all-digit SIP domains every GB/T 28181 device uses, ``sip:…@3402000000``).

Strict where it matters: the start line, the mandatory headers (Via, From, To, Call-ID, CSeq,
§8.1.1), a CSeq whose method matches the request's, Content-Length (a UDP datagram may carry
padding; a TCP stream is cut into messages by it), a size limit. Anything else is a
:class:`SipError` naming what is wrong, answered 400."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE = 64 * 1024          # a Catalog packet is a few KiB; a SIP message past this is refused
MAX_HEADER = 16 * 1024
MAX_HEADERS = 100
BRANCH_MAGIC = "z9hG4bK"
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")
COMPACT = {"i": "Call-ID", "m": "Contact", "l": "Content-Length", "c": "Content-Type", "f": "From",
           "t": "To", "v": "Via", "o": "Event", "k": "Supported", "s": "Subject", "e": "Content-Encoding"}
REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Request Entity Too Large", 415: "Unsupported Media Type", 480: "Temporarily Unavailable",
           481: "Call/Transaction Does Not Exist", 486: "Busy Here", 488: "Not Acceptable Here",
           489: "Bad Event", 500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable"}
_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (sips?:[^ ]+) SIP/2\.0")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9]{2}) ?(.*)")
_HEADER_NAME = re.compile(_TOKEN)
_URI = re.compile(r"(?P<scheme>sips?):(?:(?P<user>[^@;?:]+)(?::[^@]*)?@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^;?:>]+)"
                  r"(?::(?P<port>[0-9]{1,5}))?(?P<params>;[^?>]*)?")
_VIA = re.compile(r"SIP/2\.0/(?P<transport>[A-Za-z]+)\s+(?P<host>\[[0-9A-Fa-f:.]+\]|[^;:\s]+)(?::(?P<port>[0-9]{1,5}))?"
                  r"(?P<params>(?:\s*;\s*[^;,]*)*)")


class SipError(ValueError):
    """A message that cannot be taken; ``status`` is what to answer (400 unless said)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Uri:
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Uri:
        text = text.strip()
        if "<" in text:
            start, end = text.find("<"), text.find(">")
            if end < start:
                raise SipError(f"unclosed '<' in address {text[:80]!r}")
            text = text[start + 1:end]
        else:
            text = text.split(";tag=")[0]
        m = _URI.fullmatch(text.split("?")[0])
        if m is None:
            raise SipError(f"not a SIP URI: {text[:80]!r}")
        port = int(m["port"]) if m["port"] else None
        if port is not None and not 0 < port < 65536:
            raise SipError(f"port {port} out of range in {text[:80]!r}")
        return cls(m["scheme"], m["user"], m["host"], port, _params(m["params"] or ""))


@dataclass(frozen=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA.fullmatch(text.strip())
        if m is None:
            raise SipError(f"malformed Via: {text[:80]!r}")
        return cls(m["transport"].upper(), m["host"], int(m["port"]) if m["port"] else None, _params(m["params"]))


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if part:
            k, _, v = part.partition("=")
            out[k.strip().lower()] = v.strip().strip('"')
    return out


@dataclass
class Message:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    # -- headers (names compared case-insensitively; compact forms expanded when parsed)
    def get(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.headers.append((name, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def remove(self, name: str) -> None:
        low = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != low]

    @property
    def call_id(self) -> str:
        return self["Call-ID"]

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = self["CSeq"].partition(" ")
        return int(num), method.strip()

    @property
    def via(self) -> Via:
        return Via.parse(self["Via"].split(",")[0])

    @property
    def from_uri(self) -> Uri:
        return Uri.parse(self["From"])

    @property
    def to_uri(self) -> Uri:
        return Uri.parse(self["To"])

    @property
    def from_tag(self) -> str | None:
        return tag_of(self["From"])

    @property
    def to_tag(self) -> str | None:
        return tag_of(self["To"])

    def _head(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        self.set("Content-Length", str(len(self.body)))
        lines = [self._head(), *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""

    def _head(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"


@dataclass
class Response(Message):
    status: int = 0
    phrase: str = ""

    def _head(self) -> str:
        return f"SIP/2.0 {self.status} {self.phrase}"


def parse(data: bytes) -> Request | Response:
    """One whole message (a datagram, or one cut from a stream). Raises SipError naming what
    is wrong."""
    if len(data) > MAX_MESSAGE:
        raise SipError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}", 413)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SipError("no blank line ends the headers")
    if len(head) > MAX_HEADER:
        raise SipError(f"headers of {len(head)} bytes exceed {MAX_HEADER}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipError(f"headers are not UTF-8 (byte {exc.start})") from None
    lines = text.split("\r\n")
    msg: Request | Response
    if m := _REQUEST_LINE.fullmatch(lines[0]):
        msg = Request(method=m[1], uri=m[2])
    elif m := _STATUS_LINE.fullmatch(lines[0]):
        msg = Response(status=int(m[1]), phrase=m[2])
    else:
        raise SipError(f"bad start line {lines[0][:80]!r}")
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):           # folded continuation (RFC 3261 §7.3.1)
            if not msg.headers:
                raise SipError("continuation line before any header")
            k, v = msg.headers[-1]
            msg.headers[-1] = (k, f"{v} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise SipError(f"malformed header line {line[:80]!r}")
        name = COMPACT.get(name.lower(), name) if len(name) == 1 else name
        msg.headers.append((name, value.strip()))
        if len(msg.headers) > MAX_HEADERS:
            raise SipError(f"more than {MAX_HEADERS} headers")
    for name in REQUIRED:
        if not msg.get(name):
            raise SipError(f"missing {name} header")
    num, _, method = msg["CSeq"].partition(" ")
    if not num.isdigit() or not method.strip():
        raise SipError(f"malformed CSeq {msg['CSeq']!r}")
    if isinstance(msg, Request) and method.strip() != msg.method:
        raise SipError(f"CSeq method {method.strip()} does not match the request's {msg.method}")
    msg.via  # noqa: B018  (a bad Via is a 400 now, not an error later)
    msg.from_uri  # noqa: B018
    msg.to_uri  # noqa: B018
    length = msg.get("Content-Length")
    if length is None:
        n = len(body)            # RFC 3261 §20.14: optional over UDP
    else:
        if not length.isdigit():
            raise SipError(f"Content-Length {length!r} is not a number")
        n = int(length)
        if n > len(body):
            raise SipError(f"Content-Length {n} but only {len(body)} bytes of body")
    msg.body = body[:n]
    return msg


class StreamFramer:
    """Cuts a TCP byte stream into messages by the blank line and Content-Length
    (RFC 3261 §18.3). Keep-alive CRLFs between messages are skipped."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while True:
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    raise SipError("headers too long on the stream")
                return out
            head = bytes(self.buf[:end]).decode("utf-8", "replace")
            length = 0
            for line in head.split("\r\n")[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("content-length", "l"):
                    if not value.strip().isdigit():
                        raise SipError("Content-Length is not a number on the stream")
                    length = int(value.strip())
            if length > MAX_MESSAGE:
                raise SipError(f"Content-Length {length} exceeds {MAX_MESSAGE}", 413)
            total = end + 4 + length
            if len(self.buf) < total:
                return out
            out.append(bytes(self.buf[:total]))
            del self.buf[:total]


def new_tag() -> str:
    return secrets.token_hex(5)


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def tag_of(header_value: str) -> str | None:
    tail = header_value.rsplit(">", 1)[-1] if ">" in header_value else header_value
    return _params(tail.partition(";")[2]).get("tag") or None


def response(req: Request, status: int, phrase: str | None = None, *, to_tag: str | None = None,
             body: bytes = b"", content_type: str | None = None) -> Response:
    """A response to ``req``: its Via(s), From, To (with our tag), Call-ID and CSeq."""
    resp = Response(status=status, phrase=phrase or REASONS.get(status, "Unknown"), body=body)
    for via in req.all("Via"):
        resp.add("Via", via)
    resp.add("From", req["From"])
    to = req["To"]
    if to_tag and status > 100 and tag_of(to) is None:
        to = f"{to};tag={to_tag}"
    resp.add("To", to)
    resp.add("Call-ID", req["Call-ID"])
    resp.add("CSeq", req["CSeq"])
    if content_type and body:
        resp.add("Content-Type", content_type)
    return resp


def request(method: str, uri: str, *, via: str, from_uri: str, to_uri: str, call_id: str, cseq: int,
            from_tag: str, to_tag: str | None = None, body: bytes = b"", content_type: str | None = None,
            contact: str | None = None, extra: dict[str, str] | None = None, branch: str | None = None) -> Request:
    """``via`` is ``"UDP host:port"`` (the branch is added)."""
    req = Request(method=method, uri=uri, body=body)
    req.add("Via", f"SIP/2.0/{via};rport;branch={branch or new_branch()}")
    req.add("From", f"<{from_uri}>;tag={from_tag}")
    req.add("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
    req.add("Call-ID", call_id)
    req.add("CSeq", f"{cseq} {method}")
    req.add("Max-Forwards", "70")
    if contact:
        req.add("Contact", f"<{contact}>")
    for k, v in (extra or {}).items():
        req.add(k, v)
    if content_type and body:
        req.add("Content-Type", content_type)
    return req
