"""DJI Cloud API (dock to cloud, MQTT thing model) ↔ the hub's contract, for one dock and
its aircraft (a hub device of kind ``drone``; config: ``dialect: {model: dji, id: <dock
sn>, aircraft_sn: <sn>}``).

DJI's messages share one envelope: ``tid`` (transaction), ``bid`` (business), ``timestamp``
(epoch ms; DJI's own examples sometimes spell it ``"timestamp:"``, so a missing one is the
hub's receive time), ``method``, ``data``, ``need_reply``, ``gateway``.

Uplink:
- ``thing/product/{aircraft_sn}/osd`` (0.5 Hz) → ``tele`` (lat/lon, ``elevation`` — height
  above the take-off point — as alt_m, ``attitude_head`` as heading 0..360,
  ``horizontal_speed``, ``battery.capacity_percent``, ``mode_code`` → the hub's modes). An
  osd without a position fix (latitude and longitude 0, the aircraft off in its dock) gives
  no telemetry. It also moves a return-home command on (返航中, 降落中, 已降落).
- ``thing/product/{dock_sn}/osd``: ``drone_in_dock`` = 1 finishes a return home; nothing stored.
- ``thing/product/{dock_sn}/events``: ``hms`` → one ``drone.hms`` event per alarm that is new
  in the dock's list (DJI pushes the whole active set each time; severity from ``level``:
  0 notice → info, 1 reminder → minor, 2 warning → major); ``flighttask_progress`` →
  ``drone.flight_task`` events when the task's status changes, and the phases of the
  mission command that started it. Any event with ``need_reply`` = 1 is answered on
  ``events_reply`` once the hub has it.
- ``thing/product/{dock_sn}/services_reply``: ``result`` 0 accepts the command (for a
  mission: after ``flighttask_prepare`` the hub sends ``flighttask_execute``, whose reply
  accepts it); any other result rejects it naming DJI's error code.
- ``sys/product/{dock_sn}/status`` (``update_topo``) is answered on ``status_reply``.
- ``state`` topics (properties that changed) are acknowledged and not stored.

Downlink: ``return_home`` → service ``return_home`` (a mission in flight then ends
``preempted``); ``mission`` → ``flighttask_prepare`` (an immediate wayline task of the
device's ``wayline_url``/``wayline_md5``, or the command's own) then ``flighttask_execute``.
Commands in flight are kept in memory: after a restart of the bridge the hub expires them."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from config.dialects import DeviceDialect
from devices.dialects.common import (DialectError, HubMessage, Translation, VendorMessage, check_contract, now_ms,
                                     parse_json)

# mode_code of the aircraft (aircraft properties) → the hub's drone modes (bus/telemetry.py)
MODES = {0: "idle", 1: "idle", 2: "idle", 3: "manual", 4: "mission", 5: "mission", 6: "manual", 7: "manual",
         8: "manual", 9: "return_home", 10: "landing", 11: "landing", 12: "landing", 13: "idle", 14: "idle",
         15: "manual", 16: "manual", 17: "manual"}
HMS_SEVERITY = {0: "info", 1: "minor", 2: "major"}
# flighttask_progress status → the mission command's phase
TASK_PHASES = {"sent": "progress", "in_progress": "progress", "paused": "progress", "ok": "finished",
               "partially_done": "finished", "failed": "failed", "timeout": "failed", "rejected": "failed",
               "canceled": "preempted"}
TASK_LABELS = {"sent": "已下发", "in_progress": "执行中", "paused": "暂停", "ok": "执行成功", "partially_done": "部分完成",
               "failed": "失败", "timeout": "超时", "rejected": "拒绝", "canceled": "取消或终止"}


@dataclass(slots=True)
class _Command:
    cmd_id: str
    name: str                   # the hub's command: mission | return_home
    tid: str                    # the DJI service call waiting for its reply
    step: str                   # the DJI method of that call
    flight_id: str | None = None
    stage: str = "sent"         # sent | accepted | returning | landing
    n: int = 0


@dataclass
class DjiDock:
    device_id: str
    dialect: DeviceDialect
    _by_tid: dict[str, _Command] = field(default_factory=dict)
    _mission: _Command | None = None
    _return: _Command | None = None
    _hms: set[tuple] = field(default_factory=set)
    _task_status: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.dialect.id

    @property
    def aircraft(self) -> str:
        return self.dialect.aircraft_sn or ""

    # -- topics (the dock's broker account may write the uplink, read the downlink) -------
    def uplink_topics(self) -> list[str]:
        gw, ac = f"thing/product/{self.gateway}", f"thing/product/{self.aircraft}"
        return [f"{gw}/osd", f"{gw}/state", f"{gw}/events", f"{gw}/services_reply", f"{gw}/requests",
                f"{ac}/osd", f"{ac}/state", f"sys/product/{self.gateway}/status"]

    def downlink_topics(self) -> list[str]:
        gw = f"thing/product/{self.gateway}"
        return [f"{gw}/services", f"{gw}/events_reply", f"{gw}/requests_reply",
                f"sys/product/{self.gateway}/status_reply"]

    # -- DJI → hub ------------------------------------------------------------------
    def uplink(self, topic: str, payload: bytes, received_ms: int | None = None) -> Translation:
        received_ms = received_ms or now_ms()
        msg = parse_json(payload, f"dji {topic}")
        if not isinstance(msg, dict):
            raise DialectError("大疆消息格式错误", f"{topic}: the message is not a JSON object")
        parts = topic.split("/")
        sn, leaf = (parts[2], "/".join(parts[3:])) if len(parts) >= 4 else ("", "")
        data = msg.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DialectError("大疆消息格式错误", f"{topic}: 'data' must be an object")
        ts = msg.get("timestamp")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0 else received_ms
        tid = msg.get("tid") if isinstance(msg.get("tid"), str) and msg.get("tid") else None
        out = Translation()
        if parts[0] == "sys" and leaf == "status":
            out.replies.append(self._reply(f"sys/product/{self.gateway}/status_reply", msg, ts))
        elif leaf == "osd" and sn == self.aircraft:
            self._aircraft_osd(data, tid or f"osd-{ts}", ts, out, topic)
        elif leaf == "osd" and sn == self.gateway:
            if data.get("drone_in_dock") == 1 and self._return is not None and self._return.stage != "sent":
                out.hub.append(self._phase(self._return, "finished", ts, "已降落 (landed in the dock)"))
                self._return = None
        elif leaf == "state":
            pass
        elif leaf == "events" and sn == self.gateway:
            self._event(msg, data, tid, ts, out, topic)
        elif leaf == "services_reply" and sn == self.gateway:
            self._service_reply(msg, data, ts, out)
        elif leaf == "requests" and sn == self.gateway:
            pass        # requests (resource and config fetches) are not served by the hub
        else:
            raise DialectError("无法识别的大疆消息", f"topic {topic!r} is not one of dock {self.gateway}'s")
        for m in out.hub:
            check_contract(m, f"dji {topic}")
        return out

    def _aircraft_osd(self, data: dict, tid: str, ts: int, out: Translation, topic: str) -> None:
        lat, lon = data.get("latitude"), data.get("longitude")
        mode_code = data.get("mode_code")
        if isinstance(mode_code, int) and self._return is not None and self._return.stage != "sent":
            if mode_code == 9 and self._return.stage != "returning":
                self._return.stage = "returning"
                out.hub.append(self._phase(self._return, "progress", ts, "返航中 (returning home)"))
            elif mode_code in (10, 11, 12) and self._return.stage != "landing":
                self._return.stage = "landing"
                out.hub.append(self._phase(self._return, "progress", ts, "降落中 (landing)"))
            elif mode_code in (0, 14) and self._return.stage in ("returning", "landing"):
                out.hub.append(self._phase(self._return, "finished", ts, "已降落 (landed)"))
                self._return = None
        if not lat and not lon:
            return      # no position fix (or the aircraft is off in the dock): nothing to store
        battery = data.get("battery") if isinstance(data.get("battery"), dict) else {}
        missing = [k for k, v in (("latitude", lat), ("longitude", lon), ("mode_code", mode_code),
                                  ("battery.capacity_percent", battery.get("capacity_percent"))) if v is None]
        if missing:
            raise DialectError("大疆飞行器遥测缺少字段", f"{topic}: missing {', '.join(missing)}")
        head = data.get("attitude_head", 0)
        alt = data.get("elevation", data.get("height", 0))
        body = {"v": 1, "id": tid[:64], "ts": ts, "seq": 0, "lat": lat, "lon": lon,
                "alt_m": alt, "heading_deg": head % 360 if isinstance(head, (int, float)) else head,
                "speed_mps": abs(data.get("horizontal_speed", 0) or 0),
                "battery_pct": battery.get("capacity_percent"), "mode": MODES.get(mode_code, "manual"),
                "dji_mode_code": mode_code}
        out.hub.append(HubMessage("drone", self.device_id, "tele", None, body))

    def _event(self, msg: dict, data: dict, tid: str | None, ts: int, out: Translation, topic: str) -> None:
        method = msg.get("method")
        if not isinstance(method, str) or not tid:
            raise DialectError("大疆事件格式错误", f"{topic}: an event needs 'method' and 'tid'")
        if method == "hms":
            items = data.get("list")
            if not isinstance(items, list):
                raise DialectError("大疆健康告警格式错误", f"{topic}: hms data.list must be an array")
            active = set()
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                    raise DialectError("大疆健康告警格式错误", f"{topic}: hms data.list[{i}] needs a code")
                args = item.get("args") if isinstance(item.get("args"), dict) else {}
                key = (item["code"], item.get("device_type"), args.get("component_index"), args.get("sensor_index"),
                       item.get("in_the_sky"))
                active.add(key)
                if key in self._hms:
                    continue
                level = item.get("level")
                body = {"v": 1, "id": f"{tid}:{i}"[:64], "ts": ts, "seq": 0, "code": item["code"], "level": level,
                        "severity": HMS_SEVERITY.get(level, "minor")}
                for k in ("module", "in_the_sky", "imminent", "device_type"):
                    if item.get(k) is not None:
                        body[k] = item[k]
                if args:
                    body["args"] = args
                out.hub.append(HubMessage("drone", self.device_id, "evt", "hms", body))
            self._hms = active
        elif method == "flighttask_progress":
            output = data.get("output") if isinstance(data.get("output"), dict) else {}
            ext = output.get("ext") if isinstance(output.get("ext"), dict) else {}
            progress = output.get("progress") if isinstance(output.get("progress"), dict) else {}
            flight_id, status = ext.get("flight_id"), output.get("status")
            if not isinstance(flight_id, str) or not isinstance(status, str):
                raise DialectError("大疆航线任务进度格式错误",
                                   f"{topic}: flighttask_progress needs output.ext.flight_id and output.status")
            pct = progress.get("percent")
            if self._task_status.get(flight_id) != status:
                self._task_status[flight_id] = status
                body = {"v": 1, "id": tid[:64], "ts": ts, "seq": 0, "flight_id": flight_id, "status": status,
                        "severity": "minor" if TASK_PHASES.get(status) == "failed" else "info"}
                if isinstance(pct, (int, float)):
                    body["percent"] = pct
                if isinstance(progress.get("current_step"), int):
                    body["current_step"] = progress["current_step"]
                out.hub.append(HubMessage("drone", self.device_id, "evt", "flight_task", body))
            cmd = self._mission
            if cmd is not None and cmd.flight_id == flight_id and cmd.stage != "sent":
                phase = TASK_PHASES.get(status, "progress")
                detail = f"{TASK_LABELS.get(status, status)} (DJI task status {status}"
                detail += f", result {data.get('result')})" if data.get("result") else ")"
                out.hub.append(self._phase(cmd, phase, ts, detail,
                                           pct if isinstance(pct, (int, float)) and phase == "progress" else None))
                if phase != "progress":
                    self._mission = None
        if msg.get("need_reply") == 1:
            out.replies.append(self._reply(f"thing/product/{self.gateway}/events_reply", msg, ts))

    def _service_reply(self, msg: dict, data: dict, ts: int, out: Translation) -> None:
        cmd = self._by_tid.pop(msg.get("tid"), None) if isinstance(msg.get("tid"), str) else None
        if cmd is None:
            return      # a reply to nothing the hub asked (or asked before a restart)
        result = data.get("result")
        if result != 0:
            out.hub.append(self._phase(cmd, "rejected", ts, f"大疆机场拒绝了命令 ({cmd.step}: DJI result {result})"))
            if cmd is self._mission:
                self._mission = None
            if cmd is self._return:
                self._return = None
            return
        if cmd.step == "flighttask_prepare":
            cmd.tid, cmd.step = str(uuid.uuid4()), "flighttask_execute"
            self._by_tid[cmd.tid] = cmd
            out.replies.append(VendorMessage(f"thing/product/{self.gateway}/services", {
                "tid": cmd.tid, "bid": cmd.cmd_id, "timestamp": now_ms(), "method": "flighttask_execute",
                "data": {"flight_id": cmd.flight_id}}))
            return
        cmd.stage = "accepted"
        out.hub.append(self._phase(cmd, "accepted", ts, f"大疆机场已接受 ({cmd.step})"))
        if cmd.name == "return_home" and self._mission is not None and self._mission.stage != "sent":
            out.hub.append(self._phase(self._mission, "preempted", ts, "被一键返航召回 (recalled home)"))
            self._mission = None

    # -- hub → DJI ------------------------------------------------------------------
    def command(self, name: str, body: dict[str, Any]) -> list[VendorMessage]:
        cmd_id = body.get("id")
        if not isinstance(cmd_id, str):
            raise DialectError("命令格式错误", "the hub command has no id")
        services = f"thing/product/{self.gateway}/services"
        tid = str(uuid.uuid4())
        if name == "return_home":
            cmd = self._return = _Command(cmd_id, name, tid, "return_home")
            self._by_tid[tid] = cmd
            return [VendorMessage(services, {"tid": tid, "bid": cmd_id, "timestamp": now_ms(),
                                             "method": "return_home", "data": {}})]
        if name == "mission":
            url = body.get("wayline_url") or self.dialect.wayline_url
            md5 = body.get("wayline_md5") or self.dialect.wayline_md5
            if not url or not md5:
                raise DialectError("未配置航线文件",
                                   f"dock {self.gateway}: a mission needs wayline_url and wayline_md5 "
                                   "(in the device's dialect or in the command)")
            flight_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xlhub:{cmd_id}"))
            cmd = self._mission = _Command(cmd_id, name, tid, "flighttask_prepare", flight_id=flight_id)
            self._by_tid[tid] = cmd
            return [VendorMessage(services, {
                "tid": tid, "bid": cmd_id, "timestamp": now_ms(), "method": "flighttask_prepare",
                "data": {"flight_id": flight_id, "execute_time": now_ms(), "task_type": 0, "wayline_type": 0,
                         "file": {"url": url, "fingerprint": md5}, "rth_altitude": 100, "rth_mode": 1,
                         "out_of_control_action": 0, "exit_wayline_when_rc_lost": 1}})]
        raise DialectError("该型号不支持此命令", f"the dji dialect maps mission and return_home, not {name!r}")

    # -- helpers --------------------------------------------------------------------
    def _phase(self, cmd: _Command, phase: str, ts: int, detail: str, pct: float | None = None) -> HubMessage:
        cmd.n += 1
        body = {"v": 1, "id": f"{cmd.cmd_id}:{cmd.n}"[:64], "ts": ts, "seq": 0, "cmd": cmd.name,
                "cmd_id": cmd.cmd_id, "phase": phase, "detail": detail}
        if pct is not None:
            body["progress_pct"] = pct
        return HubMessage("drone", self.device_id, "res", None, body, correlation=cmd.cmd_id)

    @staticmethod
    def _reply(topic: str, msg: dict, ts: int) -> VendorMessage:
        body = {"tid": msg.get("tid"), "bid": msg.get("bid"), "timestamp": now_ms(), "data": {"result": 0}}
        if isinstance(msg.get("method"), str):
            body["method"] = msg["method"]
        return VendorMessage(topic, body)
