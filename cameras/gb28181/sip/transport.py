"""SIP over UDP and TCP on one address (RFC 3261 §18), with the transaction layer's two
jobs the hub needs (§17): client transactions (send a request, retransmit it over UDP on
T1 doubling to T2, resolve with the final response or time out) and server-side
retransmission absorption (a request seen again is answered with the response already
sent, not handled twice). TCP connections a device opened stay the way to reach it
(devices behind NAT register outward and are reached over the same connection).

Everything runs on one asyncio loop; ``on_request(request, peer)`` is called for every
new request, and malformed input is answered 400 with the reason (or dropped when it is
too broken to answer) and counted in ``self.refused``."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cameras.gb28181.sip.message import (
    Request,
    Response,
    SipError,
    StreamFramer,
    parse,
    response,
)

log = logging.getLogger(__name__)

T1, T2 = 0.5, 4.0
SERVER_CACHE_S = 32.0
MAX_TCP_CONNECTIONS = 20_000


@dataclass
class Peer:
    transport: str                  # "udp" | "tcp"
    host: str
    port: int
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port


class SipEndpoint:
    def __init__(self, host: str, port: int, on_request: Callable[[Request, Peer], Awaitable[None] | None], *,
                 udp: bool = True, tcp: bool = True, name: str = "sip", rcvbuf: int = 4 << 20) -> None:
        self.host, self.port = host, port
        self.on_request = on_request
        self.want_udp, self.want_tcp, self.name, self.rcvbuf = udp, tcp, name, rcvbuf
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp_server: asyncio.base_events.Server | None = None
        self.connections: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._pending: dict[tuple[str, str], asyncio.Future] = {}
        self._answered: dict[tuple[str, str, str], tuple[float, bytes]] = {}
        self._swept = time.monotonic()
        self.refused: dict[str, int] = {}
        self.tasks: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Bind UDP and TCP on the same port (port 0: a free one for both, tried a few times)."""
        loop = asyncio.get_running_loop()
        wanted = self.port
        for attempt in range(20):
            self.port = wanted
            if self.want_udp:
                self.udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
                sock = self.udp.get_extra_info("socket")
                with contextlib.suppress(OSError):     # a registration storm arrives in bursts
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                if self.port == 0:
                    self.port = self.udp.get_extra_info("sockname")[1]
            if not self.want_tcp:
                return
            try:
                self.tcp_server = await asyncio.start_server(self._serve_tcp, self.host, self.port, backlog=1024)
                return
            except OSError:
                if wanted != 0 or attempt == 19:
                    raise
                if self.udp is not None:
                    self.udp.close()

    async def stop(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for w in list(self.connections.values()):
            w.close()
        for t in list(self.tasks):
            t.cancel()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    # -- receiving -----------------------------------------------------------------------
    def _refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def datagram(self, data: bytes, peer: Peer) -> None:
        if data.strip(b"\r\n") == b"":
            return                              # keep-alive CRLF
        self._incoming(data, peer)

    def _incoming(self, data: bytes, peer: Peer) -> None:
        try:
            msg = parse(data)
        except SipError as exc:
            self._refuse("malformed")
            log.info("%s: refused a message from %s:%d: %s", self.name, peer.host, peer.port, exc.reason)
            self._answer_broken(data, peer, exc)
            return
        if isinstance(msg, Response):
            self._on_response(msg)
            return
        self._on_request(msg, peer)

    def _answer_broken(self, data: bytes, peer: Peer, exc: SipError) -> None:
        """400 with the reason when the broken message still has what a response needs."""
        try:
            head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
            if not head or head[0].startswith("SIP/2.0"):
                return
            req = Request(method=head[0].split(" ", 1)[0], uri="sip:x")
            for line in head[1:]:
                k, colon, v = line.partition(":")
                if colon and k.strip().lower() in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"):
                    name = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID"}.get(k.strip().lower(), k.strip())
                    req.add(name, v.strip())
            if not all(req.get(h) for h in ("Via", "From", "To", "Call-ID", "CSeq")):
                return
            resp = response(req, exc.status, f"Bad Request ({exc.reason[:100]})" if exc.status == 400 else None)
            self.send(peer, bytes(resp))
        except Exception:           # never let a broken message hurt the loop
            return

    def _on_request(self, req: Request, peer: Peer) -> None:
        via = req.via
        if peer.transport == "udp" and "rport" in via.params:
            pass                                # we answer to the source address anyway (rport, RFC 3581)
        key = (via.params.get("branch", ""), req.method, req.call_id)
        cached = self._answered.get(key)
        if cached is not None and req.method != "ACK":
            self.send(peer, cached[1])          # a retransmission: the same answer again
            return
        try:
            result = self.on_request(req, peer)
        except Exception:
            log.exception("%s: handling %s failed", self.name, req.method)
            self.reply(peer, req, response(req, 500))
            return
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(self._guard(result, req, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _guard(self, coro, req: Request, peer: Peer) -> None:
        try:
            await coro
        except Exception:
            log.exception("%s: handling %s failed", self.name, req.method)
            self.reply(peer, req, response(req, 500))

    def _on_response(self, resp: Response) -> None:
        try:
            branch = resp.via.params.get("branch", "")
        except SipError:
            return
        fut = self._pending.get((branch, resp.cseq[1]))
        if fut is None or fut.done():
            return
        if resp.status >= 200:
            fut.set_result(resp)

    # -- sending --------------------------------------------------------------------------
    def send(self, peer: Peer, data: bytes) -> None:
        if peer.transport == "udp":
            if self.udp is not None:
                self.udp.sendto(data, peer.addr)
            return
        writer = peer.writer or self.connections.get(peer.addr)
        if writer is None or writer.is_closing():
            task = asyncio.ensure_future(self._connect_and_send(peer, data))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        writer.write(data)

    async def _connect_and_send(self, peer: Peer, data: bytes) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(peer.host, peer.port), 3)
        except (OSError, TimeoutError) as exc:
            log.info("%s: cannot connect to %s:%d over TCP: %s", self.name, peer.host, peer.port, exc)
            return
        self.connections[peer.addr] = writer
        writer.write(data)
        task = asyncio.ensure_future(self._read_tcp(reader, writer, Peer("tcp", peer.host, peer.port, writer)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reply(self, peer: Peer, req: Request, resp: Response) -> None:
        data = bytes(resp)
        if resp.status >= 200:
            now = time.monotonic()
            self._answered[(req.via.params.get("branch", ""), req.method, req.call_id)] = (now, data)
            if now - self._swept > 5:
                self._swept = now
                self._answered = {k: v for k, v in self._answered.items() if now - v[0] < SERVER_CACHE_S}
        self.send(peer, data)

    async def request(self, req: Request, peer: Peer, *, timeout: float = 5.0) -> Response:
        """Send ``req`` and wait for its final response. Raises TimeoutError."""
        key = (req.via.params.get("branch", ""), req.method)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        data = bytes(req)
        deadline = time.monotonic() + timeout
        interval = T1
        try:
            self.send(peer, data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {req.method} in {timeout:g} s")
                wait = min(left, interval) if peer.transport == "udp" else left
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"no answer to {req.method} in {timeout:g} s") from None
                    self.send(peer, data)        # UDP retransmission (§17.1.2.2)
                    interval = min(interval * 2, T2)
        finally:
            self._pending.pop(key, None)

    # -- TCP ---------------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        if len(self.connections) >= MAX_TCP_CONNECTIONS:
            self._refuse("too-many-connections")
            writer.close()
            return
        self.connections[(host, port)] = writer
        await self._read_tcp(reader, writer, Peer("tcp", host, port, writer))

    async def _read_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        framer = StreamFramer()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    messages = framer.feed(data)
                except SipError as exc:
                    self._refuse("malformed")
                    log.info("%s: closing TCP from %s:%d: %s", self.name, peer.host, peer.port, exc.reason)
                    break
                for raw in messages:
                    self._incoming(raw, peer)
        except (ConnectionError, OSError):
            pass
        finally:
            if self.connections.get(peer.addr) is writer:
                del self.connections[peer.addr]
            with contextlib.suppress(Exception):
                writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr) -> None:
        self.endpoint.datagram(data, Peer("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:      # ICMP port unreachable and the like
        log.debug("%s: UDP error %s", self.endpoint.name, exc)
