"""MANSCDP (GB/T 28181 §A.2): the XML bodies of MESSAGE and NOTIFY (Application/MANSCDP+xml).

Read through ``xmlsafe.parse`` (no DTD, no entities; any declared encoding — GB2312/GBK
from 2016 devices, UTF-8 from 2022 ones); written in the encoding the device itself used
(:func:`encode` with the label of its last body), so an old device is never sent UTF-8 it
cannot read. PTZCmd (Appendix A.3): eight bytes, A5 0F 01, the command byte, pan and tilt
speeds, zoom speed in the high nibble, and a checksum (sum of the first seven bytes mod 256)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

import xmlsafe

CONTENT_TYPE = "Application/MANSCDP+xml"
MAX_BODY = 256 * 1024
_ENCODING = re.compile(rb"""<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ID = re.compile(r"[0-9]{20}")


class ManscdpError(ValueError):
    """A body that cannot be taken; the message is Chinese first (shown to operators)."""


def is_gb_id(value: str | None) -> bool:
    return bool(value) and _ID.fullmatch(value) is not None


def charset_of(body: bytes) -> str:
    """The label the body declared ("GB2312", "UTF-8" …), UTF-8 when none."""
    m = _ENCODING.search(body[:200])
    return m.group(1).decode("ascii").upper() if m else "UTF-8"


def codec_for(label: str) -> str:
    low = label.lower()
    return "gbk" if low in ("gb2312", "gbk", "cp936") else ("gb18030" if low == "gb18030" else "utf-8")


def encode(root: str, fields: str, label: str = "GB2312") -> bytes:
    """``<?xml … encoding=label?><root>fields</root>`` in that encoding."""
    text = f'<?xml version="1.0" encoding="{label}"?>\r\n<{root}>\r\n{fields}</{root}>\r\n'
    return text.encode(codec_for(label), errors="xmlcharrefreplace")


def el(name: str, value) -> str:
    return f"<{name}>{escape(str(value))}</{name}>\r\n"


@dataclass
class Body:
    kind: str                  # Query | Notify | Response | Control
    cmd: str                   # CmdType
    sn: int
    device_id: str
    root: object = field(repr=False)
    charset: str = "UTF-8"

    def text(self, name: str) -> str | None:
        node = self.root.find(name)
        return node.text.strip() if node is not None and node.text else None


def parse(data: bytes) -> Body:
    if len(data) > MAX_BODY:
        raise ManscdpError(f"消息体过大 (MANSCDP body of {len(data)} bytes, more than {MAX_BODY})")
    try:
        root = xmlsafe.parse(data, max_bytes=MAX_BODY)
    except xmlsafe.XmlRefused as exc:
        raise ManscdpError(str(exc)) from None
    if root.tag not in ("Query", "Notify", "Response", "Control"):
        raise ManscdpError(f"未知的 MANSCDP 消息类型 (root element <{root.tag}>)")
    cmd = (root.findtext("CmdType") or "").strip()
    sn = (root.findtext("SN") or "").strip()
    dev = (root.findtext("DeviceID") or "").strip()
    if not cmd:
        raise ManscdpError("缺少 CmdType (no CmdType element)")
    if not sn.isdigit():
        raise ManscdpError(f"SN 不是数字 (SN {sn[:20]!r})")
    if not dev:
        raise ManscdpError("缺少 DeviceID (no DeviceID element)")
    return Body(root.tag, cmd, int(sn), dev, root, charset_of(data))


# --------------------------------------------------------------------------- queries the hub sends

def query(cmd: str, sn: int, device_id: str, label: str = "GB2312", extra: str = "") -> bytes:
    return encode("Query", el("CmdType", cmd) + el("SN", sn) + el("DeviceID", device_id) + extra, label)


def ptz_control(sn: int, channel_id: str, command: bytes, label: str = "GB2312") -> bytes:
    return encode("Control", el("CmdType", "DeviceControl") + el("SN", sn) + el("DeviceID", channel_id)
                  + el("PTZCmd", command.hex().upper()) + "<Info>\r\n" + el("ControlPriority", 5) + "</Info>\r\n",
                  label)


def catalog_subscribe(sn: int, device_id: str, label: str = "GB2312") -> bytes:
    """The body of a catalog SUBSCRIBE (GB/T 28181-2016 §9.11.2, as WVP-GB28181-pro sends it):
    a Catalog Query of the device; changes arrive as NOTIFY with ``<Notify><CmdType>Catalog``."""
    return query("Catalog", sn, device_id, label)


def alarm_subscribe(sn: int, device_id: str, label: str = "GB2312") -> bytes:
    """The body of an alarm SUBSCRIBE (报警订阅, ``Event: presence``; A.2.4.8 alarm query fields):
    every priority (0), every method (0) — what the hub maps is decided on arrival."""
    return query("Alarm", sn, device_id, label, el("StartAlarmPriority", 0) + el("EndAlarmPriority", 0)
                 + el("AlarmMethod", 0))


# --------------------------------------------------------------------------- catalog

@dataclass
class Channel:
    channel_id: str
    name: str
    manufacturer: str | None = None
    model: str | None = None
    civil_code: str | None = None
    parent_id: str | None = None
    status: str = "ON"
    ptz_type: int | None = None           # 1 dome 球机, 2 half-dome, 3 fixed 枪机, 4 remote-controlled fixed
    lon: float | None = None
    lat: float | None = None
    address: str | None = None

    @property
    def online(self) -> bool:
        return (self.status or "").upper() in ("ON", "ONLINE", "OK")


def _float(text: str | None, lo: float, hi: float) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and lo <= value <= hi and value != 0.0 else None


@dataclass
class CatalogPacket:
    sum_num: int
    items: list[Channel]


def _items(body: Body):
    dl = body.root.find("DeviceList")
    for item in (dl if dl is not None else []):
        if item.tag == "Item":
            yield item


def _channel(item) -> Channel:
    cid = (item.findtext("DeviceID") or "").strip()
    if not is_gb_id(cid):
        raise ManscdpError(f"目录项编码不是 20 位数字 (catalog item DeviceID {cid[:30]!r})")
    info = item.find("Info")
    ptz = (info.findtext("PTZType") if info is not None else None) or item.findtext("PTZType")
    return Channel(
        channel_id=cid, name=(item.findtext("Name") or cid).strip()[:100],
        manufacturer=(item.findtext("Manufacturer") or "").strip() or None,
        model=(item.findtext("Model") or "").strip() or None,
        civil_code=(item.findtext("CivilCode") or "").strip() or None,
        parent_id=(item.findtext("ParentID") or "").strip() or None,
        status=(item.findtext("Status") or "ON").strip(),
        ptz_type=int(ptz) if ptz and ptz.strip().isdigit() else None,
        lon=_float(item.findtext("Longitude"), -180, 180), lat=_float(item.findtext("Latitude"), -90, 90),
        address=(item.findtext("Address") or "").strip() or None)


def catalog_packet(body: Body) -> CatalogPacket:
    sum_text = body.text("SumNum") or ""
    if not sum_text.isdigit():
        raise ManscdpError(f"SumNum 不是数字 ({sum_text[:20]!r})")
    return CatalogPacket(int(sum_text), [_channel(item) for item in _items(body)])


# GB/T 28181-2016 §9.11.2 / A.2.4.2: a catalog NOTIFY's item says what happened to it.
# ON/OFF online/offline, VLOST video lost, DEFECT faulty; ADD/DEL/UPDATE change the catalog.
CATALOG_EVENTS = ("ON", "OFF", "VLOST", "DEFECT", "ADD", "DEL", "UPDATE")
MAX_NOTIFY_ITEMS = 1000


@dataclass
class CatalogEvent:
    event: str
    channel: Channel


def catalog_notify(body: Body) -> list[CatalogEvent]:
    """The items of a ``<Notify><CmdType>Catalog`` body, each with its ``Event``; an item
    without one is an UPDATE (taken as a catalog query would take it: created or updated).
    Refuses the whole body (ManscdpError, Chinese first) when an item has an unknown Event or
    an ID that is not 20 digits: nothing of a body the hub cannot read fully is applied."""
    out: list[CatalogEvent] = []
    for item in _items(body):
        if len(out) >= MAX_NOTIFY_ITEMS:
            raise ManscdpError(f"目录通知项过多（超过 {MAX_NOTIFY_ITEMS} 项）(catalog notify of more than "
                               f"{MAX_NOTIFY_ITEMS} items)")
        channel = _channel(item)
        event = (item.findtext("Event") or "UPDATE").strip().upper()
        if event not in CATALOG_EVENTS:
            raise ManscdpError(f"目录通知项 {channel.channel_id} 的事件类型无效 (Event {event[:20]!r}, expected one "
                               f"of {'/'.join(CATALOG_EVENTS)})")
        if event in ("OFF", "VLOST", "DEFECT", "ON"):
            channel.status = event
        out.append(CatalogEvent(event, channel))
    return out


def catalog_notify_body(sn: int, device_id: str, events: list[tuple[str, Channel]], label: str = "GB2312") -> bytes:
    """A device's catalog NOTIFY body (the simulator's): ``(event, channel)`` items."""
    parts = [el("CmdType", "Catalog"), el("SN", sn), el("DeviceID", device_id), el("SumNum", len(events)),
             f'<DeviceList Num="{len(events)}">\r\n']
    for event, c in events:
        parts.append("<Item>\r\n" + el("DeviceID", c.channel_id) + el("Event", event))
        if event in ("ADD", "UPDATE"):
            parts.append(el("Name", c.name) + el("Manufacturer", c.manufacturer or "") + el("Model", c.model or "")
                         + el("CivilCode", c.civil_code or c.channel_id[:6]) + el("ParentID", c.parent_id or device_id)
                         + el("Status", c.status)
                         + (el("Longitude", c.lon) + el("Latitude", c.lat) if c.lon is not None else "")
                         + ("<Info>\r\n" + el("PTZType", c.ptz_type) + "</Info>\r\n" if c.ptz_type else ""))
        parts.append("</Item>\r\n")
    parts.append("</DeviceList>\r\n")
    return encode("Notify", "".join(parts), label)


def is_video_channel(channel_id: str) -> bool:
    """Type code (digits 11–13) of a camera channel: 131 camera, 132 IPC; 111/118 DVR/NVR
    channels encoders report as 131/132 too. Civil-code and business-group items (215, 216)
    and the device itself are not cameras."""
    return channel_id[10:13] in ("131", "132")


def catalog_response(sn: int, device_id: str, sum_num: int, items: list[Channel], label: str = "GB2312") -> bytes:
    parts = [el("CmdType", "Catalog"), el("SN", sn), el("DeviceID", device_id), el("SumNum", sum_num),
             f'<DeviceList Num="{len(items)}">\r\n']
    for c in items:
        parts.append("<Item>\r\n" + el("DeviceID", c.channel_id) + el("Name", c.name)
                     + el("Manufacturer", c.manufacturer or "") + el("Model", c.model or "")
                     + el("Owner", "Owner") + el("CivilCode", c.civil_code or c.channel_id[:6])
                     + el("Address", c.address or "") + el("Parental", 0) + el("ParentID", c.parent_id or device_id)
                     + el("SafetyWay", 0) + el("RegisterWay", 1) + el("Secrecy", 0) + el("Status", c.status)
                     + (el("Longitude", c.lon) + el("Latitude", c.lat) if c.lon is not None else "")
                     + ("<Info>\r\n" + el("PTZType", c.ptz_type) + "</Info>\r\n" if c.ptz_type else "")
                     + "</Item>\r\n")
    parts.append("</DeviceList>\r\n")
    return encode("Response", "".join(parts), label)


# --------------------------------------------------------------------------- alarms

# (AlarmMethod, AlarmType) → hub event type (config/vocabulary.py). AlarmMethod 2 device
# alarms: 1 video loss 视频丢失, 2 tamper 设备防拆; 5 video alarms: 2 motion 移动侦测,
# 5 tripwire 绊线, 6 intrusion 入侵; 2 without a type: an alarm input 报警输入.
ALARM_TYPES: dict[tuple[str, str | None], str] = {
    ("2", "1"): "camera.video_lost", ("2", "2"): "camera.tamper.device", ("2", None): "camera.input",
    ("5", "2"): "camera.motion", ("5", "5"): "camera.intrusion.line", ("5", "6"): "camera.intrusion.field",
    ("5", "1"): "camera.input",
}
EMITS = tuple(sorted(set(ALARM_TYPES.values())))


@dataclass
class Alarm:
    channel_id: str
    event_type: str
    priority: int | None
    method: str
    alarm_type: str | None
    at: datetime | None
    description: str | None
    lon: float | None
    lat: float | None


def alarm(body: Body) -> Alarm:
    method = (body.text("AlarmMethod") or "").strip()
    info = body.root.find("Info")
    atype = ((info.findtext("AlarmType") if info is not None else None) or body.text("AlarmType") or "").strip() or None
    event_type = ALARM_TYPES.get((method, atype)) or ALARM_TYPES.get((method, None))
    if event_type is None:
        raise ManscdpError(f"不支持的报警方式/类型 (AlarmMethod {method[:10]!r}, AlarmType {atype!r})")
    at = None
    if body.text("AlarmTime"):
        try:
            at = datetime.fromisoformat(body.text("AlarmTime"))
        except ValueError:
            at = None
    prio = body.text("AlarmPriority")
    return Alarm(body.device_id, event_type, int(prio) if prio and prio.isdigit() else None, method, atype, at,
                 body.text("AlarmDescription"), _float(body.text("Longitude"), -180, 180),
                 _float(body.text("Latitude"), -90, 90))


# --------------------------------------------------------------------------- PTZ (Appendix A.3)

def ptz_bytes(pan: float, tilt: float, zoom: float, *, address: int = 1) -> bytes:
    """The 8-byte PTZ command for velocities in -1..1 (0,0,0: stop). Byte 4 bits: 0x01 right,
    0x02 left, 0x04 down, 0x08 up, 0x10 zoom in (tele), 0x20 zoom out (wide); bytes 5–6 pan
    and tilt speed 0–255; byte 7 high nibble zoom speed 0–15, low nibble the address's high
    bits; byte 8 the checksum."""
    cmd = 0
    if pan > 0:
        cmd |= 0x01
    elif pan < 0:
        cmd |= 0x02
    if tilt < 0:
        cmd |= 0x04
    elif tilt > 0:
        cmd |= 0x08
    if zoom > 0:
        cmd |= 0x10
    elif zoom < 0:
        cmd |= 0x20
    b = [0xA5, 0x0F, address & 0xFF, cmd, min(255, round(abs(pan) * 255)), min(255, round(abs(tilt) * 255)),
         ((min(15, round(abs(zoom) * 15)) << 4) | ((address >> 8) & 0x0F))]
    b.append(sum(b) % 256)
    return bytes(b)


def ptz_preset(op: int, index: int, *, address: int = 1) -> bytes:
    """Preset commands (A.3.3): 0x81 set, 0x82 call, 0x83 delete; index 1–255 in byte 6."""
    b = [0xA5, 0x0F, address & 0xFF, op, 0, index & 0xFF, (address >> 8) & 0x0F]
    b.append(sum(b) % 256)
    return bytes(b)


def parse_ptz(hex_text: str) -> dict:
    """The command's meaning (the simulator records it; tests read it)."""
    raw = bytes.fromhex(hex_text)
    if len(raw) != 8 or raw[0] != 0xA5:
        raise ManscdpError(f"PTZCmd 格式错误 ({hex_text[:20]!r})")
    if sum(raw[:7]) % 256 != raw[7]:
        raise ManscdpError("PTZCmd 校验码错误 (checksum)")
    if raw[1] != 0x0F:        # version 0, check nibble (0xA + 0x5 + 0) % 16 (A.3.1)
        raise ManscdpError("PTZCmd 第二字节错误 (byte 2 must be 0F)")
    c = raw[3]
    if c >= 0x80:
        return {"preset_op": c, "preset": raw[5]}
    pan = (raw[4] / 255) * (1 if c & 0x01 else -1 if c & 0x02 else 0)
    tilt = (raw[5] / 255) * (1 if c & 0x08 else -1 if c & 0x04 else 0)
    zoom = ((raw[6] >> 4) / 15) * (1 if c & 0x10 else -1 if c & 0x20 else 0)
    return {"pan": round(pan, 3), "tilt": round(tilt, 3), "zoom": round(zoom, 3), "stop": c == 0}


# --------------------------------------------------------------------------- record info (录像查询, §A.2.4.5 / A.2.6.7)

def _gb_time(dt: datetime) -> str:
    """GB/T 28181 time: local time without an offset (the device's clock is the hub's, 校时)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone().replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def parse_gb_time(text: str | None) -> datetime | None:
    """A device's time (local, no offset; some write a space or a trailing Z) as an aware datetime."""
    if not text:
        return None
    value = text.strip().replace(" ", "T")
    try:
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.astimezone()


def record_info_query(sn: int, channel_id: str, start: datetime, end: datetime, label: str = "GB2312",
                      record_type: str = "all") -> bytes:
    return query("RecordInfo", sn, channel_id, label,
                 el("StartTime", _gb_time(start)) + el("EndTime", _gb_time(end)) + el("Secrecy", 0)
                 + el("Type", record_type))


@dataclass
class RecordItem:
    start: datetime
    end: datetime
    type: str = "time"          # time 定时 | alarm 报警 | manual 手动 | all
    name: str | None = None
    file_path: str | None = None
    channel_id: str | None = None


@dataclass
class RecordPacket:
    sum_num: int
    name: str | None
    items: list[RecordItem]


def record_info_packet(body: Body) -> RecordPacket:
    sum_text = body.text("SumNum") or ""
    if not sum_text.isdigit():
        raise ManscdpError(f"录像查询应答的 SumNum 不是数字 ({sum_text[:20]!r})")
    items: list[RecordItem] = []
    rl = body.root.find("RecordList")
    for item in (rl if rl is not None else []):
        if item.tag != "Item":
            continue
        start, end = parse_gb_time(item.findtext("StartTime")), parse_gb_time(item.findtext("EndTime"))
        if start is None or end is None or end <= start:
            raise ManscdpError(f"录像条目的起止时间无效 (RecordList item StartTime {item.findtext('StartTime')!r}, "
                               f"EndTime {item.findtext('EndTime')!r})")
        items.append(RecordItem(start, end, (item.findtext("Type") or "time").strip()[:20],
                                (item.findtext("Name") or "").strip()[:100] or None,
                                (item.findtext("FilePath") or "").strip()[:300] or None,
                                (item.findtext("DeviceID") or "").strip() or None))
    return RecordPacket(int(sum_text), body.text("Name"), items)


def record_info_response(sn: int, channel_id: str, sum_num: int, items: list[RecordItem], *, name: str = "",
                         label: str = "GB2312") -> bytes:
    parts = [el("CmdType", "RecordInfo"), el("SN", sn), el("DeviceID", channel_id), el("Name", name),
             el("SumNum", sum_num), f'<RecordList Num="{len(items)}">\r\n']
    for r in items:
        parts.append("<Item>\r\n" + el("DeviceID", r.channel_id or channel_id) + el("Name", r.name or name)
                     + el("FilePath", r.file_path or "") + el("Address", "") + el("StartTime", _gb_time(r.start))
                     + el("EndTime", _gb_time(r.end)) + el("Secrecy", 0) + el("Type", r.type) + "</Item>\r\n")
    parts.append("</RecordList>\r\n")
    return encode("Response", "".join(parts), label)
