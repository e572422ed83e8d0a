"""DJI Cloud API messages as DJI publishes them (dock to cloud, MQTT), copied from the
documentation's examples — developer.dji.com/doc/cloud-api-tutorial/cn/api-reference/
dock-to-cloud/mqtt/dock/wayline.html (flighttask_progress, flighttask_prepare,
flighttask_execute, return_home, services_reply), …/dock/hms.html (hms) — with their quirks
kept: the HMS example of the Dock 2 page spells the time key ``"timestamp:"``, and
``reason`` of device_exit_homing_notify is a string where the table says int. The aircraft
osd follows the aircraft properties table (…/mqtt/aircraft/properties.html), which has no
example of its own; its field values are from a logged M30 osd (tboenish/DJI_Cloud_API_test
README) with a position fix added.

The simulator (dji_sim.py) is checked against these: every message it sends has the shape
of the example of its method."""

HMS = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {"list": [{"args": {"component_index": 0, "sensor_index": 0}, "code": "0x16100083",
                       "device_type": "0-67-0", "imminent": 1, "in_the_sky": 0, "level": 2, "module": 3}]},
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1654070968655,
    "method": "hms",
}

# The Dock 2 page's copy of the same example: "timestamp:" (sic).
HMS_TYPO = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {"list": [{"args": {"component_index": 0, "sensor_index": 0}, "code": "0x16100083",
                       "device_type": "0-67-0", "imminent": 1, "in_the_sky": 0, "level": 2, "module": 3}]},
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp:": 1654070968655,
    "method": "hms",
}

FLIGHTTASK_PROGRESS = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {
        "output": {
            "ext": {
                "break_point": {"attitude_head": 30, "break_reason": 1, "height": 100.23, "index": 1,
                                "latitude": 23.4, "longitude": 113.99, "progress": 0.34, "state": 0,
                                "wayline_id": 0},
                "current_waypoint_index": 3, "flight_id": "flight_id", "media_count": 6, "track_id": "track_id",
                "wayline_id": 0, "wayline_mission_state": 9,
            },
            "progress": {"current_step": 19, "percent": 100},
            "status": "ok",
        },
        "result": 0,
    },
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1654070968655,
    "method": "flighttask_progress",
}

DEVICE_EXIT_HOMING_NOTIFY = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {"action": 1, "reason": "0", "sn": "机场 SN"},
    "need_reply": 1,
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp:": 1654070968655,
    "method": "device_exit_homing_notify",
}

FLIGHTTASK_PREPARE = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {
        "break_point": {"index": 1, "progress": 0.34, "state": 0, "wayline_id": 0},
        "executable_conditions": {"storage_capacity": 1000},
        "execute_time": 1234567890123,
        "exit_wayline_when_rc_lost": 0,
        "file": {"fingerprint": "xxxx", "url": "https://xxx.com/xxxx"},
        "flight_id": "xxxxxxx",
        "out_of_control_action": 0,
        "ready_conditions": {"battery_capacity": 90, "begin_time": 1234567890123, "end_time": 1234567890123},
        "rth_altitude": 100,
        "simulate_mission": {"is_enable": 1, "latitude": 22.1223, "longitude": 113.2222},
        "task_type": 2,
        "wayline_type": 1,
    },
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1234567890123,
    "method": "flighttask_prepare",
}

FLIGHTTASK_EXECUTE = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {"flight_id": "xxxxxxx"},
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1234567890123,
    "method": "flighttask_execute",
}

# return_home's page gives no example; its request is the empty-data service of
# flighttask_pause/recovery/return_home_cancel on the same page.
RETURN_HOME_CANCEL = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {},
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1654070968655,
    "method": "return_home_cancel",
}

SERVICES_REPLY = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "data": {"result": 0},
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1234567890123,
    "method": "flighttask_execute",
}

AIRCRAFT_OSD = {
    "bid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "tid": "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx",
    "timestamp": 1654070968655,
    "gateway": "DOCK-SN",
    "data": {
        "elevation": 16.160583, "firmware_version": "03.31.0000", "gear": 1, "home_distance": 0,
        "horizontal_speed": 0, "vertical_speed": 0, "latitude": 30.655, "longitude": 104.56, "height": 512.3,
        "attitude_head": 10.4, "attitude_pitch": -0.4, "attitude_roll": 0.2, "mode_code": 0,
        "battery": {"capacity_percent": 87, "remain_flight_time": 1800, "return_home_power": 20,
                    "landing_power": 10},
        "position_state": {"gps_number": 18, "is_fixed": 2, "quality": 5, "rtk_number": 30},
        "storage": {"total": 24434700, "used": 7723000}, "total_flight_distance": 0, "total_flight_time": 0,
        "track_id": "", "wind_direction": 0, "wind_speed": 0,
    },
}


def shape(value):
    """The structure of a message: dict keys (recursively), list items' shapes, value types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__
