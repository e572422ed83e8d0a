"""WS-Discovery: find the ONVIF cameras on the local network.

A Probe (SOAP over UDP) goes to the multicast group 239.255.255.250:3702 from every local
IPv4 interface — a hub usually has one network card for the camera VLAN and another for the
uplink, and multicast only leaves through the interface it is sent from. Cameras answer with a
ProbeMatches by unicast to our socket: their endpoint id, their service addresses (XAddrs) and
scopes (name, hardware, location). Answers are de-duplicated by endpoint id, since cameras
repeat UDP answers and a camera on two networks answers twice.

``discover(timeout, target=("127.0.0.1", port))`` sends the probe to one unicast address
instead (the tests; also a way to ask one known camera).

``discover_cli(timeout)`` is ``xlhub cameras discover``: a progress line, then a table.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO
from urllib.parse import unquote, urlsplit

from lxml import etree

import xmlsafe

logger = logging.getLogger(__name__)

MULTICAST_GROUP = ("239.255.255.250", 3702)
NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_WSD_2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
NS_TDS = "http://www.onvif.org/ver10/device/wsdl"

# One probe per type: WS-Discovery matches a probe only when a device has *all* its types,
# and cameras (NetworkVideoTransmitter) and recorders (Device) do not all announce both.
PROBE_TYPES = (("dn", NS_DN, "NetworkVideoTransmitter"), ("tds", NS_TDS, "Device"))
_MAX_DATAGRAM = 65535


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    endpoint: str                       # urn:uuid:… — the device's stable identity
    xaddrs: tuple[str, ...]             # device service URLs (http://ip/onvif/device_service)
    scopes: tuple[str, ...]
    types: tuple[str, ...]
    name: str
    hardware: str
    location: str
    responder: str                      # the IP address the answer came from

    @property
    def host(self) -> str:
        """host[:port] of the first service address (else the responder's address)."""
        for xaddr in self.xaddrs:
            try:
                parts = urlsplit(xaddr)
                if parts.hostname:
                    return parts.hostname + (f":{parts.port}" if parts.port else "")
            except ValueError:
                continue
        return self.responder


@dataclass(frozen=True, slots=True)
class DiscoveryProgress:
    elapsed: float
    timeout: float
    found: int
    new_device: DiscoveredDevice | None = None


ProgressCallback = Callable[[DiscoveryProgress], None]


def probe_message(message_id: str, prefix: str, namespace: str, type_name: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS_SOAP12}" xmlns:a="{NS_WSA}" xmlns:d="{NS_WSD}" xmlns:{prefix}="{namespace}">'
        '<s:Header>'
        f'<a:Action s:mustUnderstand="1">{NS_WSD}/Probe</a:Action>'
        f'<a:MessageID>{message_id}</a:MessageID>'
        '<a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>'
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        '</s:Header>'
        f'<s:Body><d:Probe><d:Types>{prefix}:{type_name}</d:Types></d:Probe></s:Body>'
        '</s:Envelope>'
    ).encode()


def parse_probe_matches(data: bytes, responder: str, message_ids: set[str] | None = None) -> list[DiscoveredDevice]:
    """The devices in one ProbeMatches datagram; [] for anything else (a camera's Hello, another
    tool's probe, garbage). ``message_ids``: ignore answers relating to other probes."""
    try:
        root = xmlsafe.parse(data, max_bytes=_MAX_DATAGRAM)
    except xmlsafe.XmlRefused:          # not XML, or with a DTD: anyone on the LAN can send a datagram
        return []
    if message_ids is not None:
        relates = root.find(f".//{{{NS_WSA}}}RelatesTo")
        if relates is None:
            relates = root.find(".//{*}RelatesTo")
        # A missing RelatesTo is tolerated: some firmwares leave it out.
        if relates is not None and (relates.text or "").strip() not in message_ids:
            return []
    devices = []
    for ns in (NS_WSD, NS_WSD_2009):
        for match in root.iter(f"{{{ns}}}ProbeMatch"):
            device = _device_from_match(match, ns, responder)
            if device is not None:
                devices.append(device)
    return devices


def _device_from_match(match: etree._Element, ns: str, responder: str) -> DiscoveredDevice | None:
    endpoint = (match.findtext("{*}EndpointReference/{*}Address") or "").strip()
    xaddrs = tuple((match.findtext(f"{{{ns}}}XAddrs") or "").split())
    scopes = tuple((match.findtext(f"{{{ns}}}Scopes") or "").split())
    types = tuple((match.findtext(f"{{{ns}}}Types") or "").split())
    if not xaddrs and not endpoint:
        return None
    values = _scope_values(scopes)
    return DiscoveredDevice(
        endpoint=endpoint or " ".join(xaddrs), xaddrs=xaddrs, scopes=scopes, types=types,
        name=" ".join(values.get("name", [])), hardware=" ".join(values.get("hardware", [])),
        location=" ".join(values.get("location", [])), responder=responder)


def _scope_values(scopes: Sequence[str]) -> dict[str, list[str]]:
    """``onvif://www.onvif.org/name/Gate%20Cam`` → {"name": ["Gate Cam"]}; the location
    scopes keep their sub-path (``location/city/hotan`` → "city/hotan")."""
    out: dict[str, list[str]] = {}
    prefix = "onvif://www.onvif.org/"
    for scope in scopes:
        if not scope.lower().startswith(prefix):
            continue
        kind, _, value = scope[len(prefix):].partition("/")
        if value:
            out.setdefault(kind.lower(), []).append(unquote(value))
    return out


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 interface addresses (Linux ioctl; [] elsewhere or on failure),
    loopback left out."""
    try:
        import fcntl
    except ImportError:
        return []
    found: list[str] = []
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            address = socket.inet_ntoa(packed[20:24])
            if not address.startswith("127.") and address not in found:
                found.append(address)
    return found


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) <= _MAX_DATAGRAM:
            self.queue.put_nowait((data, addr[0]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc. after a unicast probe: nothing to do but keep listening.
        logger.debug("discovery: %s", exc)


def is_multicast(address: str) -> bool:
    try:
        return 224 <= socket.inet_aton(address)[0] <= 239
    except OSError:
        return False


def _open_socket(target: tuple[str, int], ttl: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        if target[0].startswith("127."):
            sock.bind(("127.0.0.1", 0))
        else:
            sock.bind(("", 0))
        if is_multicast(target[0]):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _send_probes(sock: socket.socket, target: tuple[str, int], interfaces: Sequence[str | None],
                 message_ids: set[str]) -> int:
    sent = 0
    for interface in interfaces:
        if interface is not None:
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            except OSError as exc:
                logger.debug("discovery: cannot send on %s: %s", interface, exc)
                continue
        for prefix, namespace, type_name in PROBE_TYPES:
            message_id = f"urn:uuid:{uuid.uuid4()}"
            message_ids.add(message_id)
            try:
                sock.sendto(probe_message(message_id, prefix, namespace, type_name), target)
                sent += 1
            except OSError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                    raise
                logger.debug("discovery: probe via %s not sent: %s", interface or "default route", exc)
    return sent


async def discover(timeout: float = 5.0, target: tuple[str, int] | None = None,
                   progress: ProgressCallback | None = None, *, interfaces: Sequence[str] | None = None,
                   ttl: int = 1, resend_after: float | None = None) -> list[DiscoveredDevice]:
    """Probe for ONVIF devices for ``timeout`` seconds; returns them in the order they answered.

    ``target``: a unicast (host, port) to probe instead of the multicast group (or another
    multicast group/port: then it is sent from every interface like the default).
    ``progress``: called about five times a second and whenever a new device answers.
    ``interfaces``: local IPv4 addresses to send the multicast probe from (default: all).
    The probe is sent again after ``resend_after`` seconds (default a third of the timeout,
    at most 1 s) because UDP may drop either the probe or the answer.

    Raises OSError when no probe could be sent at all (no network)."""
    loop = asyncio.get_running_loop()
    target = target or MULTICAST_GROUP
    sock = _open_socket(target, ttl)
    send_from: list[str | None] = [None]
    if is_multicast(target[0]):
        send_from = list(interfaces or local_ipv4_addresses()) or [None]
    transport, receiver = await loop.create_datagram_endpoint(_Receiver, sock=sock)
    message_ids: set[str] = set()
    devices: dict[str, DiscoveredDevice] = {}
    started = time.monotonic()
    try:
        if _send_probes(sock, target, send_from, message_ids) == 0:
            raise OSError(errno.ENETUNREACH, "no interface could send the WS-Discovery probe")
        resend_at = started + (resend_after if resend_after is not None else min(1.0, timeout / 3))
        resent = False
        while True:
            now = time.monotonic()
            elapsed = now - started
            if elapsed >= timeout:
                break
            if not resent and now >= resend_at:
                resent = True
                _send_probes(sock, target, send_from, message_ids)
            try:
                data, responder = await asyncio.wait_for(receiver.queue.get(), min(0.2, timeout - elapsed))
            except TimeoutError:
                if progress:
                    progress(DiscoveryProgress(time.monotonic() - started, timeout, len(devices)))
                continue
            for device in parse_probe_matches(data, responder, message_ids):
                known = devices.get(device.endpoint)
                if known is None:
                    devices[device.endpoint] = device
                    if progress:
                        progress(DiscoveryProgress(time.monotonic() - started, timeout, len(devices), device))
                elif not set(device.xaddrs) <= set(known.xaddrs):
                    devices[device.endpoint] = replace(
                        known, xaddrs=known.xaddrs + tuple(x for x in device.xaddrs if x not in known.xaddrs))
    finally:
        transport.close()
    if progress:
        progress(DiscoveryProgress(min(timeout, time.monotonic() - started), timeout, len(devices)))
    return list(devices.values())


# ---------------------------------------------------------------------- CLI
def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def format_table(devices: Sequence[DiscoveredDevice]) -> str:
    """A plain text table (CJK-aware column widths: camera names here are often Chinese)."""
    header = ("#", "NAME", "ADDRESS", "HARDWARE", "LOCATION", "ENDPOINT")
    rows = [(str(i), d.name or "-", d.host, d.hardware or "-", d.location or "-", d.endpoint)
            for i, d in enumerate(devices, 1)]
    widths = [max(_width(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(_pad(cell, widths[c]) for c, cell in enumerate(row)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


@dataclass
class _ProgressLine:
    stream: TextIO
    tty: bool = field(init=False)

    def __post_init__(self) -> None:
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, p: DiscoveryProgress) -> None:
        if self.tty:
            filled = int(20 * min(1.0, p.elapsed / p.timeout)) if p.timeout > 0 else 20
            self.stream.write(f"\rProbing for ONVIF devices [{'#' * filled}{'.' * (20 - filled)}] "
                              f"{p.elapsed:4.1f}/{p.timeout:.0f} s, {p.found} found ")
            self.stream.flush()
        elif p.new_device is not None:
            self.stream.write(f"found {p.new_device.name or '-'} at {p.new_device.host}\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def discover_cli(timeout: float = 5.0, target: tuple[str, int] | None = None, *,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``xlhub cameras discover``: probe with a progress line on stderr, print the table on
    stdout. Returns the process exit status (0 also when nothing answered)."""
    out = out or sys.stdout
    err = err or sys.stderr
    line = _ProgressLine(err)
    try:
        devices = asyncio.run(discover(timeout, target=target, progress=line))
    except OSError as exc:
        line.done()
        err.write(f"discovery failed: {exc}\n")
        return 1
    line.done()
    if not devices:
        out.write("No ONVIF devices answered. (Cameras on another subnet or VLAN do not hear the multicast "
                  "probe; add them by address.)\n")
        return 0
    out.write(format_table(devices) + "\n")
    out.write(f"{len(devices)} device(s) found.\n")
    return 0
