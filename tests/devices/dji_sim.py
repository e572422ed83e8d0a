"""A DJI dock (and its aircraft) written from the Cloud API documentation: it logs in with
its own broker account, publishes osd/events the way the examples in dji_spec.py are
written, answers services on services_reply and carries out return_home and wayline tasks
(mode codes 9 → 10 → 0, flighttask_progress in_progress → ok), and records the
events_reply and status_reply it receives."""
from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho

from bus.client import mqtt_client, start, stop


def ms() -> int:
    return int(time.time() * 1000)


class DjiDockSim:
    def __init__(self, url: str, username: str, password: str, gateway: str, aircraft: str, *,
                 result: int = 0) -> None:
        self.gateway, self.aircraft, self.result = gateway, aircraft, result
        self.services: list[dict] = []
        self.replies: list[tuple[str, dict]] = []
        self.connected = threading.Event()
        self.client = mqtt_client(url, f"{username}", login=(username, password))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.lat, self.lon = 30.655, 104.56

    def __enter__(self) -> DjiDockSim:
        start(self.client)
        assert self.connected.wait(10), "the DJI dock simulator did not connect"
        return self

    def __exit__(self, *exc) -> None:
        stop(self.client)

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        gw = f"thing/product/{self.gateway}"
        client.subscribe([(f"{gw}/services", 1), (f"{gw}/events_reply", 1),
                          (f"sys/product/{self.gateway}/status_reply", 1)])
        time.sleep(0.2)
        self.connected.set()

    # -- what the dock sends (envelope of the documentation's examples) ---------------
    def envelope(self, method: str | None, data: dict, **extra) -> dict:
        msg = {"bid": str(uuid.uuid4()), "data": data, "tid": str(uuid.uuid4()), "timestamp": ms()}
        if method:
            msg["method"] = method
        msg.update(extra)
        return msg

    def send(self, topic: str, msg: dict) -> dict:
        self.client.publish(topic, json.dumps(msg), qos=1).wait_for_publish(5)
        return msg

    def aircraft_osd(self, mode_code: int, **fields) -> dict:
        data = {"latitude": self.lat, "longitude": self.lon, "height": 512.3, "elevation": 60.0,
                "attitude_head": -95.5, "horizontal_speed": 6.2, "vertical_speed": 0.0, "mode_code": mode_code,
                "battery": {"capacity_percent": 76, "remain_flight_time": 1500, "return_home_power": 20,
                            "landing_power": 10}}
        data.update(fields)
        return self.send(f"thing/product/{self.aircraft}/osd", self.envelope(None, data, gateway=self.gateway))

    def dock_osd(self, drone_in_dock: int) -> dict:
        return self.send(f"thing/product/{self.gateway}/osd",
                         self.envelope(None, {"drone_in_dock": drone_in_dock, "mode_code": 0},
                                       gateway=self.gateway))

    def hms(self, items: list[dict], need_reply: int = 1) -> dict:
        return self.send(f"thing/product/{self.gateway}/events",
                         self.envelope("hms", {"list": items}, need_reply=need_reply, gateway=self.gateway))

    def progress(self, flight_id: str, status: str, percent: int, step: int = 21) -> dict:
        data = {"output": {"ext": {"current_waypoint_index": 2, "flight_id": flight_id, "media_count": 1,
                                   "track_id": "track-1", "wayline_id": 0, "wayline_mission_state": 6},
                           "progress": {"current_step": step, "percent": percent}, "status": status},
                "result": 0}
        return self.send(f"thing/product/{self.gateway}/events",
                         self.envelope("flighttask_progress", data, need_reply=1, gateway=self.gateway))

    # -- what the dock receives --------------------------------------------------------
    def _on_message(self, client, userdata, m: paho.MQTTMessage) -> None:
        msg = json.loads(m.payload)
        if m.topic.endswith("/services"):
            self.services.append(msg)
            reply = {"bid": msg["bid"], "data": {"result": self.result}, "tid": msg["tid"], "timestamp": ms(),
                     "method": msg["method"]}
            threading.Thread(target=self.send, args=(f"thing/product/{self.gateway}/services_reply", reply),
                             daemon=True).start()
        else:
            self.replies.append((m.topic, msg))
