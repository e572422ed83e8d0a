"""CAP 1.2 (OASIS Common Alerting Protocol; the base of China's GB/T 35965 profile):
parse an ``<alert>`` into plain data. The XML is read by the hub's one hardened reader
(``xmlsafe``): any encoding the declaration names (GB2312, GBK, GB18030, UTF-16, …), and
never a DTD or an entity, whatever the encoding — no external fetches, no expansion bombs."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

import xmlsafe

NS = "urn:oasis:names:tc:emergency:cap:1.2"
MAX_BYTES = 1 << 20
STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")


class CapError(ValueError):
    """Not an acceptable CAP 1.2 alert; the message says which element and why."""


@dataclass
class CapArea:
    description: str
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)    # (lat, lon) points
    circles: list[tuple[float, float, float]] = field(default_factory=list)     # lat, lon, radius km
    geocodes: list[tuple[str, str]] = field(default_factory=list)               # (valueName, value)


@dataclass
class CapInfo:
    language: str
    categories: list[str]
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    sender_name: str | None = None
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    areas: list[CapArea] = field(default_factory=list)


@dataclass
class CapAlert:
    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: str
    scope: str
    references: list[tuple[str, str, str]] = field(default_factory=list)       # (sender, identifier, sent)
    infos: list[CapInfo] = field(default_factory=list)
    text: str = ""      # the document as decoded (kept as sent: GB2312 bytes become their Chinese text)

    def info(self, languages: tuple[str, ...] = ("zh-CN", "zh")) -> CapInfo | None:
        """The info block in the first preferred language, else the first one."""
        for lang in languages:
            for i in self.infos:
                if i.language.lower().startswith(lang.lower()):
                    return i
        return self.infos[0] if self.infos else None


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _text(el: etree._Element, tag: str, required: bool = False, where: str = "alert") -> str | None:
    child = el.find(_q(tag))
    value = child.text.strip() if child is not None and child.text else None
    if required and not value:
        raise CapError(f"{where}: <{tag}> is required")
    return value


def _time(value: str | None, tag: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise CapError(f"<{tag}> is not a CAP date-time (e.g. 2026-11-23T10:00:00+08:00): {value[:40]!r}") from None
    if t.tzinfo is None:
        raise CapError(f"<{tag}> must carry a time zone offset")
    return t


def _point(text: str, where: str) -> tuple[float, float]:
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise CapError(f"{where}: {text[:40]!r} is not a 'lat,lon' pair") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CapError(f"{where}: {text[:40]!r} is outside the globe")
    return lat, lon


def parse_cap(data: bytes | str) -> CapAlert:
    if len(data) > MAX_BYTES:
        raise CapError(f"预警文件过大 (the alert is larger than {MAX_BYTES} bytes)")
    try:
        text = data if isinstance(data, str) else xmlsafe.decode(data)
        root = xmlsafe.parse(text, max_bytes=None)
    except xmlsafe.XmlRefused as exc:
        raise CapError(str(exc)) from None
    if root.tag != _q("alert"):
        raise CapError(f"the root element must be <alert> in the CAP 1.2 namespace ({NS}), got {root.tag[:80]!r}")
    status = _text(root, "status", True)
    msg_type = _text(root, "msgType", True)
    if status not in STATUSES:
        raise CapError(f"<status> must be one of {', '.join(STATUSES)}")
    if msg_type not in MSG_TYPES:
        raise CapError(f"<msgType> must be one of {', '.join(MSG_TYPES)}")
    refs = []
    for ref in (_text(root, "references") or "").split():
        parts = ref.split(",")
        if len(parts) != 3:
            raise CapError(f"<references>: {ref[:80]!r} is not 'sender,identifier,sent'")
        refs.append((parts[0], parts[1], parts[2]))
    alert = CapAlert(identifier=_text(root, "identifier", True), sender=_text(root, "sender", True),
                     sent=_time(_text(root, "sent", True), "sent"), status=status, msg_type=msg_type,
                     scope=_text(root, "scope", True), references=refs, text=text)
    for n, el in enumerate(root.findall(_q("info"))):
        where = f"info[{n}]"
        info = CapInfo(
            language=_text(el, "language") or "en-US",
            categories=[c.text.strip() for c in el.findall(_q("category")) if c.text],
            event=_text(el, "event", True, where), urgency=_text(el, "urgency", True, where),
            severity=_text(el, "severity", True, where), certainty=_text(el, "certainty", True, where),
            headline=_text(el, "headline"), description=_text(el, "description"),
            instruction=_text(el, "instruction"), sender_name=_text(el, "senderName"),
            effective=_time(_text(el, "effective"), "effective"), onset=_time(_text(el, "onset"), "onset"),
            expires=_time(_text(el, "expires"), "expires"))
        if not info.categories:
            raise CapError(f"{where}: at least one <category> is required")
        for m, a in enumerate(el.findall(_q("area"))):
            awhere = f"{where}.area[{m}]"
            area = CapArea(description=_text(a, "areaDesc", True, awhere))
            for p in a.findall(_q("polygon")):
                points = [_point(x, awhere + ".polygon") for x in (p.text or "").split()]
                if len(points) < 4:
                    raise CapError(f"{awhere}: a <polygon> needs at least 4 points (first = last)")
                area.polygons.append(points)
            for c in a.findall(_q("circle")):
                try:
                    centre, radius = (c.text or "").split()
                    lat, lon = _point(centre, awhere + ".circle")
                    area.circles.append((lat, lon, float(radius)))
                except ValueError:
                    raise CapError(f"{awhere}: <circle> must be 'lat,lon radius_km'") from None
            for g in a.findall(_q("geocode")):
                name, value = _text(g, "valueName", True, awhere), _text(g, "value", True, awhere)
                area.geocodes.append((name, value))
            info.areas.append(area)
        alert.infos.append(info)
    if msg_type in ("Alert", "Update") and not alert.infos:
        raise CapError("an Alert or Update needs at least one <info>")
    return alert
