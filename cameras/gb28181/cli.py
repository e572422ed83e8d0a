"""``xlhub gb28181 devices [--unknown] [--json]`` and ``xlhub gb28181 admit DEVICE_ID [--grid
CODE] [--name NAME] [--password-stdin]``: the GB/T 28181 devices as the administrator's page
shows them, and admission (准入, 一机一帐号) with the password printed once. The same
functions as the API (cameras/gb28181/admission.py); audited with the OS user as actor
(``cli.gb28181.admit``), like the other xlhub admin commands. Registered by hub/cli.py."""
from __future__ import annotations

import getpass
import json
import sys
import unicodedata
from datetime import datetime
from zoneinfo import ZoneInfo


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned for a terminal: CJK characters are two columns wide."""
    widths = [max(_width(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        lines.append("  ".join(str(c) + " " * (w - _width(str(c))) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _zone(settings) -> ZoneInfo:
    try:
        from config.site import load_site
        return ZoneInfo(str(load_site(settings.site_file).timezone))
    except Exception:
        return ZoneInfo("Asia/Shanghai")


def _gb_site(settings):
    try:
        from config.site import load_site
        return load_site(settings.site_file).gb28181
    except Exception:
        return None


def _t(value: datetime | None, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _address(d: dict) -> str:
    if not d["host"]:
        return "—"
    return f"{(d['transport'] or '').upper()} {d['host']}:{d['port']}".strip()


def cmd_devices(args, settings, database) -> int:
    from cameras.gb28181 import admission
    from store.db import connect

    zone = _zone(settings)
    with database(settings) as url, connect(url) as conn:
        rows = admission.list_devices(conn, admitted=False if args.unknown else None)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1, default=str))
        return 0
    known = [d for d in rows if d["admitted"]]
    unknown = [d for d in rows if not d["admitted"]]
    if not args.unknown:
        if known:
            print(table(["设备编码", "名称", "注册状态", "传输/地址", "最后心跳", "通道", "时钟偏差"], [[
                d["id"], d["name"] or "—", d["registration_label"], _address(d), _t(d["last_keepalive"], zone),
                f"{sum(1 for c in d['channels'] if c['state'] != 'retired')}"
                + (f" (+{sum(1 for c in d['channels'] if c['state'] == 'retired')} 已退役)"
                   if any(c["state"] == "retired" for c in d["channels"]) else ""),
                f"{d['clock_skew_s']:+.0f} 秒" if d["clock_skew_s"] is not None else "—"] for d in known]))
        else:
            print("no admitted GB/T 28181 device")
        print()
    print("未接入设备 (tried to register without an account; admit with `xlhub gb28181 admit ID`):")
    if unknown:
        print(table(["设备编码", "地址", "尝试次数", "最后尝试", "拒绝原因"], [[
            d["id"], _address(d), str(d["attempts"]), _t(d["last_seen"], zone), d["refusal_label"] or "—"]
            for d in unknown]))
    else:
        print("  (none)")
    return 0


def cmd_admit(args, settings, database) -> int:
    from cameras.gb28181 import admission
    from cameras.gb28181.passwords import GbPasswords
    from store import audit
    from store.db import connect

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n") or None
    entry = audit.AuditEntry(actor=getpass.getuser(), actor_kind="system", action="cli.gb28181.admit")
    with database(settings) as url, connect(url) as conn:
        try:
            done = admission.admit(conn, GbPasswords.for_settings(settings), args.device_id, entry=entry,
                                   name=args.name, password=password, grid=args.grid)
        except admission.AdmissionError as exc:
            print(f"xlhub: {exc}", file=sys.stderr)
            return 1
        chosen = conn.execute("SELECT grid_code FROM gb_devices WHERE id = %s", (done.device_id,)).fetchone()
        where = chosen["grid_code"] or f"{admission.own_grid(conn, _gb_site(settings), done.device_id)} " \
                                        "(the site file's placement)"
    print(f"device {done.device_id} admitted; its channels go to grid {where}")
    print(f"SIP password (shown once, set it on the device as SIP 认证密码): {done.password}")
    return 0


def register(sub, database) -> None:
    gb = sub.add_parser("gb28181", help="GB/T 28181 devices (国标接入): list, admit")
    gsub = gb.add_subparsers(dest="action", required=True)
    dev = gsub.add_parser("devices", help="devices: registration state, address, last keepalive, channels; "
                                          "the unknown devices that tried to register")
    dev.add_argument("--unknown", action="store_true", help="only the unknown devices (未接入设备)")
    dev.add_argument("--json", action="store_true", help="as JSON")
    dev.set_defaults(func=lambda args, settings: cmd_devices(args, settings, database))
    adm = gsub.add_parser("admit", help="admit a device (准入): its SIP password, printed once")
    adm.add_argument("device_id", help="the device's 20-digit ID")
    adm.add_argument("--grid", help="grid node code its channels go to (default: the site file's placement)")
    adm.add_argument("--name", help="a name for the device")
    adm.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (default: generate one)")
    adm.set_defaults(func=lambda args, settings: cmd_admit(args, settings, database))
