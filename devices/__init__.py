"""Field devices over MQTT — door (门禁), speaker (村村响), drone (无人机), PoC radio
(对讲机), speaking the bus contract (bus/): simulators of those devices (sim/), and the hub's own side of them: the devices worker
(service.py — availability from the Last Will and a heartbeat timeout, commands that
report back, broadcasts with receipts, door event replay, geofences, drone health), the
registry operations (registry.py), per-device secrets (credentials.py, 一机一帐号) and
device media kept as evidence (media.py).  Imports only config/, store/ and bus/; docs/mqtt.md
documents the contract, README.md the rest.
"""
