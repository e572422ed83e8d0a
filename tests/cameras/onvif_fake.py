"""Real peers for the ONVIF tests, all on 127.0.0.1.

- :class:`FakeOnvifCamera`: a tiny threaded HTTP server speaking just enough ONVIF SOAP
  (device, media, PTZ-less, events with PullPoint subscriptions) with switches for the faults
  a real camera produces and an emulator does not: expired subscriptions, reboots (all
  subscriptions forgotten), wrong passwords, garbage replies, dropped connections, a skewed
  clock, credentials embedded in URIs.
- :class:`FakeDiscoveryResponder`: a WS-Discovery responder on a unicast UDP port.
- :class:`IpycamProcess`: ipycam (PyPI's ONVIF camera emulator) in a child process, its
  ONVIF HTTP server bound to 127.0.0.1 only (ipycam's own start() binds every interface and
  multicast, and writes its preset file into the working directory, hence the child process
  with its own working directory).
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from tests.processes import stop

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "ter": "http://www.onvif.org/ver10/error",
    "tns1": "http://www.onvif.org/ver10/topics",
    "wsrf-rw": "http://docs.oasis-open.org/wsrf/rw-2",
}
_ENVELOPE_NS = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items() if k not in ("wsse", "wsu"))
_SAFE = etree.XMLParser(resolve_entities=False, no_network=True)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(body: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<s:Envelope {_ENVELOPE_NS}><s:Body>{body}</s:Body></s:Envelope>'


def fault(subcodes: list[str], reason: str, code: str = "s:Sender") -> str:
    inner = ""
    for sub in reversed(subcodes):
        inner = f"<s:Subcode><s:Value>{sub}</s:Value>{inner}</s:Subcode>"
    return envelope(f"<s:Fault><s:Code><s:Value>{code}</s:Value>{inner}</s:Code>"
                    f"<s:Reason><s:Text xml:lang=\"en\">{escape(reason)}</s:Text></s:Reason></s:Fault>")


def parse_duration(text: str | None, default: float) -> float:
    """Seconds of an xs:duration (PT10S, PT1M30S, PT0.5S) or of an absolute time from now."""
    if not text:
        return default
    text = text.strip()
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", text)
    if m:
        d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except ValueError:
        return default


def notification_xml(topic: str, source: dict[str, str], data: dict[str, str], *,
                     operation: str = "Changed", utc_time: datetime | None = None, key: dict[str, str] | None = None,
                     topic_prefix: str = "tns1") -> str:
    """One wsnt:NotificationMessage the way Hikvision-class firmwares write it."""
    def items(values: dict[str, str]) -> str:
        return "".join(f"<tt:SimpleItem Name={quoteattr(k)} Value={quoteattr(v)}/>" for k, v in values.items())

    when = iso(utc_time or datetime.now(UTC))
    key_xml = f"<tt:Key>{items(key)}</tt:Key>" if key else ""
    bound = "" if topic_prefix == "tns1" else f' xmlns:{topic_prefix}="{NS["tns1"]}"'
    topic_text = topic if topic_prefix == "tns1" else topic.replace("tns1:", f"{topic_prefix}:", 1)
    return (f'<wsnt:NotificationMessage{bound}>'
            f'<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">{escape(topic_text)}'
            f'</wsnt:Topic><wsnt:Message><tt:Message UtcTime="{when}" PropertyOperation="{operation}">'
            f'<tt:Source>{items(source)}</tt:Source>{key_xml}<tt:Data>{items(data)}</tt:Data>'
            f'</tt:Message></wsnt:Message></wsnt:NotificationMessage>')


def pull_response_xml(messages: list[str], current: datetime | None = None,
                      termination: datetime | None = None) -> str:
    current = current or datetime.now(UTC)
    termination = termination or current + timedelta(seconds=60)
    return envelope(f"<tev:PullMessagesResponse><tev:CurrentTime>{iso(current)}</tev:CurrentTime>"
                    f"<tev:TerminationTime>{iso(termination)}</tev:TerminationTime>{''.join(messages)}"
                    f"</tev:PullMessagesResponse>")


@dataclass
class Subscription:
    id: int
    termination: float                      # wall clock (time.time()) at which it expires
    created: float
    alive: bool = True
    queue: list[str] = field(default_factory=list)
    renewals: list[tuple[float, float]] = field(default_factory=list)   # (renewed at, was due at)
    pulls: int = 0


class FakeOnvifCamera:
    """A camera on 127.0.0.1:<port>. Switches (set attributes at any time):

    - ``username``/``password``: WS-Security UsernameToken digest required when set.
    - ``auth_style``: "soap" (HTTP 400 + ter:NotAuthorized, most firmwares) or "http" (bare 401).
    - ``garbage``: None | "html" (200 text/html) | "xml" (well-formed, not SOAP) | "truncated" | "dtd"
      (the right answer behind a ``<!DOCTYPE>`` naming an external DTD on this camera; the GETs
      it receives are in ``gets``).
    - ``garbage_operations``: limit garbage to these operations (None: every request).
    - ``drop_next``: close the next N connections without answering.
    - ``delay``: seconds to sit on every request before answering (a camera that hangs).
    - ``clock_offset``: seconds the camera clock is ahead of real time.
    - ``utc_missing``: answer GetSystemDateAndTime with local time and TZ ``CST-8`` only.
    - ``credentials_in_uris``: put user:password@ and ?user=&password= into the URIs.
    - ``events`` / ``ptz``: advertise those services.
    - ``granted_seconds``: the termination time the camera grants (ignores the request).
    - ``max_pull_wait``: longest a PullMessages waits for messages.
    - ``ptz_range``: the continuous velocity range the PTZ node declares.
    - ``rtsp_port``: the port GetStreamUri names (point it at a simulated RTSP server serving
      ``/Streaming/Channels/101`` (main) and ``/102`` (sub)).
    """

    def __init__(self, username: str | None = None, password: str | None = None, *, port: int = 0) -> None:
        self.username = username
        self.password = password
        self.auth_style = "soap"
        self.garbage: str | None = None
        self.garbage_operations: set[str] | None = None
        self.drop_next = 0
        self.clock_offset = 0.0
        self.utc_missing = False
        self.credentials_in_uris = False
        self.events = True
        self.ptz = False
        self.granted_seconds: float | None = None
        self.max_pull_wait = 5.0
        self.delay = 0.0
        self.down = False
        self.ptz_range = (-1.0, 1.0)
        self.rtsp_port = 554
        self.ptz_commands: list[tuple[str, dict[str, str]]] = []
        self.presets: dict[str, tuple[str, float, float, float]] = {"1": ("Home", 0.0, 0.0, 0.0)}
        self.position = (0.0, 0.0, 0.0)
        self.calls: list[tuple[float, str]] = []
        self.gets: list[str] = []
        self.subscriptions: dict[int, Subscription] = {}
        self.states: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._server = self._bind(port)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def _bind(self, port: int) -> ThreadingHTTPServer:
        fake = self

        class Handler(_Handler):
            camera = fake

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        return server

    def start(self) -> FakeOnvifCamera:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            self._lock.notify_all()

    def go_down(self) -> None:
        """The camera stops answering: connections are refused, pending pulls are cut."""
        self.down = True
        self.stop()

    def come_up(self, reboot: bool = True) -> None:
        if reboot:
            self.reboot()
        self.down = False
        self._server = self._bind(self.port)
        self.start()

    def __enter__(self) -> FakeOnvifCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ controls
    def count(self, operation: str) -> int:
        return sum(1 for _, op in self.calls if op == operation)

    def push(self, topic: str, source: dict[str, str], data: dict[str, str], *, operation: str = "Changed",
             utc_time: datetime | None = None, topic_prefix: str = "tns1") -> None:
        """The camera raises an event: every live subscription gets it."""
        xml = notification_xml(topic, source, data, operation=operation, utc_time=utc_time or self.now(),
                               topic_prefix=topic_prefix)
        with self._lock:
            self.states[(topic, tuple(sorted(source.items())))] = dict(data)
            for sub in self.subscriptions.values():
                if sub.alive:
                    sub.queue.append(xml)
            self._lock.notify_all()

    def push_raw(self, xml: str) -> None:
        with self._lock:
            for sub in self.subscriptions.values():
                if sub.alive:
                    sub.queue.append(xml)
            self._lock.notify_all()

    def expire_subscriptions(self) -> None:
        """Every subscription is gone (as after the camera's termination time passed)."""
        with self._lock:
            for sub in self.subscriptions.values():
                sub.alive = False
            self._lock.notify_all()

    def reboot(self) -> None:
        """A rebooted camera has forgotten every subscription and restarts numbering."""
        with self._lock:
            self.subscriptions.clear()
            self._ids = itertools.count(1)
            self._lock.notify_all()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    def live_subscriptions(self) -> list[Subscription]:
        with self._lock:
            return [s for s in self.subscriptions.values() if s.alive and s.termination > time.time()]

    # ------------------------------------------------------------------ SOAP
    def authorised(self, doc: etree._Element) -> bool:
        if not self.password:
            return True
        token = doc.find(".//wsse:UsernameToken", NS)
        if token is None:
            return False
        user = token.findtext("wsse:Username", namespaces=NS)
        password = token.find("wsse:Password", NS)
        nonce = token.findtext("wsse:Nonce", namespaces=NS)
        created = token.findtext("wsu:Created", namespaces=NS)
        if user != self.username or password is None or not nonce or not created:
            return False
        digest = base64.b64encode(hashlib.sha1(base64.b64decode(nonce) + created.encode() +
                                               self.password.encode()).digest()).decode()
        return password.text == digest

    def answer(self, path: str, operation: str, doc: etree._Element) -> tuple[int, str]:
        body = doc.find("s:Body", NS)
        request = body[0] if body is not None and len(body) else None
        handler = getattr(self, f"op_{operation}", None)
        if handler is None:
            return 400, fault(["ter:ActionNotSupported"], f"Action not supported: {operation}", "s:Receiver")
        return handler(path, request)

    def op_GetSystemDateAndTime(self, path, request):
        now = self.now()
        if self.utc_missing:
            local = now + timedelta(hours=8)
            block = (f"<tt:TimeZone><tt:TZ>CST-8</tt:TZ></tt:TimeZone><tt:LocalDateTime>"
                     f"{_date_time_xml(local)}</tt:LocalDateTime>")
        else:
            block = (f"<tt:TimeZone><tt:TZ>CST-8</tt:TZ></tt:TimeZone><tt:UTCDateTime>{_date_time_xml(now)}"
                     f"</tt:UTCDateTime>")
        return 200, envelope("<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
                             "<tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
                             f"{block}</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>")

    def op_GetServices(self, path, request):
        services = [("http://www.onvif.org/ver10/device/wsdl", "device_service"),
                    ("http://www.onvif.org/ver10/media/wsdl", "media_service")]
        if self.events:
            services.append(("http://www.onvif.org/ver10/events/wsdl", "event_service"))
        if self.ptz:
            services.append(("http://www.onvif.org/ver20/ptz/wsdl", "ptz_service"))
        xml = "".join(f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self.url}/onvif/{p}</tds:XAddr>"
                      f"<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
                      for ns, p in services)
        return 200, envelope(f"<tds:GetServicesResponse>{xml}</tds:GetServicesResponse>")

    def op_GetDeviceInformation(self, path, request):
        return 200, envelope("<tds:GetDeviceInformationResponse><tds:Manufacturer>XL Fake</tds:Manufacturer>"
                             "<tds:Model>DS-FAKE-2CD</tds:Model><tds:FirmwareVersion>V5.7.3 build 220112"
                             "</tds:FirmwareVersion><tds:SerialNumber>FAKE0001</tds:SerialNumber>"
                             "<tds:HardwareId>88</tds:HardwareId></tds:GetDeviceInformationResponse>")

    def op_GetProfiles(self, path, request):
        ptz = ('<tt:PTZConfiguration token="ptzconf"><tt:Name>PTZ</tt:Name><tt:UseCount>2</tt:UseCount>'
               '<tt:NodeToken>PTZNODETOKEN</tt:NodeToken></tt:PTZConfiguration>') if self.ptz else ""

        def profile(token, name, w, h, fps, kbps):
            return (f'<trt:Profiles token="{token}" fixed="true"><tt:Name>{name}</tt:Name>'
                    f'<tt:VideoSourceConfiguration token="vsc"><tt:Name>vs</tt:Name><tt:UseCount>2</tt:UseCount>'
                    f'<tt:SourceToken>VideoSource_1</tt:SourceToken><tt:Bounds x="0" y="0" width="1920" height="1080"/>'
                    f'</tt:VideoSourceConfiguration><tt:VideoEncoderConfiguration token="enc_{token}">'
                    f'<tt:Name>{name}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding>'
                    f'<tt:Resolution><tt:Width>{w}</tt:Width><tt:Height>{h}</tt:Height></tt:Resolution>'
                    f'<tt:Quality>3</tt:Quality><tt:RateControl><tt:FrameRateLimit>{fps}</tt:FrameRateLimit>'
                    f'<tt:EncodingInterval>1</tt:EncodingInterval><tt:BitrateLimit>{kbps}</tt:BitrateLimit>'
                    f'</tt:RateControl><tt:SessionTimeout>PT5S</tt:SessionTimeout></tt:VideoEncoderConfiguration>'
                    f'{ptz}</trt:Profiles>')

        # Sub stream listed first on purpose: the client must pick main/sub by size, not order.
        return 200, envelope("<trt:GetProfilesResponse>" + profile("Profile_2", "subStream", 640, 360, 15, 512) +
                             profile("Profile_1", "mainStream", 1920, 1080, 25, 4096) + "</trt:GetProfilesResponse>")

    def _uri(self, scheme: str, port: int, path: str) -> str:
        if self.credentials_in_uris:
            sep = "&" if "?" in path else "?"
            return f"{scheme}://{self.username}:{self.password}@127.0.0.1:{port}{path}{sep}user={self.username}&password={self.password}"
        return f"{scheme}://127.0.0.1:{port}{path}"

    def op_GetStreamUri(self, path, request):
        token = request.findtext("trt:ProfileToken", namespaces=NS)
        channel = {"Profile_1": "101", "Profile_2": "102"}.get(token)
        if channel is None:
            return 400, fault(["ter:InvalidArgVal", "ter:NoProfile"], "The requested profile does not exist")
        uri = self._uri("rtsp", self.rtsp_port, f"/Streaming/Channels/{channel}?transportmode=unicast")
        return 200, envelope(f"<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
                             "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false"
                             "</tt:InvalidAfterReboot><tt:Timeout>PT60S</tt:Timeout></trt:MediaUri>"
                             "</trt:GetStreamUriResponse>")

    def op_GetSnapshotUri(self, path, request):
        uri = self._uri("http", self.port, "/onvif-http/snapshot?Profile_1")
        return 200, envelope(f"<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
                             "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false"
                             "</tt:InvalidAfterReboot><tt:Timeout>PT60S</tt:Timeout></trt:MediaUri>"
                             "</trt:GetSnapshotUriResponse>")

    # PTZ
    def _ptz_request(self, name: str, request) -> dict[str, str]:
        values = {"profile": request.findtext("{*}ProfileToken") or ""}
        for el in request.iter():
            local = etree.QName(el).localname
            for attr in ("x", "y"):
                if el.get(attr) is not None:
                    values[f"{local}.{attr}"] = el.get(attr)
            if el.text and el.text.strip() and local not in ("ProfileToken",):
                values[local] = el.text.strip()
        self.ptz_commands.append((name, values))
        return values

    def op_GetNodes(self, path, request):
        lo, hi = self.ptz_range
        space = "http://www.onvif.org/ver10/tptz/PanTiltSpaces/VelocityGenericSpace"
        zspace = "http://www.onvif.org/ver10/tptz/ZoomSpaces/VelocityGenericSpace"
        return 200, envelope(
            '<tptz:GetNodesResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl"><tptz:PTZNode token="PTZNODETOKEN">'
            '<tt:Name>PTZNODE</tt:Name><tt:SupportedPTZSpaces><tt:ContinuousPanTiltVelocitySpace>'
            f'<tt:URI>{space}</tt:URI><tt:XRange><tt:Min>{lo}</tt:Min><tt:Max>{hi}</tt:Max></tt:XRange>'
            f'<tt:YRange><tt:Min>{lo}</tt:Min><tt:Max>{hi}</tt:Max></tt:YRange></tt:ContinuousPanTiltVelocitySpace>'
            f'<tt:ContinuousZoomVelocitySpace><tt:URI>{zspace}</tt:URI><tt:XRange><tt:Min>{lo}</tt:Min>'
            f'<tt:Max>{hi}</tt:Max></tt:XRange></tt:ContinuousZoomVelocitySpace></tt:SupportedPTZSpaces>'
            '<tt:MaximumNumberOfPresets>255</tt:MaximumNumberOfPresets><tt:HomeSupported>true</tt:HomeSupported>'
            '</tptz:PTZNode></tptz:GetNodesResponse>')

    def op_ContinuousMove(self, path, request):
        self._ptz_request("ContinuousMove", request)
        return 200, envelope('<tptz:ContinuousMoveResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl"/>')

    def op_Stop(self, path, request):
        self._ptz_request("Stop", request)
        return 200, envelope('<tptz:StopResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl"/>')

    def op_GetPresets(self, path, request):
        items = "".join(
            f'<tptz:Preset token={quoteattr(token)}><tt:Name>{escape(name)}</tt:Name><tt:PTZPosition>'
            f'<tt:PanTilt x="{p}" y="{t}"/><tt:Zoom x="{z}"/></tt:PTZPosition></tptz:Preset>'
            for token, (name, p, t, z) in self.presets.items())
        return 200, envelope(f'<tptz:GetPresetsResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl">{items}'
                             '</tptz:GetPresetsResponse>')

    def op_SetPreset(self, path, request):
        values = self._ptz_request("SetPreset", request)
        token = values.get("PresetToken") or str(max([int(t) for t in self.presets if t.isdigit()] or [0]) + 1)
        self.presets[token] = (values.get("PresetName", ""), *self.position)
        return 200, envelope('<tptz:SetPresetResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl">'
                             f'<tptz:PresetToken>{escape(token)}</tptz:PresetToken></tptz:SetPresetResponse>')

    def op_GotoPreset(self, path, request):
        values = self._ptz_request("GotoPreset", request)
        if values.get("PresetToken") not in self.presets:
            return 400, fault(["ter:InvalidArgVal", "ter:NoToken"], "The requested preset token does not exist")
        self.position = self.presets[values["PresetToken"]][1:]
        return 200, envelope('<tptz:GotoPresetResponse xmlns:tptz="http://www.onvif.org/ver20/ptz/wsdl"/>')

    # events
    def _grant(self, requested: str | None) -> float:
        return self.granted_seconds if self.granted_seconds is not None else parse_duration(requested, 60.0)

    def op_CreatePullPointSubscription(self, path, request):
        if not self.events:
            return 400, fault(["ter:ActionNotSupported"], "Action not supported", "s:Receiver")
        seconds = self._grant(request.findtext("tev:InitialTerminationTime", namespaces=NS))
        now = time.time()
        with self._lock:
            sub = Subscription(next(self._ids), now + seconds, now)
            # A new subscription first gets the current state of every property.
            for (topic, source), data in self.states.items():
                sub.queue.append(notification_xml(topic, dict(source), data, operation="Initialized",
                                                  utc_time=self.now()))
            self.subscriptions[sub.id] = sub
        current = self.now()
        return 200, envelope("<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
                             f"<wsa:Address>{self.url}/onvif/Events/PullSubManager_{sub.id}</wsa:Address>"
                             f"</tev:SubscriptionReference><wsnt:CurrentTime>{iso(current)}</wsnt:CurrentTime>"
                             f"<wsnt:TerminationTime>{iso(current + timedelta(seconds=seconds))}"
                             "</wsnt:TerminationTime></tev:CreatePullPointSubscriptionResponse>")

    def _subscription(self, path: str) -> Subscription | None:
        m = re.search(r"PullSubManager_(\d+)", path)
        with self._lock:
            sub = self.subscriptions.get(int(m.group(1))) if m else None
            if sub is None or not sub.alive or sub.termination <= time.time():
                if sub is not None:
                    sub.alive = False
                return None
            return sub

    @staticmethod
    def _unknown_subscription() -> tuple[int, str]:
        return 400, fault(["ter:InvalidArgVal", "wsrf-rw:ResourceUnknownFault"],
                          "The subscription does not exist or has expired")

    def op_PullMessages(self, path, request):
        sub = self._subscription(path)
        if sub is None:
            return self._unknown_subscription()
        wait = min(parse_duration(request.findtext("tev:Timeout", namespaces=NS), 1.0), self.max_pull_wait)
        limit = int(request.findtext("tev:MessageLimit", namespaces=NS) or 100)
        deadline = time.time() + wait
        with self._lock:
            sub.pulls += 1
            while not sub.queue and sub.alive and not self.down and time.time() < deadline:
                self._lock.wait(max(0.0, deadline - time.time()))
            if self.down:
                return 0, ""
            if not sub.alive:
                return self._unknown_subscription()
            messages, sub.queue[:] = sub.queue[:limit], sub.queue[limit:]
            termination = sub.termination
        current = self.now()
        term = current + timedelta(seconds=termination - time.time())
        return 200, pull_response_xml(messages, current, term)

    def op_Renew(self, path, request):
        sub = self._subscription(path)
        if sub is None:
            return self._unknown_subscription()
        seconds = self._grant(request.findtext("wsnt:TerminationTime", namespaces=NS))
        now = time.time()
        with self._lock:
            sub.renewals.append((now, sub.termination))
            sub.termination = now + seconds
        current = self.now()
        return 200, envelope(f"<wsnt:RenewResponse><wsnt:TerminationTime>{iso(current + timedelta(seconds=seconds))}"
                             f"</wsnt:TerminationTime><wsnt:CurrentTime>{iso(current)}</wsnt:CurrentTime>"
                             "</wsnt:RenewResponse>")

    def op_Unsubscribe(self, path, request):
        sub = self._subscription(path)
        if sub is None:
            return self._unknown_subscription()
        with self._lock:
            sub.alive = False
            self._lock.notify_all()
        return 200, envelope("<wsnt:UnsubscribeResponse/>")

    def op_SetSynchronizationPoint(self, path, request):
        return 200, envelope("<tev:SetSynchronizationPointResponse/>")


def _date_time_xml(t: datetime) -> str:
    return (f"<tt:Time><tt:Hour>{t.hour}</tt:Hour><tt:Minute>{t.minute}</tt:Minute><tt:Second>{t.second}"
            f"</tt:Second></tt:Time><tt:Date><tt:Year>{t.year}</tt:Year><tt:Month>{t.month}</tt:Month>"
            f"<tt:Day>{t.day}</tt:Day></tt:Date>")


_PRE_AUTH = {"GetSystemDateAndTime", "GetServices", "GetCapabilities"}


class _Handler(BaseHTTPRequestHandler):
    camera: FakeOnvifCamera

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        cam = self.camera
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            doc = etree.fromstring(raw, parser=_SAFE)
            body = doc.find("s:Body", NS)
            operation = etree.QName(body[0]).localname
        except Exception:  # noqa: BLE001
            self._send(400, fault(["ter:InvalidArgs"], "Malformed request"))
            return
        cam.calls.append((time.time(), operation))
        if cam.delay:
            time.sleep(cam.delay)
        if cam.drop_next > 0:
            cam.drop_next -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if operation not in _PRE_AUTH and not cam.authorised(doc):
            if cam.auth_style == "http":
                self._send(401, "", content_type="text/plain", extra={"WWW-Authenticate": 'Digest realm="IP Camera"'})
            else:
                self._send(400, fault(["ter:NotAuthorized"], "Sender not Authorized"))
            return
        if cam.garbage and (cam.garbage_operations is None or operation in cam.garbage_operations):
            if cam.garbage == "html":
                self._send(200, "<html><body><h1>Welcome to nginx!</h1>", content_type="text/html")
            elif cam.garbage == "xml":
                self._send(200, "<?xml version='1.0'?><config><item>1</item></config>")
            elif cam.garbage == "dtd":
                status, xml = cam.answer(self.path, operation, doc)
                head, rest = xml.split("?>", 1)
                self._send(status, f'{head}?><!DOCTYPE s:Envelope SYSTEM "http://127.0.0.1:{cam.port}/evil.dtd">{rest}')
            else:
                self._send(200, envelope("<tds:GetDeviceInformationResponse>")[:-60])
            return
        status, xml = cam.answer(self.path, operation, doc)
        if status == 0:     # the camera went down while this request waited
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, xml)

    def do_GET(self) -> None:  # noqa: N802
        self.camera.gets.append(self.path)
        if self.path.startswith("/onvif-http/snapshot"):
            self._send(200, "JFIF", content_type="image/jpeg")
        else:
            self._send(404, "")

    def _send(self, status: int, text: str, content_type: str = "application/soap+xml; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        data = text.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass


# ---------------------------------------------------------------------- WS-Discovery
@dataclass
class FakeDevice:
    name: str
    xaddrs: str
    hardware: str = "DS-2CD2T47G2"
    location: str = "china/xinjiang"
    endpoint: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    types: str = "dn:NetworkVideoTransmitter tds:Device"


class FakeDiscoveryResponder:
    """Answers WS-Discovery Probes sent to 127.0.0.1:<port> the way cameras do: one ProbeMatches
    per device, each sent ``repeat`` times (cameras repeat UDP answers; the client de-duplicates),
    after an unrelated datagram the client must ignore."""

    def __init__(self, devices: list[FakeDevice], repeat: int = 2, multicast_group: str | None = None) -> None:
        """``multicast_group``: listen on that group (joined on the loopback interface) instead
        of a unicast port; answers still go out by unicast from 127.0.0.1, as cameras do."""
        self.devices = devices
        self.repeat = repeat
        self.probes: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        if multicast_group:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((multicast_group, 0))
            membership = struct.pack("4s4s", socket.inet_aton(multicast_group), socket.inet_aton("127.0.0.1"))
            try:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError:
                self.sock.close()
                raise
            self.reply_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.reply_sock.bind(("127.0.0.1", 0))
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.reply_sock = self.sock
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeDiscoveryResponder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join(2)
        self.sock.close()
        if self.reply_sock is not self.sock:
            self.reply_sock.close()

    def _serve(self) -> None:
        while self._running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.probes.append(data)
            match = re.search(rb"MessageID>([^<]+)<", data)
            relates = match.group(1).decode() if match else ""
            self.reply_sock.sendto(b"\x00\x01 not a SOAP message", addr)
            for device in self.devices:
                reply = self.probe_match(device, relates).encode()
                for _ in range(self.repeat):
                    self.reply_sock.sendto(reply, addr)

    @staticmethod
    def probe_match(device: FakeDevice, relates_to: str) -> str:
        from urllib.parse import quote

        scopes = " ".join([
            "onvif://www.onvif.org/type/video_encoder", "onvif://www.onvif.org/Profile/Streaming",
            f"onvif://www.onvif.org/name/{quote(device.name)}",
            f"onvif://www.onvif.org/hardware/{quote(device.hardware)}",
            *(f"onvif://www.onvif.org/location/{loc}" for loc in device.location.split())])
        return ('<?xml version="1.0" encoding="UTF-8"?>'
                '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" '
                'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
                'xmlns:wsdd="http://schemas.xmlsoap.org/ws/2005/04/discovery" '
                'xmlns:dn="http://www.onvif.org/ver10/network/wsdl" xmlns:tds="http://www.onvif.org/ver10/device/wsdl">'
                '<SOAP-ENV:Header><wsa:MessageID>urn:uuid:' + str(uuid.uuid4()) + '</wsa:MessageID>'
                f'<wsa:RelatesTo>{escape(relates_to)}</wsa:RelatesTo>'
                '<wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>'
                '<wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>'
                '</SOAP-ENV:Header><SOAP-ENV:Body><wsdd:ProbeMatches><wsdd:ProbeMatch>'
                f'<wsa:EndpointReference><wsa:Address>{device.endpoint}</wsa:Address></wsa:EndpointReference>'
                f'<wsdd:Types>{device.types}</wsdd:Types><wsdd:Scopes>{escape(scopes)}</wsdd:Scopes>'
                f'<wsdd:XAddrs>{escape(device.xaddrs)}</wsdd:XAddrs><wsdd:MetadataVersion>10</wsdd:MetadataVersion>'
                '</wsdd:ProbeMatch></wsdd:ProbeMatches></SOAP-ENV:Body></SOAP-ENV:Envelope>')


# ---------------------------------------------------------------------- ipycam
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IpycamProcess:
    """ipycam's ONVIF service in a child process on 127.0.0.1:<port>, one synthetic frame
    streamed so its snapshot endpoint has a picture."""

    def __init__(self, workdir: Path, username: str = "admin", password: str = "Xl-ipycam-9") -> None:
        self.workdir = workdir
        self.username = username
        self.password = password
        self.port = free_port()
        self.rtsp_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> IpycamProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "ipycam", str(self.port), str(self.rtsp_port),
             self.username, self.password],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if b"ready" not in line:
            self.proc.kill()
            rest = self.proc.stdout.read() if self.proc.stdout else b""
            raise RuntimeError(f"ipycam did not start: {(line + rest).decode(errors='replace')[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def _run_ipycam(port: int, rtsp_port: int, username: str, password: str) -> None:
    import socketserver

    import numpy as np
    from ipycam import CameraConfig, IPCamera, IPCameraHTTPHandler

    config = CameraConfig(name="ipycam 测试", local_ip="127.0.0.1", onvif_port=port, rtsp_port=rtsp_port,
                          username=username, password=password, main_width=640, main_height=360,
                          sub_width=320, sub_height=180, show_timestamp=False)
    camera = IPCamera(config)
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[100:200, 200:400] = (0, 200, 255)
    camera.stream(frame)

    class Handler(IPCameraHTTPHandler):
        pass

    Handler.camera = camera

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__" and len(sys.argv) >= 6 and sys.argv[1] == "ipycam":
    _run_ipycam(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
