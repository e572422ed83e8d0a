"""The one ingest path: the hub's MQTT subscriber (worker.py, with its fast paho client in
fastclient.py) validates every message against the bus contract (bus.normalise), batches the rows and writes them with binary COPY into
TimescaleDB (writer.py: device_telemetry, device_positions, camera_health, events,
dead_letters), and acknowledges each message to the broker only after the transaction
holding it committed, so a crash loses nothing acknowledged. Anything that breaks the
contract is kept in dead_letters with its raw bytes and the reason; the grid of each row
comes from the registry's current membership. ingest/ is the only writer of telemetry and
events; alerts/ reads events after commit (NOTIFY xlhub_events).
"""
