"""The packets a camera worker reads, handed to the hub's other processes: one RTSP session
per camera stream, however many consumers.

    camera ──RTSP──▶ worker reader ──▶ Fanout ──▶ ring (evidence), health, analysis
                                          └──▶ TapServer ──TCP──▶ TapStream (api/live/feed.py)
                                                                    └─▶ every live viewer, frame.jpg

Cheap cameras allow two to four RTSP sessions; a live relay that pulled each watched camera
again would spend one of them per stream watched, and the camera's encoder and uplink with
it. The worker already demuxes every packet of the stream it reads, so it hands them on as
they are (no decoding, no re-encoding): one copy of the bitstream per consumer connection.

Both ends are here, so the format has one home:

- the server (``TapServer``, in each camera worker) listens on ``XLHUB_CAMERA_TAP_HOST``
  (loopback by default; see ``TapSettings``) on a port the worker advertises in its heartbeat
  (``worker_heartbeats.detail.tap``), where the API finds it (api/health/workers.camera_tap);
- the client (``TapStream``) asks for one camera stream, naming the URL it would otherwise
  pull: the worker serves it only when that is the stream it reads (a viewer of the main
  stream of a camera analysed on its substream pulls main itself: a different stream).

Protocol (TCP, one camera stream per connection):

    server → client   b"XLTAP/1 " + nonce (hex) + b"\\n"
    client → server   one JSON line {"camera", "stream", "url", "mac"},
                      mac = hex HMAC-SHA256(key, nonce | camera | stream | url)
    server → client   frames: type (1 byte) + payload length (4 bytes, big-endian) + payload
        H  header (JSON): codec, width, height, time_base [num, den], fps, extradata (base64),
           audio — sent at every (re)connection of the worker to the camera
        P  packet: pts, dts (int64; INT64_MIN for none), wall time (float64), flags (1: key),
           then the bitstream as the camera sent it
        S  state (JSON): {"online": false, "problem": code, "detail": text} while the worker
           cannot read the camera — the consumer shows the worker's reason, and does not
           knock at the camera itself
        K  keepalive (empty) after KEEPALIVE_S without anything else
        E  refusal (JSON {"reason": …}); the server closes the connection

A new consumer starts with the header and the current GOP from the worker's ring (the last
keyframe and what followed it), so a picture is there at once. A consumer that falls
``queue_packets`` behind loses its queue and resumes at the next keyframe; one whose
socket does not drain within ``send_timeout_s`` is dropped. Neither slows the reader.

The key is a hub secret (``var/secrets/camera_tap_key``, encrypted at rest like the others):
every process of a hub reads the same one. Between machines the video is TLS: a listener
beyond loopback needs ``XLHUB_CAMERA_TAP_TLS_CERT``/``_TLS_KEY`` (it then advertises
``tls:host:port``, and consumers verify it against ``XLHUB_CAMERA_TAP_TLS_CA``), or an
explicit ``XLHUB_CAMERA_TAP_ALLOW_REMOTE`` for plain TCP on a private network.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cameras.evidence import PacketRing, Record, Segment
from cameras.rtsp import Failure
from config.vocabulary import StreamProblem

log = logging.getLogger(__name__)

GREETING = b"XLTAP/1 "
KEEPALIVE_S = 2.0
NO_TS = -(2 ** 63)
_FRAME = struct.Struct(">cI")
_PACKET = struct.Struct(">qqdB")
MAX_FRAME = 64 * 1024 * 1024
MAX_REQUEST = 8192


class TapSettings(BaseSettings):
    """The camera workers' packet tap (``XLHUB_CAMERA_TAP_*``)."""

    model_config = SettingsConfigDict(env_prefix="XLHUB_CAMERA_TAP_", env_file=".env", extra="ignore")

    enabled: bool = Field(True, description="serve the cameras' packets to the API's live view (off: live view "
                                            "pulls every watched camera stream a second time)")
    host: str = Field("127.0.0.1", description="the listener's address")
    port: int = Field(0, ge=0, le=65535, description="0: any free port (the heartbeat says which)")
    advertise: str | None = Field(None, description="the address other processes connect to (default: host)")
    allow_remote: bool = Field(False, description="a listener beyond loopback without TLS carries the cameras' "
                                                  "video in clear: only on a private network between hub machines")
    tls_cert: Path | None = Field(None, description="the listener's certificate (PEM): TLS, advertised as tls:host:port")
    tls_key: Path | None = Field(None, description="its private key (PEM)")
    tls_ca: Path | None = Field(None, description="consumers: the CA that signed the workers' tap certificates "
                                                  "(default: the system's)")
    queue_packets: int = Field(300, ge=16, description="packets a consumer may fall behind before it is resumed "
                                                       "at the next keyframe")
    send_timeout_s: float = Field(5.0, gt=0, description="a consumer whose socket does not drain by then is dropped")

    @model_validator(mode="after")
    def _loopback_unless_secured(self) -> TapSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("XLHUB_CAMERA_TAP_TLS_CERT and XLHUB_CAMERA_TAP_TLS_KEY go together")
        if not self.tls and not self.allow_remote and not _loopback(self.host):
            raise ValueError(f"XLHUB_CAMERA_TAP_HOST={self.host!r} is not a loopback address: the tap would carry "
                             "video in clear; set XLHUB_CAMERA_TAP_TLS_CERT/_TLS_KEY, or "
                             "XLHUB_CAMERA_TAP_ALLOW_REMOTE=1 on a private network")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def address(self, port: int) -> str:
        host = self.advertise or (socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"tls:{address}" if self.tls else address

    def server_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tap_key(settings) -> bytes:
    """The hub's tap key (created on first use; the same for every process of the hub)."""
    from store.secrets import SecretBox, read_or_create_secret

    value = read_or_create_secret(settings.var_dir / "secrets" / "camera_tap_key", SecretBox.from_settings(settings),
                                  nbytes=32)
    return value.encode()


def _mac(key: bytes, nonce: str, camera: str, stream: str, url: str) -> str:
    return hmac.new(key, "|".join((nonce, camera, stream, url)).encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------- frames


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload)) + payload


def header_frame(segment: Segment) -> bytes:
    tb = segment.time_base
    return _frame(b"H", json.dumps({
        "codec": segment.codec, "width": segment.width, "height": segment.height,
        "time_base": [tb.numerator, tb.denominator], "fps": segment.fps, "audio": segment.audio,
        "extradata": base64.b64encode(segment.extradata).decode() if segment.extradata else None}).encode())


def packet_frame(record: Record) -> bytes:
    p = record.packet
    data = bytes(p)
    return _FRAME.pack(b"P", _PACKET.size + len(data)) + _PACKET.pack(
        NO_TS if p.pts is None else p.pts, NO_TS if p.dts is None else p.dts, record.wall,
        1 if record.key else 0) + data


def state_frame(failure: Failure | None) -> bytes:
    body = {"online": False, "problem": failure.problem.value, "detail": failure.detail} if failure else \
        {"online": False, "problem": None, "detail": "connecting to the camera"}
    return _frame(b"S", json.dumps(body, ensure_ascii=False).encode())


def _refusal(reason: str) -> bytes:
    return _frame(b"E", json.dumps({"reason": reason}, ensure_ascii=False).encode())


# ---------------------------------------------------------------------------- worker side


class Consumer:
    """One consumer connection: a bounded queue of frames and the thread that sends them."""

    def __init__(self, sock: socket.socket, label: str, limit: int) -> None:
        self.sock = sock
        self.label = label
        self.limit = limit
        self.frames: deque[bytes] = deque()
        self.cond = threading.Condition()
        self.need_key = True
        self.closed = False
        self.sent = 0
        self.dropped = 0
        self._overflow_logged = False

    def offer(self, frame: bytes, key: bool) -> None:
        """A packet (reader thread): queued, or dropped while waiting for a keyframe."""
        with self.cond:
            if self.closed:
                return
            if self.need_key and not key:
                self.dropped += 1
                return
            if len(self.frames) >= self.limit:
                self.dropped += len(self.frames)
                self.frames.clear()
                if not self._overflow_logged:
                    log.warning("tap %s: a consumer fell %d packets behind; it resumes at the next keyframe",
                                self.label, self.limit)
                    self._overflow_logged = True
                if not key:
                    self.need_key = True
                    self.dropped += 1
                    return
            self.need_key = False
            self.frames.append(frame)
            self.cond.notify()

    def control(self, frame: bytes, *, new_stream: bool = False) -> None:
        """A header or state: always sent; after a new header only a keyframe may follow."""
        with self.cond:
            if self.closed:
                return
            if new_stream:
                self.need_key = True
            self.frames.append(frame)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def serve(self) -> None:
        """Send until the connection or the tap closes (the consumer's own thread)."""
        try:
            while True:
                with self.cond:
                    if not self.frames and not self.closed:
                        self.cond.wait(KEEPALIVE_S)
                    if self.closed:
                        return
                    batch = list(self.frames)
                    self.frames.clear()
                self.sock.sendall(b"".join(batch) if batch else _frame(b"K", b""))
                self.sent += len(batch)
        except OSError as exc:
            if not self.closed:
                log.info("tap %s: consumer gone (%s)", self.label, exc.__class__.__name__)
        finally:
            self.close()


class Fanout:
    """One camera's packets as the reader gives them: into the evidence ring, and to every
    tap consumer of the camera. The reader thread calls ``opened``, ``append``, ``closed``."""

    def __init__(self, camera_id: str, ring: PacketRing, *, url: str, stream: str | None = None) -> None:
        self.camera_id = camera_id
        self.ring = ring
        self.url = url              # the stream the worker reads (no credentials); "" for ONVIF-only
        self.stream = stream        # ONVIF-only: the profile it asked the camera for
        self.consumers: tuple[Consumer, ...] = ()
        self.listeners: tuple = ()              # in-process: the recorder (opened, packet, audio, closed; quick)
        self.segment: Segment | None = None     # the open connection's stream, None between connections
        self.failure: Failure | None = None
        self.served = 0
        self._lock = threading.Lock()

    def refuses(self, stream: str, url: str) -> str | None:
        """Why this camera's packets do not answer a request for (stream, url); None: they do."""
        if self.url:
            return None if url == self.url else "this worker reads another stream of the camera"
        return None if stream == self.stream else f"this worker reads the camera's {self.stream} stream"

    # -- the reader thread ---------------------------------------------------------------
    def opened(self, segment: Segment) -> None:
        with self._lock:
            self.segment, self.failure = segment, None
            consumers = self.consumers
        for listener in self.listeners:
            listener.opened(segment)
        if consumers:
            frame = header_frame(segment)
            for c in consumers:
                c.control(frame, new_stream=True)

    def append(self, record: Record) -> None:
        with self._lock:            # a consumer joins between two packets: none lost or sent twice
            self.ring.append(record)
            consumers = self.consumers
        for listener in self.listeners:
            listener.packet(record)
        if consumers:
            frame = packet_frame(record)
            for c in consumers:
                c.offer(frame, record.key)

    def audio(self, record: Record) -> None:
        """An audio packet: to the listeners that keep audio (the recorder), nowhere else."""
        for listener in self.listeners:
            take = getattr(listener, "audio", None)
            if take is not None:
                take(record)

    def closed(self, failure: Failure | None) -> None:
        with self._lock:
            self.segment, self.failure = None, failure
            consumers = self.consumers
        for listener in self.listeners:
            listener.closed(failure)
        if consumers:
            frame = state_frame(failure)
            for c in consumers:
                c.control(frame)

    # -- consumers (their threads) ---------------------------------------------------------
    def join(self, consumer: Consumer) -> None:
        """Start ``consumer`` with the stream's header and its current GOP, then live."""
        with self._lock:
            segment = self.segment
            if segment is None:
                consumer.control(state_frame(self.failure))
            else:
                consumer.control(header_frame(segment), new_stream=True)
                gop: list[Record] = []
                for rec in reversed(self.ring.records()):
                    if rec.segment is not segment:
                        break
                    gop.append(rec)
                    if rec.key:
                        break
                if gop and gop[-1].key:
                    for rec in reversed(gop):
                        consumer.offer(packet_frame(rec), rec.key)
            self.consumers += (consumer,)
            self.served += 1

    def leave(self, consumer: Consumer) -> None:
        with self._lock:
            self.consumers = tuple(c for c in self.consumers if c is not consumer)

    def close_all(self) -> None:
        with self._lock:
            consumers, self.consumers = self.consumers, ()
        for c in consumers:
            c.close()


class TapServer:
    """The worker's listener: a thread that accepts, one thread per consumer connection."""

    def __init__(self, settings: TapSettings, key: bytes, fanout_of: Callable[[str], Fanout | None],
                 name: str = "cameras") -> None:
        self.settings = settings
        self.key = key
        self.fanout_of = fanout_of
        self.name = name
        self.sock: socket.socket | None = None
        self.address: str | None = None
        self.refused = 0
        self._stop = threading.Event()
        self._consumers: set[Consumer] = set()
        self._lock = threading.Lock()

    def start(self) -> TapServer:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        sock.listen(64)             # blocking accept: an idle tap costs no wake-ups (stop shuts it down)
        self.sock = sock
        self._tls = self.settings.server_context()
        self.address = self.settings.address(sock.getsockname()[1])
        threading.Thread(target=self._accept, name=f"{self.name}-tap", daemon=True).start()
        log.info("%s: camera packets served at %s", self.name, self.address)
        return self

    @property
    def consumers(self) -> int:
        return len(self._consumers)

    def stop(self) -> None:
        self._stop.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)        # wakes the blocked accept
            except OSError:
                pass
            self.sock.close()
        with self._lock:
            consumers = list(self._consumers)
        for c in consumers:
            c.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-tap-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            nonce = secrets.token_hex(16)
            conn.sendall(GREETING + nonce.encode() + b"\n")
            request = _read_line(conn)
            camera, stream, url = str(request.get("camera", "")), str(request.get("stream", "")), \
                str(request.get("url", ""))
            if not hmac.compare_digest(str(request.get("mac", "")), _mac(self.key, nonce, camera, stream, url)):
                self._refuse(conn, "bad key", camera)
                return
            fanout = self.fanout_of(camera)
            why = "this worker does not read the camera" if fanout is None else fanout.refuses(stream, url)
            if why:
                self._refuse(conn, why, camera)
                return
        except (OSError, ValueError) as exc:       # ssl.SSLError is an OSError
            log.info("%s tap: a request could not be read (%s)", self.name, exc.__class__.__name__)
            conn.close()
            return
        conn.settimeout(self.settings.send_timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        consumer = Consumer(conn, f"{camera} ({stream})", self.settings.queue_packets)
        with self._lock:
            self._consumers.add(consumer)
        fanout.join(consumer)
        log.info("tap %s: consumer joined", consumer.label)
        try:
            consumer.serve()
        finally:
            fanout.leave(consumer)
            with self._lock:
                self._consumers.discard(consumer)
            conn.close()
            log.info("tap %s: consumer left after %d frames (%d dropped)", consumer.label, consumer.sent,
                     consumer.dropped)

    def _refuse(self, conn: socket.socket, reason: str, camera: str) -> None:
        self.refused += 1
        (log.warning if reason == "bad key" else log.info)("%s tap: refused %r: %s", self.name, camera, reason)
        try:
            conn.sendall(_refusal(reason))
        except OSError:
            pass
        conn.close()


def _read_line(conn: socket.socket) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1024)
        if not chunk:
            raise ValueError("closed before the request")
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too long")
    out = json.loads(buf)
    if not isinstance(out, dict):
        raise ValueError("request is not an object")
    return out


# ---------------------------------------------------------------------------- consumer side


def _problem(code: str) -> StreamProblem:
    try:
        return StreamProblem(code)
    except ValueError:          # a newer worker's code: still a problem
        return StreamProblem.other


class TapRefused(Exception):
    """The worker will not serve this stream (it reads another one, or the key is wrong)."""


@dataclass(frozen=True)
class TapHeader:
    codec: str
    width: int
    height: int
    time_base: Fraction
    fps: float | None
    extradata: bytes | None
    audio: str | None

    def decoder(self) -> av.CodecContext:
        """A decoder for this stream (its parameter sets given), for a transcode or a snapshot."""
        ctx = av.CodecContext.create(self.codec, "r")
        if self.extradata:
            ctx.extradata = self.extradata
        return ctx


@dataclass(frozen=True)
class TapState:
    failure: Failure | None


@dataclass(frozen=True)
class TapPacket:
    packet: av.Packet
    wall: float
    key: bool


class TapStream:
    """One camera stream's packets from the worker that reads it."""

    def __init__(self, address: str, key: bytes, camera_id: str, stream: str, url: str,
                 timeout_s: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.tls = tls
        self.key = key
        self.camera_id, self.stream, self.url = camera_id, stream, url
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self._file = None

    def open(self) -> TapStream:
        address = self.address
        secure = address.startswith("tls:")
        if secure:
            address = address[4:]
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        if secure:
            ctx = self.tls or ssl.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self._file = sock.makefile("rb")
        greeting = self._file.readline(200)
        if not greeting.startswith(GREETING):
            raise ConnectionError("not a camera tap")
        nonce = greeting[len(GREETING):].strip().decode()
        request = {"camera": self.camera_id, "stream": self.stream, "url": self.url,
                   "mac": _mac(self.key, nonce, self.camera_id, self.stream, self.url)}
        sock.sendall(json.dumps(request).encode() + b"\n")
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _exact(self, n: int) -> bytes:
        data = self._file.read(n)
        if data is None or len(data) < n:
            raise ConnectionError("the camera worker closed the tap")
        return data

    def events(self) -> Iterator[TapHeader | TapState | TapPacket]:
        """Headers, states and packets until the connection ends (ConnectionError, TimeoutError)
        or the worker refuses (TapRefused)."""
        time_base = Fraction(1, 90000)
        while True:
            kind, size = _FRAME.unpack(self._exact(_FRAME.size))
            if size > MAX_FRAME:
                raise ConnectionError(f"a tap frame of {size} bytes")
            payload = self._exact(size) if size else b""
            if kind == b"P":
                pts, dts, wall, flags = _PACKET.unpack_from(payload)
                packet = av.Packet(payload[_PACKET.size:])
                packet.pts = None if pts == NO_TS else pts
                packet.dts = None if dts == NO_TS else dts
                packet.time_base = time_base
                packet.is_keyframe = bool(flags & 1)
                yield TapPacket(packet, wall, bool(flags & 1))
            elif kind == b"H":
                h = json.loads(payload)
                time_base = Fraction(*h["time_base"])
                yield TapHeader(h["codec"], h["width"], h["height"], time_base, h.get("fps"),
                                base64.b64decode(h["extradata"]) if h.get("extradata") else None, h.get("audio"))
            elif kind == b"S":
                s = json.loads(payload)
                yield TapState(Failure(_problem(s["problem"]), str(s.get("detail") or ""))
                               if s.get("problem") else None)
            elif kind == b"E":
                raise TapRefused(json.loads(payload).get("reason", "refused"))
            # K (keepalive) and unknown kinds: nothing to do


__all__ = ["Consumer", "Fanout", "TapHeader", "TapPacket", "TapRefused", "TapServer", "TapSettings", "TapState",
           "TapStream", "tap_key"]
