"""SDP of GB/T 28181 media (§C, Appendix F): the hub's offer in INVITE and the device's
answer in its 200 OK. ``y=`` the SSRC, ``f=`` the media format line, ``a=setup`` and
``a=connection`` for RTP over TCP (RFC 4571/4145), ``a=rtpmap:96 PS/90000``. A time range is
``s=Playback`` (played at 1×, controlled by MANSRTSP) or ``s=Download`` with
``a=downloadspeed:<n>`` (GB/T 28181-2016 §9.9: the device sends the file n times faster; the
answer may give ``a=filesize``)."""
from __future__ import annotations

from datetime import datetime

from cameras.gb28181.session import MediaAnswer, MediaOffer


def offer(o: MediaOffer, *, hub_id: str, channel_id: str) -> bytes:
    playback = o.start is not None
    t = f"t={int(o.start.timestamp())} {int(o.end.timestamp()) if o.end else 0}" if playback else "t=0 0"
    proto = "RTP/AVP" if o.transport == "udp" else "TCP/RTP/AVP"
    session = ("Download" if o.download_speed else "Playback") if playback else "Play"
    lines = ["v=0", f"o={hub_id} 0 0 IN IP4 {o.host}", f"s={session}"]
    if playback:
        lines.append(f"u={channel_id}:0")
    lines += [f"c=IN IP4 {o.host}", t, f"m=video {o.port} {proto} 96 97 98", "a=recvonly",
              "a=rtpmap:96 PS/90000", "a=rtpmap:97 MPEG4/90000", "a=rtpmap:98 H264/90000"]
    if playback and o.download_speed:
        lines.append(f"a=downloadspeed:{int(o.download_speed)}")
    if o.transport == "tcp-passive":
        lines += ["a=setup:passive", "a=connection:new"]
    elif o.transport == "tcp-active":
        lines += ["a=setup:active", "a=connection:new"]
    lines += [f"y={o.ssrc}", "f="]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def parse(body: bytes) -> dict:
    """The fields the hub uses: host (c=), port and protocol (m=video), y=, codec, setup, s=,
    and a download's speed and file size."""
    out: dict = {"host": None, "port": None, "proto": None, "ssrc": None, "codec": None, "setup": None,
                 "session": None, "t": None, "downloadspeed": None, "filesize": None}
    text = body.decode("utf-8", "replace")
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "c":
            out["host"] = value.split()[-1]
        elif key == "s":
            out["session"] = value.strip()
        elif key == "t":
            out["t"] = value.strip()
        elif key == "m" and value.startswith("video"):
            parts = value.split()
            if len(parts) >= 3 and parts[1].isdigit():
                out["port"], out["proto"] = int(parts[1]), parts[2]
        elif key == "y":
            out["ssrc"] = value.strip()
        elif key == "a" and value.startswith("rtpmap:") and out["codec"] is None:
            enc = value.split(" ", 1)[-1].split("/")[0].lower()
            out["codec"] = enc
        elif key == "a" and value.startswith("setup:"):
            out["setup"] = value.split(":", 1)[1].strip()
        elif key == "a" and value.startswith(("downloadspeed:", "filesize:")):
            name, _, number = value.partition(":")
            if number.strip().isdigit():
                out[name] = int(number.strip())
    return out


def answer(call_id: str, body: bytes, offered_ssrc: str) -> MediaAnswer:
    p = parse(body)
    if not p["host"] or not p["port"]:
        raise ValueError("the answer's SDP has no c= address or m=video port")
    return MediaAnswer(call_id=call_id, host=p["host"], port=p["port"], ssrc=p["ssrc"] or offered_ssrc,
                       codec=p["codec"])


def device_answer(offer_fields: dict, *, device_id: str, host: str, port: int, ssrc: str) -> bytes:
    """What a device (the simulator) answers: it sends PS from host:port."""
    proto = offer_fields.get("proto") or "RTP/AVP"
    lines = ["v=0", f"o={device_id} 0 0 IN IP4 {host}", f"s={offer_fields.get('session') or 'Play'}",
             f"c=IN IP4 {host}", f"t={offer_fields.get('t') or '0 0'}", f"m=video {port} {proto} 96", "a=sendonly",
             "a=rtpmap:96 PS/90000"]
    if offer_fields.get("session") == "Download" and offer_fields.get("downloadspeed"):
        lines.append(f"a=downloadspeed:{offer_fields['downloadspeed']}")
    if offer_fields.get("setup") == "passive":
        lines.append("a=setup:active")
    elif offer_fields.get("setup") == "active":
        lines.append("a=setup:passive")
    lines += [f"y={ssrc}", "f="]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def gb_time(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S")
