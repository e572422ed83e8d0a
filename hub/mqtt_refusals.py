"""Refused broker credentials (issue 18): every connection the embedded Mosquitto refuses is
an audit record of the county's root, and a burst of them from one address is a security
event (``security.mqtt.refused``) that the alerts engine raises an alarm for.

Mosquitto tells nobody but its log: with ``connection_messages true`` it writes

    1796617609: New connection from 127.0.0.1:35052 on port 18831.
    1796617609: Client <unknown> disconnected, not authorised.

and the refusal names neither the address nor the username (the client id only when the
client came without a username). The broker is single-threaded and a client sends its
CONNECT right after the TCP handshake, so a refusal belongs to a connection it accepted
just before that has not ended otherwise: ``Pairing`` keeps those few, oldest first, and
gives a refusal the oldest (the one whose CONNECT was waiting longest). A line that names
an address ("New client connected from …") or ends a connection that never logged in
takes its connection out; one older than ``PENDING_MAX_AGE_S`` never sent a CONNECT (a
port probe, garbage the broker dropped without a word) and is forgotten. When connections
of other addresses were waiting too, the record says the pairing is ``ambiguous``.

``RefusalFollower`` polls the log once a second from where it stopped (an idle hub costs a
``stat`` a second and no database connection), follows the file when it is truncated or
replaced, writes one transaction per poll and keeps what it could not write — the database
away — for the next poll, up to ``MAX_BACKLOG`` refusals.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from store.audit import AuditEntry, record
from store.db import close_quietly, connect
from store.security import MQTT_REFUSED, BurstCounter, raise_event

log = logging.getLogger("xlhub.mqtt_refusals")

ACTION = "mqtt.refused"
REASON = "认证失败：用户名或密码错误"
POLL_S = 1.0
PENDING_MAX = 256                 # connections accepted and not yet logged in, refused or gone
PENDING_MAX_AGE_S = 10            # by the broker's clock: older ones never sent a CONNECT
MAX_BACKLOG = 10_000              # refusals kept while the database is away
READ_MAX = 4 << 20                # bytes of log read per poll (the rest next poll)
PARTIAL_MAX = 64 << 10            # an unfinished last line longer than this is dropped
ROTATE_AT = 16 << 20              # the broker's log is kept to this (and one older copy, .1)

_TS = r"^(?:(?P<ts>\d+): )?"
NEW = re.compile(_TS + r"New connection from (?P<addr>\S+):(?P<peer>\d+) on port (?P<port>\d+)\.$")
CONNECTED = re.compile(_TS + r"New client connected from (?P<addr>\S+):(?P<peer>\d+) as ")
REFUSED = re.compile(_TS + r"Client (?P<id>.*) disconnected, not authori[sz]ed\.$")
# any other end of a connection that never logged in (closed, timed out, protocol error)
GONE_UNNAMED = re.compile(_TS + r"Client <unknown> ")
STARTING = re.compile(_TS + r"mosquitto version \S+ starting")
# a TLS handshake the broker refused: OpenSSL's reason, then the connection's end
OPENSSL = re.compile(_TS + r"OpenSSL Error\[\d+\]: (?P<err>.*)$")
# ... or, from Mosquitto 2.0's accept path, one line with the address and OpenSSL's reason
# ("Client connection from 10.1.2.3 failed: error:0A00010B:SSL routines::wrong version number.")
TLS_FAILED = re.compile(_TS + r"Client connection from (?P<addr>\S+) failed: (?P<err>.*?)\.?$")
# OpenSSL's words → what the operator reads (Chinese first, the library's words kept)
TLS_REASONS = (
    ("certificate verify failed",
     "TLS 握手被拒：客户端证书无效（已吊销、已过期或不是本 hub 的 CA 签发）(client certificate verify failed)"),
    ("peer did not return a certificate", "TLS 握手被拒：未提供客户端证书 (no client certificate)"),
    ("wrong version number", "TLS 握手失败：对方没有使用 TLS，明文连接到了 TLS 端口 (plain text on a TLS port)"),
    ("http request", "TLS 握手失败：对方没有使用 TLS，明文连接到了 TLS 端口 (plain text on a TLS port)"),
    ("packet length too long", "TLS 握手失败：对方没有使用 TLS，明文连接到了 TLS 端口 (plain text on a TLS port)"),
    ("unsupported protocol", "TLS 握手被拒：TLS 版本过旧，需要 TLS 1.2 或更新 (TLS version too old)"),
    ("tlsv1 alert unknown ca", "TLS 握手失败：设备不信任本 hub 的证书，请装入 hub 的 CA 证书 (device rejected the hub's CA)"),
    ("bad certificate", "TLS 握手失败：设备拒绝了本 hub 的证书 (device rejected the hub's certificate)"),
)


def tls_reason(err: str) -> str:
    low = err.lower()
    for needle, reason in TLS_REASONS:
        if needle in low:
            return reason
    return f"TLS 握手失败 (TLS handshake failed: {err.strip()[:200]})"


@dataclass(frozen=True)
class Refusal:
    at: int | None                # the broker's clock (epoch seconds), when the line has it
    client_id: str | None         # None: <unknown> (it came with a username)
    address: str | None           # None: no accepted connection to pair it with
    peer_port: int | None
    port: int | None              # the listener's port
    ambiguous: bool = False       # connections of other addresses were waiting too
    reason: str = REASON          # wrong credentials, or why the TLS handshake failed


@dataclass(frozen=True)
class _Accepted:
    at: int | None
    address: str
    peer_port: int
    port: int


class Pairing:
    """Mosquitto's log lines in, refusals with their address out (see the module doc)."""

    def __init__(self, max_pending: int = PENDING_MAX, max_age_s: int = PENDING_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._pending: deque[_Accepted] = deque(maxlen=max_pending)
        self._tls_error: str | None = None      # OpenSSL's reason, until its connection's end
        self._gone: _Accepted | None = None       # the last connection that ended without a word

    def reset(self) -> None:
        self._pending.clear()
        self._tls_error = None
        self._gone = None

    def feed(self, line: str) -> Refusal | None:
        line = line.rstrip("\r\n")
        if m := REFUSED.match(line):
            ts = _ts(m)
            accepted, ambiguous = self._take(ts)
            client_id = m["id"]
            return Refusal(at=ts, client_id=None if client_id == "<unknown>" else client_id,
                           address=accepted.address if accepted else None,
                           peer_port=accepted.peer_port if accepted else None,
                           port=accepted.port if accepted else None, ambiguous=ambiguous)
        if m := NEW.match(line):
            self._pending.append(_Accepted(_ts(m), m["addr"], int(m["peer"]), int(m["port"])))
        elif m := CONNECTED.match(line):
            address, peer = m["addr"], int(m["peer"])
            for accepted in self._pending:
                if accepted.address == address and accepted.peer_port == peer:
                    self._pending.remove(accepted)
                    break
        elif m := TLS_FAILED.match(line):
            address = m["addr"]
            accepted = next((a for a in self._pending if a.address == address), None)
            if accepted is not None:
                self._pending.remove(accepted)
            elif self._gone is not None and self._gone.address == address:
                accepted = self._gone            # the broker said "closed" before it said why
            # (Mosquitto 2.0 logs no "New connection" for a plain-text client on a TLS port:
            # then the address is the line's, and the listener is not known.)
            self._gone = None
            self._tls_error = None
            return Refusal(at=_ts(m), client_id=None, address=address,
                           peer_port=accepted.peer_port if accepted else None,
                           port=accepted.port if accepted else None, reason=tls_reason(m["err"]))
        elif m := OPENSSL.match(line):
            self._tls_error = self._tls_error or m["err"]      # the first says why
        elif m := GONE_UNNAMED.match(line):
            ts = _ts(m)
            accepted, ambiguous = self._take(ts)
            self._gone = accepted if self._tls_error is None else None
            if self._tls_error is not None:
                err, self._tls_error = self._tls_error, None
                return Refusal(at=ts, client_id=None, address=accepted.address if accepted else None,
                               peer_port=accepted.peer_port if accepted else None,
                               port=accepted.port if accepted else None, ambiguous=ambiguous,
                               reason=tls_reason(err))
        elif STARTING.match(line):
            self.reset()                      # a new broker: nothing of the last one is waiting
        return None

    def _take(self, ts: int | None) -> tuple[_Accepted | None, bool]:
        if ts is not None:
            while self._pending and self._pending[0].at is not None and self._pending[0].at < ts - self.max_age_s:
                self._pending.popleft()
        if not self._pending:
            return None, False
        accepted = self._pending.popleft()
        return accepted, any(p.address != accepted.address for p in self._pending)


def _ts(m: re.Match) -> int | None:
    return int(m["ts"]) if m["ts"] else None


class LogTail:
    """New complete lines of a growing file, read from where the last call stopped. Holds the
    file open, so the tail of a file renamed away (rotated) is still read before the name is
    followed to the new file; a file cut shorter (truncated) is read again from its start.

    With ``rotate_at``, a file read to its end and grown past it is copied to ``<name>.1``
    and truncated (the writer, the broker, keeps its append-mode descriptor, so it writes on
    at the new start): the broker's log now gets a line per connection and must not grow
    without end. What the writer appended while the copy was made is read from the copy."""

    def __init__(self, path: Path, *, from_end: bool = True, rotate_at: int | None = None) -> None:
        self.path = Path(path)
        self.rotate_at = rotate_at
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.restarted = False        # the last read started a file over (truncated, or a new one)
        self._open(at_end=from_end)

    def _open(self, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        self._offset = st.st_size if at_end else 0
        self._partial = b""
        return True

    def read_lines(self) -> list[str]:
        self.restarted = False
        if self._fd is None:
            if not self._open(at_end=False):
                return []
            self.restarted = True                # a new file (replaced, or there at last)
        size = os.fstat(self._fd).st_size
        if size < self._offset:                  # truncated: what is there now is new
            self._offset, self._partial, self.restarted = 0, b"", True
        data = b""
        if size > self._offset:
            data = os.pread(self._fd, min(size - self._offset, READ_MAX), self._offset)
            self._offset += len(data)
        if self._offset >= size and self._replaced():
            os.close(self._fd)                   # read to its end: follow the name from now on
            self._fd = None
        elif self.rotate_at and self._offset >= size >= self.rotate_at:
            data += self._rotate()
        return self._split(data)

    def _rotate(self) -> bytes:
        """Copy to .1 and truncate; the bytes appended since our read, from the copy."""
        copy = self.path.with_name(self.path.name + ".1")
        shutil.copyfile(self.path, copy)
        os.truncate(self.path, 0)
        with open(copy, "rb") as f:
            f.seek(self._offset)
            late = f.read()
        self._offset = 0
        return late

    def _replaced(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False                         # gone, not (yet) replaced: the writer may still append
        return (st.st_dev, st.st_ino) != self._id

    def _split(self, data: bytes) -> list[str]:
        if not data:
            return []
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > PARTIAL_MAX:
            self._partial = b""
        if self._fd is None:
            self._partial = b""                  # the old file ended there
        return [c.decode("utf-8", errors="replace") for c in complete]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RefusalFollower:
    """Follows the embedded broker's log and records its refusals (see the module doc).
    Made before the broker starts (it begins at the log's end then, so a restarted hub
    does not record the old log again); ``start`` once the database is there."""

    def __init__(self, log_path: Path, listeners: dict[int, str], *, db_url: str | None = None,
                 counter: BurstCounter | None = None, poll_s: float = POLL_S, from_end: bool = True,
                 max_backlog: int = MAX_BACKLOG) -> None:
        self.tail = LogTail(log_path, from_end=from_end, rotate_at=ROTATE_AT)
        self.listeners = dict(listeners)
        self.db_url = db_url
        self.counter = counter or BurstCounter()
        self.poll_s = poll_s
        self.max_backlog = max_backlog
        self.pairing = Pairing()
        self.dropped = 0                   # refusals lost because the backlog was full
        self._backlog: deque[tuple[Refusal, int | None]] = deque()
        self._conn: psycopg.Connection | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()      # one poll at a time (the thread, the final one at stop)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def poll(self) -> int:
        """Read what the broker logged since the last poll and record its refusals with what
        is still waiting; returns how many were recorded (0 when the database is away)."""
        with self._lock:
            lines = self.tail.read_lines()
            if self.tail.restarted:
                self.pairing.reset()
            for line in lines:
                refusal = self.pairing.feed(line)
                if refusal is not None:
                    self._queue(refusal)
            return self._flush() if self._backlog and self.db_url else 0

    def _queue(self, refusal: Refusal) -> None:
        if refusal.reason != REASON:
            log.warning("broker refused a TLS connection from %s on port %s (%s): %s", refusal.address or "?",
                        refusal.port or "?", self.listener(refusal.port) or "?", refusal.reason)
        # Counted once, when read: a poll that could not write does not count it again.
        burst = self.counter.hit(refusal.address or "<unknown>",
                                 now=float(refusal.at) if refusal.at is not None else time.time())
        if len(self._backlog) >= self.max_backlog:
            self._backlog.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("database away too long: %d refused broker connections not recorded", self.dropped)
        self._backlog.append((refusal, burst))

    def _flush(self) -> int:
        batch = list(self._backlog)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.db_url, autocommit=True)
            with self._conn.transaction():
                for refusal, burst in batch:
                    record(self._conn, self.entry(refusal))
                    if burst:
                        raise_event(self._conn, MQTT_REFUSED, subject=refusal.address or "<unknown>", node_code=None,
                                    payload={"address": refusal.address, "refusals": burst,
                                             "window_s": self.counter.window_s,
                                             "listener": self.listener(refusal.port)},
                                    at=_when(refusal))
        except (psycopg.Error, OSError) as exc:
            log.warning("refused broker connections not recorded yet (%d waiting, will retry): %s", len(batch), exc)
            self._close_conn()
            return 0
        for _ in batch:
            self._backlog.popleft()
        bursts = [r.address for r, b in batch if b]
        for address in bursts:
            log.warning("burst of refused broker credentials from %s", address)
        return len(batch)

    def listener(self, port: int | None) -> str | None:
        return self.listeners.get(port) if port is not None else None

    def entry(self, refusal: Refusal) -> AuditEntry:
        detail = {"port": refusal.port, "listener": self.listener(refusal.port), "reason": refusal.reason}
        if refusal.at is not None:
            detail["broker_time"] = _when(refusal).isoformat()
        if refusal.address is None:
            detail["paired"] = False          # no accepted connection to take the address from
        elif refusal.ambiguous:
            detail["ambiguous"] = True        # other addresses were connecting at the same moment
        actor = (refusal.client_id or "<unknown>").replace("\x00", "\ufffd")[:200]
        return AuditEntry(actor=actor, actor_kind="device", action=ACTION, outcome="denied", node_code=None,
                          source_ip=refusal.address, detail=detail)

    # -- the thread -------------------------------------------------------------------
    def start(self, db_url: str | None = None) -> None:
        if db_url:
            self.db_url = db_url
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-refusals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # keep following: the next poll starts from where this one stopped
                log.exception("following the broker's log failed")

    def stop(self, final_poll: bool = True) -> None:
        """Stop the thread; with ``final_poll`` record what the broker logged until now first
        (call it after the broker stopped and before the database does)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if final_poll and self.db_url:
            try:
                self.poll()
            except Exception:
                log.exception("last read of the broker's log failed")
        if self._backlog:
            log.error("%d refused broker connections not recorded (database away at shutdown)", len(self._backlog))
        self._close_conn()
        self.tail.close()

    def _close_conn(self) -> None:
        close_quietly(self._conn)
        self._conn = None


def _when(refusal: Refusal) -> datetime:
    return datetime.fromtimestamp(refusal.at, UTC) if refusal.at is not None else datetime.now(UTC)
